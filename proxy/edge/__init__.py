"""The HTTP edge: the guard middleware, request parsing and validation, the endpoints and their wire formats."""
