"""The fused categorical head against the dense reference (``methods.base.categorical_loss`` on the
DiT's own ``unpatchify(head(features))``): loss, diagnostics and gradients, the posterior read-out,
CFG on features, the methods' fused and dense paths, and gradient sync under DDP."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import methods
from backbones.dit import build_dit
from methods.base import BackboneIO, categorical_loss, guided
from methods.heads import (
    DenseHead,
    dense_readout,
    fused_categorical_loss,
    fused_head_model,
    fused_readout,
    grid_from_tokens,
    head_readout,
    inverse_cdf_draw,
    tokens_from_grid,
)
from tests.support.ranks import free_port, member_of_group

B, V, WIDTH, GRID = 3, 11, 16, (4, 6)


def dit(patch: int, vocab: int = V, io_input: str = "embedding", dtype=torch.float64, seed: int = 0):
    """A tiny DiT whose head and adaLN are perturbed away from the zero init."""
    torch.manual_seed(seed)
    io = BackboneIO(io_input, 3 if io_input == "embedding" else vocab, vocab)
    model = build_dit("tiny/1", io, GRID, num_classes=4, patch=patch, width=WIDTH, heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype)


def by_hand(logits, targets, z, mask=None):
    """The dense loss in the logits' own precision (``categorical_loss`` computes in float32):
    mean over counted positions of -log softmax(l)_c + z logsumexp(l)^2, and the means of CE and lse."""
    onehot = nn.functional.one_hot(targets, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    ce = -(torch.log_softmax(logits, 1) * onehot).sum(1)
    lse = torch.logsumexp(logits, 1)
    weight = torch.ones_like(ce) if mask is None else mask.to(ce.dtype)

    def mean(v):
        return (v * weight).sum() / weight.sum()

    return {"loss": mean(ce) + z * mean(lse**2), "ce": mean(ce), "logsumexp": mean(lse)}


def dense_loss(model, hidden, targets, z, mask=None):
    return by_hand(model.unpatchify(model.head(hidden)), targets, z, mask)


def case(patch, seed=0, masked=False, dtype=torch.float64):
    model = dit(patch, dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed)
    tokens = GRID[0] * GRID[1] // patch**2
    hidden = torch.randn(B, tokens, WIDTH, generator=g, dtype=dtype)
    targets = torch.randint(V, (B, *GRID), generator=g)
    mask = torch.rand(B, *GRID, generator=g) < 0.4 if masked else None
    return model, hidden, targets, mask


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def assert_rel_close(actual, expected, rtol):
    err = (actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("patch", [1, 2])
def test_token_layout_is_the_one_unpatchify_inverts(patch):
    model = dit(patch)
    tokens = GRID[0] * GRID[1] // patch**2
    out = torch.randn(B, tokens, patch * patch * V, dtype=torch.float64)
    dense = model.unpatchify(out)  # (B, V, h, w)
    assert torch.equal(grid_from_tokens(out.view(B, tokens, patch * patch, V), GRID, patch), dense.permute(0, 2, 3, 1))
    codes = torch.randint(V, (B, *GRID))
    assert torch.equal(grid_from_tokens(tokens_from_grid(codes, patch), GRID, patch), codes)


@pytest.mark.parametrize("patch", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("z", [0.0, 0.05])
def test_fused_loss_and_gradients_match_the_dense_head(patch, masked, z):
    model, hidden, targets, mask = case(patch, masked=masked)
    hidden.requires_grad_(True)
    params = [hidden, model.head.weight, model.head.bias]
    ref = dense_loss(model, hidden, targets, z, mask)
    ref_grads = grads(3.0 * ref["loss"], params)
    for chunk in (None, 5):  # one chunk; several with a remainder
        out = fused_categorical_loss(hidden, model.head, targets, patch, z, mask, chunk_tokens=chunk)
        for key in ("loss", "ce", "logsumexp"):
            assert_rel_close(out[key], ref[key], 1e-10)
        assert not out["ce"].requires_grad and not out["logsumexp"].requires_grad
        for got, want in zip(grads(3.0 * out["loss"], params), ref_grads):
            assert_rel_close(got, want, 1e-10)


def test_fused_loss_without_bias_and_without_grad():
    model, hidden, targets, _ = case(2)
    head = nn.Linear(WIDTH, 4 * V, bias=False).double()
    hidden.requires_grad_(True)
    ref = by_hand(model.unpatchify(head(hidden)), targets, 0.1)
    out = fused_categorical_loss(hidden, head, targets, 2, 0.1, chunk_tokens=4)
    assert_rel_close(out["loss"], ref["loss"], 1e-10)
    for got, want in zip(grads(out["loss"], [hidden, head.weight]), grads(ref["loss"], [hidden, head.weight])):
        assert_rel_close(got, want, 1e-10)
    with torch.no_grad():
        assert_rel_close(fused_categorical_loss(hidden, head, targets, 2, 0.1)["loss"], ref["loss"], 1e-10)


def test_fused_loss_under_bf16_matches_dense_head():
    model, hidden, targets, _ = case(2, dtype=torch.float32)
    hidden.requires_grad_(True)
    params = [hidden, model.head.weight, model.head.bias]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the methods' dense path: bf16 logits, float32 loss
        ref = categorical_loss(model.unpatchify(model.head(hidden)), targets, 0.05)
        out = fused_categorical_loss(hidden, model.head, targets, 2, 0.05, chunk_tokens=5)
    assert out["loss"].dtype == torch.float32
    assert_rel_close(out["loss"], ref["loss"], 1e-3)
    for got, want, p in zip(grads(out["loss"], params), grads(ref["loss"], params), params):
        assert got.dtype == p.dtype
        assert_rel_close(got, want, 2e-2)


def test_fused_loss_rejects_mismatched_shapes():
    model, hidden, targets, _ = case(2)
    with pytest.raises(ValueError, match="tokens"):
        fused_categorical_loss(hidden, model.head, targets[:, :2], 2, 0.0)
    with pytest.raises(ValueError, match="multiple of 9"):
        fused_categorical_loss(hidden, model.head, targets, 3, 0.0)


@pytest.mark.parametrize("patch", [1, 2])
def test_fused_readout_matches_the_dense_readout(patch):
    model, hidden, _, _ = case(patch)
    codebook = torch.randn(V - 1, 5, dtype=torch.float64)
    uniforms = torch.rand(B, *GRID, generator=torch.Generator().manual_seed(1))
    options = dict(temperature=0.7, num_codes=V - 1, codebook=codebook, argmax=True, uniforms=uniforms)
    ref = dense_readout(model.unpatchify(model.head(hidden)).detach(), **options)
    got = fused_readout(hidden, model.head, patch, GRID, chunk_tokens=5, **options)
    assert torch.equal(got.draw, ref.draw)  # the same uniform per position, whatever the chunking
    assert got.mean.shape == (B, 5, *GRID) and got.entropy.shape == (B, *GRID)
    assert_rel_close(got.entropy, ref.entropy, 1e-10)
    assert_rel_close(got.mean, ref.mean, 1e-10)
    assert torch.equal(got.argmax, ref.argmax)
    # an explicit entropy: -sum pi log pi over the first K logits
    logits = model.unpatchify(model.head(hidden)).detach()[:, : V - 1] / 0.7
    pi = logits.softmax(1)
    assert_rel_close(got.entropy, -(pi * pi.log()).sum(1), 1e-10)


@pytest.mark.parametrize("patch", [1, 2])
def test_fused_draw_logprob_is_the_untempered_log_prob(patch):
    """MaskGIT's confidence: log softmax(l[:K])(draw) at temperature 1 while the draw is tempered,
    the same chunk by chunk as from the dense logits; the extra (mask) logit takes no mass."""
    model, hidden, _, _ = case(patch)
    uniforms = torch.rand(B, *GRID, generator=torch.Generator().manual_seed(2))
    options = dict(temperature=0.6, num_codes=V - 1, uniforms=uniforms, draw_logprob=True)
    logits = model.unpatchify(model.head(hidden)).detach()
    ref = dense_readout(logits, **options)
    got = fused_readout(hidden, model.head, patch, GRID, chunk_tokens=5, **options)
    assert torch.equal(got.draw, ref.draw)
    assert_rel_close(got.draw_logprob, ref.draw_logprob, 1e-10)
    untempered = torch.log_softmax(logits[:, : V - 1], dim=1).gather(1, ref.draw.unsqueeze(1)).squeeze(1)
    assert_rel_close(ref.draw_logprob, untempered, 1e-12)
    tempered = torch.log_softmax(logits[:, : V - 1] / 0.6, dim=1).gather(1, ref.draw.unsqueeze(1)).squeeze(1)
    assert (ref.draw_logprob - tempered).abs().max() > 0.1  # the test can tell the two apart
    assert dense_readout(logits, temperature=0.6, num_codes=V - 1, uniforms=uniforms).draw_logprob is None
    with pytest.raises(ValueError, match="draw_logprob needs uniforms"):
        dense_readout(logits, temperature=0.6, num_codes=V - 1, draw_logprob=True)


def test_fused_draws_follow_the_posterior():
    """Every token has the same features, so each of the p*p sub-positions has one known pi."""
    patch = 2
    model = dit(patch)
    tokens = GRID[0] * GRID[1] // 4
    hidden = torch.randn(1, 1, WIDTH, dtype=torch.float64).expand(800, tokens, WIDTH)
    uniforms = torch.rand(800, *GRID, generator=torch.Generator().manual_seed(0))
    got = fused_readout(
        hidden, model.head, patch, GRID, temperature=1.3, num_codes=V, uniforms=uniforms, chunk_tokens=1000
    )
    pi = (model.head(hidden[0, 0]).detach().view(4, V) / 1.3).softmax(-1)  # (p*p, V)
    draws = tokens_from_grid(got.draw, patch).reshape(-1, 4)
    for r in range(4):
        freq = torch.bincount(draws[:, r], minlength=V).double() / draws.shape[0]
        assert 0.5 * (freq - pi[r]).abs().sum() < 0.03


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_cdf_draws_match_probs_and_skip_zeros(dtype):
    """Rows with exact zeros (first, middle, last) and an unnormalised float32 row: frequencies match
    pi / sum(pi) in total variation, and a zero-probability category is never drawn."""
    pi = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0], [0.1, 0.1, 0.1, 0.1, 0.1, 0.5000001]], dtype=dtype)
    rows = pi.repeat_interleave(20000, 0)
    draws = inverse_cdf_draw(rows, torch.rand(len(rows), generator=torch.Generator().manual_seed(0))).view(2, -1)
    for r in range(2):
        freq = torch.bincount(draws[r], minlength=6).to(dtype) / draws.shape[1]
        assert 0.5 * (freq - pi[r] / pi[r].sum()).abs().sum() < 0.01
        assert (freq[pi[r] == 0] == 0).all()


def test_cfg_on_features_equals_cfg_on_logits():
    model = dit(2, dtype=torch.float32)  # the DiT's time embedding is float32
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(B, 3, *GRID, generator=g), torch.rand(B, generator=g)
    labels = torch.tensor([0, 2, 3])
    h_y = model(x, t, labels, return_features=True)
    h_null = model(x, t, torch.full_like(labels, 4), return_features=True)
    w = 2.5
    mixed_logits = model.unpatchify(model.head(h_null + w * (h_y - h_null)))
    assert_rel_close(mixed_logits, guided(model, x, t, labels, w), 1e-5)  # the bias cancels
    options = dict(grid=GRID, cfg_scale=w, temperature=0.9, num_codes=V, codebook=torch.randn(V, 3))
    fused = head_readout(model, x, t, labels, **options)
    dense = head_readout(DenseHead(model), x, t, labels, **options)
    assert_rel_close(fused.entropy, dense.entropy, 1e-5)
    assert_rel_close(fused.mean, dense.mean, 1e-5)


def test_fused_path_is_taken_only_for_models_that_support_it():
    model = dit(1)
    assert fused_head_model(model) is model
    assert fused_head_model(torch.compile(model)) is model  # compile wraps lazily: no compilation here
    assert fused_head_model(DenseHead(model)) is None
    assert fused_head_model(lambda x, t, y: x) is None


CONFIGS = [("purr", 1, {}), ("purr", 2, {}), ("dfm", 2, {}), ("dfm", 1, {"masked_only": True}), ("dfm-uniform", 2, {})]


@pytest.mark.parametrize("name,patch,options", CONFIGS)
def test_method_losses_are_the_same_on_the_fused_and_dense_paths(name, patch, options):
    torch.manual_seed(0)
    method = methods.get_method(name)(torch.randn(V, 3), z_loss=0.05, **options)
    io = method.backbone_io()
    model = dit(patch, vocab=io.out_channels, io_input=io.input, dtype=torch.float32)
    codes, labels = torch.randint(V, (B, *GRID)), torch.tensor([0, 1, 4])
    draws = method.draw(codes, torch.Generator().manual_seed(1))
    params = list(model.parameters())
    fused = method.loss(model, codes, labels, draws)
    dense = method.loss(DenseHead(model), codes, labels, draws)
    assert fused.keys() == dense.keys()
    for key in fused:
        assert_rel_close(fused[key], dense[key], 1e-5)
    for got, want in zip(grads(fused["loss"], params), grads(dense["loss"], params)):
        assert_rel_close(got, want, 1e-4)


@pytest.mark.parametrize(
    "name,cfg_scale,sampler",
    [
        ("purr", 1.0, "euler"),
        ("purr", 2.0, "euler"),
        ("dfm", 2.0, "euler"),
        ("dfm-uniform", 1.0, "euler"),
        ("purr", 2.0, "heun"),
        ("dfm", 2.0, "maskgit"),
    ],
)
def test_samplers_are_the_same_on_the_fused_and_dense_paths(name, cfg_scale, sampler):
    """Patch 1 and one chunk: the fused path draws its random numbers in the dense path's order."""
    torch.manual_seed(0)
    method = methods.get_method(name)(torch.randn(V, 3))
    io = method.backbone_io()
    model = dit(1, vocab=io.out_channels, io_input=io.input, dtype=torch.float32)
    labels = torch.tensor([0, 1, 2])
    runs = [
        method.sample(
            m,
            labels,
            GRID,
            steps=4,
            temperature=0.8,
            cfg_scale=cfg_scale,
            sampler=sampler,
            generator=torch.Generator().manual_seed(5),
        )
        for m in (model, DenseHead(model))
    ]
    assert torch.equal(runs[0].codes, runs[1].codes)
    assert runs[0].trace["entropy"] == pytest.approx(runs[1].trace["entropy"], rel=1e-5)


