"""The suite's own small VQ-VAE (van den Oord et al., 2017), trained on the offline data in seconds.

Architecture (f = ``downsample`` = 2^L, width ``channels``)::

    encoder  x (B, C, H, W) -> L x [4x4 stride-2 conv, ReLU] -> 3x3 conv -> 2 ResBlocks -> ReLU
             -> 1x1 conv -> z_e (B, d, H/f, W/f)
    quantize c = argmin_k ||z_e - e_k||^2 per position,  z_q = e_c            (codebook (K, d))
    decoder  z_q -> 1x1 conv -> 3x3 conv -> 2 ResBlocks -> ReLU -> L x [4x4 stride-2 transposed conv]
             -> x_hat (B, C, H, W)

ResBlock: ``x + conv1x1(relu(conv3x3(relu(x))))``.

Training loss ``||x_hat - x||^2 + beta ||z_e - sg(z_q)||^2`` (both means over elements) with the
straight-through estimator ``z_q = z_e + sg(e_c - z_e)``, so the reconstruction gradient reaches
the encoder unchanged. The codebook is not trained by gradient but by exponential moving averages
(EMA, decay gamma) of the assigned encoder outputs::

    N_k <- gamma N_k + (1 - gamma) n_k            n_k = #positions assigned to code k in the batch
    m_k <- gamma m_k + (1 - gamma) sum_{i: c_i = k} z_i
    e_k <- m_k / N_k

Dead-code restarts: after each update, every code whose usage EMA ``N_k`` is below one assignment
per batch is re-seeded at an encoder output of the current batch drawn with probability
proportional to its squared distance to the nearest code (k-means++ style), so codes move to
where the data are poorly represented, and most of the codebook ends up in use.

After training the latent space is *standardised*: with mu (d,) the mean and s the scalar standard
deviation of the embeddings ``e_c`` over the training set, the encoder output, the codebook and
the decoder input are remapped exactly (``e' = (e - mu) / s``, folded into the 1x1 convolutions
on either side), which leaves nearest-code assignments and reconstructions unchanged and gives the
flow-matching methods data embeddings ``z1 = C[c]`` of zero mean and unit variance, matching their
N(0, I) source noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from backbones.tokenizers.base import Tokenizer, nearest_codes

ALLOWED_DOWNSAMPLE = (2, 4, 8)
WEIGHTS_FILE = "vqvae.pt"
INFO_FILE = "info.json"


@dataclass
class VQVAEConfig:
    """Architecture and training budget of the suite's VQ-VAE.

    The defaults train in about a minute on 2 CPU cores on MNIST-5k (32x32 -> an 8x8 grid of
    codes from K = 128 entries of dimension 4).
    """

    codebook_size: int = 128  # K
    code_dim: int = 4  # d
    downsample: int = 4  # f: 32x32 images -> 8x8 code grids
    channels: int = 32  # width of the conv stacks
    train_steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3  # Adam, cosine-annealed to 0 over train_steps
    commitment: float = 0.25  # beta
    ema_decay: float = 0.99  # gamma of the codebook EMA
    seed: int = 0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
                raise TypeError(f"VQVAEConfig.{f.name} must be an integer, got {value!r} ({type(value).__name__})")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                    raise TypeError(f"VQVAEConfig.{f.name} must be a number, got {value!r} ({type(value).__name__})")
                setattr(self, f.name, float(value))
        checks = [
            ("codebook_size", 2 <= self.codebook_size <= 65536, "must be in [2, 65536] (codes are stored as uint16)"),
            ("code_dim", self.code_dim >= 1, "must be >= 1"),
            ("downsample", self.downsample in ALLOWED_DOWNSAMPLE, f"must be one of {ALLOWED_DOWNSAMPLE}"),
            ("channels", self.channels >= 1, "must be >= 1"),
            ("train_steps", self.train_steps >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("lr", math.isfinite(self.lr) and self.lr > 0, "must be a finite number > 0"),
            ("commitment", math.isfinite(self.commitment) and self.commitment >= 0, "must be a finite number >= 0"),
            ("ema_decay", 0 <= self.ema_decay < 1, "must be in [0, 1)"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"VQVAEConfig.{name} {rule}, got {getattr(self, name)!r}")


class ResBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``, (B, ch, h, w) -> (B, ch, h, w)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    """Images (B, C, H, W) -> z_e (B, d, H/f, W/f)."""

    def __init__(self, in_channels: int, ch: int, code_dim: int, downsample: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(int(math.log2(downsample))):
            layers += [nn.Conv2d(in_channels if i == 0 else ch, ch, 4, stride=2, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(ch, ch, 3, padding=1), ResBlock(ch), ResBlock(ch), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.to_code = nn.Conv2d(ch, code_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.to_code(self.body(x))


class Decoder(nn.Module):
    """Embedding grid (B, d, h, w) -> images (B, C, h*f, w*f) (unbounded; clamp for [-1, 1])."""

    def __init__(self, out_channels: int, ch: int, code_dim: int, downsample: int):
        super().__init__()
        # 1x1 first so that an affine change of the code space folds into it exactly
        self.from_code = nn.Conv2d(code_dim, ch, 1)
        layers: list[nn.Module] = [nn.Conv2d(ch, ch, 3, padding=1), ResBlock(ch), ResBlock(ch), nn.ReLU()]
        levels = int(math.log2(downsample))
        for i in range(levels):
            last = i == levels - 1
            layers.append(nn.ConvTranspose2d(ch, out_channels if last else ch, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.from_code(z))


class EMAQuantizer(nn.Module):
    """Nearest-code quantizer with an EMA-updated codebook and dead-code restarts.

    Buffers: ``embedding`` (K, d) the codebook e_k; ``cluster_size`` (K,) the usage EMA N_k;
    ``embed_sum`` (K, d) the EMA m_k of summed assigned vectors (e_k = m_k / N_k).
    ``forward`` is free of side effects; the training loop calls ``ema_update`` and
    ``restart_dead_codes`` explicitly.
    """

    def __init__(self, codebook_size: int, code_dim: int, decay: float, dead_threshold: float = 1.0):
        super().__init__()
        self.decay, self.dead_threshold = decay, dead_threshold
        self.register_buffer("embedding", torch.randn(codebook_size, code_dim))
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("embed_sum", self.embedding.clone())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z_e (B, d, h, w) -> (z_q straight-through (B, d, h, w), codes (B, h, w) int64,
        commitment loss ``mean (z_e - sg(e_c))^2``)."""
        codes = nearest_codes(z.detach(), self.embedding, normalized=False)
        e = self.embedding[codes].permute(0, 3, 1, 2)  # (B, d, h, w)
        commit = F.mse_loss(z, e)  # the codebook is a buffer: no gradient flows into it
        return z + (e - z).detach(), codes, commit

    @torch.no_grad()
    def init_from(self, z_flat: Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent start: every code at a random encoder output z_flat (n, d), N_k = 1."""
        k = self.embedding.shape[0]
        idx = (
            torch.randint(len(z_flat), (k,), generator=generator)
            if len(z_flat) < k
            else torch.randperm(len(z_flat), generator=generator)[:k]
        )
        self.embedding.copy_(z_flat[idx])
        self.embed_sum.copy_(z_flat[idx])
        self.cluster_size.fill_(1.0)

    @torch.no_grad()
    def ema_update(self, z_flat: Tensor, codes: Tensor) -> None:
        """One EMA step from the batch's encoder outputs z_flat (n, d) and their codes (n,)."""
        k = self.embedding.shape[0]
        onehot = F.one_hot(codes, k).to(z_flat.dtype)  # (n, K)
        self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot.T @ z_flat, alpha=1 - self.decay)
        alive = self.cluster_size > 1e-12
        self.embedding[alive] = self.embed_sum[alive] / self.cluster_size[alive, None]

    @torch.no_grad()
    def restart_dead_codes(self, z_flat: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Re-seed codes with ``N_k < dead_threshold`` at batch vectors z_flat (n, d) drawn with
        probability proportional to their squared distance to the nearest code; their EMA state is
        reset to N_k = 1, m_k = e_k. Returns the (K,) bool mask of restarted codes."""
        dead = self.cluster_size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return dead
        d2 = torch.cdist(z_flat, self.embedding).min(dim=1).values.square()  # (n,)
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        replace = n_dead > int((weights > 0).sum())
        idx = torch.multinomial(weights, n_dead, replacement=replace, generator=generator)
        self.embedding[dead] = z_flat[idx]
        self.embed_sum[dead] = z_flat[idx]
        self.cluster_size[dead] = 1.0
        return dead


class VQVAE(Tokenizer):
    """The suite's VQ-VAE tokenizer (codes not normalised; see the module docstring)."""

    normalized = False

    def __init__(self, cfg: VQVAEConfig, in_channels: int = 1):
        super().__init__()
        self.cfg, self.in_channels, self.downsample = cfg, in_channels, cfg.downsample
        self.encoder = Encoder(in_channels, cfg.channels, cfg.code_dim, cfg.downsample)
        self.quantizer = EMAQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema_decay)
        self.decoder = Decoder(in_channels, cfg.channels, cfg.code_dim, cfg.downsample)

    @property
    def codebook(self) -> Tensor:
        return self.quantizer.embedding

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Training pass on images (B, C, H, W) in [-1, 1]: ``z_e`` (B, d, h, w), ``codes`` (B, h, w),
        ``recon`` (B, C, H, W) unclamped, scalar ``commit``."""
        z = self.encoder(x)
        zq, codes, commit = self.quantizer(z)
        return {"z_e": z, "codes": codes, "recon": self.decoder(zq), "commit": commit}

    def encode(self, images: Tensor) -> Tensor:
        self._check_images(images)
        return nearest_codes(self.encoder(images), self.codebook, normalized=False)

    def decode(self, codes: Tensor) -> Tensor:
        return self.decoder(self.embed(codes)).clamp(-1, 1)

    def _check_images(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"VQVAE.encode expects images (B, {self.in_channels}, H, W), got {tuple(images.shape)}")
        if images.shape[2] % self.downsample or images.shape[3] % self.downsample:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not divisible by downsample {self.downsample}")

    @torch.no_grad()
    def standardize_latents_(self, mean: Tensor, std: float) -> None:
        """Exactly remap the code space by ``e' = (e - mean) / std`` (mean (d,), std > 0).

        Encoder: ``z' = (W z + b - mean) / std``; decoder input: ``W_dec (std e' + mean) + b_dec``.
        Nearest-code assignments (translation- and scale-invariant) and decoded images are unchanged.
        """
        enc, dec, q = self.encoder.to_code, self.decoder.from_code, self.quantizer
        dec.bias.add_(dec.weight[:, :, 0, 0] @ mean)
        dec.weight.mul_(std)
        enc.weight.div_(std)
        enc.bias.sub_(mean).div_(std)
        q.embedding.sub_(mean).div_(std)
        q.embed_sum.sub_(q.cluster_size[:, None] * mean).div_(std)

    def state(self) -> dict:
        """Everything needed to rebuild the model: plain config dicts and tensors only."""
        return {"config": asdict(self.cfg), "in_channels": self.in_channels, "state_dict": self.state_dict()}

    @classmethod
    def load(cls, path: str | Path) -> VQVAE:
        """Rebuild a saved VQ-VAE (``torch.load(weights_only=True)``), frozen, in eval mode."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"VQ-VAE weights {path} do not exist")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or not {"config", "in_channels", "state_dict"} <= blob.keys():
            raise ValueError(
                f"{path} is not a VQ-VAE file of this suite (expected keys config, in_channels, state_dict)"
            )
        model = cls(VQVAEConfig(**blob["config"]), in_channels=blob["in_channels"])
        model.load_state_dict(blob["state_dict"])
        return model.eval().requires_grad_(False)


