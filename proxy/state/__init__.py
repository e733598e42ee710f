"""State kept between requests: stored files and their extracted text (SQLite)."""
