"""Build the embedded model's text corpus, byte for byte, from one pinned package.

Source: the Debian package ``r-cran-janeaustenr`` 1.0.0-1 (Debian 12 "bookworm",
section main). It ships the full texts of Jane Austen's six completed novels
(public domain; the package itself is MIT-licensed, (c) 2016-2017 Julia Silge)
as an R lazy-load database. We read that database with the small R
deserializer below, so building needs neither R nor dpkg: only Python and a
way to get the ``.deb`` (``apt-get download``, or any Debian mirror or
snapshot.debian.org by hand, then ``--deb PATH``).

The contract is the sha256 of the normalised corpus text (``CORPUS_SHA256``):
the ``.deb`` bytes may differ between Debian rebuilds, the text may not.

Documents are chapters. Chapter i (counting across the novels in ``NOVELS``
order, title pages included as part of the first chapter) goes to the
evaluation split when i % 20 == 19, to the validation split (early stopping)
when i % 20 == 9, and to the training split otherwise: a deterministic,
interleaved split whose held-out chapters cover all six novels.

Usage: ``python tools/embedded/corpus.py [--deb PATH]`` writes
``corpus/{train,val}.txt`` (git-ignored) beside this file and ``eval.txt``
(committed) into ``harness/embedded/``, where the package finds it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import lzma
import re
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / "corpus"  # git-ignored: the .deb, train.txt, val.txt
EVAL_PATH = HERE.parents[1] / "harness" / "embedded" / "eval.txt"  # shipped with the package
CALIBRATION_PATH = HERE.parents[1] / "harness" / "embedded" / "calibration.txt"  # shipped too
CALIBRATION_CHUNKS, CALIBRATION_CHUNK_BYTES = 16, 16_384

DEB_PACKAGE = "r-cran-janeaustenr"
DEB_VERSION = "1.0.0-1"
DEB_FILE = f"{DEB_PACKAGE}_{DEB_VERSION}_all.deb"
# sha256 of the bookworm build (pool/main/r/r-cran-janeaustenr/); informative only.
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
RDATA_DIR = "./usr/lib/R/site-library/janeaustenr/data/"

# Publication order; this order fixes the corpus bytes and the chapter numbering.
NOVELS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)
CORPUS_SHA256 = "1dfc905fb2a92905edc7b1adb24f45e2f334efe0cc27cb8da61ded6abcd122cb"
SPLIT_SHA256 = {
    "train": "c2c51e0079143d4ec7256e5d5eab5b3bdc8d0cb3fddeec37cc6ebcf2b8996393",
    "val": "c943832a7d8dcf1c53c11f99bfa970fab2a9d51b0c7e76d5919b54205a492903",
    "eval": "f23c2af1efc2a10440cdd10f75dc909011dcaac2a38446d1ae92f348536cff69",
}

PARAGRAPH_SEP = "\n\n"  # paragraphs are unwrapped, so they never hold "\n"
DOCUMENT_SEP = "\n\n\n"  # between chapters in the split files
SPLIT_PERIOD = 20
EVAL_SLOT, VAL_SLOT = 19, 9
CHAPTER_RE = re.compile(r"^(CHAPTER|Chapter) ([IVXLC]+|\d+)\.?$")
VOLUME_RE = re.compile(r"^(VOLUME|Volume) ([IVXLC]+|\d+)\.?$")


# --- the .deb -------------------------------------------------------------------------


def fetch_deb(cache: Path = CACHE_DIR) -> Path:
    """Return the pinned .deb, downloading it with apt-get (Debian's own client) once."""
    path = cache / DEB_FILE
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", f"{DEB_PACKAGE}={DEB_VERSION}"], cwd=cache, check=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != DEB_SHA256:
        print(
            f"note: {path.name} sha256 {digest} differs from the bookworm build; "
            "the corpus text sha256 is still checked"
        )
    return path


def deb_members(deb: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """Read files from a .deb: an `ar` archive holding data.tar.{xz,gz,zst}."""
    blob = deb.read_bytes()
    if blob[:8] != b"!<arch>\n":
        raise ValueError(f"{deb} is not a Debian package")
    pos, data = 8, None
    while pos < len(blob):
        name = blob[pos : pos + 16].decode().strip().rstrip("/")
        size = int(blob[pos + 48 : pos + 58].decode().strip())
        if name.startswith("data.tar"):
            data = blob[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    if data is None:
        raise ValueError(f"{deb} has no data.tar member")
    if data[:6] == b"\xfd7zXZ\x00":
        data = lzma.decompress(data)
    elif data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {w: tar.extractfile(w) for w in wanted}
        if missing := [w for w, member in members.items() if member is None]:
            raise ValueError(f"{deb}: {missing} are not regular files")
        return {w: member.read() for w, member in members.items() if member is not None}


# --- R serialization (just what a lazy-loaded character vector needs) ----------------


class _RReader:
    """Minimal reader of R's XDR serialization format (versions 2 and 3)."""

    NIL, REF, SYM, LIST, CHAR, LGL, INT, REAL, STR, VEC = 254, 255, 1, 2, 9, 10, 13, 14, 16, 19

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError("not an XDR R serialization")
        self.data, self.pos = data, 2
        self.refs: list[tuple[str, Any]] = []
        version = self.int()
        self.int(), self.int()  # writer and minimal reader R versions
        if version == 3:
            n = self.int()
            self.pos += n  # skip the native encoding name

    def int(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return value

    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind == self.NIL:
            return None
        if kind == self.REF:
            return self.refs[(flags >> 8 or self.int()) - 1]
        if kind == self.SYM:
            symbol = ("symbol", self.item())
            self.refs.append(symbol)
            return symbol
        if kind == self.LIST:  # pairlist, returned as a dict keyed by tag
            if has_attr:
                self.item()  # a pairlist node's own attributes: not needed here
            tag = self.item() if has_tag else None
            out = {tag[1] if tag else 0: self.item()}
            rest = self.item()
            if isinstance(rest, dict):
                out.update(rest)
            return out
        if kind == self.CHAR:
            n = self.int()
            if n == -1:
                return None
            text = self.data[self.pos : self.pos + n].decode("utf-8")
            self.pos += n
            return text
        n = self.int()
        if kind in (self.LGL, self.INT):
            value = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == self.REAL:
            value = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (self.STR, self.VEC):
            value = [self.item() for _ in range(n)]
        else:
            raise ValueError(f"unsupported R type {kind}")
        if has_attr:
            return {"value": value, "attributes": self.item()}
        return value


def _unwrap(obj):
    return obj["value"] if isinstance(obj, dict) and "value" in obj else obj


def read_novels(deb: Path) -> dict[str, list[str]]:
    """The six novels as lists of lines, from the package's lazy-load database."""
    files = deb_members(deb, (RDATA_DIR + "Rdata.rdx", RDATA_DIR + "Rdata.rdb"))
    index = _RReader(gzip.decompress(files[RDATA_DIR + "Rdata.rdx"])).item()
    variables = _unwrap(index)[0]
    names = variables["attributes"]["names"]
    rdb = files[RDATA_DIR + "Rdata.rdb"]
    novels = {}
    for name, (offset, length) in zip(names, variables["value"]):
        blob = rdb[offset : offset + length]
        (size,) = struct.unpack(">I", blob[:4])
        raw = zlib.decompress(blob[4:])
        if len(raw) != size:
            raise ValueError(f"{name}: bad length in the R database")
        novels[name] = [line or "" for line in _unwrap(_RReader(raw).item())]
    return novels


# --- text -----------------------------------------------------------------------------


def paragraphs(lines: list[str]) -> list[str]:
    """Unwrap hard-wrapped lines into paragraphs (blank line = paragraph break)."""
    out, current = [], []
    for line in lines + [""]:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            out.append(re.sub(r" {2,}", " ", " ".join(current)))
            current = []
    return out


def chapters(paras: list[str]) -> list[list[str]]:
    """Split a novel's paragraphs at chapter and volume headings.

    A heading opens a new document unless the current one has no chapter yet, so
    the title page and "VOLUME II" stay with the chapter that follows them.
    """
    docs: list[list[str]] = [[]]
    for para in paras:
        heading = CHAPTER_RE.match(para) or VOLUME_RE.match(para)
        if heading and any(CHAPTER_RE.match(p) for p in docs[-1]):
            docs.append([])
        docs[-1].append(para)
    return docs


def build(deb: Path | None = None, cache: Path = CACHE_DIR) -> tuple[str, list[str]]:
    """Return (corpus text, chapter documents) and check the pinned sha256."""
    novels = read_novels(deb or fetch_deb(cache))
    documents = []
    for name in NOVELS:
        documents += [PARAGRAPH_SEP.join(doc) for doc in chapters(paragraphs(novels[name]))]
    text = DOCUMENT_SEP.join(documents) + "\n"
    digest = sha256(text)
    if digest != CORPUS_SHA256:
        raise RuntimeError(f"corpus sha256 {digest} != pinned {CORPUS_SHA256}")
    return text, documents


def split(documents: list[str]) -> dict[str, str]:
    """Deterministic, interleaved chapter split into train / val / eval texts."""
    parts: dict[str, list[str]] = {"train": [], "val": [], "eval": []}
    for i, doc in enumerate(documents):
        slot = i % SPLIT_PERIOD
        parts["eval" if slot == EVAL_SLOT else "val" if slot == VAL_SLOT else "train"].append(doc)
    return {k: DOCUMENT_SEP.join(v) + "\n" for k, v in parts.items()}


def calibration_slice(train: str) -> str:
    """Sixteen evenly spaced 16 KB stretches of the train split, cut at line ends: the shipped calibration set.

    Calibration data must come from the training distribution and never from the held-out split;
    16 stretches across the six novels keep one novel from deciding what a method removes.
    """
    step = len(train) // CALIBRATION_CHUNKS
    parts = []
    for i in range(CALIBRATION_CHUNKS):
        start = train.index("\n", i * step) + 1
        end = train.rindex("\n", start, start + CALIBRATION_CHUNK_BYTES) + 1
        parts.append(train[start:end])
    return DOCUMENT_SEP.join(parts)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_splits(deb: Path | None = None, cache: Path = CACHE_DIR, eval_path: Path = EVAL_PATH) -> dict:
    """Write corpus/train.txt, corpus/val.txt and eval.txt; return their digests and sizes."""
    text, documents = build(deb, cache)
    parts = split(documents)
    for name, part in parts.items():
        if sha256(part) != SPLIT_SHA256[name]:
            raise RuntimeError(f"{name} split sha256 {sha256(part)} != pinned {SPLIT_SHA256[name]}")
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val"):
        (cache / f"{name}.txt").write_text(parts[name], encoding="utf-8", newline="")
    eval_path.write_text(parts["eval"], encoding="utf-8", newline="")
    CALIBRATION_PATH.write_text(calibration_slice(parts["train"]), encoding="utf-8", newline="")
    info = {"corpus_sha256": sha256(text), "corpus_bytes": len(text.encode()), "documents": len(documents)}
    for name, part in parts.items():
        info[f"{name}_sha256"] = sha256(part)
        info[f"{name}_bytes"] = len(part.encode())
    return info


def load_splits(cache: Path = CACHE_DIR, eval_path: Path = EVAL_PATH) -> dict[str, str]:
    """Read the three splits (building them first if the cache is missing) and check them."""
    if not (cache / "train.txt").exists() or not (cache / "val.txt").exists():
        write_splits(cache=cache, eval_path=eval_path)
    paths = {"train": cache / "train.txt", "val": cache / "val.txt", "eval": eval_path}
    splits = {name: path.read_text(encoding="utf-8") for name, path in paths.items()}
    for name, text in splits.items():
        if sha256(text) != SPLIT_SHA256[name]:
            raise RuntimeError(f"{paths[name]} does not match its pinned sha256; rebuild with corpus.py")
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deb", type=Path, help="a local copy of " + DEB_FILE)
    args = parser.parse_args()
    for key, value in write_splits(args.deb).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
