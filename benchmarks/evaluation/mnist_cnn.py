"""The offline feature extractor for digits: a small MNIST classifier, trained once and cached.

Inception-v3 features are the standard for FID on natural images, but its weights download at run
time and it runs at a few images per second on a CPU. For the offline MNIST benchmark the suite uses
this CNN instead, registered with torch-fidelity under the honest name ``mnist-cnn``; numbers
computed with it are comparable only with other ``mnist-cnn`` numbers from the same weights (the
results record the weights' key).

Network (input (N, 1, 32, 32) in [-1, 1]): three [conv 4x4 stride 2 -> ReLU] layers with widths
(16, 32, 64) (32 -> 16 -> 8 -> 4 pixels), flatten (N, 64*4*4), linear -> ReLU = the *penultimate*
features (N, feature_dim=128) used by FID, KID and precision/recall, and a linear head -> the
*logits* (N, 10) whose softmax p(y|x) the Inception Score uses.

Training: MNIST-5k (``benchmarks.data.images.load_mnist5k``) with a seeded, stratified hold-out split
(10% by default) whose accuracy is recorded; AdamW with a one-cycle schedule and random
translations of up to ``max_shift`` pixels. The weights are cached in ``cache_dir("extractors")``
under a content hash of the data, the training config and the architecture version.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from tqdm.auto import tqdm

from benchmarks.core import logs
from benchmarks.data.images import load_mnist5k
from benchmarks.storage.atomic import built_once, save_json, save_torch
from benchmarks.storage.cache import cache_dir, content_hash

NAME = "mnist-cnn"
INPUT_SIZE = 32
NUM_CLASSES = 10
ARCH_VERSION = 1  # bump when MnistCNN or to_input changes: it is part of the cache key
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 RGB -> grey weights


@dataclass(frozen=True)
class TrainConfig:
    """How the classifier is trained; every field is part of the weights' cache key."""

    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    holdout_fraction: float = 0.1
    max_shift: int = 1
    widths: tuple[int, int, int] = (16, 32, 64)
    feature_dim: int = 128
    seed: int = 0


@contextlib.contextmanager
def one_thread():
    """Run torch ops on one intra-op thread, then restore the setting. This net is too small for
    intra-op parallelism: measured on 2 (shared) cores, a second thread cost 3-5x more CPU per
    image in training and inference and ran slower in wall time."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def to_input(images: Tensor) -> Tensor:
    """uint8 images (N, C, H, W), C in {1, 3}, any size -> float (N, 1, 32, 32) in [-1, 1].

    RGB is converted to grey with the BT.601 luma weights; other sizes are resized bilinearly
    (antialiased) to 32x32.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"{NAME} expects uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    x = images.float() / 127.5 - 1.0
    if x.shape[1] == 3:
        x = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] != 1:
        raise ValueError(f"{NAME} expects 1 or 3 image channels, got {x.shape[1]}")
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


