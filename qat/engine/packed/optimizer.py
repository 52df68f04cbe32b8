"""AdamW over a pack's flat parameter buffers, with a learning rate per member.

The update is torch.optim.AdamW's (decoupled weight decay, bias-corrected moments), applied to
[members, n] buffers at once. Each member has its own learning rate (its own schedule) and its
own step count per group, so a quantizer scale starts its moments and bias correction at the
member's QAT switch, as the single-cell trainer's fresh scale group does.
"""

from __future__ import annotations

import torch

from qat.config import OptimConfig
from qat.engine.packed.weights import DECAY, NO_DECAY, SCALES, ParameterLayout

# torch.nn.utils.clip_grad_norm_'s guard against a zero norm.
CLIP_EPS = 1e-6


class PackedAdamW:
    def __init__(
        self,
        flats: dict[str, torch.Tensor],
        layout: ParameterLayout,
        config: OptimConfig,
        scale_lr_mult: float,
    ) -> None:
        self.config = config
        self.fp_order = layout.parameter_order(with_scales=False)
        self.qat_order = layout.parameter_order(with_scales=True)
        self.lr_mult = {group: scale_lr_mult if group == SCALES else 1.0 for group in flats}
        self.weight_decay = {
            group: config.weight_decay if group == DECAY else 0.0 for group in flats
        }
        self.state = {
            group: {
                "exp_avg": torch.zeros_like(flat),
                "exp_avg_sq": torch.zeros_like(flat),
                "steps": torch.zeros(flat.shape[0], dtype=torch.float64, device=flat.device),
            }
            for group, flat in flats.items()
        }

    @torch.no_grad()
    def clip(self, flats: dict[str, torch.Tensor], in_qat: torch.Tensor) -> None:
        """Scale each member's gradients to a total norm of at most optim.grad_clip.

        As torch.nn.utils.clip_grad_norm_ over the single-cell model's parameters: the norm of
        the per-parameter norms, in the model's parameter order, each quantizer scale right after
        its weight and only for members in QAT (``in_qat``), so the sums round alike.
        """
        if self.config.grad_clip <= 0:
            return
        grads = {group: flat.grad for group, flat in flats.items() if flat.grad is not None}
        totals = []
        for order in (self.fp_order, self.qat_order):
            norms = [
                torch.linalg.vector_norm(grads[slot.group][:, slot.offset : slot.end], dim=1)
                for slot in order
                if slot.group in grads
            ]
            # [members, parameters]: each member's norms contiguous, reduced as one vector
            totals.append(torch.linalg.vector_norm(torch.stack(norms, dim=1), dim=1))
        total = torch.where(in_qat, totals[1], totals[0])
        coefficient = (self.config.grad_clip / (total + CLIP_EPS)).clamp(max=1.0).unsqueeze(1)
        for grad in grads.values():
            grad.mul_(coefficient)

    @torch.no_grad()
    def step(
        self, flats: dict[str, torch.Tensor], lrs: torch.Tensor, scales_active: torch.Tensor
    ) -> None:
        """One update; ``lrs`` [members] learning rates, ``scales_active`` [members] bool: the
        members in QAT (only their scales move and count steps)."""
        beta1, beta2 = self.config.betas
        for group, flat in flats.items():
            grad = flat.grad
            if grad is None:
                continue
            state = self.state[group]
            lr = lrs.to(torch.float64) * self.lr_mult[group]
            if group == SCALES:
                lr = torch.where(scales_active, lr, 0.0)
                state["steps"] += scales_active.to(torch.float64)
            else:
                state["steps"] += 1
            steps = state["steps"].clamp(min=1)
            bias1 = 1 - beta1**steps
            bias2_sqrt = (1 - beta2**steps).sqrt()
            decay = (1 - lr * self.weight_decay[group]).to(flat.dtype).unsqueeze(1)
            step_size = (lr / bias1).to(flat.dtype).unsqueeze(1)
            flat.mul_(decay)
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / bias2_sqrt.to(flat.dtype).unsqueeze(1)).add_(
                self.config.eps
            )
            # addcdiv_'s rounding: (step size · m) / denominator
            flat.sub_(step_size * exp_avg / denom)

    def reset_scales(self, row: int) -> None:
        """A member's QAT switch: its scales start without moments or steps."""
        state = self.state[SCALES]
        state["exp_avg"][row].zero_()
        state["exp_avg_sq"][row].zero_()
        state["steps"][row] = 0

    def reset_weights(self, row: int) -> None:
        """A member's QAT switch under optim.qat_reset_moments: its weights' moments and steps
        start afresh, as the single-cell trainer resets its weight groups."""
        for group in (DECAY, NO_DECAY):
            state = self.state[group]
            state["exp_avg"][row].zero_()
            state["exp_avg_sq"][row].zero_()
            state["steps"][row] = 0

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and repeat) the members ``rows``, in that order: forks and departures."""
        for state in self.state.values():
            for key, value in state.items():
                state[key] = value.index_select(0, rows)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {group: dict(values) for group, values in self.state.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        device = next(iter(self.state.values()))["steps"].device
        self.state = {
            group: {key: value.to(device) for key, value in values.items()}
            for group, values in state.items()
        }
