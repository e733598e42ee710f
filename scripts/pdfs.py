"""Builders for the PDFs the document tests and ``scripts/attack.py`` need, made on the fly so no binary fixtures
live in the repo (fpdf2 is a dev dependency). The tests import them as ``tests.proxy.pdfs``.

Well-formed files come from fpdf2. Files no sane writer produces (a decompression bomb) are assembled by
hand with :func:`assemble`. Non-Latin text needs a Unicode TrueType font; rather than depend on whatever
fonts the machine has installed, :func:`unicode_font` builds a tiny one with fontTools (a dependency of
fpdf2), with a box glyph for each character a test uses. The glyph shapes do not matter: extraction reads
the font's ToUnicode map, which fpdf2 writes from the font's character map.
"""

from __future__ import annotations

import functools
import io
import tempfile
import zlib
from pathlib import Path

from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from fpdf import FPDF

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


def _new_pdf() -> FPDF:
    pdf = FPDF(unit="pt", format="A4")
    pdf.set_auto_page_break(auto=True, margin=36)
    pdf.set_font("Helvetica", size=11)
    return pdf


def _output(pdf: FPDF) -> bytes:
    return bytes(pdf.output())


def pdf_with_pages(texts: list[str]) -> bytes:
    """One page per string (Latin-1 text, core Helvetica font), wrapped to the page width."""
    pdf = _new_pdf()
    for text in texts:
        pdf.add_page()
        pdf.multi_cell(0, 14, text)
    return _output(pdf)


def two_column_pdf(left: str, right: str) -> bytes:
    """A single page with two side-by-side text columns, as in papers and newsletters."""
    pdf = _new_pdf()
    pdf.add_page()
    column_width = (pdf.w - 3 * 36) / 2
    top = pdf.get_y()
    pdf.set_xy(36, top)
    pdf.multi_cell(column_width, 14, left)
    pdf.set_xy(36 * 2 + column_width, top)
    pdf.multi_cell(column_width, 14, right)
    return _output(pdf)


def unicode_font(characters: str, directory: Path) -> Path:
    """Write a TrueType font covering ``characters`` (plus space) into ``directory`` and return its path."""
    chars = sorted(set(characters) - {" "})
    names = [".notdef", "space", *(f"uni{ord(c):04X}" for c in chars)]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(names)
    builder.setupCharacterMap({32: "space", **{ord(c): f"uni{ord(c):04X}" for c in chars}})
    glyphs = {}
    for name in names:
        pen = TTGlyphPen(None)
        if name != "space":
            pen.moveTo((100, 0))
            pen.lineTo((100, 700))
            pen.lineTo((500, 700))
            pen.lineTo((500, 0))
            pen.closePath()
        glyphs[name] = pen.glyph()
    builder.setupGlyf(glyphs)
    builder.setupHorizontalMetrics({name: (600, 0) for name in names})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": "RouteLLMTest", "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200)
    builder.setupPost()
    path = directory / "route-llm-test.ttf"
    builder.save(str(path))
    return path


def unicode_pdf(texts: list[str]) -> bytes:
    """One page per string, in a generated Unicode font, so any script can be tested without system fonts."""
    with tempfile.TemporaryDirectory() as tmp:
        font = unicode_font("".join(texts), Path(tmp))
        pdf = _new_pdf()
        pdf.add_font("RouteLLMTest", fname=str(font))
        pdf.set_font("RouteLLMTest", size=12)
        for text in texts:
            pdf.add_page()
            pdf.multi_cell(0, 16, text)
        return _output(pdf)


def encrypted_pdf(text: str, *, user_password: str | None) -> bytes:
    """RC4-encrypted (pypdf decrypts RC4 without optional crypto packages). ``user_password=None`` makes an
    owner-password-only file, which any reader opens without asking."""
    pdf = _new_pdf()
    pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    pdf.add_page()
    pdf.multi_cell(0, 14, text)
    return _output(pdf)


def image_only_pdf() -> bytes:
    """A page holding only a raster image, like a scan without OCR."""
    from PIL import Image  # fpdf2 depends on Pillow

    pdf = _new_pdf()
    pdf.add_page()
    pdf.image(Image.new("RGB", (64, 64), (120, 120, 120)), x=36, y=36, w=200)
    return _output(pdf)


def assemble(content: bytes, *, stream_dict: bytes = b"") -> bytes:
    """A one-page PDF around a raw content stream, with a correct xref table.

    ``stream_dict`` adds entries to the stream dictionary (e.g. ``/Filter /FlateDecode``)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d %s >>\nstream\n" % (len(content), stream_dict) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def slow_pdf(lines: int = 50_000) -> bytes:
    """A 1.5 MB file that takes pypdf seconds to extract: one page of ``lines`` text-showing operators."""
    return assemble(b"BT /F1 12 Tf 72 720 Td " + b"(lorem ipsum dolor) Tj 0 -1 Td\n" * lines + b"ET")


@functools.cache
def bomb_pdf(inflated_bytes: int = 256_000_000) -> bytes:
    """A page whose FlateDecode content stream inflates to ``inflated_bytes`` (mostly spaces).

    Compressed it is about a thousandth of that. Cached: compressing 256 MB takes a moment."""
    compressor = zlib.compressobj(9)
    head = b"BT /F1 12 Tf 72 720 Td (boom) Tj ET\n"
    parts = [compressor.compress(head)]
    chunk = b" " * 1_000_000
    remaining = inflated_bytes - len(head)
    while remaining > 0:
        piece = chunk if remaining >= len(chunk) else chunk[:remaining]
        parts.append(compressor.compress(piece))
        remaining -= len(piece)
    parts.append(compressor.flush())
    return assemble(b"".join(parts), stream_dict=b"/Filter /FlateDecode")
