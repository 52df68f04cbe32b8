"""A missing optional dependency is one line naming the pyproject extra that provides it."""

from __future__ import annotations

import json
import sys

import pytest

from qat import distributed
from qat.errors import QatError
from qat.extras import INSTALL, MissingExtraError, require


def test_an_installed_module_is_returned():
    assert require("json", "hf", needed_for="a test") is json


@pytest.mark.parametrize("extra", sorted(INSTALL))
def test_a_missing_module_names_its_extra(monkeypatch, extra):
    monkeypatch.setitem(sys.modules, "qat_absent_package", None)
    with pytest.raises(MissingExtraError) as raised:
        require("qat_absent_package", extra, needed_for="this feature")
    message = str(raised.value)
    assert isinstance(raised.value, QatError) and "\n" not in message
    assert message.startswith("this feature needs 'qat_absent_package', which is not installed")
    assert f"the '{extra}' extra" in message and f".[{extra}]" in message


def test_a_missing_dependency_of_an_installed_package_keeps_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "qat_broken_package.py").write_text("import qat_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as raised:
        require("qat_broken_package", "hf", needed_for="this feature")
    assert not isinstance(raised.value, MissingExtraError)
    assert raised.value.name == "qat_absent_dependency"


def test_trainer_deepspeed_without_deepspeed(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MissingExtraError, match=r"^trainer=deepspeed needs 'deepspeed'.* extra"):
        distributed.setup("cpu")
