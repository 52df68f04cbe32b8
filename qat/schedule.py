"""Phase plan and learning-rate schedule of one FP→QAT run.

Classic pipeline: FP warmup → stable → cooldown, then QAT re-warmup → stable → cooldown.
Fused pipeline: FP warmup → stable, then QAT stable → cooldown (the FP cooldown is skipped and the
decay happens inside QAT). Everything is counted in optimizer steps of ``tokens_per_step`` tokens,
so the QAT switch lands exactly on ``tokens_fp`` tokens. The FP warmup is an absolute number of
tokens, so that every cell of a grid has the same learning rate up to its branch point (the
start of its FP cooldown, or the QAT switch when fused): the FP trunk that cells share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qat.config import RunConfig, ScheduleConfig


@dataclass(frozen=True)
class PhasePlan:
    tokens_per_step: int
    total_steps: int
    fp_steps: int
    fusion: bool
    quantized: bool  # False for bits=16: one FP phase, no QAT

    @property
    def qat_steps(self) -> int:
        return self.total_steps - self.fp_steps

    @property
    def tokens_fp(self) -> int:
        return self.fp_steps * self.tokens_per_step

    @property
    def tokens_qat(self) -> int:
        return self.qat_steps * self.tokens_per_step

    @property
    def tokens_total(self) -> int:
        return self.total_steps * self.tokens_per_step


def plan_phases(config: RunConfig) -> PhasePlan:
    tokens_per_step = config.data.batch_size * config.data.seq_len
    total_steps = max(1, round(config.tokens / tokens_per_step))
    if config.init.pretrained:  # the FP phase happened elsewhere: every step is QAT
        fp_steps = 0
    elif config.is_fp_only:
        fp_steps = total_steps
    else:
        fp_steps = round((1.0 - config.qat_frac) * total_steps)
    return PhasePlan(
        tokens_per_step=tokens_per_step,
        total_steps=total_steps,
        fp_steps=fp_steps,
        fusion=config.fusion and not config.is_fp_only,
        quantized=not config.is_fp_only,
    )


def law_tokens(config: RunConfig) -> tuple[int, int, int]:
    """(D_fp, D_qat, D_total) of the scaling law: the FP tokens of a pretrained start are those
    it was pretrained on, not trained here."""
    plan = plan_phases(config)
    tokens_fp = config.init.tokens if config.init.pretrained else plan.tokens_fp
    return tokens_fp, plan.tokens_qat, tokens_fp + plan.tokens_qat


def warmup_steps(config: ScheduleConfig, tokens_per_step: int) -> int:
    return math.ceil(config.warmup_tokens / tokens_per_step)


def warmup_multiplier(step: int, warmup: int) -> float:
    """Linear warmup to 1, then 1: the learning rate of the stable FP trunk."""
    return (step + 1) / warmup if step < warmup else 1.0


@dataclass(frozen=True)
class LrSchedule:
    """Multiplier of the peak learning rate at each step."""

    plan: PhasePlan
    config: ScheduleConfig

    @property
    def fp_decays(self) -> bool:
        plan = self.plan
        return not plan.fusion or not plan.quantized or plan.qat_steps == 0

    def __call__(self, step: int) -> float:
        plan, cfg = self.plan, self.config
        if step < plan.fp_steps:
            warmup = warmup_steps(cfg, plan.tokens_per_step)
            return self._phase(step, plan.fp_steps, warmup, self.fp_decays)
        warmup = 0 if plan.fusion else math.ceil(cfg.qat_warmup_frac * plan.qat_steps)
        phase = self._phase(step - plan.fp_steps, plan.qat_steps, warmup, decays=True)
        return cfg.qat_lr_ratio * phase

    def _cooldown_steps(self, length: int) -> int:
        return math.ceil(self.config.cooldown_frac * length)

    def _phase(self, step: int, length: int, warmup: int, decays: bool) -> float:
        cfg = self.config
        cooldown_start = length - self._cooldown_steps(length) if decays else length
        if step < min(warmup, cooldown_start):
            return warmup_multiplier(step, warmup)
        if step < cooldown_start:
            return 1.0
        # progress runs from just after the start to exactly 1 at the last step of the phase.
        progress = (step - cooldown_start + 1) / (length - cooldown_start)
        floor = cfg.min_lr_ratio
        if cfg.cooldown_shape == "linear":
            shape = 1.0 - progress
        elif cfg.cooldown_shape == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:  # sqrt: the "1 - sqrt" decay that works well for WSD
            shape = 1.0 - math.sqrt(progress)
        return floor + (1.0 - floor) * shape

    def stable_until(self) -> int:
        """Steps during which the learning rate follows the shared trunk (warmup, then stable).

        Up to this step a cell's training does not depend on bits, qat_frac or the budget.
        """
        plan = self.plan
        if not self.fp_decays:
            return plan.fp_steps
        return plan.fp_steps - self._cooldown_steps(plan.fp_steps)
