"""The JSON every bench writes: its results with the device, torch version, date and command."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch


def write_record(out: str, **results: Any) -> dict[str, Any]:
    """Write ``results`` with where and how they were measured to ``out``; returns the record."""
    record = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        **results,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=1))
    return record
