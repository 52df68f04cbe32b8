"""The provenance record of a run folder or trunk, and the FINISHED-run check against MLflow."""

from __future__ import annotations

import json

import pytest

from qat.errors import ConfigError
from qat.store.provenance import PROVENANCE_FILE, check_or_record, mismatches


def test_a_folder_records_its_provenance_then_refuses_another(tmp_path):
    folder = tmp_path / "trunk"
    check_or_record(folder, {"precision": "bf16", "data_fingerprint": "aa"}, "trunk")
    assert json.loads((folder / PROVENANCE_FILE).read_text())["precision"] == "bf16"
    check_or_record(folder, {"precision": "bf16", "data_fingerprint": "aa"}, "trunk")  # same
    with pytest.raises(ConfigError, match=r"precision bf16 → fp32") as error:
        check_or_record(folder, {"precision": "fp32", "data_fingerprint": "aa"}, "trunk")
    assert "\n" not in str(error.value)


def test_only_keys_both_sides_know_can_disagree():
    assert mismatches({"precision": "bf16"}, {"precision": "bf16", "data_fingerprint": "x"}) == []
    assert mismatches({"data_fingerprint": "y"}, {"data_fingerprint": "x"}) == [
        "data_fingerprint y → x"
    ]


def test_a_finished_run_of_another_precision_is_refused(tmp_path):
    from qat.cell import finished_result
    from qat.orchestration.grid import expand_grid
    from qat.tracking import Tracker
    from qat.tracking_schema import FINAL_METRIC, RUN_KEY_TAG

    (config,) = expand_grid(["bits=4"])
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "qat")
    run = tracker.client.create_run(tracker.experiment_id, tags={RUN_KEY_TAG: config.run_key})
    tracker.log_params(run.info.run_id, {"precision": "bf16", "data_fingerprint": "aa"})
    tracker.client.log_metric(run.info.run_id, FINAL_METRIC, 3.5, step=1)
    tracker.end(run.info.run_id, "FINISHED")

    same = finished_result(config, tracker, {"precision": "bf16", "data_fingerprint": "aa"})
    assert same is not None and same.skipped and same.final_val_loss == 3.5
    with pytest.raises(ConfigError, match=r"FINISHED as MLflow run .*precision bf16 → fp32"):
        finished_result(config, tracker, {"precision": "fp32", "data_fingerprint": "aa"})
