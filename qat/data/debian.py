"""Text that Debian packages ship: Python and Linux kernel documentation, three dictionaries.

The ``.deb`` files are fetched with ``apt-get download NAME=VERSION`` (no install, so nothing on
the system changes and no root is needed once the package lists are there), checked against a
pinned SHA-256 and only the text files are unpacked, into ``deb_dir()/NAME_VERSION/``. Run
``python -m qat.data.debian`` (``make setup`` does) to fetch them all.
"""

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from qat.data.errors import DataError
from qat.data.text import tidy

_COMPLETE = ".complete"  # marker written last: its presence means the unpacked files are whole


@dataclass(frozen=True)
class DebPackage:
    name: str  # Debian binary package
    version: str  # pinned: another version would silently change the dataset
    sha256: str  # of the .deb, checked after download
    licence: str  # licence of the text
    description: str
    prefix: str  # folder inside the package whose files are kept
    suffixes: tuple[str, ...]  # kept file name endings
    exclude: tuple[str, ...]  # path prefixes (relative to ``prefix``) left out
    document: str  # what one document is
    kind: str  # extractor: "rst" or "dictd"


DEBIAN_PACKAGES: tuple[DebPackage, ...] = (
    DebPackage(
        "python3.11-doc",
        "3.11.2-6+deb12u9",
        "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
        "PSF License 2.0 (Python documentation)",
        "Python 3.11 documentation, reStructuredText sources",
        "usr/share/doc/python3.11/html/_sources/",
        (".rst.txt",),
        (),
        "one page",
        "rst",
    ),
    DebPackage(
        "linux-doc-6.1",
        "6.1.192-2",
        "d1d1b5a602f0d439ecc39e713e044bf2df30d839fb4bf8a7b859ba3273c47993",
        "GPL-2.0 (some pages GPL-2.0 OR CC-BY-4.0)",
        "Linux kernel 6.1 documentation, reStructuredText sources (English only)",
        "usr/share/doc/linux-doc-6.1/html/_sources/",
        (".rst.txt",),
        ("translations/",),
        "one page",
        "rst",
    ),
    DebPackage(
        "dict-gcide",
        "0.48.5+nmu2",
        "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
        "GPL-3.0-or-later (GCIDE, from Webster's 1913, public domain)",
        "GNU Collaborative International Dictionary of English",
        "usr/share/dictd/",
        ("gcide.index", "gcide.dict.dz"),
        (),
        "one dictionary entry",
        "dictd",
    ),
    DebPackage(
        "dict-jargon",
        "4.4.7-3.1",
        "405f8168d7994ed2cb71407bb95493daec2e9aa66fc0461dafa74a9d6728a8c1",
        "public domain",
        "The Jargon File 4.4.7",
        "usr/share/dictd/",
        ("jargon.index", "jargon.dict.dz"),
        (),
        "one entry",
        "dictd",
    ),
    DebPackage(
        "dict-devil",
        "1.0-13.1",
        "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154",
        "public domain",
        "Ambrose Bierce, The Devil's Dictionary (1911)",
        "usr/share/dictd/",
        ("devil.index", "devil.dict.dz"),
        (),
        "one entry",
        "dictd",
    ),
)


def deb_dir() -> Path:
    """``$QAT_DEB_DIR``, else ``$XDG_CACHE_HOME/qat/debs`` (``~/.cache/qat/debs``)."""
    if root := os.environ.get("QAT_DEB_DIR"):
        return Path(root).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "qat" / "debs"


def package_dir(package: DebPackage) -> Path:
    return deb_dir() / f"{package.name}_{package.version}"


def fetch_command(package: DebPackage | None = None) -> str:
    return "python -m qat.data.debian" + (f" {package.name}" if package else "")


def package_files(package: DebPackage) -> list[Path]:
    """The package's unpacked text files, sorted; DataError says how to fetch them if missing."""
    folder = package_dir(package)
    if not (folder / _COMPLETE).is_file():
        raise DataError(
            f"corpus needs Debian package {package.name}={package.version} "
            f"({package.description}) unpacked in {folder}; run: {fetch_command(package)}"
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != _COMPLETE)
    if not files:
        raise DataError(f"{folder} holds no files; delete it and run: {fetch_command(package)}")
    return files


def _keep(package: DebPackage, member: str) -> str | None:
    """Path of ``member`` relative to the package prefix if it is kept, else None."""
    name = member.removeprefix("./")
    if not name.startswith(package.prefix):
        return None
    rel = name[len(package.prefix) :]
    if not rel.endswith(package.suffixes) or rel.startswith(package.exclude):
        return None
    return rel


