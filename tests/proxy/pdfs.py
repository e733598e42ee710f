"""The PDF builders moved to ``scripts/pdfs.py`` (``scripts/attack.py`` uses them too, and scripts do not import
tests); this name stays for the tests that import it."""

from scripts.pdfs import (
    assemble,
    bomb_pdf,
    encrypted_pdf,
    image_only_pdf,
    pdf_with_pages,
    slow_pdf,
    two_column_pdf,
    unicode_font,
    unicode_pdf,
)

__all__ = [
    "assemble",
    "bomb_pdf",
    "encrypted_pdf",
    "image_only_pdf",
    "pdf_with_pages",
    "slow_pdf",
    "two_column_pdf",
    "unicode_font",
    "unicode_pdf",
]
