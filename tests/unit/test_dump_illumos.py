"""illumos crash dumps (target.dump.illumos, target.dump.lzjb) against oracles we did not
write: an independent LZJB implementation (npm `lzjb` 0.0.4, C. Scott Ananian's port of
the same item format; its size prefix stripped/added and its documented C_COMPAT switch
on, so it never emits offset 0, which illumos decompress() cannot read), the C compiler's
own layout of the dumphdr.h structs for amd64 and i386, and the layout rules of
savecore.c (build_corefile(), copy_crashfile(), read_dumphdr()) and dumpsubr.c
(dumpsys()) as written in those sources.

The npm package is installed at test time into $XDG_CACHE_HOME/scsi-target/lzjb-js
(~/.cache if unset); without node and npm (`make test` installs Debian nodejs npm) or
without network for the first install, the cross-check skips and says so.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from target.dump import illumos as ILL
from target.dump import lzjb

pytestmark = pytest.mark.unit
PAGE = 4096
ROOT = Path(__file__).resolve().parents[2]

# --- lzjb ----------------------------------------------------------------------------------


def test_lzjb_decodes_the_example_of_compress_c():
    """compress.c's header comment: "0x40 y a d d a _ 0x2006 , 0x20 _ b l a h 0x1c05"."""
    enc = bytes([0x40]) + b"yadda_" + bytes([0x20, 0x06]) + b"," + bytes([0x20]) + \
        b"_blah" + bytes([0x1C, 0x05])
    assert lzjb.decompress(enc, 33) == b"yadda_yadda_yadda,_blah_blah_blah"


def test_lzjb_stores_what_does_not_shrink():
    """compress.c: compress() copies the source and returns s_len when the output would not
    be shorter; decompress() copies when s_len >= d_len (the page csize == pagesize)."""
    page = random.Random(1).randbytes(PAGE)
    assert lzjb.compress(page) == page
    assert lzjb.decompress(page, PAGE) == page
    assert lzjb.compress(b"ab") == b"ab"


