"""What a cell's or a trunk's weights were actually trained with, beyond the config the run key
hashes: the precision trainer.precision resolved to on the device, and the fingerprint of the
tokenizer and shards. A folder records it when training starts; whoever resumes or branches from
that folder must match it, and a mismatch is refused with one line rather than mixed silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from qat.errors import ConfigError

PROVENANCE_FILE = "provenance.json"


def mismatches(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """``key: recorded → current`` for every key both know and disagree on."""
    return [
        f"{key} {recorded[key]} → {value}"
        for key, value in sorted(current.items())
        if recorded.get(key) not in (None, value)
    ]


def check_or_record(folder: Path, current: dict[str, str], what: str) -> None:
    """Refuse if ``folder`` was trained with other provenance; record ``current`` if new."""
    path = folder / PROVENANCE_FILE
    if path.exists():
        differ = mismatches(json.loads(path.read_text()), current)
        if differ:
            raise ConfigError(
                f"{what} {folder} was trained with other settings ({'; '.join(differ)}): set "
                "trainer.precision (and data) to match it, or use another run_dir"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(current, sort_keys=True))
    tmp.replace(path)
