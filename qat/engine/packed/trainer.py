"""The pack's training loop: every member one row of the stacked weights, all stepped together.

At each step boundary, in order: cells whose branch point it is fork from their trunk (weights,
moments, data cursor copied); cells at the end of their FP phase are evaluated (fp/val_loss) and
switch to QAT (scales from their weights, fresh scale moments); cells at the end of their budget
are evaluated (final/val_loss) and leave; a trunk with no cell left to fork leaves. Then one
optimizer step trains every row at its own learning rate. It knows nothing of claims or MLflow:
it reports each cell's life through :class:`MemberEvents` (qat.pack).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from qat import preemption
from qat.config import RunConfig
from qat.data import DatasetInfo, TokenLoader, eval_batches
from qat.engine.backend import autocast_dtype
from qat.engine.packed.checkpoint import list_packs, load_pack, save_pack
from qat.engine.packed.forward import PackedForward, Segment
from qat.engine.packed.members import Lineage, MemberPlan
from qat.engine.packed.optimizer import PackedAdamW
from qat.engine.packed.weights import ParameterLayout
from qat.errors import TrainingError
from qat.model import Transformer, count_parameters, rotary_tables
from qat.progress import CellProgress
from qat.quant import init_scale, quantize_model, resolve_kernel
from qat.tracking_schema import FINAL_METRIC, FP_METRIC, TRAIN_LOSS, TRAIN_LR, TRAIN_SPEED

Record = tuple[dict[str, float], int]  # (metrics, tokens seen)
TRUNK, CELL = "trunk", "cell"


class MemberEvents(Protocol):
    """What the pack tells the cell layer about each cell (by run key)."""

    def forked(self, key: str, trunk: str, tokens: int, prefix: list[Record]) -> None:
        """The cell starts, from trunk ``trunk`` at ``tokens``; ``prefix``: the trunk's curve."""
        ...

    def log(self, key: str, metrics: dict[str, float], tokens: int) -> None: ...

    def finished(
        self, key: str, final: float, fp: float | None, weights: dict[str, torch.Tensor]
    ) -> None:
        """The cell ended; ``weights``: its final state_dict (as the single-cell model's)."""
        ...

    def failed(self, key: str, error: Exception) -> None: ...


@dataclass
class Row:
    """One member of the stacked weights: a lineage's trunk, or a cell."""

    kind: str
    lineage: int
    key: str  # trunk key or run key
    quantized: bool = False
    fp_val_loss: float | None = None
    records: list[Record] = field(default_factory=list)  # a trunk's logged curve

    def to_state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "lineage": self.lineage,
            "key": self.key,
            "quantized": self.quantized,
            "fp_val_loss": self.fp_val_loss,
            "records": [[metrics, tokens] for metrics, tokens in self.records],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Row:
        records = [(dict(metrics), int(tokens)) for metrics, tokens in state["records"]]
        return cls(
            state["kind"],
            state["lineage"],
            state["key"],
            state["quantized"],
            state["fp_val_loss"],
            records,
        )


