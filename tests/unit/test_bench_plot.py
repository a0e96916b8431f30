"""tools/bench_plot.py: --plot writes a valid PNG whose bars are drawn in the sides' colours.

Oracle: the PNG specification (ISO/IEC 15948, W3C PNG 2nd ed.): the 8-byte signature
(5.2), chunks of length/type/data/CRC-32 over type and data (5.3), IHDR first (11.2.2:
width, height, bit depth, colour type, compression 0, filter 0, interlace), IEND last,
the IDAT stream one zlib stream (10) of scanlines each led by a filter type 0-4 (9.2),
decoded here with Python's zlib and the spec's filter algorithms (9.2-9.4, Paeth).
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

pytest.importorskip("matplotlib", reason="matplotlib comes with the venv's 'tools' extra "
                                         "(pip install -e '.[tools]')")

from bench_plot import COLOURS, plot  # noqa: E402
from bench_report import WORKLOADS, Runs  # noqa: E402

pytestmark = pytest.mark.unit

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel (11.2.2)


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack_from(">I", png, pos + 8 + length)
        assert crc == zlib.crc32(kind + data), kind
        out.append((kind, data))
        pos += 12 + length
    return out


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def pixels(png: bytes) -> tuple[int, int, int, list[bytearray]]:
    cs = chunks(png)
    assert cs[0][0] == b"IHDR" and cs[-1][0] == b"IEND"
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", cs[0][1])
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0)
    bpp = CHANNELS[colour]
    raw = zlib.decompress(b"".join(d for k, d in cs if k == b"IDAT"))
    stride = width * bpp
    assert len(raw) == height * (1 + stride)
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:][:stride])
        assert ftype in range(5)
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            pred = (0, a, b, (a + b) // 2, paeth(a, b, c))[ftype]
            line[x] = (line[x] + pred) & 0xFF
        rows.append(line)
        prev = line
    return width, height, bpp, rows


def test_plot_is_a_png_with_the_bars(tmp_path: Path) -> None:
    qd1 = next(w for w in WORKLOADS if w.name == "read-4k-qd1")
    mib = next(w for w in WORKLOADS if w.name == "read-1m-qd8")
    results = {qd1.name: {"tgtd": Runs([12_000]), "ours": Runs([9_000]),
                          "ceiling": Runs([19_000])},
               mib.name: {"tgtd": Runs([0.9]), "ours": Runs([2.0]), "ceiling": Runs([4.1])}}
    path = plot(tmp_path / "bench.png", [qd1, mib], results, "best", dpi=40)
    width, height, bpp, rows = pixels(path.read_bytes())
    assert (width, height) == (520, 192)  # two panels: figsize (13, 4.8) at 40 dpi
    seen = set()
    for row in rows:
        for x in range(0, len(row), bpp):
            seen.add(bytes(row[x:x + 3]))
    for side in ("tgtd", "ours", "ceiling"):
        assert bytes.fromhex(COLOURS[side][1:]) in seen, side
    assert bytes.fromhex(COLOURS["baseline"][1:]) not in seen  # no baseline measured
