"""Pretrained VQ tokenizers loaded from a user's local checkpoint file.

Four kinds (``KINDS``), all the shared taming encoder/decoder of :mod:`backbones.tokenizers.taming`
with a nearest-code quantiser between them:

==================  =============  =============  ===========  ==========  ==========  ==========
kind                file           K x d          ch_mult      z_channels  attention   normalised
==================  =============  =============  ===========  ==========  ==========  ==========
``vq-f8``           vq-f8.ckpt     16384 x 4      1,2,2,4      4           level 3     no
``llamagen-vq8``    vq_ds8_c2i.pt  16384 x 8      1,2,2,4      256         level 3     yes (L2)
``llamagen-vq16``   vq_ds16_c2i.pt 16384 x 8      1,1,2,2,4    256         level 4     yes (L2)
``taming-f16``      last.ckpt      16384 x 256    1,1,2,2,4    256         level 4     no
==================  =============  =============  ===========  ==========  ==========  ==========

(base width ``ch = 128``, 2 residual blocks per encoder level; attention sits at the lowest
resolution level, i.e. 32x32 resp. 16x16 for 256x256 inputs.)

Tokenizer maps (``f = 2^(len(ch_mult)-1)``)::

    encode: x (B,3,H,W) in [-1,1] -> quant_conv(encoder(x)) = z (B,d,H/f,W/f)
            -> c = argmin_k ||z - e_k||        (normalised kinds: argmax_k <z/|z|, e_k/|e_k|>)
    decode: c (B,h,w) -> e_c (B,d,h,w) -> decoder(post_quant_conv(e_c)) (B,3,hf,wf), clamped to [-1,1]

where ``e_k`` are the rows of ``codebook`` (L2-normalised rows for LlamaGen, which also
decodes from the normalised vectors).

Loading (:func:`load_tokenizer`): every file is read with the code-free unpickler
:func:`backbones.tokenizers.safe_pickle.safe_load` (so a user-trained LlamaGen file that pickles its
``argparse.Namespace`` under ``"args"`` loads too, the Namespace kept as inert data). Lightning
checkpoints (``vq-f8``, ``taming-f16``) give their weights from ``"state_dict"``; LlamaGen files from ``"ema"``,
``"model"`` or ``"state_dict"`` (first present, LlamaGen's own order; the released files hold
``"model"``). Then ``loss.*`` (LPIPS/discriminator) and LlamaGen's usage counter
``quantize.codebook_used`` are dropped, LlamaGen names are mapped to taming names
(:func:`from_checkpoint_key`), and the weights load with ``strict=True``.
The widths ``ch``, ``z_channels``, ``codebook_size`` and ``code_dim`` are read from the file's
tensor shapes (so a reduced-width test checkpoint loads); depth and topology come from the kind,
and a file whose widths differ from the published ones loads with a warning.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from backbones.tokenizers.base import Tokenizer, nearest_codes
from backbones.tokenizers.safe_pickle import safe_load
from backbones.tokenizers.taming import Decoder, Encoder


@dataclass(frozen=True)
class TokenizerSpec:
    """Architecture and provenance of one pretrained tokenizer kind."""

    kind: str
    codebook_size: int  # K
    code_dim: int  # d
    ch_mult: tuple[int, ...]
    z_channels: int
    attn_levels: tuple[int, ...]  # resolution levels (0 = full resolution) with attention blocks
    normalized: bool  # L2-normalised codebook, cosine nearest neighbour
    file_name: str  # the published file name
    container: str  # "lightning" (taming naming, code-free unpickler) or "llamagen"
    source: str  # where to obtain the file
    ch: int = 128
    num_res_blocks: int = 2

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def downsample(self) -> int:
        return 2 ** (self.num_levels - 1)


KINDS: dict[str, TokenizerSpec] = {
    spec.kind: spec
    for spec in [
        TokenizerSpec(
            kind="vq-f8",
            codebook_size=16384,
            code_dim=4,
            ch_mult=(1, 2, 2, 4),
            z_channels=4,
            attn_levels=(3,),
            normalized=False,
            file_name="vq-f8.ckpt",
            container="lightning",
            source="the Latent Diffusion (LDM) model zoo, https://ommer-lab.com/files/latent-diffusion/vq-f8.zip "
            "(unzip it and rename its model.ckpt to vq-f8.ckpt)",
        ),
        TokenizerSpec(
            kind="llamagen-vq8",
            codebook_size=16384,
            code_dim=8,
            ch_mult=(1, 2, 2, 4),
            z_channels=256,
            attn_levels=(3,),
            normalized=True,
            file_name="vq_ds8_c2i.pt",
            container="llamagen",
            source="the LlamaGen HuggingFace repository FoundationVision/LlamaGen, "
            "https://huggingface.co/FoundationVision/LlamaGen/resolve/main/vq_ds8_c2i.pt",
        ),
        TokenizerSpec(
            kind="llamagen-vq16",
            codebook_size=16384,
            code_dim=8,
            ch_mult=(1, 1, 2, 2, 4),
            z_channels=256,
            attn_levels=(4,),
            normalized=True,
            file_name="vq_ds16_c2i.pt",
            container="llamagen",
            source="the LlamaGen HuggingFace repository FoundationVision/LlamaGen, "
            "https://huggingface.co/FoundationVision/LlamaGen/resolve/main/vq_ds16_c2i.pt",
        ),
        TokenizerSpec(
            kind="taming-f16",
            codebook_size=16384,
            code_dim=256,
            ch_mult=(1, 1, 2, 2, 4),
            z_channels=256,
            attn_levels=(4,),
            normalized=False,
            file_name="last.ckpt",
            container="lightning",
            source="taming-transformers' ImageNet VQGAN f=16 with 16384 codes, "
            "https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/ (file ckpts/last.ckpt)",
        ),
    ]
}

WIDTH_FIELDS = ("ch", "z_channels", "codebook_size", "code_dim")
"""The spec fields a checkpoint's tensor shapes determine (and ``build_tokenizer`` may override)."""

