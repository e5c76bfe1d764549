"""Evaluation at scale: every rank samples its block of each cell, rank 0 scores the gathered
features, and the results do not depend on the number of ranks; decoding in micro-batches."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from benchmarks.core.config import load_config
from benchmarks.evaluation import evaluator
from benchmarks.evaluation.sampling import decode_codes, sample_images, shard_range
from benchmarks.launching.jobs import run_job
from tests.support.ranks import free_port, member_of_group

METRICS = ["fid", "kid_mean", "precision", "recall", "isc", "entropy"]
OVERRIDES = [
    "train.device=cpu",
    "train.iterations=20",
    "train.checkpoint_every=10",
    "eval.temperatures=[]",
    "eval.cells=[{steps: 8}, {steps: 4, sampler: heun, at: last, methods: [purr]},"
    " {steps: 8, sampler: maskgit, at: last, methods: [dfm]}]",
]
"""Two checkpoints with an Euler cell each, and at the last one a Heun (purr) or MaskGIT (dfm) cell:
every sampler draws through the per-sample seeds, so no sample depends on the rank drawing it."""


def _job_rank(rank: int, world: int, port: int, method: str, run_dir: str, cache: str) -> None:
    """One rank of a torchrun-style job running the real job function (train + evaluate)."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        VQFLOW_CACHE=cache,
    )
    torch.set_num_threads(1)
    sampled = []

    def counting(method, model, tokenizer, grid, labels, seeds, **options):
        sampled.append(len(labels))
        return sample_images(method, model, tokenizer, grid, labels, seeds, **options)

    evaluator.sample_images = counting  # this process's evaluator: count the samples this rank draws
    with member_of_group():
        summary = run_job(load_config("smoke", OVERRIDES), method, 0, run_dir, progress=False)
        with open(f"{run_dir}/rank{rank}.txt", "w") as f:
            f.write(f"{summary['eval_s']} {sum(sampled)}")


def test_shards_cover_every_sample_once():
    for n, world in [(100, 2), (7, 3), (2, 4)]:
        blocks = [shard_range(n, r, world) for r in range(world)]
        assert [i for b in blocks for i in b] == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["purr", "dfm"])
def test_two_gloo_ranks_write_the_metrics_of_one_process(method, shared_cache, tmp_path, monkeypatch):
    """The smoke job (train 20 steps, evaluate 2 checkpoints, Euler and another sampler) on 2 gloo ranks writes the
    single-process metrics: each sample's noise comes from its own seed, each rank samples half
    of every cell, and rank 0 scores the gathered features."""
    monkeypatch.setenv("VQFLOW_CACHE", str(shared_cache))
    single = tmp_path / "single"
    summary = run_job(load_config("smoke", OVERRIDES), method, 0, single, progress=False)
    two = tmp_path / "two"
    two.mkdir()
    mp.spawn(_job_rank, args=(2, free_port(), method, str(two), str(shared_cache)), nprocs=2, join=True)

    want, got = pd.read_csv(single / "metrics.csv"), pd.read_csv(two / "metrics.csv")
    assert len(want) == len(got) == 3 and list(got["step"]) == list(want["step"]) == [10, 20, 20]
    assert list(got["sampler"]) == list(want["sampler"]) and got["sampler"].nunique() == 2
    for column in METRICS:
        pd.testing.assert_series_equal(got[column], want[column], rtol=1e-3, atol=1e-4, check_exact=False)
    (eval0, sampled0), (eval1, sampled1) = [map(float, (two / f"rank{r}.txt").read_text().split()) for r in (0, 1)]
    assert sampled0 == sampled1 == 150  # half of each of the 3 cells of 100 samples
    print(
        f"\n{method}: evaluation 1 process {summary['eval_s']:.2f} s; "
        f"2 ranks {eval0:.2f} / {eval1:.2f} s (rank 0 / 1); "
        f"cells' eval_wall_s {want['eval_wall_s'].sum():.2f} s vs {got['eval_wall_s'].sum():.2f} s"
    )


def test_chunked_decoding_equals_one_shot_decoding():
    from backbones.tokenizers.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    tokenizer = VQVAE(VQVAEConfig(codebook_size=16, code_dim=4, channels=8, train_steps=1)).eval()
    codes = torch.randint(16, (10, 8, 8))
    one_shot = decode_codes(tokenizer, codes, batch_size=10)
    assert one_shot.dtype == torch.uint8 and one_shot.shape[0] == 10
    assert torch.equal(decode_codes(tokenizer, codes, batch_size=3), one_shot)


FLOOR_OVERRIDES = ["train.device=cpu", "tokenizer.vqvae.train_steps=30", "eval.num_samples=41", "eval.kid_subsets=2"]


def _floor_rank(rank: int, world: int, port: int, run_dir: str, cache: str) -> None:
    """One rank computing the tokenizer floor; it writes how many images it reconstructed and
    what ``tokenizer_floor()`` returned."""
    import json

    from benchmarks.core.distributed import DistEnv
    from benchmarks.evaluation import fidelity
    from benchmarks.launching.jobs import latents_for

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), VQFLOW_CACHE=cache
    )
    torch.set_num_threads(1)
    reconstructed, real = [], fidelity.reconstruct

    def counting(tokenizer, images, **options):
        reconstructed.append(len(images))
        return real(tokenizer, images, **options)

    fidelity.reconstruct = counting  # this process's module: count what this rank reconstructs
    cfg = load_config("smoke", FLOOR_OVERRIDES)
    dist = DistEnv.from_environment()
    dist.init_process_group(torch.device("cpu"))
    with member_of_group():
        ev = evaluator.Evaluator(cfg, latents_for(cfg, progress=False), run_dir, progress=False, dist=dist)
        floor = ev.tokenizer_floor()
        with open(f"{run_dir}/rank{rank}.json", "w") as f:
            json.dump({"reconstructed": sum(reconstructed), "floor": floor}, f)


@pytest.mark.slow
def test_tokenizer_floor_is_sharded_over_two_ranks(shared_cache, tmp_path, monkeypatch):
    """Each of 2 gloo ranks reconstructs its block of the floor's 41 images (20 + 21), rank 0
    scores the gathered features: the single-process floor, written once."""
    import json

    from benchmarks.launching.jobs import latents_for

    monkeypatch.setenv("VQFLOW_CACHE", str(shared_cache))
    cfg = load_config("smoke", FLOOR_OVERRIDES)
    single = evaluator.Evaluator(cfg, latents_for(cfg, progress=False), tmp_path / "one", progress=False)
    want = single.tokenizer_floor()
    two = tmp_path / "two"
    two.mkdir()
    mp.spawn(_floor_rank, args=(2, free_port(), str(two), str(shared_cache)), nprocs=2, join=True)

    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["reconstructed"] for r in ranks] == [len(shard_range(41, r, 2)) for r in (0, 1)] == [20, 21]
    assert ranks[1]["floor"] == {}
    got = json.loads((two / "tokenizer_floor.json").read_text())
    assert got == ranks[0]["floor"] and want["n_samples"] == got["n_samples"] == 41
    for key, value in want.items():
        if key != "eval_wall_s":
            assert got[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