def _samples() -> list[bytes]:
    rng = random.Random(20261107)
    text = (ROOT / "README.md").read_bytes()
    out = [bytes(PAGE), bytes(8192), b"\xff" * 1000, text[:PAGE], text[1000:9192]]
    for n in [1, 2, 3, 17, 18, 19, 66, 67, 100, 1023, 1024, 1025, 3000, 5000, 8192]:
        out.append(bytes(rng.choice(b"abc \0") for _ in range(n)))
    for _ in range(12):                        # page-like: structs, pointers, zero tails
        n = rng.choice([PAGE, PAGE, rng.randint(1, 8192)])
        rec = struct.pack("<QQII", 0xFFFFFE0000000000 + rng.randrange(1 << 30),
                          rng.randrange(1 << 20), rng.randrange(99), 0)
        body = bytearray()
        while len(body) < n:
            body += rec if rng.random() < 0.6 else rng.randbytes(rng.randint(1, 40))
            if rng.random() < 0.1:
                body += bytes(rng.randint(1, 600))
        out.append(bytes(body[:n]))
    for _ in range(6):                         # random with repeats (compressible)
        chunk = rng.randbytes(rng.randint(3, 300))
        out.append((chunk * (PAGE // len(chunk) + 1))[:rng.randint(1, 8192)])
    out += [rng.randbytes(n) for n in (1, 100, PAGE, 8192)]
    return out


ORACLE_JS = r"""
const fs = require('fs'), path = require('path'), Module = require('module');
const req = JSON.parse(fs.readFileSync(0, 'utf8'));
const file = require.resolve('lzjb/lib/Iuppiter.js', {paths: [req.root]});
const text = fs.readFileSync(file, 'utf8');
const patched = text.replace('var C_COMPAT = false;', 'var C_COMPAT = true;');
if (patched === text) throw new Error('C_COMPAT switch not found in ' + file);
const m = new Module(file, module);
m.filename = file;
m.paths = Module._nodeModulePaths(path.dirname(file));
m._compile(patched, file);
const L = m.exports;
function prefix(n) {  // the package's size prefix: n + 1 in 7-bit groups, last one | 0x80
  const g = []; let v = n + 1;
  do { g.push(v & 0x7f); v = Math.floor(v / 128); } while (v !== 0);
  g[0] |= 0x80; return Buffer.from(g.reverse());
}
const out = {compressed: [], decompressed: []};
for (const h of req.compress) {
  const src = Buffer.from(h, 'hex');
  const c = Buffer.from(L.compressFile(src));
  out.compressed.push(c.subarray(prefix(src.length).length).toString('hex'));
}
for (const [h, n] of req.decompress) {
  const c = Buffer.concat([prefix(n), Buffer.from(h, 'hex')]);
  out.decompressed.push(Buffer.from(L.decompressFile(c)).toString('hex'));
}
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def lzjb_js() -> Path:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("needs node and npm (`make test` installs Debian packages nodejs npm)")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = cache / "scsi-target" / "lzjb-js"
    if not (root / "node_modules" / "lzjb" / "package.json").exists():
        proc = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix",
                               str(root), "lzjb@0.0.4"], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode:
            pytest.skip("npm install lzjb@0.0.4 failed (`make deps-test` installs it): "
                        f"{proc.stderr[-300:]}")
    return root


def test_lzjb_against_an_independent_implementation(lzjb_js):
    """Both directions on varied data: their compress -> our decompress, our compress ->
    their decompress. A case only crosses where the encoding is the item stream (shorter
    than the source): compress.c stores longer results raw, which is checked above."""
    samples = _samples()
    ours = [lzjb.compress(s) for s in samples]
    req = {"root": str(lzjb_js), "compress": [s.hex() for s in samples],
           "decompress": [[c.hex(), len(s)] for c, s in zip(ours, samples, strict=True)
                          if len(c) < len(s)]}
    proc = subprocess.run(["node", "-e", ORACLE_JS], input=json.dumps(req),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    theirs = [bytes.fromhex(h) for h in res["compressed"]]
    crossed = 0
    for s, t in zip(samples, theirs, strict=True):
        if len(t) < len(s):
            assert lzjb.decompress(t, len(s)) == s, (len(s), s[:40])
            crossed += 1
    assert crossed >= 28                       # all but the short and the random ones
    shrunk = [s for c, s in zip(ours, samples, strict=True) if len(c) < len(s)]
    assert len(shrunk) >= 28
    for s, d in zip(shrunk, res["decompressed"], strict=True):
        assert bytes.fromhex(d) == s, (len(s), s[:40])


# --- layouts against the C compiler ------------------------------------------------------

C_STRUCTS = r"""
/* sys/dumphdr.h, sys/utsname.h (SYS_NMLN 257), sys/mem.h, sys/types.h typedefs;
 * built-in types only, so that no libc headers (no multilib) are needed for -m32. */
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef long long offset_t;
typedef unsigned long ulong_t;
typedef ulong_t pgcnt_t;
typedef ulong_t pfn_t;
typedef unsigned long size_t;
typedef unsigned long uintptr_t;
typedef long time_t;
struct as;
struct utsname { char sysname[257]; char nodename[257]; char release[257];
                 char version[257]; char machine[257]; };
typedef struct dumphdr {
    uint32_t dump_magic; uint32_t dump_version; uint32_t dump_flags; uint32_t dump_wordsize;
    offset_t dump_start; offset_t dump_ksyms; offset_t dump_pfn; offset_t dump_map;
    offset_t dump_data; struct utsname dump_utsname; char dump_platform[257];
    char dump_panicstring[200]; time_t dump_crashtime; long dump_pageshift;
    long dump_pagesize; long dump_hashmask; long dump_nvtop; pgcnt_t dump_npages;
    size_t dump_ksyms_size; size_t dump_ksyms_csize; uint32_t dump_fm_panic;
    char dump_uuid[36 + 1];
} dumphdr_t;
typedef struct dump_map { offset_t dm_first; offset_t dm_next; offset_t dm_data;
                          struct as *dm_as; uintptr_t dm_va; } dump_map_t;
typedef struct dumpstreamhdr { char stream_magic[8]; pgcnt_t stream_pagenum;
                               pgcnt_t stream_npages; } dumpstreamhdr_t;
typedef struct dumpdatahdr {
    uint32_t dump_datahdr_magic; uint32_t dump_datahdr_version; uint64_t dump_data_csize;
    uint32_t dump_maxcsize; uint32_t dump_maxrange; uint16_t dump_nstreams;
    uint16_t dump_clevel; uint32_t dump_metrics;
} dumpdatahdr_t;
typedef struct mem_vtop { struct as *m_as; void *m_va; pfn_t m_pfn; } mem_vtop_t;
"""
C_NAMES = {"utsname": "struct utsname", "dumphdr": "dumphdr_t", "dumpdatahdr": "dumpdatahdr_t",
           "dumpstreamhdr": "dumpstreamhdr_t", "mem_vtop": "mem_vtop_t",
           "dump_map": "dump_map_t"}


def _gcc_layout(tmp_path: Path, flag: str) -> list[int]:
    items = []
    for name, fields in ILL.STRUCTS.items():
        items.append(f"sizeof({C_NAMES[name]})")
        items += [f"__builtin_offsetof({C_NAMES[name]}, {f})" for f, _ in fields]
    src = tmp_path / "layout.c"
    src.write_text(C_STRUCTS + "const unsigned int layout[] = {\n  " + ",\n  ".join(items)
                   + "\n};\n")
    proc = subprocess.run(["gcc", flag, "-S", "-o", "-", str(src)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [int(v, 0) for v in re.findall(r"^\s*\.long\s+(\S+)", proc.stdout, re.M)]


@pytest.mark.parametrize("word,flag", [(64, "-m64"), (32, "-m32")])
def test_layouts_match_the_c_compiler(tmp_path, word, flag):
    """sizeof and offsetof of every field of dumphdr_t, dumpdatahdr_t, dumpstreamhdr_t,
    dump_map_t, mem_vtop_t and struct utsname, as gcc lays them out for amd64 (-m64) and
    i386 (-m32: only compiled to assembly, so no multilib libc is needed)."""
    if not shutil.which("gcc"):
        pytest.skip("needs gcc (`make venv` installs it: DEB_VENV)")
    got = _gcc_layout(tmp_path, flag)
    want = []
    for name in ILL.STRUCTS:
        lay = ILL._c_layout(name, word)
        want.append(lay.size)
        want += [lay.offsets[f] for f, _ in ILL.STRUCTS[name]]
        assert lay.struct.sizeof() == lay.size
    assert got == want
    assert ILL.LAYOUTS[word].dumphdr.size == (1912 if word == 64 else 1876)


# --- dumps: written as dumpsys() does, saved as savecore does ---------------------------


def page_like(n: int, seed: int = 7) -> bytes:
    """Pages as kernels have them: zero pages, sparse structs, text, a few random."""
    rng = random.Random(seed)
    out = bytearray()
    for i in range(n):
        k = i % 10
        if k < 3:
            out += bytes(PAGE)
        elif k < 8:
            rec = struct.pack("<QQ", 0xFFFFFE0000000000 + i * PAGE, i)
            out += (rec * rng.randint(1, 60) + b"kmem_cache proc_t %d" % i).ljust(PAGE, b"\0")
        elif k == 8:
            out += (b"panic[cpu0]/thread=%x: forced crash dump " % i * 110)[:PAGE]
        else:
            out += rng.randbytes(PAGE)
    assert len(out) == n * PAGE
    return bytes(out)


def make_device(path: Path, size: int, pages: bytes, **kw) -> list[tuple[int, bytes]]:
    pieces = ILL.illumos_dump_image(size, pages, panic=kw.pop("panic", "forced crash dump "
                                    "initiated at user request"), **kw)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, piece in pieces:
            f.seek(off)
            f.write(piece)
    return pieces


def inspect_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "target", "dump", "inspect", *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def check_vmcore(core: Path, unix: Path, pages: bytes, pfns: list[int], ksyms: bytes,
                 word: int = 64) -> None:
    """build_corefile(): the header at 0 without DF_COMPRESSED, the symbol table at
    pagesize, dump_pfn = dump_ksyms + roundup(ksyms_size), dump_map = dump_pfn +
    roundup(npages * sizeof (pfn_t)), dump_data = dump_map + roundup((hashmask + 1) *
    sizeof (dump_map_t)), page n at dump_data + n * pagesize; unix.N the symbol table;
    the map's DUMP_HASH chains lead from (as, va) to the page."""
    lay = ILL.LAYOUTS[word]
    raw = core.read_bytes()
    h = lay.dumphdr.struct.parse(raw)
    npages = len(pages) // PAGE
    psz, msz = (8, 40) if word == 64 else (4, 32)          # sizeof pfn_t, dump_map_t
    up = lambda x: -(-x // PAGE) * PAGE  # noqa: E731
    assert h.dump_magic == ILL.DUMP_MAGIC and not h.dump_flags & ILL.DF_COMPRESSED
    assert h.dump_ksyms == PAGE and raw[PAGE:PAGE + len(ksyms)] == ksyms
    assert h.dump_pfn == PAGE + up(len(ksyms))
    assert h.dump_map == h.dump_pfn + up(npages * psz)
    assert h.dump_data == h.dump_map + up((h.dump_hashmask + 1) * msz)
    fmt = "<Q" if word == 64 else "<I"
    assert [struct.unpack_from(fmt, raw, h.dump_pfn + i * psz)[0]
            for i in range(npages)] == pfns
    data = raw[h.dump_data:h.dump_data + len(pages)]
    for i in range(npages):
        assert data[i * PAGE:(i + 1) * PAGE] == pages[i * PAGE:(i + 1) * PAGE], f"page {i}"
    assert unix.read_bytes() == ksyms
    # mdb's lookup: bucket DUMP_HASH(as, va), follow dm_first/dm_next to the entry
    for i in (0, npages // 2, npages - 1):
        entry_fmt = "<qqqQQ" if word == 64 else "<qqqII"
        as_ = 0xFFFFFFFFFBC3A8C0 if word == 64 else 0xFEC3A8C0
        va = (0xFFFFFE0000000000 if word == 64 else 0xD4000000) + i * PAGE
        b = ((as_ >> 3) + (va >> 12)) & h.dump_hashmask
        at = struct.unpack_from(entry_fmt, raw, h.dump_map + b * msz)[0]
        while at:
            _first, nxt, dm_data, dm_as, dm_va = struct.unpack_from(entry_fmt, raw, at)
            if (dm_as, dm_va) == (as_, va):
                break
            at = nxt
        assert at, f"no map entry for page {i}"
        assert dm_data == h.dump_data + i * PAGE


@pytest.mark.parametrize("compression", ["lzjb", "bzip2", "lzjb-serial"])
def test_compressed_dump_on_a_small_device_expands_page_for_page(tmp_path, compression):
    """dumpsys() layout on a device far smaller than the pages (DF_COMPRESSED); `dump
    inspect --expand` writes unix.N and vmcore.N with every page as written."""
    size = 8 << 20
    pages = page_like(3000)                    # 11.7 MiB of pages on an 8 MiB device
    pfns = [0x200 + i + (i // 700) * 333 for i in range(3000)]  # gaps: several ranges
    ksyms = b"\x7fELF" + bytes(range(256)) * 20
    dev = tmp_path / "dev.img"
    make_device(dev, size, pages, compression=compression, pfns=pfns, ksyms=ksyms,
                nstreams=3)
    proc = inspect_cli(dev, "--expand", tmp_path / "crash", "--json")
    assert proc.returncode == 0, proc.stderr
    (found,) = json.loads(proc.stdout)
    assert found["details"]["compressed"] and found["size"] == len(pages)
    assert found["details"]["clevel"] == {"lzjb-serial": 0, "lzjb": 1, "bzip2": 2}[compression]
    names = [Path(f["name"]).name for f in found["details"]["files"]]
    assert names == ["unix.0", "vmcore.0"]
    assert (tmp_path / "crash" / "bounds").read_text() == "1\n"   # savecore: bounds + 1
    check_vmcore(tmp_path / "crash" / "vmcore.0", tmp_path / "crash" / "unix.0", pages,
                 pfns, ksyms)
    text = inspect_cli(dev, "--expand", tmp_path / "crash")
    assert text.returncode == 0 and "vmcore.1 (" in text.stdout, text.stderr


def test_extract_writes_vmdump_that_expands_like_savecore_f(tmp_path):
    """copy_crashfile(): vmdump.N (N from bounds) is a compressed dump laid out like a
    device: dump_start 0, sections page-aligned, the header and data header at a 64 KiB
    boundary followed by padding to the next; `savecore -f vmdump.N` expands it into
    unix.N / vmcore.N with N from the name, bounds untouched."""
    size = 8 << 20
    pages = page_like(700, seed=3)
    pfns = list(range(0x1000, 0x1000 + 700))
    dev = tmp_path / "dev.img"
    make_device(dev, size, pages, pfns=pfns, ksyms=b"symbols" * 100)
    save = tmp_path / "crash"
    save.mkdir()
    (save / "bounds").write_text("4\n")
    proc = inspect_cli(dev, "--extract", save)
    assert proc.returncode == 0, proc.stderr
    vmdump = save / "vmdump.4"
    assert f"wrote {vmdump} ({vmdump.stat().st_size} bytes)" in proc.stdout
    assert (save / "bounds").read_text() == "5\n"
    raw = vmdump.read_bytes()
    h = ILL.LAYOUTS[64].dumphdr.struct.parse(raw)
    assert h.dump_start == 0 and h.dump_flags & ILL.DF_COMPRESSED and h.dump_flags & 1
    assert len(raw) % ILL.DUMP_OFFSET == 0 and raw[len(raw) - ILL.DUMP_OFFSET:][:1912] == \
        raw[:1912]
    assert len(raw) < len(pages)
    proc = inspect_cli(vmdump, "--expand", save)
    assert proc.returncode == 0, proc.stderr
    assert (save / "bounds").read_text() == "5\n"
    check_vmcore(save / "vmcore.4", save / "unix.4", pages, pfns, b"symbols" * 100)


def test_32_bit_dump_is_read_with_the_ilp32_layout(tmp_path):
    """dump_wordsize 32: the i386 layouts (checked against gcc -m32 above)."""
    pages = page_like(300, seed=5)
    dev = tmp_path / "dev.img"
    make_device(dev, 4 << 20, pages, wordsize=32, ksyms=b"k" * 5000)
    proc = inspect_cli(dev, "--expand", tmp_path / "c", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["details"]["wordsize"] == 32
    check_vmcore(tmp_path / "c" / "vmcore.0", tmp_path / "c" / "unix.0", pages,
                 list(range(0x100, 0x100 + 300)), b"k" * 5000, word=32)


def test_incomplete_dump_warns_and_still_expands(tmp_path):
    """savecore main(): no DF_COMPLETE is "incomplete dump on dump device", a warning."""
    pages = page_like(200)
    dev = tmp_path / "dev.img"
    make_device(dev, 4 << 20, pages, complete=False, ksyms=b"s" * 10)
    proc = inspect_cli(dev, "--expand", tmp_path / "c", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "warning: incomplete dump on dump device" in proc.stderr
    (found,) = json.loads(proc.stdout)
    assert found["details"]["complete"] is False
    check_vmcore(tmp_path / "c" / "vmcore.0", tmp_path / "c" / "unix.0", pages,
                 list(range(0x100, 0x100 + 200)), b"s" * 10)


def test_corrupt_initial_header_is_refused_naming_it(tmp_path):
    """read_dumphdr(): the initial header differs from the terminal one -> "initial dump
    header corrupt" (savecore exits)."""
    dev = tmp_path / "dev.img"
    make_device(dev, 4 << 20, page_like(20))
    at = ILL.DUMP_OFFSET + ILL.LAYOUTS[64].dumphdr.offsets["dump_panicstring"]
    with open(dev, "r+b") as f:
        f.seek(at)
        f.write(b"X")
    proc = inspect_cli(dev, "--expand", tmp_path / "c")
    assert proc.returncode == 1
    assert "initial dump header corrupt" in proc.stderr
    assert f"dump_panicstring at {at}" in proc.stderr
    assert not (tmp_path / "c" / "vmcore.0").exists()


def test_wrong_version_is_refused(tmp_path):
    """read_dumphdr(): dump_version != DUMP_VERSION (10) -> refused, naming the field."""
    size = 4 << 20
    dev = tmp_path / "dev.img"
    make_device(dev, size, page_like(20))
    end = ILL.header_position(size)
    with open(dev, "r+b") as f:
        for off in (ILL.DUMP_OFFSET, end):
            f.seek(off + 4)
            f.write(struct.pack("<I", 9))
    proc = inspect_cli(dev, "--json")
    assert proc.returncode == 1
    assert f"at {end + 4}: dump_version 9 is not DUMP_VERSION 10" in proc.stderr


def test_a_dump_of_tens_of_mib_streams_in_bounded_memory(tmp_path):
    """The pages are decompressed record by record: expanding 24 MiB of pages peaks (by
    tracemalloc) at a small fraction of that."""
    n = 6144
    pages = page_like(n)
    dev = tmp_path / "dev.img"
    make_device(dev, 16 << 20, pages, compression="lzjb", nstreams=4, ksyms=b"k" * 100)
    del pages
    with open(dev, "rb") as f, open(tmp_path / "vmcore", "wb") as core, \
            open(tmp_path / "unix", "wb") as unix:
        dump = ILL.read_dump(f, 16 << 20)
        tracemalloc.start()
        try:
            saved = ILL.write_vmcore(f, dump, core, unix)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert saved == n and not dump.warnings
    assert peak < 3 << 20 <= (n * PAGE) // 8, peak  # two 1 MiB read buffers at most
    raw = (tmp_path / "vmcore").read_bytes()
    h = ILL.LAYOUTS[64].dumphdr.struct.parse(raw)
    want = page_like(n)
    assert raw[h.dump_data:] == want


def test_a_corrupt_stream_word_is_refused_naming_its_offset(tmp_path):
    """decompress_pages(): a dumpcsize_t whose tag is not one of dump_nstreams' streams is
    not data this dump holds; the error names the word's offset (dump_data here)."""
    size = 4 << 20
    dev = tmp_path / "dev.img"
    make_device(dev, size, page_like(50), nstreams=2)
    with open(dev, "rb") as f:
        dump = ILL.read_dump(f, size)
    with open(dev, "r+b") as f:
        f.seek(dump.data)
        f.write(struct.pack("<I", (7 << 20) | 100))      # tag 7 of 2 streams
    proc = inspect_cli(dev, "--expand", tmp_path / "c")
    assert proc.returncode == 1
    assert f"dump data at {dump.data}: stream tag 7 not in 1..dump_nstreams 2" in proc.stderr


def test_a_truncated_lzjb_page_is_refused_naming_its_offset(tmp_path):
    """Serial lzjb (clevel 0): a page record whose lzjb data ends early decodes to fewer
    than pagesize bytes (compress.c decompress() stops at the end of its source); the
    error names the record."""
    size = 4 << 20
    dev = tmp_path / "dev.img"
    pages = page_like(30)
    make_device(dev, size, pages, compression="lzjb-serial")
    with open(dev, "rb") as f:
        dump = ILL.read_dump(f, size)
        f.seek(dump.data)
        (csize,) = struct.unpack("<I", f.read(4))
    assert 0 < csize < PAGE                              # page 0 (zeros) compresses
    with open(dev, "r+b") as f:
        f.seek(dump.data)
        f.write(struct.pack("<I", 2))                    # 2 of its csize bytes
    proc = inspect_cli(dev, "--expand", tmp_path / "c")
    assert proc.returncode == 1
    assert f"dump data at {dump.data + 4}: lzjb gave" in proc.stderr


def test_an_uncompressed_dump_without_a_data_header_expands(tmp_path):
    """Old dumps (dumpsys() before parallel compression): DF_COMPRESSED clear, no data
    header after the terminal header (read_dumphdr() zeroes it, maxcsize = pagesize), the
    pages stored as they are at dump_data."""
    size = 4 << 20
    pages = page_like(100, seed=11)
    pfns = list(range(0x100, 0x100 + 100))
    dev = tmp_path / "dev.img"
    pieces = make_device(dev, size, pages, compression="lzjb-serial", ksyms=b"u" * 99)
    lay = ILL.LAYOUTS[64]
    at = lay.dumphdr.offsets["dump_flags"]
    with open(dev, "r+b") as f:
        dump = ILL.read_dump(f, size)
        for off, _piece in pieces:
            if off in (dump.start, dump.header_offset):  # both headers: clear DF_COMPRESSED
                f.seek(off + at)
                (flags,) = struct.unpack("<I", f.read(4))
                f.seek(off + at)
                f.write(struct.pack("<I", flags & ~ILL.DF_COMPRESSED))
        f.seek(dump.header_offset + lay.dumphdr.size)
        f.write(bytes(lay.datahdr.size))                 # no data header
        f.seek(dump.data)
        f.write(pages)                                   # the pages as they are
    proc = inspect_cli(dev, "--expand", tmp_path / "c", "--json")
    assert proc.returncode == 0, proc.stderr
    (found,) = json.loads(proc.stdout)
    assert found["details"]["compressed"] is False
    check_vmcore(tmp_path / "c" / "vmcore.0", tmp_path / "c" / "unix.0", pages, pfns,
                 b"u" * 99)


# dumphdr_t's fields as illumos-gate declares them (usr/src/uts/common/sys/dumphdr.h,
# typedef struct dumphdr), transcribed here independently of DUMPHDR_FIELDS.
DUMPHDR_T = ("dump_magic", "dump_version", "dump_flags", "dump_wordsize", "dump_start",
             "dump_ksyms", "dump_pfn", "dump_map", "dump_data", "dump_utsname",
             "dump_platform", "dump_panicstring", "dump_crashtime", "dump_pageshift",
             "dump_pagesize", "dump_hashmask", "dump_nvtop", "dump_npages", "dump_ksyms_size",
             "dump_ksyms_csize", "dump_fm_panic", "dump_uuid")


def test_every_dumphdr_field_is_a_declared_attribute(tmp_path):
    """IllumosDump.X is dump_X of the terminal header, for every field of dumphdr_t, and
    declared in the class (no dynamic __getattr__): a name outside dumphdr_t is not one."""
    assert [n for n, _ in ILL.DUMPHDR_FIELDS] == list(DUMPHDR_T)
    assert "__getattr__" not in vars(ILL.IllumosDump)
    dev = tmp_path / "dev.img"
    size = 4 << 20
    make_device(dev, size, page_like(40), panic="declared fields")
    with open(dev, "rb") as f:
        dump = ILL.read_dump(f, size)
    for name in DUMPHDR_T:
        short = name.removeprefix("dump_")
        assert short in vars(ILL.IllumosDump), short
        assert getattr(dump, short) == dump.header[name], short
    assert dump.magic == ILL.DUMP_MAGIC and dump.version == ILL.DUMP_VERSION
    assert dump.panicstring == "declared fields" and dump.npages == 40
    with pytest.raises(AttributeError):
        dump.datahdr_magic  # noqa: B018 (a dumpdatahdr_t field, not the dump header's)
