"""CPU seconds per training step and per evaluation cell of the default recipe's network, measured
as process CPU time on one intra-op thread (so the numbers hold on a machine shared with other
work; wall time on an idle machine is about CPU time / speed-up of 2 threads).

Data: random 8x8 code grids over K=128 codes of dimension 4 (the default VQ-VAE's shape), 10
classes; nothing from the cache. Run from the repository root (prints CSV; ``profile_step.csv``
holds two runs of it, column ``repeat``, on a loaded machine):

    python -m tools.profile_recipe
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from backbones.tokenizers.vqvae import VQVAE, VQVAEConfig
from benchmarks.core.config import load_config
from benchmarks.data.latents import LatentSpace
from benchmarks.data.shards import CodeShards, write_meta, write_shard
from benchmarks.training.trainer import Trainer

STEPS, WARMUP = 20, 3
# AdamW implementations: torch's CPU default is the per-parameter for-loop (foreach defaults on for
# CUDA only); the trainer uses fused since these measurements.
ADAMW = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def latents(root: Path) -> LatentSpace:
    torch.manual_seed(0)
    tokenizer = VQVAE(VQVAEConfig(codebook_size=128, code_dim=4, train_steps=1)).eval()
    codes = np.random.default_rng(0).integers(0, 128, size=(512, 8, 8))
    entry = write_shard(root, 0, codes, np.arange(512) % 10)
    write_meta(root, grid=(8, 8), codebook_size=128, num_classes=10, shards=[entry])
    return LatentSpace(
        tokenizer=tokenizer,
        shards=CodeShards(root),
        images=None,
        num_classes=10,
        image_size=32,
        info={"tokenizer": "random"},
    )


def cpu_seconds(fn, repeats: int) -> float:
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def train_step_cost(space, root, method, batch, backbone="mini/2", optimizer="for-loop") -> float:
    cfg = load_config("default", [f"train.batch_size={batch}", f"backbone={backbone}", "eval.enabled=false"])
    trainer = Trainer(
        cfg, method, 0, root / f"{method}-{batch}-{backbone.replace('/', '')}-{optimizer}", space, progress=False
    )
    t = cfg.train
    trainer.optimizer = torch.optim.AdamW(
        trainer.model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay, **ADAMW[optimizer]
    )
    cpu_seconds(trainer.train_step, WARMUP)
    return cpu_seconds(trainer.train_step, STEPS)


def sample_cost(space, root, method, n=250, steps=20) -> float:
    cfg = load_config("default", ["eval.enabled=false"])
    trainer = Trainer(cfg, method, 0, root / f"sample-{method}", space, progress=False)
    labels = torch.arange(n) % 10
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return (
            cpu_seconds(
                lambda: space.tokenizer.decode(
                    trainer.method.sample(
                        trainer.ema,
                        labels,
                        space.shards.grid,
                        steps=steps,
                        temperature=1.0,
                        cfg_scale=1.0,
                        generator=generator,
                    ).codes
                ),
                2,
            )
            / n
        )


def main() -> None:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    space = latents(root / "shards")
    print("what,method,setting,cpu_s", flush=True)
    for method in ("purr", "cfm", "dfm"):
        print(
            f"train_step,{method},mini/2 batch 32 AdamW for-loop,{train_step_cost(space, root, method, 32):.4f}",
            flush=True,
        )
    for setting, kw in (
        ("mini/2 batch 32 AdamW foreach", {"batch": 32, "optimizer": "foreach"}),
        ("mini/2 batch 32 AdamW fused", {"batch": 32, "optimizer": "fused"}),
        ("mini/2 batch 64 AdamW for-loop", {"batch": 64}),
        ("mini/2 batch 128 AdamW for-loop", {"batch": 128}),
        ("mini/4 batch 32 AdamW for-loop", {"batch": 32, "backbone": "mini/4"}),
        ("tiny/2 batch 32 AdamW for-loop", {"batch": 32, "backbone": "tiny/2"}),
    ):
        print(f"train_step,purr,{setting},{train_step_cost(space, root, 'purr', **kw):.4f}", flush=True)
    for method in ("purr", "cfm", "dfm"):
        print(f"sample_and_decode_per_image,{method},20 Euler steps,{sample_cost(space, root, method):.5f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