LLAMAGEN_CONTAINER_KEYS = ("ema", "model", "state_dict")
LIGHTNING_CONTAINER_KEYS = ("state_dict",)
IGNORED_KEYS = ("quantize.codebook_used",)  # LlamaGen's code-usage counter, float [65536]


class CheckpointMismatchError(ValueError):
    """The checkpoint's weights do not fit the tokenizer kind (keys or shapes)."""


def get_spec(kind: str) -> TokenizerSpec:
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return KINDS[kind]


# ----------------------------------------------------------------------------- key names

_MID_NAMES = ("block_1", "attn_1", "block_2")
_LLAMAGEN_LEVEL = re.compile(r"^(encoder|decoder)\.conv_blocks\.(\d+)\.(res|attn|downsample|upsample)\.(.*)$")
_TAMING_LEVEL = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.(block|attn|downsample|upsample)\.(.*)$")
_LLAMAGEN_MID = re.compile(r"^(encoder|decoder)\.mid\.([012])\.(.*)$")
_TAMING_MID = re.compile(r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.(.*)$")


def from_checkpoint_key(spec: TokenizerSpec, key: str) -> str:
    """A key as the kind's file names it -> the taming name used by :class:`PretrainedVQ`.

    LlamaGen: ``encoder.conv_blocks.{i}.res.`` -> ``encoder.down.{i}.block.``,
    ``decoder.conv_blocks.{k}.res.`` -> ``decoder.up.{L-1-k}.block.`` (same for ``attn``,
    ``downsample``, ``upsample``), ``.mid.{0,1,2}.`` -> ``.mid.{block_1,attn_1,block_2}.``.
    Lightning kinds already use taming names.
    """
    if spec.container != "llamagen":
        return key
    if m := _LLAMAGEN_LEVEL.match(key):
        part, index, sub, rest = m.groups()
        level = int(index) if part == "encoder" else spec.num_levels - 1 - int(index)
        return f"{part}.{'down' if part == 'encoder' else 'up'}.{level}.{'block' if sub == 'res' else sub}.{rest}"
    if m := _LLAMAGEN_MID.match(key):
        return f"{m[1]}.mid.{_MID_NAMES[int(m[2])]}.{m[3]}"
    return key


def to_checkpoint_key(spec: TokenizerSpec, key: str) -> str:
    """The inverse of :func:`from_checkpoint_key` (taming name -> the file's name)."""
    if spec.container != "llamagen":
        return key
    if m := _TAMING_LEVEL.match(key):
        part, level, sub, rest = m.groups()
        part = part.split(".")[0]
        index = int(level) if part == "encoder" else spec.num_levels - 1 - int(level)
        return f"{part}.conv_blocks.{index}.{'res' if sub == 'block' else sub}.{rest}"
    if m := _TAMING_MID.match(key):
        return f"{m[1]}.mid.{_MID_NAMES.index(m[2])}.{m[3]}"
    return key


# ----------------------------------------------------------------------------- the module


class Quantizer(nn.Module):
    """Holds the code table as ``embedding.weight`` (K, d), the checkpoints' name for it."""

    def __init__(self, codebook_size: int, code_dim: int):
        super().__init__()
        table = torch.empty(codebook_size, code_dim)
        if not table.is_meta:  # (normal_ on "meta" would import torch._dynamo: seconds, for nothing)
            nn.init.normal_(table)  # nn.Embedding's own initialisation
        self.embedding = nn.Embedding(codebook_size, code_dim, _weight=table)


class PretrainedVQ(Tokenizer):
    """A taming/LDM/LlamaGen VQ tokenizer (see the module docstring for the maps)."""

    in_channels = 3

    def __init__(self, spec: TokenizerSpec):
        super().__init__()
        self.spec = spec
        self.kind = spec.kind
        self.normalized = spec.normalized
        self.downsample = spec.downsample
        arch = dict(
            ch=spec.ch,
            ch_mult=spec.ch_mult,
            num_res_blocks=spec.num_res_blocks,
            attn_levels=spec.attn_levels,
            z_channels=spec.z_channels,
        )
        self.encoder = Encoder(**arch, in_channels=3)
        self.quant_conv = nn.Conv2d(spec.z_channels, spec.code_dim, 1)
        self.quantize = Quantizer(spec.codebook_size, spec.code_dim)
        self.post_quant_conv = nn.Conv2d(spec.code_dim, spec.z_channels, 1)
        self.decoder = Decoder(**arch, out_channels=3)

    @property
    def codebook(self) -> Tensor:
        """(K, d); the L2-normalised table for normalised kinds."""
        table = self.quantize.embedding.weight
        if not self.normalized or table.is_meta:  # a meta tensor has a shape and nothing to normalise
            return table
        return F.normalize(table, dim=-1)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1], H and W multiples of ``downsample`` -> codes (B, H/f, W/f)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.kind}: expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[2] % self.downsample or images.shape[3] % self.downsample:
            raise ValueError(
                f"{self.kind}: image size {tuple(images.shape[2:])} is not a multiple of the "
                f"downsampling factor {self.downsample}"
            )
        z = self.quant_conv(self.encoder(images.to(self.quant_conv.weight.dtype)))  # (B, d, h, w)
        return nearest_codes(z, self.codebook, self.normalized)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) in [0, K) -> images (B, 3, h*f, w*f) clamped to [-1, 1]."""
        if codes.ndim != 3:
            raise ValueError(f"{self.kind}: expected codes of shape (B, h, w), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"{self.kind}: code indices must lie in [0, {self.codebook_size}), got "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        z = self.post_quant_conv(self.embed(codes.long()))  # (B, z_channels, h, w)
        return self.decoder(z).clamp(-1, 1)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_tokenizer(kind: str, device: str | torch.device = "meta", **widths: int) -> PretrainedVQ:
    """An untrained tokenizer of ``kind`` (random weights; on "meta": shapes only, no memory).

    ``widths`` override the published ``ch``, ``z_channels``, ``codebook_size`` or
    ``code_dim`` (e.g. ``ch=32`` for small test models).
    """
    spec = get_spec(kind)
    unknown = set(widths) - set(WIDTH_FIELDS)
    if unknown:
        raise TypeError(f"build_tokenizer: unknown override(s) {sorted(unknown)}; allowed: {', '.join(WIDTH_FIELDS)}")
    with torch.device(device):
        return PretrainedVQ(dataclasses.replace(spec, **widths)).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- loading


def resolve_checkpoint(kind: str, ckpt: str | Path) -> Path:
    """The checkpoint file: ``ckpt`` itself, or ``ckpt/<published file name>`` for a folder."""
    spec = get_spec(kind)
    path = Path(ckpt).expanduser()
    if path.is_dir():
        path = path / spec.file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"no {kind} checkpoint at {path}: expected the file {spec.file_name}; get it from {spec.source}"
        )
    return path


def read_state_dict(kind: str, path: Path) -> dict[str, Tensor]:
    """The raw weights of a checkpoint file, in the file's own key names (memory-mapped for the zip format)."""
    spec = get_spec(kind)
    obj = safe_load(path)
    containers = LIGHTNING_CONTAINER_KEYS if spec.container == "lightning" else LLAMAGEN_CONTAINER_KEYS
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict at the top level, got {type(obj).__name__}")
    for key in containers:
        if isinstance(obj.get(key), dict):
            return obj[key]
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj  # a bare state dict
    raise ValueError(
        f"{path}: no weights found for {kind}: expected a dict under "
        f"{' or '.join(repr(k) for k in containers)}; top-level keys: {sorted(map(str, obj))[:10]}"
    )