def _download(package: DebPackage, into: Path) -> Path:
    spec = f"{package.name}={package.version}"
    for attempt in range(2):
        run = subprocess.run(
            ["apt-get", "download", "-q", spec], cwd=into, capture_output=True, text=True
        )
        if run.returncode == 0:
            break
        # A fresh machine may have no package lists yet; root can fetch them once.
        if attempt == 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            continue
        raise DataError(
            f"apt-get download {spec} failed ({run.stderr.strip().splitlines()[-1:]}); "
            "run 'apt-get update' as root and retry"
        )
    debs = list(into.glob("*.deb"))
    if len(debs) != 1:
        raise DataError(f"apt-get download {spec} left {len(debs)} .deb files in {into}")
    digest = hashlib.sha256(debs[0].read_bytes()).hexdigest()
    if digest != package.sha256:
        raise DataError(
            f"{debs[0].name} has SHA-256 {digest}, expected {package.sha256}: "
            "not the pinned package"
        )
    return debs[0]


def fetch(package: DebPackage) -> Path:
    """Download, check and unpack the package's text files (no work if already there)."""
    folder = package_dir(package)
    if (folder / _COMPLETE).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = folder.parent / f".{folder.name}.build-{uuid.uuid4().hex}"
    try:
        with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
            deb = _download(package, Path(tmp))
            build.mkdir()
            # dpkg-deb streams the data tarball whatever its compression; only text is kept.
            with subprocess.Popen(
                ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE
            ) as proc:
                assert proc.stdout is not None
                with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                    for member in tar:
                        rel = _keep(package, member.name) if member.isfile() else None
                        if rel is None:
                            continue
                        target = build / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        source = tar.extractfile(member)
                        assert source is not None
                        target.write_bytes(source.read())
            if proc.returncode != 0:
                raise DataError(f"dpkg-deb --fsys-tarfile {deb.name} failed")
        (build / _COMPLETE).write_text(f"{package.name}={package.version}\n", encoding="utf-8")
        if folder.exists():  # a half-unpacked folder of an older layout
            shutil.rmtree(folder)
        build.rename(folder)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return folder


# reStructuredText lines that are not text: link targets, licence tags, includes.
_RST_NOISE = re.compile(
    r"^\.\. (_[^:]+:|SPDX-License-Identifier:.*|include::.*|highlight::.*)\s*$", re.MULTILINE
)


def _rst_pages(files: list[Path]) -> Iterator[str]:
    for path in files:
        yield _RST_NOISE.sub("", path.read_text(encoding="utf-8", errors="replace"))


# dictd writes offsets and lengths as base-64 numbers in this digit order.
_B64_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64 = {c: i for i, c in enumerate(_B64_DIGITS)}
# GCIDE's per-sense source tags ("[1913 Webster]", "[PJC]", "[WordNet 1.5]"): any bracketed
# note alone on its line, and the common tags also where text follows on the same line.
_SOURCE_TAG = re.compile(
    r"^[ \t]*\[[^\]\n]{1,40}\][ \t]*$"
    r"|\[(?:1913 Webster|Webster 1913 Suppl\.|WordNet 1\.5|PJC|Century Dict\.)\][ \t]*",
    re.MULTILINE,
)


def _b64(number: str) -> int:
    value = 0
    for char in number:
        value = value * 64 + _B64[char]
    return value


def _dictd_entries(files: list[Path]) -> Iterator[str]:
    """Entries of a dictd database (``NAME.index`` + ``NAME.dict.dz``) in file order, once each.

    The index maps every headword to an (offset, length) of the dictionary text; several
    headwords may share one entry. Database metadata (``00-database-*``) is skipped.
    """
    index = next(p for p in files if p.name.endswith(".index"))
    data = gzip.decompress(next(p for p in files if p.name.endswith(".dict.dz")).read_bytes())
    spans = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith(("00-database", "00database", "00-gcide")):
            continue
        if parts[0].startswith("00-"):  # other metadata entries of GCIDE (00-web1913-info ...)
            continue
        spans.add((_b64(parts[1]), _b64(parts[2])))
    for offset, length in sorted(spans):
        raw = data[offset : offset + length]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # a few GCIDE entries are Windows-1252
            text = raw.decode("cp1252", errors="replace")
        yield _SOURCE_TAG.sub("", text)


_EXTRACTORS: dict[str, Callable[[list[Path]], Iterator[str]]] = {
    "rst": _rst_pages,
    "dictd": _dictd_entries,
}


def debian_documents(package: DebPackage) -> Iterator[str]:
    """Clean documents of one Debian package, in a fixed order."""
    for doc in _EXTRACTORS[package.kind](package_files(package)):
        text = tidy(doc)
        if text:
            yield text


def check_debian() -> None:
    for package in DEBIAN_PACKAGES:
        package_files(package)


def iter_debian() -> Iterator[str]:
    for package in DEBIAN_PACKAGES:
        yield from debian_documents(package)


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    known = {p.name: p for p in DEBIAN_PACKAGES}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"error: unknown package(s) {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    try:
        for package in [known[n] for n in names] or DEBIAN_PACKAGES:
            print(f"{package.name}={package.version} -> {fetch(package)}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
