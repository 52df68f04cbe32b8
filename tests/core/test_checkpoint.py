"""Atomic checkpoints: only complete folders count, the newest is found, pruning keeps pins."""

import json
import shutil

import pytest
import torch

import qat.checkpoint
from qat.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint


def tiny():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip_restores_model_optimizer_and_state(tmp_path):
    model, optimizer = tiny()
    saved = save_checkpoint(tmp_path, 100, model, optimizer, {"step": 7, "loader": {"a": 1}}, 2)
    assert saved.path.name == "100"
    other, other_opt = tiny()
    other.load_state_dict(saved.model_state())
    other_opt.load_state_dict(saved.optimizer_state())
    assert torch.equal(other.weight, model.weight)
    assert saved.state() == {"tokens": 100, "step": 7, "loader": {"a": 1}}
    assert other_opt.state_dict()["state"][0]["step"] == optimizer.state_dict()["state"][0]["step"]


def test_half_written_folders_are_ignored(tmp_path):
    model, optimizer = tiny()
    save_checkpoint(tmp_path, 100, model, optimizer, {}, 5)
    (tmp_path / ".tmp-200-123").mkdir()  # a crash while writing
    incomplete = tmp_path / "300"
    incomplete.mkdir()  # a folder without its completion marker
    (incomplete / "state.json").write_text(json.dumps({"tokens": 300}))
    assert latest_checkpoint(tmp_path).tokens == 100


def test_rng_state_is_restored(tmp_path):
    model, optimizer = tiny()
    torch.manual_seed(3)
    saved = save_checkpoint(tmp_path, 1, model, optimizer, {}, 1)
    expected = torch.rand(4)
    torch.rand(10)
    saved.restore_rng()
    assert torch.equal(torch.rand(4), expected)


def test_pruning_keeps_the_newest_and_pinned(tmp_path):
    model, optimizer = tiny()
    save_checkpoint(tmp_path, 10, model, optimizer, {"pinned": True}, 2)
    for tokens in (20, 30, 40):
        save_checkpoint(tmp_path, tokens, model, optimizer, {}, 2)
    assert [c.tokens for c in list_checkpoints(tmp_path)] == [10, 30, 40]


def test_loading_refuses_arbitrary_objects(tmp_path):
    model, optimizer = tiny()
    saved = save_checkpoint(tmp_path, 5, model, optimizer, {}, 1)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"weight": Evil()}, saved.path / "model.pt")
    try:
        saved.model_state()
    except Exception as error:  # torch raises UnpicklingError for weights_only violations
        assert "weights_only" in str(error) or "Unsupported" in str(error)
    else:
        raise AssertionError("an arbitrary object was unpickled")


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    rmtree = shutil.rmtree
    model, optimizer = tiny()
    save_checkpoint(tmp_path, 100, model, optimizer, {}, 1)

    def killed_after_one_file(path, ignore_errors=False):
        if not (path / "state.json").exists():  # not a checkpoint (an empty staging folder)
            return rmtree(path, ignore_errors=ignore_errors)
        (path / "state.json").unlink()
        raise SystemExit("killed")  # the process dies in the middle of the delete

    with monkeypatch.context() as patch:
        patch.setattr(qat.checkpoint.shutil, "rmtree", killed_after_one_file)
        with pytest.raises(SystemExit):
            save_checkpoint(tmp_path, 200, model, optimizer, {}, 1)  # prunes 100
    # 100 is out of the listing (not a "complete" folder without its state), and the next
    # save of the resumed run prunes as usual and sweeps the leftover away.
    assert [c.tokens for c in list_checkpoints(tmp_path)] == [200]
    save_checkpoint(tmp_path, 300, model, optimizer, {}, 1)
    assert [c.tokens for c in list_checkpoints(tmp_path)] == [300]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["300"]


def test_pruning_passes_over_a_checkpoint_left_half_deleted(tmp_path):
    model, optimizer = tiny()
    save_checkpoint(tmp_path, 100, model, optimizer, {}, 5)
    (tmp_path / "100" / "state.json").unlink()  # what an interrupted rmtree used to leave
    save_checkpoint(tmp_path, 200, model, optimizer, {}, 1)
    assert [c.tokens for c in list_checkpoints(tmp_path)] == [200]
