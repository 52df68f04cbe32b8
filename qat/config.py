"""Typed, validated run configuration.

Hydra composes plain YAML (conf/); :func:`RunConfig.from_dict` turns the resolved tree into frozen
dataclasses and checks every value, so the training code never sees an out-of-range setting.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from qat.errors import ConfigError, unknown_key
from qat.units import parse_count

# Which part of the train split a data.train_fraction below 1 trains on (qat.data.loader).
TRAIN_PARTS = ("leading", "spread")

ALLOWED_BITS = (1.0, 1.58, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0)
FP_BITS = 16.0
# quant.format: "int" is the ParetoQ integer family chosen by bits; the float formats (listed in
# qat.quant.formats, without importing torch here) fix their element's bits, which `bits` states.
QUANT_FORMAT_BITS: dict[str, float | None] = {
    "int": None,
    "fp4_e2m1": 4.0,
    "fp6_e2m3": 6.0,
    "fp6_e3m2": 6.0,
    "fp8_e4m3": 8.0,
    "mxfp4": 4.0,
    "nvfp4": 4.0,
}
# The budget when neither tokens nor tokens_per_param is set: a first run of about a minute on 2
# CPU cores (docs/plan.md) in which the loss still falls below the unigram entropy.
DEFAULT_TOKENS = 300_000
# Knobs added after runs were recorded: at these values they stay out of the run key, so every
# cell recorded before them keeps its key (and a grid re-run skips it).
KEY_NEUTRAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "schedule": {"qat_lr_ratio": 1.0},
    "optim": {"qat_reset_moments": False},
    "quant": {"embeddings": False, "format": "int"},
}


@dataclass(frozen=True)
class ModelConfig:
    name: str
    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    n_kv_heads: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    init_std: float = 0.02
    tie_embeddings: bool = True

    def non_embedding_params(self) -> int:
        """N of the scaling law, from the shape alone: what qat.model.count_parameters counts
        on the built Transformer (attention, SwiGLU and norm weights; no embedding or head), so
        a budget in tokens per parameter resolves without building the model."""
        head_dim = self.dim // self.n_heads
        kv_dim = (self.n_kv_heads or self.n_heads) * head_dim
        attention = 2 * self.dim * self.dim + 2 * self.dim * kv_dim  # wq, wo; wk, wv
        feed_forward = 3 * self.dim * self.ffn_dim
        norms = 2 * self.dim
        return self.n_layers * (attention + feed_forward + norms) + self.dim  # + final norm


@dataclass(frozen=True)
class DataConfig:
    source: str = "bundled"
    vocab_size: int = 8192
    val_fraction: float = 0.02
    seq_len: int = 128
    batch_size: int = 32
    eval_tokens: int = 65536
    cache_dir: str | None = None  # where shards live; not part of the run key
    # Train on a fraction of the train split only (validation unchanged): what repeating the
    # data more often does to a cell. At 1.0 it stays out of the run key.
    train_fraction: float = 1.0
    # Which part a fraction below 1 is (qat.data.loader): "leading" (the split's first tokens,
    # in corpus order) or "spread" (windows drawn across the whole split). Out of the run key
    # at "leading" or a fraction of 1.0, so every key recorded before it existed stays.
    train_part: str = "leading"


@dataclass(frozen=True)
class QuantConfig:
    kernel: str = "auto"  # auto | cuda | reference; not part of the run key (same math)
    exclude: tuple[str, ...] = ("tok_embeddings", "output")
    scale_lr_mult: float = 1.0
    # true: the embedding and LM head are fake-quantized too, at max(bits, 4) (qat.quant.embedding)
    embeddings: bool = False
    # int (the ParetoQ family chosen by bits) | fp4_e2m1 | fp6_e2m3 | fp6_e3m2 | fp8_e4m3 | mxfp4
    # | nvfp4 (qat.quant.formats); only a format other than int enters the run key.
    format: str = "int"


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "wsd"
    # Absolute, not a fraction of the phase: cells of a grid then share their FP trunk.
    warmup_tokens: int = 20000
    qat_warmup_frac: float = 0.05
    cooldown_frac: float = 0.2
    cooldown_shape: str = "linear"  # linear | cosine | sqrt
    min_lr_ratio: float = 0.0
    qat_lr_ratio: float = 1.0  # the QAT phase's peak learning rate, as a multiple of optim.lr


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-3
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # true: the weights' Adam moments (and step counts) start afresh at the QAT switch, as if
    # QAT were a new run from the FP weights; false keeps what the FP phase learned.
    qat_reset_moments: bool = False


@dataclass(frozen=True)
class TrainerConfig:
    backend: str = "torch"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    compile: bool = False
    log_every: int = 10  # steps between metric logs
    ckpt_every_frac: float = 0.25  # checkpoint every this fraction of the run (plus the QAT switch)
    keep_checkpoints: int = 2
    progress: bool = True
    # trainer=deepspeed only: ZeRO stage, and micro-steps per optimizer step. Neither changes
    # the science: data.batch_size stays the global batch, split over ranks and micro-steps.
    zero_stage: int = 0
    grad_accum: int = 1
    # trainer=packed only: members per pack at most (0: as many as the GPU's memory allows).
    pack_size: int = 0


@dataclass(frozen=True)
class InitConfig:
    """Start the cell at the QAT switch from a pretrained model instead of training FP."""

    source: str | None = None  # hf:<model name or local folder>, a Llama-architecture model
    tokens: int = 0  # the tokens it was pretrained on: the law's D_fp

    @property
    def pretrained(self) -> bool:
        return self.source is not None


@dataclass(frozen=True)
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "qat"


@dataclass(frozen=True)
class RunConfig:
    bits: float
    qat_frac: float
    tokens: int  # resolved: tokens_per_param × N when the budget was given per parameter
    fusion: bool
    seed: int
    model: ModelConfig
    data: DataConfig
    quant: QuantConfig = field(default_factory=QuantConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    init: InitConfig = field(default_factory=InitConfig)
    run_dir: str = "runs"
    trunk: str = "share"  # share: branch from a shared FP trunk checkpoint; off: train it all
    # (the YAML default "auto" resolves to share for trainer=torch and off for deepspeed)
    # The budget as given, when in tokens per non-embedding parameter (None: tokens was given).
    # Only ``tokens`` enters the run key: the same budget reached either way is the same cell.
    tokens_per_param: float | None = None

    @property
    def is_fp_only(self) -> bool:
        return self.bits == FP_BITS

    @property
    def quantization_label(self) -> list[str]:
        """How the cell quantizes, in the words run names and progress bars share: ``fp``, or
        the format (``b4``; a float format by name, ``mxfp4``), the QAT fraction and any QAT
        knob off its default: ``["b4", "f0.3", "fused", "qlr0.3", "reset"]``."""
        if self.is_fp_only:
            return ["fp"]
        weights = f"b{self.bits:g}" if self.quant.format == "int" else self.quant.format
        parts = [weights, f"f{self.qat_frac:g}"]
        if self.fusion:
            parts.append("fused")
        if self.schedule.qat_lr_ratio != 1.0:
            parts.append(f"qlr{self.schedule.qat_lr_ratio:g}")
        if self.optim.qat_reset_moments:
            parts.append("reset")
        return parts

    @classmethod
    def from_dict(cls, tree: dict[str, Any]) -> RunConfig:
        """Build and validate from a resolved config tree (e.g. ``OmegaConf.to_container``)."""
        tree = dict(tree)
        kwargs: dict[str, Any] = {}
        for key, section_cls in SECTIONS.items():
            if key not in tree:
                if key in ("model", "data"):
                    raise ConfigError(f"config has no '{key}' group; pick one, e.g. {key}=nano")
                continue
            kwargs[key] = _build_section(section_cls, key, tree.pop(key))
        if "init" in kwargs and kwargs["init"].pretrained:
            kwargs.update(_pretrained_shape(kwargs["init"], kwargs["data"]))
        for key in ("bits", "qat_frac", "fusion", "seed"):
            if key not in tree:
                raise ConfigError(f"config is missing the top-level key '{key}'")
        tokens_per_param = _parse_tokens_per_param(tree.pop("tokens_per_param", None))
        qat_frac = _parse_fraction(tree.pop("qat_frac"))
        tokens = _resolve_tokens(tree.pop("tokens", None), tokens_per_param, kwargs["model"])
        if "init" in kwargs and kwargs["init"].pretrained:
            # Pretrained: `tokens` are all QAT (D_qat), after init.tokens of FP (D_fp).
            qat_frac = tokens / (max(kwargs["init"].tokens, 0) + tokens)
        config = cls(
            bits=_parse_bits(tree.pop("bits")),
            qat_frac=qat_frac,
            tokens=tokens,
            tokens_per_param=tokens_per_param,
            fusion=_parse_bool(tree.pop("fusion"), "fusion"),
            seed=_parse_int(tree.pop("seed"), "seed"),
            run_dir=str(tree.pop("run_dir", "runs")),
            trunk=_resolve_trunk(
                tree.pop("trunk", "auto"), kwargs.get("trainer"), kwargs.get("init")
            ),
            **kwargs,
        )
        tree.pop("grid", None)  # grids only shape the sweep
        if tree:
            allowed = [*SECTIONS, *(f.name for f in dataclasses.fields(cls)), "grid"]
            raise unknown_key(min(tree), allowed)
        config.validate()
        return config

    def validate(self) -> None:
        m, d, s, o, t = self.model, self.data, self.schedule, self.optim, self.trainer
        _require(m.dim > 0 and m.n_layers > 0 and m.ffn_dim > 0, f"model '{m.name}' sizes > 0")
        _require(m.dim % m.n_heads == 0, f"model.dim={m.dim} divisible by n_heads={m.n_heads}")
        if m.n_kv_heads is not None:
            _require(m.n_heads % m.n_kv_heads == 0, "model.n_heads divisible by model.n_kv_heads")
        _require(2 <= d.vocab_size <= 2**32, f"data.vocab_size={d.vocab_size} in [2, 2^32]")
        _require(0.0 < d.val_fraction < 0.5, f"data.val_fraction={d.val_fraction} in (0, 0.5)")
        _require(d.seq_len > 0, f"data.seq_len={d.seq_len} > 0")
        _require(d.batch_size > 0, f"data.batch_size={d.batch_size} > 0")
        _require(d.eval_tokens >= d.seq_len, f"data.eval_tokens={d.eval_tokens} >= data.seq_len")
        _require(0.0 < d.train_fraction <= 1.0, f"data.train_fraction={d.train_fraction} in (0, 1]")
        _require(
            d.train_part in TRAIN_PARTS,
            f"data.train_part={d.train_part} in {{{', '.join(TRAIN_PARTS)}}}",
        )
        tokens_per_step = d.seq_len * d.batch_size
        budget = f"tokens={self.tokens}"
        if self.tokens_per_param is not None:
            budget += f" (tokens_per_param={self.tokens_per_param:g} × N of model '{m.name}')"
        _require(
            self.tokens >= 4 * tokens_per_step,
            f"{budget} >= 4 optimizer steps of {tokens_per_step} tokens",
        )
        _require(s.name == "wsd", f"schedule.name={s.name!r} is one of: wsd")
        _require(s.warmup_tokens >= 0, f"schedule.warmup_tokens={s.warmup_tokens} >= 0")
        for name in ("qat_warmup_frac", "cooldown_frac"):
            value = getattr(s, name)
            _require(0.0 <= value < 1.0, f"schedule.{name}={value} in [0, 1)")
        _require(
            s.cooldown_shape in ("linear", "cosine", "sqrt"),
            f"schedule.cooldown_shape={s.cooldown_shape!r} is one of: linear, cosine, sqrt",
        )
        _require(0.0 <= s.min_lr_ratio <= 1.0, f"schedule.min_lr_ratio={s.min_lr_ratio} in [0, 1]")
        _require(s.qat_lr_ratio > 0, f"schedule.qat_lr_ratio={s.qat_lr_ratio} > 0")
        _require(self.trunk in ("share", "off"), f"trunk={self.trunk!r} is one of: share, off")
        _require(o.name == "adamw", f"optim.name={o.name!r} is one of: adamw")
        _require(o.lr > 0, f"optim.lr={o.lr} > 0")
        _require(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} >= 0")
        _require(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} >= 0 (0 disables)")
        _require(
            t.backend in ("torch", "deepspeed", "packed"),
            f"trainer.backend={t.backend!r} is one of: torch, deepspeed, packed",
        )
        _require(t.zero_stage in (0, 1, 2), f"trainer.zero_stage={t.zero_stage} is one of 0, 1, 2")
        _require(t.grad_accum >= 1, f"trainer.grad_accum={t.grad_accum} >= 1")
        _require(t.pack_size >= 0, f"trainer.pack_size={t.pack_size} >= 0 (0: fit the memory)")
        # The packed forward quantizes the body's linears only; its tied table stays FP.
        _require(
            not (t.backend == "packed" and self.quant.embeddings),
            "quant.embeddings=false with trainer=packed (use trainer=torch)",
        )
        if t.backend in ("torch", "packed"):
            _require(
                t.grad_accum == 1, f"trainer.grad_accum=1 with trainer={t.backend} (use deepspeed)"
            )
        else:
            # A trunk is extended by whichever single process needs it first; a multi-process
            # cell cannot hand that job to one rank, so DeepSpeed cells train their own prefix.
            _require(self.trunk == "off", "trunk=off (or auto) with trainer=deepspeed")
            # ZeRO keeps the moments in its own partitions; resetting them is not implemented.
            _require(
                not o.qat_reset_moments, "optim.qat_reset_moments=false with trainer=deepspeed"
            )
            _require(not t.compile, "trainer.compile=false with trainer=deepspeed")
        _require(
            t.precision in ("auto", "fp32", "bf16"),
            f"trainer.precision={t.precision!r} is one of: auto, fp32, bf16",
        )
        _require(t.log_every > 0, f"trainer.log_every={t.log_every} > 0")
        _require(
            0 < t.ckpt_every_frac <= 1, f"trainer.ckpt_every_frac={t.ckpt_every_frac} in (0,1]"
        )
        _require(t.keep_checkpoints >= 1, f"trainer.keep_checkpoints={t.keep_checkpoints} >= 1")
        _require(
            self.quant.kernel in ("auto", "cuda", "reference"),
            f"quant.kernel={self.quant.kernel!r} is one of: auto, cuda, reference",
        )
        self._validate_format()
        if self.init.pretrained:
            _require(not self.is_fp_only, "a QAT bit width (not 16) with init.source")
            _require(self.init.tokens > 0, "init.tokens > 0: the tokens it was pretrained on")
            _require(self.trunk == "off", "trunk=off (or auto) with init.source")
            _require(t.backend != "packed", "trainer=torch or deepspeed with init.source")

    def _validate_format(self) -> None:
        name = self.quant.format
        if name not in QUANT_FORMAT_BITS:
            raise ConfigError(
                f"quant.format={name!r} is not supported; allowed: {', '.join(QUANT_FORMAT_BITS)}"
            )
        element_bits = QUANT_FORMAT_BITS[name]
        if element_bits is None:
            return
        _require(
            self.is_fp_only or self.bits == element_bits,
            f"bits={element_bits:g} (or 16, FP only) with quant.format={name}",
        )
        # The embedding quantizer knows the int family only.
        _require(not self.quant.embeddings, f"quant.embeddings=false with quant.format={name}")

    def science(self) -> dict[str, Any]:
        """Everything that changes the result, and nothing else (the run key's input)."""
        quant = dataclasses.asdict(self.quant)
        quant.pop("kernel")
        return {
            "model": dataclasses.asdict(self.model),
            "data": data_science(self.data),
            "quant": self._keyed("quant", quant) if not self.is_fp_only else None,
            "schedule": self._keyed("schedule", dataclasses.asdict(self.schedule)),
            "optim": self._keyed("optim", dataclasses.asdict(self.optim)),
            "tokens": self.tokens,
            "qat_frac": self.qat_frac if not self.is_fp_only else 0.0,
            "bits": self.bits,
            "fusion": self.fusion if not self.is_fp_only else False,
            "seed": self.seed,
            # fp32 and bf16 train different numbers; "auto" resolves per device, and a cell
            # refuses to mix with weights trained in the other (qat.store.provenance).
            "precision": self.trainer.precision,
            # Only when set, so that the keys of cells trained from scratch stay as they were.
            **({"init": dataclasses.asdict(self.init)} if self.init.pretrained else {}),
        }

    def _keyed(self, section: str, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` without the knobs of KEY_NEUTRAL_DEFAULTS at their defaults; all of them
        dropped for an FP-only cell, which has no QAT phase for them to change."""
        neutral = KEY_NEUTRAL_DEFAULTS[section]
        return {
            k: v
            for k, v in values.items()
            if k not in neutral or (v != neutral[k] and not self.is_fp_only)
        }

    @property
    def run_key(self) -> str:
        return run_key(self.science())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Each nested section of the config and the dataclass it becomes.
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "quant": QuantConfig,
    "schedule": ScheduleConfig,
    "optim": OptimConfig,
    "trainer": TrainerConfig,
    "tracking": TrackingConfig,
    "init": InitConfig,
}


def data_science(data: DataConfig) -> dict[str, Any]:
    """The data settings that change a result: all but where the shards live, the train
    fraction only below 1.0 and its part only when not "leading" (so every key recorded before
    they existed stays as it was)."""
    values = dataclasses.asdict(data)
    values.pop("cache_dir")
    if values["train_fraction"] == 1.0 or values["train_part"] == "leading":
        values.pop("train_part")
    if values["train_fraction"] == 1.0:
        values.pop("train_fraction")
    return values


def run_key(science: dict[str, Any]) -> str:
    """A short stable hash of the canonical JSON of the science config."""
    canonical = json.dumps(science, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys (MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _build_section(section_cls: type, key: str, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"'{key}' must be a config group, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(section_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise unknown_key(f"{key}.{unknown[0]}", known, section=key)
    coerced: dict[str, Any] = {}
    for name, value in values.items():
        kind = known[name].type
        if isinstance(value, list):
            value = tuple(value)
        try:
            if kind in ("int", int) and not isinstance(value, bool):
                value = parse_count(value, f"{key}.{name}") if isinstance(value, str) else value
                if float(value) != int(value):
                    raise ValueError
                value = int(value)
            elif kind in ("float", float) and not isinstance(value, bool):
                value = float(value)
            elif kind in ("bool", bool):
                value = _parse_bool(value, f"{key}.{name}")
        except (TypeError, ValueError):
            raise ConfigError(f"{key}.{name}={value!r} is not a valid {kind}") from None
        coerced[name] = value
    try:
        return section_cls(**coerced)
    except TypeError as error:
        raise ConfigError(f"config group '{key}': {error}") from None


def _parse_tokens_per_param(value: Any) -> float | None:
    if value is None:
        return None
    try:
        ratio = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        ratio = float("nan")
    if not 0.0 < ratio < float("inf"):
        raise ConfigError(
            f"tokens_per_param={value!r} must be a positive number (tokens per parameter)"
        )
    return ratio


def _resolve_tokens(value: Any, tokens_per_param: float | None, model: ModelConfig) -> int:
    """The budget D_total: ``tokens`` as given, or tokens_per_param × N, or DEFAULT_TOKENS when
    neither is set (conf/config.yaml leaves both null, so a grid may set either)."""
    if tokens_per_param is None:
        return DEFAULT_TOKENS if value is None else parse_count(value, "tokens")
    if value is not None:
        raise ConfigError(
            f"tokens={value!r} and tokens_per_param={tokens_per_param:g} are both set; "
            "set one of them (the other null)"
        )
    return round(tokens_per_param * model.non_embedding_params())


def _resolve_trunk(value: Any, trainer: TrainerConfig | None, init: InitConfig | None) -> str:
    if str(value) != "auto":
        return str(value)
    backend = trainer.backend if trainer is not None else "torch"
    pretrained = init is not None and init.pretrained
    return "off" if backend == "deepspeed" or pretrained else "share"


def _pretrained_shape(init: InitConfig, data: DataConfig) -> dict[str, Any]:
    """The model group and vocabulary of a pretrained start: the model's own, whatever the
    model group said (its tokenizer re-tokenizes the data)."""
    from qat.hf_config import check_tokenizer, read_shape

    source = init.source or ""
    if not source.startswith("hf:") or len(source) == 3:
        raise ConfigError(f"init.source={source!r}: expected hf:<model name or local folder>")
    fields, vocab_size, _ = read_shape(source[3:])
    check_tokenizer(source[3:])
    return {
        "model": ModelConfig(**fields),
        "data": dataclasses.replace(data, vocab_size=vocab_size),
    }


def _parse_bits(value: Any) -> float:
    if isinstance(value, str) and value.strip().lower() == "ternary":
        return 1.58
    try:
        bits = float(value)
    except (TypeError, ValueError):
        bits = float("nan")
    if bits not in ALLOWED_BITS:
        allowed = ", ".join(f"{b:g}" for b in ALLOWED_BITS)
        raise ConfigError(f"bits={value!r} is not supported; allowed: {allowed} (16 = FP only)")
    return bits


def _parse_fraction(value: Any) -> float:
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        fraction = float("nan")
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"qat_frac={value!r} must be in [0, 1)")
    return fraction


def _parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(f"{name}={value!r} must be true or false")


def _parse_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"{name}={value!r} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be an integer") from None


def _require(condition: bool, expectation: str) -> None:
    if not condition:
        raise ConfigError(f"invalid config: expected {expectation}")
