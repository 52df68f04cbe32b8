"""The engine: a Trainer that trains one cell on a Backend (torch | deepspeed), with the QAT
switch as one object. It knows nothing of claims, MLflow or trunks (qat.cell does)."""

from qat.engine.backend import Backend, effective_precision
from qat.engine.factory import make_backend
from qat.engine.qat_switch import QatSwitch
from qat.engine.state import TrainState
from qat.engine.trainer import Trainer

__all__ = ["Backend", "QatSwitch", "TrainState", "Trainer", "effective_precision", "make_backend"]
