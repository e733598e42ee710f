"""Documents: PDF text extraction (in a child process), the upload service, and page selection for a request."""