def _infer_widths(spec: TokenizerSpec, state: dict[str, Tensor]) -> TokenizerSpec:
    shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, Tensor)}
    found = {}
    if len(shapes.get("encoder.conv_in.weight", ())) == 4:
        found["ch"] = shapes["encoder.conv_in.weight"][0]
    if len(shapes.get("encoder.conv_out.weight", ())) == 4:
        found["z_channels"] = shapes["encoder.conv_out.weight"][0]
    if len(shapes.get("quantize.embedding.weight", ())) == 2:
        found["codebook_size"], found["code_dim"] = shapes["quantize.embedding.weight"]
    return dataclasses.replace(spec, **found)


def _mismatch_report(
    spec: TokenizerSpec, path: Path, expected: dict[str, tuple], state: dict[str, Tensor], limit: int = 5
) -> str | None:
    """A description of missing/unexpected keys and shape mismatches (file names), or None."""
    got = {k: tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for k, v in state.items()}
    name = lambda k: to_checkpoint_key(spec, k)  # noqa: E731
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and got[k] != expected[k]]
    if not (missing or unexpected or wrong):
        return None

    def some(keys, fmt):
        more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(fmt(k) for k in keys[:limit]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): " + some(missing, lambda k: f"{name(k)} {list(expected[k])}"))
    if unexpected:
        parts.append(
            f"{len(unexpected)} unexpected key(s): "
            + some(unexpected, lambda k: f"{name(k)} {list(got[k]) if isinstance(got[k], tuple) else got[k]}")
        )
    if wrong:
        parts.append(
            f"{len(wrong)} shape mismatch(es): "
            + some(
                wrong,
                lambda k: (
                    f"{name(k)} file {list(got[k]) if isinstance(got[k], tuple) else got[k]} "
                    f"vs model {list(expected[k])}"
                ),
            )
        )
    return (
        f"{path} does not match tokenizer kind {spec.kind!r} ({spec.file_name}): "
        + "; ".join(parts)
        + ". Is this the right file for this kind?"
    )


