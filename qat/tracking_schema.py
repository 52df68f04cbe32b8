"""The MLflow schema every writer and reader of runs shares: names, the default store, and how
a tracking URI is chosen. The trainer writes it (qat.cell), qat.report and analysis.collect read
it; nothing else spells these strings.

One run per grid cell, tagged with its run key; params are the flattened resolved config plus
the counts below; metrics are logged with step = tokens seen. A run is FINISHED only once
``final/val_loss`` is logged.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# Experiment tags. MLflow 3's UI opens an experiment without a kind in its GenAI view (traces);
# this kind opens the classic runs table of params and metrics.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"

# Tags
RUN_KEY_TAG = "run_key"
ERROR_TAG = "error"  # a FAILED run's reason, one line
ANALYSIS_TAG = "qat.analysis"  # the experiment's grid-plots run (qat.report --log-plots), no cell
TRUNK_KEY_TAG = "trunk_key"
BRANCH_TOKENS_TAG = "branch_tokens"
PACK_KEY_TAG = "pack_key"  # trainer=packed: the pack that trained the cell

# Metrics (step = tokens seen)
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_SPEED = "train/tokens_per_s"
FP_METRIC = "fp/val_loss"  # the FP model at the end of its phase
FINAL_METRIC = "final/val_loss"  # the quantized model at the end: the law's target

# Artifacts
LOSS_CURVE_ARTIFACT = "loss_curve.png"  # train/loss and the evaluations vs tokens, per cell
ANALYSIS_RUN_NAME = "analysis"

# Params beside the flattened config
N_PARAMS = "n_params"  # non-embedding parameters: the law's N
N_PARAMS_TOTAL = "n_params_total"
TOKENS_FP = "tokens_fp"
TOKENS_QAT = "tokens_qat"
TOKENS_TOTAL = "tokens_total"
DATA_FINGERPRINT = "data_fingerprint"  # tokenizer + shards actually trained on
# Tokens of the prepared train split (all of it, whatever data.train_fraction reads): a budget
# over train_fraction × this is the number of passes over the data (analysis.collect: epochs).
TRAIN_SPLIT_TOKENS = "data_train_tokens"
PRECISION = "precision"  # fp32 or bf16: trainer.precision as resolved on the device
WORLD_SIZE = "world_size"
BITS = "bits"
MODEL_NAME = "model.name"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else SQLite in the working directory.

    A relative SQLite path is made absolute so that jobs running elsewhere write the same store.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri
