"""trainer=packed: many cells of one model shape trained as one batched model.

Weights of every member are stacked along a leading member dimension and trained with batched
matmuls and one optimizer step over the stacked parameters. Members differ in bits, QAT fraction,
fusion, budget, seed and learning-rate schedule; each forks from its FP trunk (a member too) at its
branch point and leaves the pack when its budget ends.
"""

from qat.engine.packed.members import Lineage, MemberPlan, plan_members
from qat.engine.packed.trainer import MemberEvents, PackedTrainer

__all__ = ["Lineage", "MemberEvents", "MemberPlan", "PackedTrainer", "plan_members"]
