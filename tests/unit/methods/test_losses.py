"""Every training loss against an independent, explicit formula on fixed draws.

The model is a fixed random function of its inputs (``FakeModel``) that records what it was called
with, so the tests also pin the corrupted input each method builds (the path and its time
direction: t = 0 noise, t = 1 data).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import methods
from methods.base import T_EPS, BackboneIO

K, D, NUM_CLASSES = 7, 3, 4
B, H, W = 5, 3, 4


class FakeModel:
    """out[b, :, i, j] = A x[b, :, i, j] (embeddings) or T[x[b, i, j]] (tokens), + t_b a + E[y_b].

    Deterministic for a seed; ``inputs`` records every (x, t, y) it was called with."""

    def __init__(self, io: BackboneIO, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.io, self.num_classes, self.inputs = io, NUM_CLASSES, []
        shape = (io.out_channels, io.in_channels) if io.input == "embedding" else (io.in_channels, io.out_channels)
        self.weight = torch.randn(*shape, generator=g, requires_grad=True)
        self.time = torch.randn(io.out_channels, generator=g)
        self.label = torch.randn(NUM_CLASSES + 1, io.out_channels, generator=g)

    def __call__(self, x, t, y):
        self.inputs.append((x, t, y))
        if self.io.input == "embedding":
            out = torch.einsum("oc,bchw->bohw", self.weight, x)
        else:
            out = self.weight[x].permute(0, 3, 1, 2)
        return out + (t[:, None] * self.time + self.label[y])[:, :, None, None]


def setup(name, seed=0, **options):
    """A method with a random codebook, random codes/labels, one step's draws and a fake model."""
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(K, D, generator=g)
    method = methods.get_method(name)(codebook, **options)
    codes = torch.randint(K, (B, H, W), generator=g)
    labels = torch.randint(NUM_CLASSES + 1, (B,), generator=g)
    draws = method.draw(codes, torch.Generator().manual_seed(seed + 1))
    return method, codebook, codes, labels, draws, FakeModel(method.backbone_io(), seed)


def onehot_channels(codes, n):
    """(B, h, w) -> (B, n, h, w) float one-hot."""
    return F.one_hot(codes, n).permute(0, 3, 1, 2).float()


def embed_by_hand(codes, codebook):
    """z1[b, :, i, j] = C[codes[b, i, j]], written as a one-hot sum."""
    return torch.einsum("bkhw,kd->bdhw", onehot_channels(codes, codebook.shape[0]), codebook)


def gaussian_path_by_hand(draws, z1):
    t = draws["t"][:, None, None, None]
    return t * z1 + (1 - t) * draws["z0"]


def categorical_by_hand(logits, codes, z_weight, mask=None):
    """mean CE via explicit log-softmax and one-hot sums, plus z_weight * mean logsumexp^2."""
    logp = torch.log_softmax(logits, dim=1)
    ce = -(logp * onehot_channels(codes, logits.shape[1])).sum(1)
    lse = torch.logsumexp(logits, dim=1)
    weight = torch.ones_like(ce) if mask is None else mask.float()

    def mean(v):
        return (v * weight).sum() / weight.sum()

    return mean(ce) + z_weight * mean(lse**2), mean(ce), mean(lse)


def test_gaussian_path_draws_are_batch_first_and_as_specified():
    method, _, codes, _, _, _ = setup("purr")
    many = torch.zeros(4000, 2, 2, dtype=torch.long)
    draws = method.draw(many, torch.Generator().manual_seed(3))
    assert draws["t"].shape == (4000,) and draws["z0"].shape == (4000, D, 2, 2)
    assert draws["t"].min() >= T_EPS and draws["t"].max() < 1
    assert abs(draws["t"].mean().item() - 0.5) < 0.02
    assert abs(draws["z0"].mean().item()) < 0.02 and abs(draws["z0"].std().item() - 1) < 0.02
    again = method.draw(many, torch.Generator().manual_seed(3))
    assert all(torch.equal(draws[k], again[k]) for k in draws)


def test_purr_loss_is_cross_entropy_plus_z_loss():
    method, codebook, codes, labels, draws, model = setup("purr", z_loss=0.1)
    out = method.loss(model, codes, labels, draws)
    z_t, t, y = model.inputs[0]
    assert torch.allclose(z_t, gaussian_path_by_hand(draws, embed_by_hand(codes, codebook)), atol=1e-6)
    assert torch.equal(t, draws["t"]) and torch.equal(y, labels)
    loss, ce, lse = categorical_by_hand(model(z_t, t, y), codes, 0.1)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert out["logsumexp"].item() == pytest.approx(lse.item(), rel=1e-5)
    assert out["loss"].requires_grad and not out["ce"].requires_grad


def test_purr_default_z_loss_weight_is_the_papers():
    method, _, codes, labels, draws, model = setup("purr")
    assert method.z_loss == 1e-5
    out = method.loss(model, codes, labels, draws)
    loss, _, _ = categorical_by_hand(model(*model.inputs[0]), codes, 1e-5)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("name, target", [("cfm", "velocity"), ("cfm-endpoint", "endpoint")])
