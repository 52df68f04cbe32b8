"""Who is in a pack and when: members grouped by lineage (the FP trunk they branch from).

A lineage is one trunk key (model, data, optimizer, warmup, seed, precision): its trunk trains
from step 0 at the warmup-then-stable learning rate, and each of its cells forks from it at its
branch point (qat.trunk.branch_step), then follows its own schedule to its budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from qat.config import RunConfig
from qat.errors import ConfigError
from qat.quant import QuantFormat, resolve_format
from qat.schedule import LrSchedule, PhasePlan, plan_phases, warmup_multiplier, warmup_steps
from qat.trunk import branch_step, trunk_key


@dataclass(frozen=True)
class MemberPlan:
    config: RunConfig
    plan: PhasePlan
    schedule: LrSchedule
    branch: int  # the step at which it forks from its lineage's trunk
    fmt: QuantFormat | None  # None: an FP-only cell
    key: str  # the run key (hashing the config each time would cost more than a step)

    def lr(self, step: int) -> float:
        return self.config.optim.lr * self.schedule(step)


@dataclass(frozen=True)
class Lineage:
    key: str  # the trunk key
    seed: int
    lr_peak: float
    warmup: int  # steps
    members: tuple[MemberPlan, ...]

    def lr(self, step: int) -> float:
        return self.lr_peak * warmup_multiplier(step, self.warmup)

    @property
    def last_branch(self) -> int:
        return max(member.branch for member in self.members)


def pack_shape(config: RunConfig) -> dict:
    """What every member of one pack shares: one batched model, one data stream per seed, one
    optimizer and one device. Bits, number format, fraction, fusion, budget, seed, schedule and
    peak learning rate and the reset of the Adam moments at the QAT switch may differ."""
    tree = config.to_dict()
    # tokens_per_param is the budget as the user wrote it (tokens holds it resolved).
    for key in ("bits", "qat_frac", "tokens", "tokens_per_param", "fusion", "seed", "schedule"):
        tree.pop(key)
    tree["quant"].pop("format")  # each format is its own slice of the stacked weights
    tree["data"].pop("cache_dir")
    tree["optim"].pop("lr")
    tree["optim"].pop("qat_reset_moments")  # per member, at its QAT switch
    tree["trainer"].pop("progress")
    tree["trunk"] = None  # a pack always forks from its own in-memory trunks
    return tree


def check_one_shape(configs: list[RunConfig]) -> None:
    """Refuse, in one line, members that cannot be trained as one batched model."""
    first = pack_shape(configs[0])
    for config in configs[1:]:
        shape = pack_shape(config)
        if shape != first:
            differ = _differences(first, shape)
            raise ConfigError(
                f"cell {config.run_key} does not fit the pack of {configs[0].run_key}: "
                f"{'; '.join(differ[:3])} differ (a pack shares model, data, optimizer and "
                "trainer settings)"
            )


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            found += _differences(left, right, f"{prefix}{key}.")
        elif left != right:
            found.append(f"{prefix}{key} {left!r} vs {right!r}")
    return found


def plan_members(configs: list[RunConfig]) -> list[Lineage]:
    """The pack's lineages, each with its members in branch order."""
    if not configs:
        raise ConfigError("a pack needs at least one cell")
    check_one_shape(configs)
    keys = [config.run_key for config in configs]
    if len(set(keys)) != len(keys):
        raise ConfigError("a pack lists one cell twice (same run key)")
    lineages: dict[str, list[MemberPlan]] = {}
    for config in configs:
        plan = plan_phases(config)
        member = MemberPlan(
            config=config,
            plan=plan,
            schedule=LrSchedule(plan, config.schedule),
            branch=branch_step(config),
            fmt=None if config.is_fp_only else resolve_format(config.bits, config.quant.format),
            key=config.run_key,
        )
        lineages.setdefault(trunk_key(config), []).append(member)
    result = []
    for key, members in lineages.items():
        config = members[0].config
        tokens_per_step = config.data.batch_size * config.data.seq_len
        result.append(
            Lineage(
                key=key,
                seed=config.seed,
                lr_peak=config.optim.lr,
                warmup=warmup_steps(config.schedule, tokens_per_step),
                members=tuple(sorted(members, key=lambda m: (m.branch, m.key))),
            )
        )
    return sorted(result, key=lambda lineage: lineage.key)
