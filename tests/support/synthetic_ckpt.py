"""Synthetic checkpoints in the real tokenizer files' key names, shapes and container formats.

The real files cannot be downloaded here, so tests write stand-ins:

* Lightning (``vq-f8``, ``taming-f16``): ``{"state_dict", "global_step", "epoch",
  "optimizer_states", "lr_schedulers", "callbacks", "hyper_parameters",
  "pytorch-lightning_version"}``; ``state_dict`` carries ``loss.*`` (discriminator and LPIPS)
  tensors; ``callbacks`` is keyed by a ``pytorch_lightning...ModelCheckpoint`` *class* and
  ``hyper_parameters`` is an ``AttributeDict`` (a dict subclass): both classes live in modules
  that exist only while the file is written, as for a user without Lightning installed.
* LlamaGen: ``{"model": state_dict}`` with LlamaGen's key names and the float buffer
  ``quantize.codebook_used`` [65536].

Weights are a randomly initialised :class:`backbones.tokenizers.pretrained.PretrainedVQ` of the kind
(optionally with reduced widths, e.g. ``ch=32``), renamed to the file's naming.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch

from backbones.tokenizers.pretrained import build_tokenizer, get_spec, to_checkpoint_key

LIGHTNING_CLASSES = {
    "pytorch_lightning.callbacks.model_checkpoint": "ModelCheckpoint",
    "pytorch_lightning.utilities.parsing": "AttributeDict",
}
LOSS_KEYS = {  # a few of taming's VQLPIPSWithDiscriminator tensors
    "loss.discriminator.main.0.weight": (64, 3, 4, 4),
    "loss.discriminator.main.0.bias": (64,),
    "loss.perceptual_loss.scaling_layer.shift": (1, 3, 1, 1),
    "loss.perceptual_loss.net.slice1.0.weight": (64, 3, 3, 3),
    "loss.perceptual_loss.lin0.model.1.weight": (1, 64, 1, 1),
}


def small_widths(kind: str) -> dict[str, int]:
    """Reduced widths for fast tests: ch 32, at most 32 latent channels, d <= 8, K = 512."""
    spec = get_spec(kind)
    return {"ch": 32, "z_channels": min(spec.z_channels, 32), "code_dim": min(spec.code_dim, 8), "codebook_size": 512}


def synthetic_state_dict(kind: str, seed: int = 0, **widths: int) -> OrderedDict[str, torch.Tensor]:
    """Random weights of ``kind`` under the file's key names (LlamaGen: with ``codebook_used``).

    The codebook is drawn away from unit norm so that normalisation is observable."""
    torch.manual_seed(seed)
    model = build_tokenizer(kind, device="cpu", **widths)
    with torch.no_grad():
        model.quantize.embedding.weight.mul_(torch.rand(model.codebook_size, 1) * 3 + 0.5)
    spec = get_spec(kind)
    state = OrderedDict((to_checkpoint_key(spec, k), v.clone()) for k, v in model.state_dict().items())
    if spec.container == "llamagen":
        state["quantize.codebook_used"] = torch.zeros(65536)
    return state


@contextlib.contextmanager
def _importable_lightning():
    """Make the fake Lightning classes picklable by name, then remove every trace of them."""
    added, classes = [], {}
    for module, name in LIGHTNING_CLASSES.items():
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix not in sys.modules:
                sys.modules[prefix] = types.ModuleType(prefix)
                added.append(prefix)
        base = dict if name == "AttributeDict" else object
        cls = type(name, (base,), {"__module__": module, "__qualname__": name})
        setattr(sys.modules[module], name, cls)
        classes[name] = cls
    try:
        yield classes
    finally:
        for prefix in added:
            del sys.modules[prefix]


def write_lightning_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor]) -> Path:
    """Save ``state_dict`` (plus ``loss.*`` tensors) as a PyTorch-Lightning checkpoint."""
    path = Path(path)
    state = OrderedDict(state_dict)
    for key, shape in LOSS_KEYS.items():
        state[key] = torch.randn(shape)
    first = next(iter(state_dict.values()))
    with _importable_lightning() as classes:
        hparams = classes["AttributeDict"](embed_dim=4, n_embed=16384, ckpt_path=None)
        checkpoint = {
            "epoch": 3,
            "global_step": 1234,
            "pytorch-lightning_version": "1.0.8",
            "state_dict": state,
            "optimizer_states": [
                {
                    "state": {0: {"step": 1234, "exp_avg": torch.zeros_like(first)}},
                    "param_groups": [{"lr": 4.5e-6, "betas": (0.5, 0.9), "params": [0]}],
                }
            ],
            "lr_schedulers": [],
            "callbacks": {
                classes["ModelCheckpoint"]: {
                    "best_model_score": torch.tensor(0.25),
                    "best_model_path": "logs/last.ckpt",
                }
            },
            "hyper_parameters": hparams,
            "hparams_args": argparse.Namespace(base_learning_rate=4.5e-6, gpus="0,"),
        }
        torch.save(checkpoint, path)
    return path


def write_llamagen_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], container: str = "model") -> Path:
    """Save ``state_dict`` as LlamaGen releases it: ``{container: state_dict}``."""
    path = Path(path)
    torch.save({container: OrderedDict(state_dict)}, path)
    return path


def write_checkpoint(kind: str, path: str | Path, seed: int = 0, **widths: int) -> OrderedDict[str, torch.Tensor]:
    """Write a synthetic checkpoint of ``kind`` in its real container format; returns the
    state dict as written (file key names)."""
    state = synthetic_state_dict(kind, seed, **widths)
    if get_spec(kind).container == "llamagen":
        write_llamagen_checkpoint(path, state)
    else:
        write_lightning_checkpoint(path, state)
    return state
