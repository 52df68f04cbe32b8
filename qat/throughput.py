"""How long a number of training tokens takes on a class of device, from measured tokens/s.

The measurements ship with the package (``throughput.yaml``: device, model shape, tokens/s and
where each number came from); docs/plan.md shows them as a table. A model that was not measured
on a device gets the rate of the nearest measured shape scaled by FLOPs per token, never above
the rate of the smallest measured one: below some size a step costs its overheads, not its
FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from qat.config import RunConfig
from qat.errors import ConfigError
from qat.units import format_count, parse_count

TABLE = "throughput.yaml"


@dataclass(frozen=True)
class Measurement:
    """Training tokens/s of one model shape on one device class, and where it came from."""

    device: str
    model: str
    vocab_size: int
    seq_len: int
    flops_per_token: float
    tokens_per_s: float
    source: str


@dataclass(frozen=True)
class Rate:
    """The tokens/s assumed for one model on one device, and how it was obtained."""

    tokens_per_s: float
    measured: Measurement
    scaled: bool  # True: from another shape's measurement, scaled by FLOPs per token


def flops_per_token(config: RunConfig) -> float:
    """Training FLOPs per token: 6 × (non-embedding parameters + the LM head's vocab × dim)
    + 12 × layers × dim × sequence length (attention over the full square), as
    bench/train_step.py counts them."""
    model = config.model
    matmul_params = model.non_embedding_params() + config.data.vocab_size * model.dim
    return 6.0 * matmul_params + 12.0 * model.n_layers * model.dim * config.data.seq_len


def load_measurements() -> tuple[dict[str, str], list[Measurement]]:
    """The device classes (key -> display name) and every measurement, in table order."""
    text = resources.files("qat").joinpath(TABLE).read_text(encoding="utf-8")
    table: dict[str, Any] = yaml.safe_load(text)
    devices = {str(k): str(v) for k, v in table["devices"].items()}
    rows = [
        Measurement(
            device=str(row["device"]),
            model=str(row["model"]),
            vocab_size=int(row["vocab_size"]),
            seq_len=int(row["seq_len"]),
            flops_per_token=float(row["flops_per_token"]),
            tokens_per_s=float(row["tokens_per_s"]),
            source=str(row["source"]),
        )
        for row in table["measurements"]
    ]
    unknown = {m.device for m in rows} - set(devices)
    if unknown:
        raise ValueError(f"{TABLE}: measurements on undeclared devices {sorted(unknown)}")
    return devices, rows


def rate_for(config: RunConfig, measurements: list[Measurement]) -> Rate:
    """The rate of ``config``'s model on the device of ``measurements`` (one device's rows)."""
    if not measurements:
        raise ValueError("no measurements for this device")
    for m in measurements:
        if (m.model, m.vocab_size, m.seq_len) == (
            config.model.name,
            config.data.vocab_size,
            config.data.seq_len,
        ):
            return Rate(m.tokens_per_s, m, scaled=False)
    flops = flops_per_token(config)
    by_flops = sorted(measurements, key=lambda m: m.flops_per_token)
    smaller = [m for m in by_flops if m.flops_per_token <= flops]
    nearest = smaller[-1] if smaller else by_flops[0]
    scale = min(1.0, nearest.flops_per_token / flops)
    return Rate(nearest.tokens_per_s * scale, nearest, scaled=True)


def parse_rate(value: str) -> float:
    """A user's tokens/s (``5000``, ``5e3``, ``20K``), through the shared count parser."""
    rate = parse_count(value, "--tokens-per-s")
    if rate <= 0:  # a fraction below 0.5 rounds to 0, which must never divide
        raise ConfigError(f"--tokens-per-s={value!r} must be at least 1 token/s")
    return float(rate)


def format_duration(seconds: float) -> str:
    """A duration in the unit that reads best: 45 s, 3.2 min, 5.1 h, 12 days, 3,000 years."""
    value, unit = seconds, "s"
    for name, size in (("min", 60.0), ("h", 3600.0), ("days", 86400.0), ("years", 365.25 * 86400)):
        if seconds >= 1.5 * size:
            value, unit = seconds / size, name
    return f"{value:.2g} {unit}" if value < 10 else f"{value:,.0f} {unit}"


def describe(rate: Rate, model: str) -> str:
    """``nano 18.19K/s``, and where a scaled rate came from (``scaled from mini-s``, or the
    measured vocabulary and sequence length when the model is the same)."""
    text = f"{model} {format_count(rate.tokens_per_s)}/s"
    if not rate.scaled:
        return text
    m = rate.measured
    shape = f" at vocab {m.vocab_size}, seq {m.seq_len}" if m.model == model else ""
    return f"{text} scaled from {m.model}{shape}"
