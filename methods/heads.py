"""Categorical output heads without the full logits tensor: a fused linear + cross-entropy + z-loss
for training and a chunked posterior read-out for sampling.

The categorical methods (``purr``, ``dfm``, ``dfm-uniform``) end the backbone in a linear head:
hidden states ``h`` (B, T, D) of T = hw/p^2 tokens -> p*p*V logits per token -> unpatchified to
(B, V, h, w). At V = 16384 on a 32x32 grid the float32 logits take 64 MiB per sample, and the
dense loss holds several copies (head output, unpatchified copy, exp) and as many for the gradient.
Here the logits exist only for ``chunk_tokens`` tokens at a time (about ``CHUNK_ELEMENTS`` values).

Layout (what ``DiT.unpatchify`` inverts): token n = i (w/p) + j covers grid rows i p .. i p + p - 1
and columns j p .. j p + p - 1; its output channel (r p + s) V + v is logit v at grid position
(i p + r, j p + s). ``tokens_from_grid`` / ``grid_from_tokens`` convert per-position grids.

Training (``fused_categorical_loss``) computes exactly ``methods.base.categorical_loss``:
with per-position weights a_pos = 1/#counted on counted positions (the mask; all by default), 0 else,
and lse = logsumexp_v l_v,

    loss = sum_pos a_pos (lse - l_c) + lambda_z sum_pos a_pos lse^2,
    dloss/dl_v = a_pos [(1 + 2 lambda_z lse) softmax(l)_v - [v = c]]   =: G.

G is formed chunk by chunk *in the forward pass* and contracted at once: dh = G W, dW = G^T h,
db = sum_tokens G; the backward pass only scales them by the incoming gradient of the loss. This
is the gradient-in-forward variant of a chunked fused cross-entropy (the alternative, saving lse
and recomputing every chunk's logits in backward, does one more head matmul: +1/3 of the head's
training FLOPs, which at DiT-S/2 with V = 16384 is about half the model's). Its price: the loss
is one scalar that is back-propagated once (no double backward), and lambda_z is an input
rather than a separate differentiable output. Memory at the end of the forward: dW (the head's
size, float32) and dh (the size of h), which the dense path also allocates (in its backward).

Mixed precision: under autocast the matmuls run in the autocast dtype (bf16 on GPU: as the dense
head would); the softmax statistics, G and db are computed in float32 (float64 for float64
inputs), and dW is the float32 sum of the chunks' (bf16) products.

Sampling (``fused_readout``, reference ``dense_readout``): per position pi = softmax(l[:K] / tau)
over the first K logits (``num_codes``; the masked DFM's extra mask logit is never a target of a
jump), its entropy H = -sum pi log pi, optionally the posterior mean pi @ C, the argmax of l, a
draw from pi and that draw's untempered log-probability log softmax(l[:K])(draw) (MaskGIT's
confidence). Classifier-free guidance mixes logits l = l_null + w (l_y - l_null); since the head
is affine, W (h_null + w (h_y - h_null)) + b = l_null + w (l_y - l_null) (the bias terms
(1 - w) b + w b = b), so ``head_readout`` mixes the features and runs the head once.

``head_loss`` / ``head_readout`` are what the methods call: they take the fused path when the
model (under DistributedDataParallel / torch.compile wrappers) is a DiT-like module with
``forward(..., return_features=True)``, a ``head`` ``nn.Linear`` and a ``patch`` size, and the
dense reference path for any other ``(x, t, y) -> (B, V, h, w)`` callable (test oracles).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from methods.base import Denoiser, categorical_loss, guided

CHUNK_ELEMENTS = 1 << 24
"""Logits computed at once (64 MiB in float32); a chunk holds CHUNK_ELEMENTS // (p*p*V) tokens
(256 at p = 2, V = 16384: on 2 CPU cores, 64 tokens per chunk made the head 2-3x slower)."""


# ----------------------------------------------------------------------------- layout


def tokens_from_grid(x: Tensor, patch: int) -> Tensor:
    """Per-position values (B, h, w, *rest) -> the head's token order (B, T, p*p, *rest)."""
    b, h, w, *rest = x.shape
    if h % patch or w % patch:
        raise ValueError(f"grid {(h, w)} is not divisible by patch size {patch}")
    x = x.reshape(b, h // patch, patch, w // patch, patch, *rest)
    return x.transpose(2, 3).reshape(b, (h // patch) * (w // patch), patch * patch, *rest)


def grid_from_tokens(x: Tensor, grid: tuple[int, int], patch: int) -> Tensor:
    """Inverse of ``tokens_from_grid``: (B, T, p*p, *rest) -> (B, h, w, *rest)."""
    b, _, _, *rest = x.shape
    h, w = grid
    x = x.reshape(b, h // patch, w // patch, patch, patch, *rest)
    return x.transpose(2, 3).reshape(b, h, w, *rest)


def chunk_size(positions_per_token: int, vocab: int, chunk_tokens: int | None) -> int:
    """Tokens per chunk: ``chunk_tokens`` if given, else CHUNK_ELEMENTS // (p*p*V) (at least 1)."""
    if chunk_tokens is not None:
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        return chunk_tokens
    return max(1, CHUNK_ELEMENTS // (positions_per_token * vocab))


def compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's if autocast is on for the device, else the inputs' promotion."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax statistics and gradient accumulators: at least float32."""
    return torch.promote_types(dtype, torch.float32)


def chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, per_token: int, stat: torch.dtype) -> Tensor:
    """Logits of a chunk of tokens, h (n, D) -> (n, p*p, V) in the statistics dtype."""
    out = h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())
    return out.to(stat).view(h.shape[0], per_token, -1)


# ----------------------------------------------------------------------------- training


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """(hidden (N, D), weight (p*p*V, D), bias (p*p*V,) or None, targets (N, p*p), weights (N, p*p))
    -> (loss, weighted mean CE, weighted mean lse); see the module docstring."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, weights, z_loss_weight, chunk, dtype, track_grad, vocab):
        stat = statistics_dtype(dtype)
        n, per_token = targets.shape
        need_h, need_w, need_b = (track_grad and flag for flag in ctx.needs_input_grad[:3])
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            dh = torch.empty(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
            dw = torch.zeros(weight.shape, dtype=stat, device=weight.device) if need_w else None
            db = torch.zeros(bias.shape, dtype=stat, device=bias.device) if need_b else None
            sums = torch.zeros(3, dtype=stat, device=hidden.device)  # sum a ce, sum a lse^2, sum a lse
            for start in range(0, n, chunk):
                rows = slice(start, start + chunk)
                logits = chunk_logits(h[rows], w, b, per_token, stat)  # (m, p*p, V')
                logits[..., vocab:] = -torch.inf  # the head's padding channels: no probability, no gradient
                target = targets[rows].unsqueeze(-1)
                target_logit = logits.gather(-1, target).squeeze(-1)  # (m, p*p)
                peak = logits.amax(-1, keepdim=True)
                unnormalised = logits.sub_(peak).exp_()  # exp(l - max), in place of the logits
                total = unnormalised.sum(-1)
                lse = peak.squeeze(-1) + total.log()
                a = weights[rows]
                sums += torch.stack([(a * (lse - target_logit)).sum(), (a * lse.square()).sum(), (a * lse).sum()])
                if not (need_h or need_w or need_b):
                    continue
                # G = a [(1 + 2 lambda_z lse) softmax - onehot], softmax = exp(l - max) / total
                grad = unnormalised.mul_((a * (1 + 2 * z_loss_weight * lse) / total).unsqueeze(-1))
                grad.scatter_add_(-1, target, -a.unsqueeze(-1))
                grad = grad.view(grad.shape[0], -1)  # (m, p*p*V)
                if need_b:
                    db += grad.sum(0)
                grad = grad.to(dtype)
                if need_h:
                    torch.mm(grad, w, out=dh[rows])
                if need_w:
                    if dtype == stat:
                        dw.addmm_(grad.t(), h[rows])
                    else:
                        dw += grad.t() @ h[rows]
        ctx.grads = (dh, dw, db)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ce_mean, z_mean, lse_mean = sums.unbind()
        ctx.mark_non_differentiable(ce_mean, lse_mean)
        return ce_mean + z_loss_weight * z_mean, ce_mean, lse_mean

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_ce, _grad_lse):
        grads = [None if g is None else (g * grad_loss).to(dtype) for g, dtype in zip(ctx.grads, ctx.dtypes)]
        ctx.grads = None
        return (*grads, None, None, None, None, None, None, None)


def fused_categorical_loss(
    hidden: Tensor,
    head: nn.Linear,
    targets: Tensor,
    patch: int,
    z_loss_weight: float,
    mask: Tensor | None = None,
    count: Tensor | None = None,
    *,
    chunk_tokens: int | None = None,
    vocab: int | None = None,
) -> dict[str, Tensor]:
    """``categorical_loss(unpatchify(head(hidden)), targets, z_loss_weight, mask, count)`` without
    the full logits.

    hidden: (B, T, D) features; head: Linear(D, p*p*V); targets: (B, h, w) int64 in [0, V);
    mask: optional (B, h, w) bool of the positions that count; count: what their sums are divided
    by (default ``mask.sum()``); vocab: the logits per position that count (default all the head
    emits; fewer when the head is padded, see ``backbones.dit.padded_channels``). Returns ``loss`` (differentiable
    w.r.t. hidden, head.weight, head.bias), ``ce`` and ``logsumexp`` (weighted means, detached).
    """
    b, tokens, dim = hidden.shape
    per_token = patch * patch
    if head.in_features != dim or head.out_features % per_token:
        raise ValueError(
            f"head {head.in_features} -> {head.out_features} does not fit features of width {dim} "
            f"and patch {patch} (out_features must be a multiple of {per_token})"
        )
    target_tokens = tokens_from_grid(targets, patch)  # (B, T, p*p)
    if target_tokens.shape[:2] != (b, tokens):
        raise ValueError(
            f"targets {tuple(targets.shape)} with patch {patch} give {target_tokens.shape[1]} tokens "
            f"per sample; the features have {tokens}"
        )
    dtype = compute_dtype(hidden, head.weight)
    stat = statistics_dtype(dtype)
    if mask is None:
        weights = torch.full(target_tokens.shape, 1.0 / target_tokens.numel(), dtype=stat, device=hidden.device)
    else:
        counted = tokens_from_grid(mask, patch).to(stat)
        weights = counted / (counted.sum() if count is None else count.to(stat)).clamp_min(1)
    chunk = chunk_size(per_token, head.out_features // per_token, chunk_tokens)
    loss, ce, lse = _FusedLinearCrossEntropy.apply(
        hidden.reshape(b * tokens, dim),
        head.weight,
        head.bias,
        target_tokens.reshape(-1, per_token),
        weights.reshape(-1, per_token),
        float(z_loss_weight),
        chunk,
        dtype,
        torch.is_grad_enabled(),
        head.out_features // per_token if vocab is None else vocab,
    )
    return {"loss": loss, "ce": ce, "logsumexp": lse}


# ----------------------------------------------------------------------------- sampling


@dataclass
class Readout:
    """Per-position statistics of pi = softmax(l[:K] / tau).

    entropy: (B, h, w) H(pi); mean: (B, d, h, w) posterior mean pi @ C (if a codebook was given);
    argmax: (B, h, w) argmax_k l_k (if asked); draw: (B, h, w) a draw from pi (if uniforms were given);
    draw_logprob: (B, h, w) log softmax(l[:K])(draw), at temperature 1 whatever tau (if asked).
    """

    entropy: Tensor
    mean: Tensor | None = None
    argmax: Tensor | None = None
    draw: Tensor | None = None
    draw_logprob: Tensor | None = None


def readout_rows(
    logits: Tensor,
    temperature: float,
    num_codes: int,
    codebook: Tensor | None,
    argmax: bool,
    uniforms: Tensor | None,
    draw_logprob: bool = False,
) -> dict[str, Tensor]:
    """The read-out of positions given as rows of logits (M, V): ``entropy`` (M,), ``mean``
    (M, d), ``argmax`` (M,), ``draw`` (M,), ``draw_logprob`` (M,) (the last four when asked; the
    draw uses ``uniforms`` (M,) ~ U[0, 1), one per row; its log-probability is untempered)."""
    logits = logits[:, :num_codes]
    log_pi = torch.log_softmax(logits / temperature, dim=-1)
    pi = log_pi.exp()
    out = {"entropy": -torch.where(pi > 0, pi * log_pi, 0.0).sum(-1)}  # 0 log 0 = 0
    if codebook is not None:
        out["mean"] = pi @ codebook.to(pi.dtype)
    if argmax:
        out["argmax"] = logits.argmax(-1)
    if uniforms is not None:
        out["draw"] = inverse_cdf_draw(pi, uniforms)
    if draw_logprob:
        if uniforms is None:
            raise ValueError("draw_logprob needs uniforms: it is the log-probability of the draw")
        log_p = log_pi if temperature == 1.0 else torch.log_softmax(logits, dim=-1)
        out["draw_logprob"] = log_p.gather(-1, out["draw"].unsqueeze(-1)).squeeze(-1)
    return out


def inverse_cdf_draw(pi: Tensor, uniforms: Tensor) -> Tensor:
    """One draw per row of probabilities pi (M, V): the first k with F_k > u F_V, where F is the
    cumulative sum and u = ``uniforms`` (M,) ~ U[0, 1). Scaling u by F_V absorbs rounding in the sum, and the strict
    inequality never picks a zero-probability category. Several times faster than
    ``torch.multinomial`` on CPU for the many short rows a sampler step has."""
    cdf = pi.cumsum(-1)
    u = uniforms.to(pi.dtype).reshape(-1, 1) * cdf[:, -1:]
    return (cdf <= u).sum(-1).clamp_(max=pi.shape[-1] - 1)


def dense_readout(
    logits: Tensor,
    *,
    temperature: float,
    num_codes: int,
    codebook: Tensor | None = None,
    argmax: bool = False,
    uniforms: Tensor | None = None,
    draw_logprob: bool = False,
) -> Readout:
    """The reference read-out from full logits (B, V, h, w); a draw per position if ``uniforms``
    (B, h, w) ~ U[0, 1) are given (and its untempered log-probability with ``draw_logprob``)."""
    b, v, h, w = logits.shape
    flat = logits.to(statistics_dtype(logits.dtype)).permute(0, 2, 3, 1).reshape(-1, v)  # positions (b, i, j)
    rows = readout_rows(
        flat, temperature, num_codes, codebook, argmax, None if uniforms is None else uniforms.reshape(-1), draw_logprob
    )
    grids = {k: x.view(b, h, w, *x.shape[1:]) for k, x in rows.items()}
    if "mean" in grids:
        grids["mean"] = grids["mean"].permute(0, 3, 1, 2)
    return Readout(**grids)


@torch.no_grad()
def fused_readout(
    hidden: Tensor,
    head: nn.Linear,
    patch: int,
    grid: tuple[int, int],
    *,
    temperature: float,
    num_codes: int,
    codebook: Tensor | None = None,
    argmax: bool = False,
    uniforms: Tensor | None = None,
    draw_logprob: bool = False,
    chunk_tokens: int | None = None,
) -> Readout:
    """``dense_readout(unpatchify(head(hidden)), ...)`` chunked over tokens; hidden (B, T, D).
    The same uniforms (B, h, w) give the same draws as the dense read-out."""
    b, tokens, dim = hidden.shape
    per_token = patch * patch
    vocab = head.out_features // per_token
    dtype = compute_dtype(hidden, head.weight)
    stat = statistics_dtype(dtype)
    flat = hidden.reshape(b * tokens, dim)
    chunk = chunk_size(per_token, vocab, chunk_tokens)
    rows_u = None if uniforms is None else tokens_from_grid(uniforms, patch).reshape(-1)  # (B*T*p*p,)
    with torch.autocast(hidden.device.type, enabled=False):
        h, w = flat.to(dtype), head.weight.to(dtype)
        bias = None if head.bias is None else head.bias.to(dtype)
        parts = [
            readout_rows(
                chunk_logits(h[s : s + chunk], w, bias, per_token, stat).view(-1, vocab),
                temperature,
                num_codes,
                codebook,
                argmax,
                None if rows_u is None else rows_u[s * per_token : (s + chunk) * per_token],
                draw_logprob,
            )
            for s in range(0, b * tokens, chunk)
        ]
    grids = {}
    for key in parts[0]:
        values = torch.cat([part[key] for part in parts])  # (B*T*p*p, ...)
        grids[key] = grid_from_tokens(values.view(b, tokens, per_token, *values.shape[1:]), grid, patch)
    if "mean" in grids:
        grids["mean"] = grids["mean"].permute(0, 3, 1, 2)
    return Readout(**grids)


# ----------------------------------------------------------------------------- what methods call


def unwrap(model) -> object:
    """The module under DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while isinstance(model, nn.Module):
        inner = getattr(model, "module", None)
        inner = getattr(model, "_orig_mod", None) if inner is None else inner
        if inner is None:
            return model
        model = inner
    return model


def fused_head_model(model) -> nn.Module | None:
    """The DiT-like module under the wrappers if it supports the fused head (``features`` through
    ``forward(..., return_features=True)``, a ``head`` Linear and a ``patch`` size), else None."""
    inner = unwrap(model)
    if not (
        isinstance(inner, nn.Module)
        and isinstance(getattr(inner, "head", None), nn.Linear)
        and isinstance(getattr(inner, "patch", None), int)
    ):
        return None
    return inner if "return_features" in inspect.signature(inner.forward).parameters else None


class DenseHead:
    """``DenseHead(model)(x, t, y) == model(x, t, y)`` with the fused-head interface hidden, so methods
    take the dense reference path (for tests and before/after benchmarks)."""

    def __init__(self, model):
        self.model = model
        self.num_classes = unwrap(model).num_classes

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.model(x, t, y)


class _Features:
    """``model(x, t, y, return_features=True)`` as a ``Denoiser`` (for ``guided``)."""

    def __init__(self, model, num_classes: int):
        self.model, self.num_classes = model, num_classes

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.model(x, t, y, return_features=True)


def head_loss(
    model: Denoiser,
    x: Tensor,
    t: Tensor,
    labels: Tensor,
    targets: Tensor,
    z_loss_weight: float,
    mask: Tensor | None = None,
    count: Tensor | None = None,
) -> dict[str, Tensor]:
    """The categorical training loss of ``model`` at (x, t, labels): fused when the model supports
    it, else ``categorical_loss(model(x, t, labels), ...)``."""
    inner = fused_head_model(model)
    if inner is None:
        return categorical_loss(model(x, t, labels), targets, z_loss_weight, mask, count)
    features = model(x, t, labels, return_features=True)
    return fused_categorical_loss(
        features,
        inner.head,
        targets,
        inner.patch,
        z_loss_weight,
        mask,
        count,
        vocab=getattr(inner, "out_channels", None),
    )


def head_readout(
    model: Denoiser,
    x: Tensor,
    t: Tensor,
    labels: Tensor,
    *,
    grid: tuple[int, int],
    cfg_scale: float,
    temperature: float,
    num_codes: int,
    codebook: Tensor | None = None,
    argmax: bool = False,
    uniforms: Tensor | None = None,
    draw_logprob: bool = False,
) -> Readout:
    """The posterior read-out of one (CFG-guided) network evaluation: fused (CFG on the features)
    when the model supports it, else ``dense_readout`` of ``guided(model, ...)``."""
    options = dict(
        temperature=temperature,
        num_codes=num_codes,
        codebook=codebook,
        argmax=argmax,
        uniforms=uniforms,
        draw_logprob=draw_logprob,
    )
    inner = fused_head_model(model)
    if inner is None:
        return dense_readout(guided(model, x, t, labels, cfg_scale), **options)
    features = guided(_Features(model, inner.num_classes), x, t, labels, cfg_scale)
    return fused_readout(features, inner.head, inner.patch, grid, **options)