def test_continuous_losses_are_mse_to_their_targets(name, target):
    method, codebook, codes, labels, draws, model = setup(name)
    out = method.loss(model, codes, labels, draws)
    z1 = embed_by_hand(codes, codebook)
    z_t, t, y = model.inputs[0]
    assert torch.allclose(z_t, gaussian_path_by_hand(draws, z1), atol=1e-6)
    goal = z1 - draws["z0"] if target == "velocity" else z1
    pred = model(z_t, t, y)
    mse = sum(((pred[b] - goal[b]) ** 2).sum() for b in range(B)) / pred.numel()
    assert out["loss"].item() == pytest.approx(mse.item(), rel=1e-5)


def masked_path_by_hand(codes, draws, source):
    """Position (b, i, j) keeps its code iff u[b, i, j] < kappa(t_b) = t_b."""
    x = source.clone()
    for b in range(codes.shape[0]):
        keep = draws["u"][b] < draws["t"][b]
        x[b][keep] = codes[b][keep]
    return x


@pytest.mark.parametrize("masked_only", [False, True])
def test_masked_dfm_loss_is_cross_entropy_on_the_masked_path(masked_only):
    method, _, codes, labels, draws, model = setup("dfm", z_loss=0.05, masked_only=masked_only)
    assert method.backbone_io() == BackboneIO("tokens", K + 1, K + 1)
    out = method.loss(model, codes, labels, draws)
    x_t, t, _ = model.inputs[0]
    expected_x = masked_path_by_hand(codes, draws, torch.full_like(codes, K))
    assert x_t.dtype == torch.int64 and torch.equal(x_t, expected_x)
    assert torch.equal(t, draws["t"])
    masked = expected_x == K
    assert 0 < masked.sum() < masked.numel()  # both kinds of positions are present
    loss, ce, _ = categorical_by_hand(model(x_t, t, labels), codes, 0.05, masked if masked_only else None)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce.item(), rel=1e-5)


def test_uniform_dfm_loss_is_cross_entropy_on_the_uniform_path():
    method, _, codes, labels, draws, model = setup("dfm-uniform", z_loss=0.05)
    assert method.backbone_io() == BackboneIO("tokens", K, K)
    assert draws["source"].shape == codes.shape and draws["source"].min() >= 0 and draws["source"].max() < K
    out = method.loss(model, codes, labels, draws)
    x_t, t, _ = model.inputs[0]
    assert torch.equal(x_t, masked_path_by_hand(codes, draws, draws["source"]))
    loss, ce, _ = categorical_by_hand(model(x_t, t, labels), codes, 0.05)
    assert out["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce.item(), rel=1e-5)


@pytest.mark.parametrize(
    "name, clean_share", [("dfm", lambda t: t), ("dfm-uniform", lambda t: t + (1 - t) / K)], ids=["dfm", "dfm-uniform"]
)
def test_discrete_paths_show_clean_code_with_prob_kappa_t(name, clean_share):
    """P(x_t = c | t) is kappa(t) = t (mask source) or t + (1 - t)/K (uniform source), independently of
    how ``draw`` encodes its randomness: checked per sample over a 16 x 16 grid."""
    method = methods.get_method(name)(torch.randn(K, D))
    codes = torch.randint(K, (3000, 16, 16), generator=torch.Generator().manual_seed(0))
    draws = method.draw(codes, torch.Generator().manual_seed(1))
    model = FakeModel(method.backbone_io())
    method.loss(model, codes, torch.zeros(3000, dtype=torch.long), draws)
    share = (model.inputs[0][0] == codes).float().mean((1, 2))
    residual = share - clean_share(draws["t"])
    assert abs(residual.mean().item()) < 0.005
    assert residual.abs().max().item() < 0.2  # binomial(256, p) spread; a reversed time gives ~1


def test_invalid_z_loss_is_rejected_with_the_method_name():
    for name in ["purr", "dfm", "dfm-uniform"]:
        with pytest.raises(ValueError, match=f"{name}.*z_loss"):
            methods.get_method(name)(torch.randn(K, D), z_loss=-1.0)


@pytest.mark.parametrize(
    "name, options", [("purr", {}), ("cfm", {}), ("dfm", {}), ("dfm", {"masked_only": True}), ("dfm-uniform", {})]
)
def test_the_loss_does_not_depend_on_how_ranks_split_the_batch(name, options):
    """Data-parallel ranks take rows of the global batch's draws and DDP averages their gradients:
    the mean of the ranks' losses must be the one-process loss (with ``masked_only``, the masked
    positions are not evenly spread over the rows, so each rank must divide by the global count)."""
    method, _, codes, labels, draws, model = setup(name, **options)
    ranks = (slice(0, B - 1), slice(B - 1, 2 * B - 2))  # two ranks of B - 1 rows each (B = 5)
    codes, labels = torch.cat([codes, codes])[: 2 * B - 2], torch.cat([labels, labels])[: 2 * B - 2]
    draws = method.draw(codes, torch.Generator().manual_seed(3))
    whole = method.loss(model, codes, labels, draws)["loss"]
    halves = [
        method.loss(model, codes[rows], labels[rows], {k: v[rows] for k, v in draws.items()})["loss"] for rows in ranks
    ]
    grad_whole = torch.autograd.grad(whole, model.weight)[0]
    grad_ranks = torch.autograd.grad(sum(halves) / 2, model.weight)[0]
    assert (sum(halves) / 2).item() == pytest.approx(whole.item(), rel=1e-5)
    torch.testing.assert_close(grad_ranks, grad_whole, rtol=1e-5, atol=1e-6)