# ----------------------------------------------------------------------------- DDP


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    """One rank: its half of the batch through DistributedDataParallel; saves its gradients."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    with member_of_group():
        state = torch.load(os.path.join(folder, "state.pt"), weights_only=True)
        method = methods.get_method("purr")(state["codebook"])
        model = dit(2, vocab=V, dtype=torch.float32)
        model.load_state_dict(state["model"])
        ddp = nn.parallel.DistributedDataParallel(model)
        n = len(state["codes"]) // world
        rows = slice(rank * n, (rank + 1) * n)
        draws = {k: v[rows] for k, v in state["draws"].items()}
        method.loss(ddp, state["codes"][rows], state["labels"][rows], draws)["loss"].backward()
        torch.save({name: p.grad for name, p in model.named_parameters()}, os.path.join(folder, f"rank{rank}.pt"))


@pytest.mark.slow
def test_fused_loss_through_ddp_all_reduces_every_gradient(tmp_path):
    """Two gloo ranks each take half the batch through DistributedDataParallel (the features come
    through its forward); the synchronised gradients must be the single-process gradient of the
    full batch (the mean of the halves), for the backbone and the fused head alike."""
    torch.manual_seed(0)
    method = methods.get_method("purr")(torch.randn(V, 3))
    model = dit(2, vocab=V, dtype=torch.float32)
    codes, labels = torch.randint(V, (4, *GRID)), torch.tensor([0, 1, 2, 4])
    draws = method.draw(codes, torch.Generator().manual_seed(1))
    halves = [
        method.loss(model, codes[s], labels[s], {k: v[s] for k, v in draws.items()})["loss"]
        for s in (slice(0, 2), slice(2, 4))
    ]
    names, params = zip(*model.named_parameters())
    want = dict(zip(names, grads(sum(halves) / 2, list(params))))
    torch.save(
        {"codebook": method.codebook, "model": model.state_dict(), "codes": codes, "labels": labels, "draws": draws},
        tmp_path / "state.pt",
    )
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, grad in want.items():
            assert_rel_close(got[name], grad, 1e-4)


# ----------------------------------------------------------------------------- padded heads


def padded_and_plain(name: str, codes_k: int, patch: int):
    """The same DiT twice: with the output projection padded to a multiple of 64 (the default) and
    without; all weights equal (the padding rows random, so masking them is tested)."""
    torch.manual_seed(0)
    method = methods.get_method(name)(torch.randn(codes_k, 3), z_loss=0.05)
    io = method.backbone_io()
    models = [
        build_dit("tiny/1", io, GRID, num_classes=4, patch=patch, width=WIDTH, heads=2, head_align=align)
        for align in (64, 1)
    ]
    padded, plain = models
    per_token, v, v_pad = patch * patch, io.out_channels, padded.head_channels
    with torch.no_grad():
        for p in padded.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for name_, p in plain.named_parameters():
            source = padded.get_parameter(name_)
            if name_.startswith("head."):  # output channel q V' + v of the padded head is q V + v here
                source = source.view(per_token, v_pad, *source.shape[1:])[:, :v].reshape(p.shape)
            p.copy_(source)
    return method, padded, plain


@pytest.mark.parametrize("name, patch", [("dfm", 2), ("purr", 1)])
def test_padded_head_leaves_losses_and_samples_unchanged(name, patch):
    """dfm at K = 16384 has 4 x 16385 = 65540 head outputs, which misaligns its bf16 matmuls: the head
    is padded to a multiple of 64 and the padding logits are masked. Here K = 1025 (4 x 1026 -> 4160)."""
    method, padded, plain = padded_and_plain(name, 1025, patch)
    assert padded.head.out_features % 64 == 0 and padded.head.out_features > plain.head.out_features
    codes, labels = torch.randint(1025, (B, *GRID)), torch.tensor([0, 1, 4])
    draws = method.draw(codes, torch.Generator().manual_seed(1))
    shared = [n for n, _ in plain.named_parameters() if not n.startswith("head.")]
    results = []
    for model in (padded, plain, DenseHead(padded)):
        out = method.loss(model, codes, labels, draws)
        inner = model.model if isinstance(model, DenseHead) else model
        grad = dict(zip(shared, grads(out["loss"], [inner.get_parameter(n) for n in shared])))
        results.append((out, grad))
    for out, grad in results[1:]:
        for key in out:
            assert_rel_close(results[0][0][key], out[key], 1e-5)
        for n in shared:
            assert_rel_close(results[0][1][n], grad[n], 1e-4)
    assert padded(
        codes if method.backbone_io().input == "tokens" else method.embed(codes), torch.rand(B), labels
    ).shape == (B, method.backbone_io().out_channels, *GRID)
    runs = [
        method.sample(m, labels, GRID, steps=3, generator=torch.Generator().manual_seed(5)).codes
        for m in (padded, plain)
    ]
    assert torch.equal(runs[0], runs[1])