def code_usage(counts: np.ndarray) -> tuple[float, int]:
    """Perplexity ``exp(-sum_k p_k log p_k)`` of code frequencies p = counts / sum, and #codes used."""
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum())), int((counts > 0).sum())


def _check_uint8_images(images: np.ndarray, downsample: int) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"VQ-VAE training images must be a uint8 array (N, C, H, W), got {desc}")
    if len(images) == 0:
        raise ValueError("VQ-VAE training images are empty")
    if images.shape[2] % downsample or images.shape[3] % downsample:
        raise ValueError(f"image size {images.shape[2:]} is not divisible by VQVAEConfig.downsample={downsample}")


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, x_all: Tensor, batch_size: int = 500) -> tuple[np.ndarray, float]:
    """Codes of every image x_all (N, C, H, W) in [-1, 1] -> (codes (N, h, w) int64, recon MSE)."""
    codes, sq_err = [], 0.0
    for start in range(0, len(x_all), batch_size):
        x = x_all[start : start + batch_size]
        c = model.encode(x)
        sq_err += float((model.decode(c) - x).square().sum())
        codes.append(c)
    return torch.cat(codes).numpy(), sq_err / x_all.numel()


def train_vqvae(cfg: VQVAEConfig, images: np.ndarray, progress: bool = True) -> tuple[VQVAE, dict]:
    """Train a VQ-VAE on uint8 images (N, C, H, W) (mapped to [-1, 1]); deterministic given ``cfg.seed``.

    Adam with a cosine learning-rate decay, batches drawn uniformly with replacement. Returns the
    frozen model (eval mode, standardised latents) and ``info``: ``recon_mse`` (mean squared error
    on the [-1, 1] scale over the whole dataset, eval mode), ``perplexity`` and ``codes_used`` of
    the code frequencies over the dataset, ``train_seconds``, ``latent_mean`` / ``latent_std``
    (the standardisation applied).
    """
    _check_uint8_images(images, cfg.downsample)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = VQVAE(cfg, in_channels=images.shape[1])
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(images).float().div_(127.5).sub_(1.0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.train_steps)
    model.train()
    bar = tqdm(range(cfg.train_steps), desc="VQ-VAE", disable=not progress, dynamic_ncols=True)
    for step in bar:
        x = x_all[torch.randint(len(x_all), (cfg.batch_size,), generator=gen)]
        if step == 0:
            with torch.no_grad():
                model.quantizer.init_from(_flat(model.encoder(x)), gen)
        out = model(x)
        loss = F.mse_loss(out["recon"], x) + cfg.commitment * out["commit"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        z_flat = _flat(out["z_e"].detach())
        model.quantizer.ema_update(z_flat, out["codes"].flatten())
        model.quantizer.restart_dead_codes(z_flat, gen)
        if progress and (step % 20 == 0 or step == cfg.train_steps - 1):
            counts = np.bincount(out["codes"].flatten().numpy(), minlength=cfg.codebook_size)
            bar.set_postfix(loss=f"{loss.item():.4f}", ppl=f"{code_usage(counts)[0]:.1f}")
    model.eval().requires_grad_(False)
    with torch.no_grad():
        codes = torch.cat([model.encode(x_all[i : i + 500]) for i in range(0, len(x_all), 500)])
    z1 = model.codebook[codes.flatten()]  # (N*h*w, d): the data embeddings
    mean = z1.mean(0)
    std = float((z1 - mean).std())
    model.standardize_latents_(mean, std)
    codes, mse = evaluate_vqvae(model, x_all)
    perplexity, used = code_usage(np.bincount(codes.ravel(), minlength=cfg.codebook_size))
    info = {
        "recon_mse": mse,
        "perplexity": perplexity,
        "codes_used": used,
        "train_seconds": time.perf_counter() - start,
        "latent_mean": mean.tolist(),
        "latent_std": std,
    }
    return model, info


def _flat(z: Tensor) -> Tensor:
    """(B, d, h, w) -> (B*h*w, d), positions in the order of ``codes.flatten()``."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
