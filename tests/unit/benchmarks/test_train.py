"""The matched-budget trainer: resume gives the same loss trace, checkpoints are complete and
load without executing code, budgets are shared, labels are dropped at the configured rate."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from benchmarks.core.config import ConfigError, load_config
from benchmarks.training.trainer import Trainer, learning_rate


def tiny_config(**train):
    overrides = [
        "backbone=tiny/1",
        "eval.enabled=false",
        "train.batch_size=8",
        "train.log_every=1",
        "train.checkpoint_every=3",
        "train.iterations=6",
        "train.lr=1e-3",
        "train.ema_decay=0.9",
    ]
    overrides += [f"train.{k}={v}" for k, v in train.items()]
    return load_config("smoke", overrides)


@pytest.mark.parametrize("method", ["purr", "dfm"])
def test_resume_gives_the_same_loss_trace(method, toy_latents, tmp_path):
    cfg = tiny_config()
    full = Trainer(cfg, method, 0, tmp_path / "full", toy_latents, progress=False)
    full.run()
    reference = pd.read_csv(full.log_path)

    # an interrupted run: stop after the first checkpoint (step 3), then resume in a new process state
    first = Trainer(tiny_config(iterations=3), method, 0, tmp_path / "split", toy_latents, progress=False)
    first.run()
    resumed = Trainer(cfg, method, 0, tmp_path / "split", toy_latents, progress=False)
    resumed.run(resume=True)
    trace = pd.read_csv(resumed.log_path)

    assert list(trace["step"]) == list(range(1, 7))
    pd.testing.assert_series_equal(trace["loss"], reference["loss"], rtol=1e-6, atol=0)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_resume_drops_log_rows_written_after_the_checkpoint(toy_latents, tmp_path):
    cfg = tiny_config(keep_checkpoints=2)
    trainer = Trainer(cfg, "cfm", 0, tmp_path, toy_latents, progress=False)
    trainer.run()
    # a crash after the log rows of steps 4-6 were written but before the step-6 checkpoint
    trainer.checkpoints()[-1].unlink()
    resumed = Trainer(cfg, "cfm", 0, tmp_path, toy_latents, progress=False)
    resumed.run(resume=True)
    assert list(pd.read_csv(resumed.log_path)["step"]) == list(range(1, 7))


def test_checkpoint_holds_everything_and_loads_weights_only(toy_latents, tmp_path):
    trainer = Trainer(tiny_config(), "purr", 0, tmp_path, toy_latents, progress=False)
    trainer.run()
    (path,) = trainer.checkpoints()  # keep_checkpoints = 1
    state = torch.load(path, weights_only=True)
    kept = {"model", "ema", "optimizer", "step", "rng", "config", "train_wall_s", "train_cpu_s", "method", "seed"}
    assert kept <= set(state)
    assert state["step"] == 6
    assert state["config"]["train"]["iterations"] == 6
    assert not list(tmp_path.rglob("*.tmp"))


def test_training_records_cost(toy_latents, tmp_path):
    trainer = Trainer(tiny_config(), "purr", 0, tmp_path, toy_latents, progress=False)
    summary = trainer.run()
    assert summary["params"] == sum(p.numel() for p in trainer.model.parameters())
    # the head's matmul alone is 2 * width * (K) FLOPs per position forward, x3 with backward
    assert summary["flops_per_step"] > 3 * 2 * 64 * 16 * 64 * 8
    log = pd.read_csv(trainer.log_path)
    assert {"loss", "ce", "logsumexp", "grad_norm", "images_seen", "train_wall_s", "steps_per_s"} <= set(log.columns)
    assert log["images_seen"].iloc[-1] == 6 * 8
    # CPU seconds over the same spans as the wall seconds: positive, and at most all threads busy
    assert 0 < summary["train_cpu_s"] <= summary["train_wall_s"] * torch.get_num_threads() * 1.5 + 0.05
    # a steady-state step holds parameters, gradients, EMA and two Adam moments at once (fp32)
    assert summary["peak_step_bytes"] >= 5 * 4 * summary["params"]


def test_label_dropout_rate(toy_latents, tmp_path):
    cfg = tiny_config(batch_size=4000, iterations=1)
    trainer = Trainer(cfg, "cfm", 0, tmp_path, toy_latents, progress=False)
    seen = {}

    def spy(model, codes, labels, draws, _orig=trainer.method.loss):
        seen["labels"] = labels
        return _orig(model, codes, labels, draws)

    trainer.method.loss = spy
    trainer.train_step()
    null_fraction = (seen["labels"] == toy_latents.num_classes).float().mean().item()
    assert abs(null_fraction - 0.1) < 0.02


def test_a_training_step_reads_nothing_back_from_the_device(toy_latents, tmp_path):
    """Statistics stay on-device tensors (summed there, read once per log interval); before, every
    step read the loss, its diagnostics and the gradient norm back to the host (a GPU sync each)."""
    trainer = Trainer(tiny_config(), "dfm", 0, tmp_path, toy_latents, progress=False)
    stats = trainer.train_step()
    assert set(stats) == {"loss", "ce", "logsumexp", "grad_norm"}
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in stats.values())
    assert trainer.first_nonfinite.item() == float("inf")
    trainer.close_batches()


def test_prefetched_batches_equal_serial_ones_across_resume(toy_latents):
    """The prefetcher draws indices and label drops in step order on the calling thread, so its
    batches are those of a serial loader; each carries the generator state after its draws."""
    from benchmarks.training.prefetch import BatchPrefetcher

    shards, null = toy_latents.shards, toy_latents.num_classes
    serial_gen, states, serial = torch.Generator().manual_seed(7), [], []
    for _ in range(5):
        idx = torch.randint(len(shards), (16,), generator=serial_gen)
        dropped = torch.rand(16, generator=serial_gen) < 0.3
        codes, labels = shards.batch(idx)
        serial.append((codes, labels.masked_fill(dropped, null)))
        states.append(serial_gen.get_state())
    prefetcher = BatchPrefetcher(
        shards,
        torch.Generator().manual_seed(7),
        batch_size=16,
        label_dropout=0.3,
        null_label=null,
        device=torch.device("cpu"),
        depth=3,
    )
    for (codes, labels), state in zip(serial, states):
        batch = prefetcher.next()
        assert batch.codes.dtype == torch.int64 and torch.equal(batch.codes, codes)
        assert torch.equal(batch.labels, labels) and torch.equal(batch.data_state, state)
    prefetcher.close()


def test_ema_update_is_the_exponential_moving_average(toy_latents, tmp_path):
    import copy

    cfg = load_config("smoke", ["train.ema_decay=0.9"])
    trainer = Trainer(cfg, "cfm", 0, tmp_path, toy_latents)
    ema_before = copy.deepcopy(trainer.ema.state_dict())
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    trainer.update_ema()
    params = dict(trainer.model.named_parameters())
    for name, value in trainer.ema.named_parameters():
        torch.testing.assert_close(value, 0.9 * ema_before[name] + 0.1 * params[name])


def test_learning_rate_schedules_known_values():
    """Linear warmup to the peak, then constant, cosine or linear decay to 0 at the last step."""

    def lrs(schedule, warmup):
        train = tiny_config(iterations=10, warmup=warmup, lr_schedule=schedule).train
        return [learning_rate(train, step) for step in range(10)]

    assert lrs("constant", 0) == [1e-3] * 10
    assert lrs("constant", 4)[:5] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert lrs("linear", 4)[4:] == pytest.approx([1e-3 * (1 - k / 6) for k in range(6)])
    cosine = lrs("cosine", 2)
    assert cosine[2] == pytest.approx(1e-3) and cosine[6] == pytest.approx(5e-4)  # half way: s = 4/8
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:])) and cosine[-1] > 0


def test_optimizer_steps_with_the_scheduled_learning_rate(toy_latents, tmp_path):
    trainer = Trainer(tiny_config(warmup=2, lr_schedule="linear"), "cfm", 0, tmp_path, toy_latents, progress=False)
    used = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda: (used.append(trainer.optimizer.param_groups[0]["lr"]), step())[1]
    trainer.run()
    assert used == pytest.approx([learning_rate(trainer.cfg.train, k) for k in range(6)])
    assert used == pytest.approx([5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])


@pytest.mark.parametrize(
    "override, message",
    [("train.lr_schedule=step", "train.lr_schedule must be one of"), ("train.warmup=6", "train.warmup must be in")],
)
def test_bad_schedule_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**dict([override.removeprefix("train.").split("=")]))