class MnistCNN(nn.Module):
    """The classifier; ``features`` gives the penultimate activations, ``forward`` the logits."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), feature_dim: int = 128):
        super().__init__()
        layers, cin = [], 1
        for w in widths:
            layers += [nn.Conv2d(cin, w, 4, stride=2, padding=1), nn.ReLU()]
            cin = w
        self.conv = nn.Sequential(*layers)
        side = INPUT_SIZE // 2 ** len(widths)
        self.fc = nn.Linear(cin * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, NUM_CLASSES)
        self.arch = {"widths": list(widths), "feature_dim": feature_dim}

    def features(self, x: Tensor) -> Tensor:
        """(N, 1, 32, 32) in [-1, 1] -> penultimate features (N, feature_dim), non-negative."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 32, 32) in [-1, 1] -> logits (N, 10)."""
        return self.head(self.features(x))


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: ``round(fraction * n_c)`` random indices of every class c are held out.
    Returns (train indices, held-out indices), both sorted."""
    rng = np.random.default_rng(seed)
    held = [
        rng.permutation(np.flatnonzero(labels == c))[: round(fraction * np.sum(labels == c))] for c in np.unique(labels)
    ]
    held = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held), held


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate every image of (N, C, H, W) by its own integer offset in [-max_shift, max_shift]^2,
    filling with the background value -1."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@torch.no_grad()
def accuracy(model: MnistCNN, images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on uint8 images (N, C, H, W) with labels (N,)."""
    model.eval()
    correct = sum(
        (model(to_input(images[i : i + batch_size])).argmax(-1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(images), batch_size)
    )
    return correct / len(images)


@one_thread()
def train_classifier(
    images: np.ndarray, labels: np.ndarray, config: TrainConfig, progress: bool = True, name: str = NAME
) -> tuple[MnistCNN, dict]:
    """Train on uint8 images (N, 1, 32, 32) / int labels (N,) minus the hold-out split; cross-entropy,
    AdamW, one-cycle learning rate, with a progress bar over the steps. Returns the model (eval
    mode) and ``{"holdout_accuracy", "train_accuracy", "train_seconds", "num_train", "num_holdout"}``."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    train_idx, held_idx = holdout_split(labels, config.holdout_fraction, config.seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels).long()
    x_train, y_train = to_input(x_all[train_idx]), y_all[train_idx]
    model = MnistCNN(config.widths, config.feature_dim)
    steps_per_epoch = -(-len(train_idx) // config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    model.train()
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        desc=f"train {name} feature extractor",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    for _ in range(config.epochs):
        order = torch.randperm(len(train_idx), generator=generator)
        for i in range(0, len(order), config.batch_size):
            batch = order[i : i + config.batch_size]
            loss = F.cross_entropy(model(random_shift(x_train[batch], config.max_shift, generator)), y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    info = {
        "holdout_accuracy": accuracy(model, x_all[held_idx], y_all[held_idx]) if len(held_idx) else float("nan"),
        "train_accuracy": accuracy(model, x_all[train_idx], y_all[train_idx]),
        "train_seconds": time.perf_counter() - start,
        "num_train": int(len(train_idx)),
        "num_holdout": int(len(held_idx)),
    }
    return model, info


def weights_key(images: np.ndarray, labels: np.ndarray, config: TrainConfig) -> str:
    """Content hash of the training data, the config and the architecture version."""
    return content_hash(
        images.tobytes(),
        labels.astype(np.int64).tobytes(),
        asdict(config),
        {"arch_version": ARCH_VERSION, "shape": list(images.shape)},
    )


def mnist_cnn_weights(config: TrainConfig = TrainConfig()) -> Path:
    """Path of the trained classifier for MNIST-5k and ``config``, training it on first use.

    Cached as ``<cache>/extractors/mnist-cnn-<key>/weights.pt`` (``{"arch", "state_dict"}``,
    loadable with ``weights_only=True``) and ``info.json`` (key, config, accuracies, train seconds).
    A file lock makes concurrent callers train once.
    """
    return classifier_weights(NAME, *load_mnist5k(), config)


def classifier_weights(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig = TrainConfig(),
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> Path:
    """Path of this architecture trained on uint8 ``images`` (N, C, H, W) with labels (N,) in
    [0, 10), cached as ``<cache>/extractors/<name>-<key>/`` (see ``mnist_cnn_weights``). ``test``:
    a held-apart (images, labels) split whose accuracy ``info.json`` records as ``test_accuracy``."""
    key = weights_key(images, labels, config)
    folder = cache_dir("extractors", f"{name}-{key}")
    path = folder / "weights.pt"
    with built_once(path, path.exists) as from_cache:
        if from_cache:
            logs.reused(f"feature extractor: train {name}", f"trained weights in the cache ({folder})", part="eval")
        else:
            with logs.stage(f"feature extractor: train {name} ({config.epochs} epochs)", part="eval"):
                model, info = train_classifier(images, labels, config, logs.show_progress(), name)
            log = logs.get_logger("eval")
            if info["num_holdout"]:
                log.info("feature extractor: %s hold-out accuracy %.1f%%", name, 100 * info["holdout_accuracy"])
            if test is not None:
                info["test_accuracy"] = accuracy(model, torch.from_numpy(test[0]), torch.from_numpy(test[1]))
                log.info("feature extractor: %s test accuracy %.1f%%", name, 100 * info["test_accuracy"])
            save_json(
                {"key": key, "config": asdict(config), "arch_version": ARCH_VERSION, **info}, folder / "info.json"
            )
            save_torch({"arch": model.arch, "state_dict": model.state_dict()}, path)
    return path


def load_classifier(weights_path: str | Path) -> MnistCNN:
    """The classifier saved by ``mnist_cnn_weights`` (eval mode)."""
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"{NAME} weights file {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or set(ckpt) != {"arch", "state_dict"}:
        raise ValueError(f"{path} is not a {NAME} weights file (expected keys 'arch' and 'state_dict')")
    model = MnistCNN(tuple(ckpt["arch"]["widths"]), ckpt["arch"]["feature_dim"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


class FeatureExtractorMnistCNN(FeatureExtractorBase):
    """torch-fidelity feature extractor over ``MnistCNN``.

    Input: uint8 (N, C, H, W) with C in {1, 3}, any size (see ``to_input``). Provided features:
    ``"penultimate"`` (N, feature_dim) for FID/KID/PR and ``"logits"`` (N, 10) for IS, which
    torch-fidelity turns into p(y|x) with a softmax. (Inception's IS layer is ``logits_unbiased``,
    its fc layer without the bias, to match the original TF code; here the classifier's own
    probabilities are the softmax of the biased logits, so IS uses ``"logits"``.)
    """

    def __init__(
        self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None, **kwargs
    ):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(
                f"feature extractor {name!r} needs feature_extractor_weights_path "
                "(see benchmarks.evaluation.mnist_cnn.mnist_cnn_weights)"
            )
        self.net = load_classifier(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        with one_thread():
            feats = self.net.features(to_input(x))
            out = {"penultimate": feats, "logits": self.net.head(feats)}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False


if NAME not in FEATURE_EXTRACTORS_REGISTRY:  # a module reload must not register twice
    register_feature_extractor(NAME, FeatureExtractorMnistCNN)
