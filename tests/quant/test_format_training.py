"""Every float format trains a real cell through train.py on CPU (one shared FP trunk), its
MLflow params record quant.format and analysis.collect reads B as its bits per weight; a bad
format is refused in one line with exit status 2."""

from __future__ import annotations

from analysis.collect import from_mlflow
from tests.integration.conftest import error_lines, runs, train

# The smallest cell the config accepts: 8 steps of 4×32 tokens, half of them QAT.
CELL = (
    "model=nano",
    "data.vocab_size=2048",
    "data.batch_size=4",
    "data.seq_len=32",
    "data.eval_tokens=256",
    "schedule.warmup_tokens=0",
    "tokens=1K",
    "qat_frac=0.5",
)
BY_BITS = {4: "fp4_e2m1,mxfp4,nvfp4", 6: "fp6_e2m3,fp6_e3m2", 8: "fp8_e4m3"}


def test_each_float_format_trains_a_cell_and_is_recorded(tmp_path, data_root):
    work = tmp_path / "work"
    stdout = ""
    for bits, formats in BY_BITS.items():
        result = train(work, data_root, "-m", *CELL, f"bits={bits}", f"quant.format={formats}")
        assert result.returncode == 0, result.stderr[-3000:]
        stdout += result.stdout
    finished = [r for r in runs(work) if r.info.status == "FINISHED"]
    recorded = {r.data.params["quant.format"]: r for r in finished}
    assert sorted(recorded) == sorted(",".join(BY_BITS.values()).split(","))
    for name, run in recorded.items():
        assert run.info.run_name.startswith(f"nano-{name}-f0.5-")
        assert float(run.data.metrics["final/val_loss"]) > 0
    # All of them branched from the one FP trunk: the format is no part of the FP phase.
    trunks = {
        line.split("trunk ")[1].split()[0]
        for line in stdout.splitlines()
        if "branched from trunk" in line
    }
    assert len(trunks) == 1

    # The analysis takes B as the bits per weight of the format, block scales counted.
    table = from_mlflow("qat", f"sqlite:///{work}/mlflow.db").set_index("format")
    assert table["B"].to_dict() == {
        "fp4_e2m1": 4.0,
        "mxfp4": 4.25,
        "nvfp4": 4.5,
        "fp6_e2m3": 6.0,
        "fp6_e3m2": 6.0,
        "fp8_e4m3": 8.0,
    }

    bad = train(work, data_root, *CELL, "bits=4", "quant.format=fp5")
    assert bad.returncode == 2
    (line,) = error_lines(bad.stderr)
    assert "allowed: int, fp4_e2m1, fp6_e2m3, fp6_e3m2, fp8_e4m3, mxfp4, nvfp4" in line
