"""The code-free checkpoint loader: tensors and containers come back, code never runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict

import pytest
import torch

from backbones.tokenizers.safe_pickle import Placeholder, UnsafeCheckpointError, safe_load
from tests.support.synthetic_ckpt import write_lightning_checkpoint


class _Reduce:
    """Pickles as ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _save_evil(path, func, *args):
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": _Reduce(func, *args)}, path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_os_system_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {"w": torch.ones(2)}, "payload": _Reduce(os.system, f"touch {marker}")},
        path,
        _use_new_zipfile_serialization=not legacy,
    )
    with pytest.raises(UnsafeCheckpointError, match=r"system.*could run code"):
        safe_load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "func, args",
    [
        (eval, ("__import__('os').getcwd()",)),
        (exec, ("x = 1",)),
        (getattr, (torch.Size([1]), "count")),
        (torch.load, ("somefile.pt",)),
        (open, ("somefile.txt", "w")),
    ],
    ids=["eval", "exec", "getattr", "torch.load", "open"],
)
def test_code_running_globals_are_refused(tmp_path, func, args):
    path = tmp_path / "evil.ckpt"
    _save_evil(path, func, *args)
    with pytest.raises(UnsafeCheckpointError, match=str(path.name)):
        safe_load(path)
    assert not (tmp_path / "somefile.txt").exists()


def test_unknown_classes_become_inert_placeholders(tmp_path, monkeypatch):
    """A global from an importable module with import-time and call-time side effects:
    the module is not imported, the callable not called, its arguments kept as data."""
    marker = tmp_path / "imported"
    module_dir = tmp_path / "pkg"
    module_dir.mkdir()
    (module_dir / "sideeffect_mod.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndef run(*args):\n    open({str(marker)!r} + '.called', 'w').close()\n"
    )
    monkeypatch.syspath_prepend(str(module_dir))
    import sideeffect_mod

    path = tmp_path / "ckpt.pt"
    torch.save({"x": _Reduce(sideeffect_mod.run, "arg", 3)}, path)
    marker.unlink()
    del sys.modules["sideeffect_mod"]

    loaded = safe_load(path)
    assert "sideeffect_mod" not in sys.modules
    assert not marker.exists() and not (tmp_path / "imported.called").exists()
    assert isinstance(loaded["x"], Placeholder)
    assert loaded["x"].qualname == "sideeffect_mod.run" and loaded["x"].args == ("arg", 3)


def test_lightning_checkpoint_loads_tensors_and_stubs_objects(tmp_path):
    state = OrderedDict(w=torch.randn(3, 4), b=torch.arange(5, dtype=torch.int64), h=torch.ones(2, dtype=torch.float16))
    path = write_lightning_checkpoint(tmp_path / "last.ckpt", state)
    assert "pytorch_lightning" not in sys.modules
    ckpt = safe_load(path)
    assert "pytorch_lightning" not in sys.modules
    for key, value in state.items():
        assert ckpt["state_dict"][key].dtype == value.dtype and torch.equal(ckpt["state_dict"][key], value)
    assert any(k.startswith("loss.") for k in ckpt["state_dict"])
    assert ckpt["global_step"] == 1234 and ckpt["epoch"] == 3
    ((callback_cls, callback_state),) = ckpt["callbacks"].items()
    assert issubclass(callback_cls, Placeholder)
    assert callback_cls.qualname == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert callback_state["best_model_path"] == "logs/last.ckpt"
    assert torch.equal(callback_state["best_model_score"], torch.tensor(0.25))
    hparams = ckpt["hyper_parameters"]  # a dict subclass: its items arrive through SETITEMS
    assert isinstance(hparams, Placeholder) and hparams.items == {"embed_dim": 4, "n_embed": 16384, "ckpt_path": None}
    namespace = ckpt["hparams_args"]  # argparse.Namespace: state through BUILD, argparse not called
    assert namespace.qualname == "argparse.Namespace" and not isinstance(namespace, argparse.Namespace)
    assert namespace.state == {"base_learning_rate": 4.5e-6, "gpus": "0,"}
    assert ckpt["optimizer_states"][0]["param_groups"][0]["betas"] == (0.5, 0.9)


def test_parameters_dtypes_bytes_and_sets_round_trip(tmp_path):
    obj = {
        "p": torch.nn.Parameter(torch.ones(2)),
        "dtype": torch.bfloat16,
        "bytes": b"\x00\xffabc",
        "set": {1, 2},
        "size": torch.Size([2, 3]),
        "device": torch.device("cpu"),
        "view": torch.arange(10)[2:5],
    }
    torch.save(obj, tmp_path / "x.pt")
    loaded = safe_load(tmp_path / "x.pt")
    assert isinstance(loaded["p"], torch.nn.Parameter) and torch.equal(loaded["p"], obj["p"])
    assert loaded["dtype"] is torch.bfloat16 and loaded["bytes"] == obj["bytes"] and loaded["set"] == {1, 2}
    assert loaded["size"] == torch.Size([2, 3]) and loaded["device"] == torch.device("cpu")
    assert torch.equal(loaded["view"], torch.tensor([2, 3, 4]))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        safe_load(path)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        safe_load(tmp_path / "nope.ckpt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a checkpoint dict"):
        safe_load(tmp_path / "list.pt")