def load_tokenizer(kind: str, ckpt: str | Path, device: str | torch.device = "cpu") -> PretrainedVQ:
    """Load a pretrained tokenizer of ``kind`` from a local checkpoint (a file, or a folder
    holding the published file name). Frozen, eval mode, float32, on ``device``.

    Raises ``ValueError`` for an unknown kind, ``FileNotFoundError`` (naming the expected
    file and where to get it), ``CheckpointMismatchError`` listing missing/unexpected keys and
    shape mismatches, ``backbones.tokenizers.safe_pickle.UnsafeCheckpointError`` for a pickle that
    references code.
    """
    spec = get_spec(kind)
    path = resolve_checkpoint(kind, ckpt)
    state = {
        from_checkpoint_key(spec, k): v
        for k, v in read_state_dict(kind, path).items()
        if not k.startswith("loss.") and k not in IGNORED_KEYS
    }
    # float32 copies: the model owns its weights instead of pages of the memory-mapped file
    state = {
        k: v.to(torch.float32, copy=True) if isinstance(v, Tensor) and v.is_floating_point() else v
        for k, v in state.items()
    }
    actual = _infer_widths(spec, state)
    if actual.ch % 32:
        raise CheckpointMismatchError(
            f"{path}: encoder.conv_in.weight has {actual.ch} output channels; "
            f"{kind} needs a multiple of 32 (GroupNorm with 32 groups)"
        )
    with torch.device("meta"):
        model = PretrainedVQ(actual)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = _mismatch_report(spec, path, expected, state)
    if report:
        raise CheckpointMismatchError(report)
    changed = {
        f: (getattr(actual, f), getattr(spec, f)) for f in WIDTH_FIELDS if getattr(actual, f) != getattr(spec, f)
    }
    if changed:
        warnings.warn(
            f"{path}: widths differ from the published {kind} tokenizer: "
            + ", ".join(f"{f} {a} (published {p})" for f, (a, p) in changed.items()),
            stacklevel=2,
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False).to(device)