class PackedTrainer:
    def __init__(
        self,
        lineages: list[Lineage],
        data: DatasetInfo,
        checkpoint_dir: Path,
        device: torch.device,
        events: MemberEvents,
        skip: Iterable[str] = (),
        resume: bool = True,
    ) -> None:
        """``skip``: run keys not to train (finished already, or held by another job)."""
        self.lineages = lineages
        self.config: RunConfig = lineages[0].members[0].config
        self.data = data
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.events = events
        self.skip = set(skip)
        self.members: dict[str, MemberPlan] = {
            m.key: m for lineage in lineages for m in lineage.members
        }
        config = self.config
        self.autocast_dtype = autocast_dtype(config.trainer.precision, device)
        self.tokens_per_step = config.data.batch_size * config.data.seq_len
        self.total_steps = max(m.plan.total_steps for m in self.members.values())
        self.step = 0
        self.done: dict[str, str] = {}  # run key → finished | failed
        # Every lineage's initial model, built as the single-cell trainer builds it.
        models = []
        for lineage in lineages:
            torch.manual_seed(lineage.seed)
            models.append(Transformer(config.model, data.vocab_size))
        self.n_params, self.n_params_total = count_parameters(models[0])
        self.layout = ParameterLayout(models[0], self._quantized_names(models[0]))
        kernel = resolve_kernel(config.quant.kernel, device)
        self.forward = PackedForward(
            config.model,
            self.layout.quantized,
            kernel,
            compile=config.trainer.compile,
            # On GPU a step is bound by memory traffic, the logits' above all; on CPU the
            # single-cell model's operations keep a pack bitwise equal to its cells alone.
            fused=device.type == "cuda",
        )
        head_dim = config.model.dim // config.model.n_heads
        self.rope = rotary_tables(head_dim, config.data.seq_len, config.model.rope_theta, device)
        self.rows = [Row(TRUNK, i, lineage.key) for i, lineage in enumerate(lineages)]
        self.flats = self._leaves(self.layout.stack(models, device))
        self.optimizer = PackedAdamW(
            self.flats, self.layout, config.optim, config.quant.scale_lr_mult
        )
        # One data stream per seed; the train fraction is the pack's (qat.engine.packed.members
        # .pack_shape: it is part of the data every member shares).
        self.loaders = {
            seed: TokenLoader(
                data.train_path,
                config.data.batch_size,
                config.data.seq_len,
                seed,
                fraction=config.data.train_fraction,
                part=config.data.train_part,
            )
            for seed in sorted({lineage.seed for lineage in lineages})
        }
        self.window = torch.zeros(len(self.rows), device=device)
        self.window_steps, self.window_start = 0, time.perf_counter()
        self._segments: list[Segment] | None = None
        self._progress = CellProgress("pack", 0, enabled=False)  # train() opens the shown one
        self._shown_loss = math.nan
        latest = list_packs(checkpoint_dir)
        if resume and latest:
            self._load(latest[-1])
            print(f"[pack] resuming {len(self.rows)} member(s) from {latest[-1]}", flush=True)
        self._drop_skipped()

    # --- membership -------------------------------------------------------------------------

    def _quantized_names(self, model: Transformer) -> tuple[str, ...]:
        formats = [m.fmt for m in self.members.values() if m.fmt is not None]
        if not formats:
            return ()
        probe = Transformer(self.config.model, self.data.vocab_size)
        return tuple(quantize_model(probe, formats[0], "reference", self.config.quant.exclude))

    def _leaves(self, flats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {group: flat.detach().requires_grad_() for group, flat in flats.items()}

    def _select(self, picks: list[tuple[int, Row]]) -> None:
        """The new rows: for each, the row whose weights, moments and window it takes (a fork
        repeats its trunk's), and what it is. Rows are kept sorted by form (FP first, then one
        run per format: :class:`Segment`), so the order of ``picks`` is not kept."""
        picks = sorted(picks, key=lambda pick: self._form(pick[1]))
        rows = torch.tensor([index for index, _ in picks], dtype=torch.long, device=self.device)
        self.flats = self._leaves(
            {g: f.detach().index_select(0, rows) for g, f in self.flats.items()}
        )
        self.optimizer.select(rows)
        self.window = self.window.index_select(0, rows)
        self.rows = [row for _, row in picks]
        self._segments = None

    def _keep(self, indices: list[int]) -> None:
        self._select([(i, self.rows[i]) for i in indices])

    def _form(self, row: Row) -> str:
        if not row.quantized:
            return ""
        fmt = self.member(row).fmt
        assert fmt is not None
        return fmt.name

    def _pending(self, lineage: int) -> list[MemberPlan]:
        """Cells of ``lineage`` still to fork: not started, not done, not skipped."""
        live = {row.key for row in self.rows}
        return [
            m
            for m in self.lineages[lineage].members
            if m.key not in live
            and m.key not in self.done
            and m.key not in self.skip
            and m.branch >= self.step
        ]

    def _drop_skipped(self) -> None:
        keep = [
            i
            for i, row in enumerate(self.rows)
            if (row.kind == CELL and row.key not in self.skip)
            or (row.kind == TRUNK and self._pending(row.lineage))
        ]
        if len(keep) != len(self.rows):
            self._keep(keep)

    def _fork(self) -> None:
        picks = [(i, row) for i, row in enumerate(self.rows)]
        tokens = self.step * self.tokens_per_step
        forked = []
        for index, row in enumerate(self.rows):
            if row.kind != TRUNK:
                continue
            for member in self._pending(row.lineage):
                if member.branch == self.step:
                    picks.append((index, Row(CELL, row.lineage, member.key)))
                    forked.append((member.key, row))
        if not forked:
            return
        self._select(picks)
        for key, trunk in forked:
            self.events.forked(key, trunk.key, tokens, list(trunk.records))

    def _retire_trunks(self) -> None:
        keep = [
            i for i, row in enumerate(self.rows) if row.kind == CELL or self._pending(row.lineage)
        ]
        if len(keep) != len(self.rows):
            self._keep(keep)

    def _remove(self, keys: set[str]) -> None:
        self._keep([i for i, row in enumerate(self.rows) if row.key not in keys])

    def member(self, row: Row) -> MemberPlan:
        return self.members[row.key]

    # --- the loop ---------------------------------------------------------------------------

    def train(self) -> None:
        """Train every member to its end (or until a requeue is requested)."""
        tokens = self.tokens_per_step
        self._progress = CellProgress(
            self._label(),
            self.total_steps * tokens,
            self.step * tokens,
            enabled=self.config.trainer.progress,
        )
        interval = max(1, math.ceil(self.config.trainer.ckpt_every_frac * self.total_steps))
        # A deadline (node_grid) or Ctrl-C stops a pack at a step boundary with a checkpoint, so
        # a rerun resumes every member from there instead of from the last periodic one. The bar
        # is closed before any error is reported (never glued onto it).
        with preemption.training_loop(defer_interrupt=True), self._progress as progress:
            while True:
                self._boundary()
                if not self.rows:
                    break
                self._train_step()
                self.step += 1
                progress.phase = f"{len(self.rows)} member{'' if len(self.rows) == 1 else 's'}"
                # Every member (trunk or cell) advanced one step of its budget.
                progress.advance(tokens, self._window_loss, work=tokens * len(self.rows))
                periodic = self.step % interval == 0 and self.step < self.total_steps
                if (
                    self.step % self.config.trainer.log_every == 0
                    or periodic
                    or self._event_at(self.step)
                ):
                    self._flush()
                if periodic:
                    self.save()
                if preemption.requested():  # SLURM asked: save, then requeue
                    self.save()
                    progress.close()
                    preemption.hand_over()
                if preemption.interrupted():
                    self.save()
                    progress.close()
                    raise KeyboardInterrupt

    def _label(self) -> str:
        """The pack's bar: ``pack nano s0,1 (8 cells)``."""
        seeds = ",".join(str(s) for s in sorted({lineage.seed for lineage in self.lineages}))
        return f"pack {self.config.model.name} s{seeds} ({len(self.members)} cells)"

    def _window_loss(self) -> float:
        """The members' mean training loss since the last flush (the last one's just after)."""
        if self.window_steps:
            self._shown_loss = (self.window / self.window_steps).mean().item()
        return self._shown_loss

    def _event_at(self, step: int) -> bool:
        for row in self.rows:
            if row.kind == TRUNK:
                if any(m.branch == step for m in self._pending(row.lineage)):
                    return True
                continue
            plan = self.member(row).plan
            if step in (plan.fp_steps, plan.total_steps):
                return True
        return False

    def _boundary(self) -> None:
        self._fork()
        switching = [
            i
            for i, row in enumerate(self.rows)
            if row.kind == CELL
            and self.member(row).plan.quantized
            and not row.quantized
            and self.member(row).plan.fp_steps == self.step
        ]
        if switching:
            self._switch(switching)
        ending = [
            i
            for i, row in enumerate(self.rows)
            if row.kind == CELL and self.member(row).plan.total_steps == self.step
        ]
        if ending:
            self._finish(ending)
        self._retire_trunks()

    def _switch(self, indices: list[int]) -> None:
        """End of these cells' FP phase: evaluate, then switch QAT on."""
        tokens = self.step * self.tokens_per_step
        losses = self._evaluate_rows(indices)
        failed = set()
        for index, loss in zip(indices, losses, strict=True):
            row = self.rows[index]
            if not math.isfinite(loss):
                failed.add(row.key)
                self._fail(row.key, TrainingError(f"validation loss is {loss} at {tokens} tokens"))
                continue
            row.fp_val_loss = loss
            self.events.log(row.key, {FP_METRIC: loss}, tokens)
            self._start_qat(index)
        self._keep([i for i, row in enumerate(self.rows) if row.key not in failed])  # re-sorted

    @torch.no_grad()
    def _start_qat(self, index: int) -> None:
        row = self.rows[index]
        fmt = self.member(row).fmt
        assert fmt is not None
        views = self.layout.views(self.flats)
        for linear in self.layout.quantized:
            weight = views[f"{linear}.weight"][index]
            views[f"{linear}.scale"][index].copy_(init_scale(weight.float(), fmt))
        self.optimizer.reset_scales(index)
        if self.member(row).config.optim.qat_reset_moments:
            self.optimizer.reset_weights(index)
        row.quantized = True

    def _finish(self, indices: list[int]) -> None:
        tokens = self.step * self.tokens_per_step
        losses = self._evaluate_rows(indices)
        leaving = set()
        for index, loss in zip(indices, losses, strict=True):
            row = self.rows[index]
            leaving.add(row.key)
            if not math.isfinite(loss):
                self._fail(row.key, TrainingError(f"validation loss is {loss} at {tokens} tokens"))
                continue
            if not self.member(row).plan.quantized:
                row.fp_val_loss = loss
                self.events.log(row.key, {FP_METRIC: loss}, tokens)
            self.events.log(row.key, {FINAL_METRIC: loss}, tokens)
            self.done[row.key] = "finished"
            self._progress.cell_ended(row.key)
            weights = self.layout.member_state(self.flats, index, row.quantized)
            self.events.finished(
                row.key, loss, row.fp_val_loss, {k: v.cpu() for k, v in weights.items()}
            )
        self._remove(leaving)

    def _fail(self, key: str, error: Exception) -> None:
        self.done[key] = "failed"
        self._progress.cell_ended(key, failed=True)
        self.events.failed(key, error)

    def _segments_of(self, rows: list[Row]) -> list[Segment]:
        """Runs of consecutive rows in one form (``rows`` sorted by form)."""
        segments: list[Segment] = []
        for index, row in enumerate(rows):
            if segments and self._form(rows[segments[-1].start]) == self._form(row):
                segments[-1] = Segment(segments[-1].fmt, segments[-1].start, index + 1)
            else:
                segments.append(
                    Segment(self.member(row).fmt if row.quantized else None, index, index + 1)
                )
        return segments

    def _current_segments(self) -> list[Segment]:
        if self._segments is None:
            self._segments = self._segments_of(self.rows)
        return self._segments

    def _lr(self, row: Row) -> float:
        if row.kind == TRUNK:
            return self.lineages[row.lineage].lr(self.step)
        return self.member(row).lr(self.step)

    def _seed(self, row: Row) -> int:
        return self.lineages[row.lineage].seed

    def _train_step(self) -> None:
        seeds = sorted({self._seed(row) for row in self.rows})
        batches = [self.loaders[seed].next_batch() for seed in seeds]
        which = torch.tensor(
            [seeds.index(self._seed(row)) for row in self.rows], device=self.device
        )
        tokens = torch.stack([x for x, _ in batches]).to(self.device).index_select(0, which)
        targets = torch.stack([y for _, y in batches]).to(self.device).index_select(0, which)
        self._lrs = [self._lr(row) for row in self.rows]
        lrs = torch.tensor(self._lrs, dtype=torch.float64, device=self.device)
        active = torch.tensor([row.quantized for row in self.rows], device=self.device)
        views = self.layout.views(self.flats)
        with self._autocast():
            losses = self.forward.token_losses(
                views, tokens, targets, self.rope, self._current_segments()
            ).mean(dim=1)
        losses.sum().backward()
        self.optimizer.clip(self.flats, active)
        self.optimizer.step(self.flats, lrs, active)
        for flat in self.flats.values():
            flat.grad = None
        self.window += losses.detach()
        self.window_steps += 1

    def _flush(self) -> None:
        """Log each row's mean training loss since the last flush; a non-finite one fails it."""
        if self.window_steps == 0:
            return
        means = (self.window / self.window_steps).tolist()
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        speed = self.window_steps * self.tokens_per_step / elapsed
        tokens = self.step * self.tokens_per_step
        failed: set[str] = set()
        for row, mean, lr in zip(self.rows, means, self._lrs, strict=True):
            if not math.isfinite(mean):
                failed.add(row.key)
                error = TrainingError(
                    f"training loss is {mean} at step {self.step} ({tokens} tokens); "
                    "lower optim.lr or check the data"
                )
                if row.kind == TRUNK:
                    for member in self._pending(row.lineage):
                        self._fail(member.key, error)
                else:
                    self._fail(row.key, error)
                continue
            metrics = {TRAIN_LOSS: mean, TRAIN_LR: lr, TRAIN_SPEED: speed}
            if row.kind == TRUNK:
                row.records.append((metrics, tokens))
            else:
                self.events.log(row.key, metrics, tokens)
        if self.rows:
            self._shown_loss = sum(means) / len(means)
        self.window.zero_()
        self.window_steps, self.window_start = 0, time.perf_counter()
        if failed:
            self._remove(failed)

    @torch.no_grad()
    def _evaluate_rows(self, indices: list[int]) -> list[float]:
        """Validation loss of rows ``indices`` (each in its current FP or QAT form)."""
        data = self.config.data
        order = sorted(range(len(indices)), key=lambda i: indices[i])
        chosen = [indices[i] for i in order]  # in row order: sorted by form
        rows = torch.tensor(chosen, dtype=torch.long, device=self.device)
        params = {n: v.index_select(0, rows) for n, v in self.layout.views(self.flats).items()}
        segments = self._segments_of([self.rows[i] for i in chosen])
        total = torch.zeros(len(indices), dtype=torch.float64, device=self.device)
        count = 0
        batches = eval_batches(self.data.val_path, data.batch_size, data.seq_len, data.eval_tokens)
        for x, y in batches:
            tokens = x.to(self.device).unsqueeze(0).expand(len(indices), -1, -1)
            targets = y.to(self.device).unsqueeze(0).expand(len(indices), -1, -1)
            with self._autocast():
                losses = self.forward.token_losses(params, tokens, targets, self.rope, segments)
            total += losses.sum(dim=1).double()
            count += y.numel()
        means = (total / count).tolist()
        result = [0.0] * len(indices)
        for position, i in enumerate(order):
            result[i] = means[position]
        return result

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # --- checkpoints ------------------------------------------------------------------------

    def save(self) -> Path:
        state = {
            "step": self.step,
            "rows": [row.to_state() for row in self.rows],
            "done": dict(self.done),
            "lineages": [lineage.key for lineage in self.lineages],
            "flats": {g: f.detach().cpu() for g, f in self.flats.items()},
            "optimizer": {
                g: {k: v.cpu() for k, v in s.items()}
                for g, s in self.optimizer.state_dict().items()
            },
            "loaders": {str(seed): loader.state_dict() for seed, loader in self.loaders.items()},
        }
        return save_pack(
            self.checkpoint_dir, self.step, state, self.config.trainer.keep_checkpoints
        )

    def _load(self, path: Path) -> None:
        state = load_pack(path)
        if state["lineages"] != [lineage.key for lineage in self.lineages]:
            raise TrainingError(f"pack checkpoint {path} belongs to another set of cells")
        self.step = int(state["step"])
        self.rows = [Row.from_state(row) for row in state["rows"]]
        unknown = [r.key for r in self.rows if r.kind == CELL and r.key not in self.members]
        if unknown:
            raise TrainingError(f"pack checkpoint {path} holds cells not in this pack: {unknown}")
        self.done = dict(state["done"])
        self.flats = self._leaves({g: f.to(self.device) for g, f in state["flats"].items()})
        self.optimizer.load_state_dict(state["optimizer"])
        for seed, cursor in state["loaders"].items():
            self.loaders[int(seed)].load_state_dict(dict(cursor))
        self.window = torch.zeros(len(self.rows), device=self.device)
        self._segments = None
