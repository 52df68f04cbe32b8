"""Turn a source string into a stream of plain-text documents.

A source is one of:

* ``"bundled"`` — the public-domain / CC BY-SA text shipped by the packages in ``BUNDLED_PACKAGES``;
* ``"bundled-large"`` — the bundled text plus the documentation and dictionaries that the Debian
  packages in ``DEBIAN_PACKAGES`` ship (fetched with ``python -m qat.data.debian``);
* a path to a file, or to a folder searched recursively in sorted path order (hidden files and
  folders skipped), of ``*.txt`` / ``*.md`` files (one document each, or several separated by a
  line holding only ``<|endoftext|>``), ``*.jsonl`` files (one object with a ``"text"`` string
  per line) and ``*.json`` files (a list of strings);
* ``"hf:<dataset name>[:split[:field]]"`` — a Hugging Face dataset, streamed (split defaults to
  ``train``, field to ``text``); needs the optional ``datasets`` package.
"""

import importlib.util
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from qat.data.bundled import BUNDLED_PACKAGES, check_bundled, iter_bundled
from qat.data.debian import DEBIAN_PACKAGES, check_debian, iter_debian
from qat.data.errors import DataError
from qat.data.text import tidy
from qat.data.tokenizer import EOT

__all__ = [
    "BUNDLED_LARGE",
    "BUNDLED_PACKAGES",
    "DEBIAN_PACKAGES",
    "SUFFIXES",
    "check_source",
    "iter_documents",
]

BUNDLED_LARGE = "bundled-large"
# Literal sources that name a packaged corpus rather than a path.
PACKAGED_SOURCES = ("bundled", BUNDLED_LARGE)

SUFFIXES = (".txt", ".md", ".jsonl", ".json")
_DOC_SEPARATOR = re.compile(rf"^{re.escape(EOT)}[ \t]*$", re.MULTILINE)


def check_source(source: str) -> None:
    """DataError unless ``source`` is something :func:`iter_documents` can read; reads nothing."""
    if source == "bundled":
        check_bundled()
        return
    if source == BUNDLED_LARGE:
        check_bundled()
        check_debian()
        return
    if source.startswith("hf:"):
        _parse_hf(source)
        if importlib.util.find_spec("datasets") is None:
            raise DataError(
                f"source {source!r} needs the Hugging Face 'datasets' package: pip install datasets"
            )
        return
    path = Path(source).expanduser()
    if path.is_file() and path.suffix not in SUFFIXES:
        raise DataError(f"file {path} has suffix {path.suffix!r}; allowed: {', '.join(SUFFIXES)}")
    if not path.exists():
        raise DataError(
            f"source {source!r} is not 'bundled', '{BUNDLED_LARGE}', "
            "'hf:<dataset>[:split[:field]]' "
            "or an existing file or folder"
        )


def iter_documents(source: str) -> Iterator[str]:
    """Documents of ``source`` in a deterministic order, tidied, empty ones dropped."""
    check_source(source)
    if source == "bundled":
        return iter_bundled()
    if source == BUNDLED_LARGE:
        return itertools.chain(iter_bundled(), iter_debian())
    if source.startswith("hf:"):
        return _hf_documents(source)
    path = Path(source).expanduser()
    return _folder_documents(path) if path.is_dir() else _file_documents(path)


def _folder_documents(folder: Path) -> Iterator[str]:
    # Not a generator itself, so an empty folder fails at the call, not at first iteration.
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix in SUFFIXES
        # Hidden files and folders (.git, .ipynb_checkpoints, editor backups) are not corpus.
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise DataError(f"folder {folder} holds no {', '.join('*' + s for s in SUFFIXES)} files")
    return (doc for path in files for doc in _file_documents(path))


def _file_documents(path: Path) -> Iterator[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    docs: Iterable[str]
    if path.suffix == ".jsonl":
        docs = _jsonl_texts(path, raw)
    elif path.suffix == ".json":
        docs = _json_texts(path, raw)
    else:
        docs = _DOC_SEPARATOR.split(raw)
    for doc in docs:
        text = tidy(doc)
        if text:
            yield text


def _jsonl_texts(path: Path, raw: str) -> Iterator[str]:
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f'{path}:{lineno}: expected a JSON object with a "text" string')
        yield row["text"]


def _json_texts(path: Path, raw: str) -> list[str]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise DataError(f"{path}: expected a JSON list of strings")
    return data


def _parse_hf(source: str) -> tuple[str, str, str]:
    """(dataset name, split, field) of an ``hf:`` source, with defaults filled in."""
    parts = source.removeprefix("hf:").split(":")
    if len(parts) > 3 or not all(parts):
        raise DataError(f"source {source!r} is not of the form 'hf:<dataset>[:split[:field]]'")
    name, split, field = [*parts, *["train", "text"][len(parts) - 1 :]]
    return name, split, field


def _hf_documents(source: str) -> Iterator[str]:
    import datasets  # optional, and slow to import: only this source needs it

    name, split, field = _parse_hf(source)
    for row in datasets.load_dataset(name, split=split, streaming=True):
        if not isinstance(row.get(field), str):
            raise DataError(f"source {source!r}: rows have no string field {field!r}")
        text = tidy(row[field])
        if text:
            yield text
