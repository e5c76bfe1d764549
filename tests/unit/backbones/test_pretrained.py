"""Pretrained VQ tokenizers: architectures match the published files' key names, shapes and
parameter counts; synthetic checkpoints in the real container formats load, encode and decode."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch.nn import functional as F

from backbones.tokenizers.pretrained import (
    KINDS,
    CheckpointMismatchError,
    build_tokenizer,
    from_checkpoint_key,
    load_tokenizer,
    num_parameters,
    to_checkpoint_key,
)
from backbones.tokenizers.safe_pickle import UnsafeCheckpointError
from backbones.tokenizers.taming import AttnBlock
from tests.support.synthetic_ckpt import (
    small_widths,
    synthetic_state_dict,
    write_checkpoint,
    write_lightning_checkpoint,
    write_llamagen_checkpoint,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*widths differ from the published:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The reduced models' small convolutions gain nothing from threads (and crawl when the
    cores are oversubscribed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def file_keys(kind: str) -> dict[str, tuple[int, ...]]:
    """Full-size key names and shapes as the kind's file holds them (meta device, no memory)."""
    model = build_tokenizer(kind)
    keys = {to_checkpoint_key(model.spec, k): tuple(v.shape) for k, v in model.state_dict().items()}
    if model.spec.container == "llamagen":
        keys["quantize.codebook_used"] = (65536,)
    return keys


# ----------------------------------------------------------------------------- full-size architectures


@pytest.mark.parametrize(
    "kind, n_keys, n_params", [("llamagen-vq16", 344, 71_883_403), ("taming-f16", 343, 76_073_859)]
)
def test_published_key_and_parameter_counts(kind, n_keys, n_params):
    assert len(file_keys(kind)) == n_keys
    assert num_parameters(build_tokenizer(kind)) == n_params


def test_z_and_d_dependent_parameters_of_the_f8_kinds():
    """vq-f8 and LlamaGen VQ-8 share the trunk (ch_mult 1,2,2,4; width 512 at the bottom); they
    differ only in encoder.conv_out, decoder.conv_in, the 1x1 quantiser convs and the codebook."""

    def zd_params(z, d, k=16384, c=512):
        return (c * z * 9 + z) + (z * c * 9 + c) + (z * d + d) + (d * z + z) + k * d

    diff = num_parameters(build_tokenizer("llamagen-vq8")) - num_parameters(build_tokenizer("vq-f8"))
    assert diff == zd_params(256, 8) - zd_params(4, 4)


def test_llamagen_key_names():
    keys = file_keys("llamagen-vq16")  # 5 levels; attention at the lowest (encoder index 4, decoder index 0)
    assert keys["encoder.conv_blocks.0.res.0.norm1.weight"] == (128,)
    assert keys["encoder.conv_blocks.4.attn.1.q.weight"] == (512, 512, 1, 1)
    assert keys["encoder.conv_blocks.3.downsample.conv.weight"] == (256, 256, 3, 3)
    assert "encoder.conv_blocks.4.downsample.conv.weight" not in keys
    assert keys["encoder.mid.1.k.weight"] == (512, 512, 1, 1)
    assert keys["decoder.mid.2.conv2.weight"] == (512, 512, 3, 3)
    assert keys["decoder.conv_blocks.0.attn.2.proj_out.bias"] == (512,)
    assert keys["decoder.conv_blocks.3.res.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert keys["decoder.conv_blocks.3.upsample.conv.weight"] == (128, 128, 3, 3)
    assert "decoder.conv_blocks.4.upsample.conv.weight" not in keys
    assert keys["quantize.embedding.weight"] == (16384, 8)
    assert keys["quant_conv.weight"] == (8, 256, 1, 1) and keys["post_quant_conv.weight"] == (256, 8, 1, 1)
    assert not any(".down." in k or ".up." in k or "block_1" in k for k in keys)


def test_taming_key_names():
    keys = file_keys("vq-f8")
    assert keys["encoder.down.3.attn.1.proj_out.weight"] == (512, 512, 1, 1)
    assert "encoder.down.2.attn.0.q.weight" not in keys
    assert keys["encoder.down.1.block.0.nin_shortcut.weight"] == (256, 128, 1, 1)
    assert keys["encoder.conv_out.weight"] == (4, 512, 3, 3)
    assert keys["decoder.up.3.attn.2.q.weight"] == (512, 512, 1, 1)
    assert keys["decoder.up.2.block.0.nin_shortcut.weight"] == (256, 512, 1, 1)
    assert (
        keys["decoder.up.1.upsample.conv.weight"] == (256, 256, 3, 3)
        and "decoder.up.0.upsample.conv.weight" not in keys
    )
    assert keys["decoder.mid.attn_1.v.bias"] == (512,)
    assert keys["quantize.embedding.weight"] == (16384, 4)
    taming = file_keys("taming-f16")
    assert taming["quantize.embedding.weight"] == (16384, 256) and taming["decoder.conv_in.weight"] == (512, 256, 3, 3)


@pytest.mark.parametrize("kind", list(KINDS))
def test_key_renames_are_inverse(kind):
    spec = KINDS[kind]
    model_keys = build_tokenizer(kind).state_dict().keys()
    for key in model_keys:
        assert from_checkpoint_key(spec, to_checkpoint_key(spec, key)) == key
    if spec.container == "lightning":
        assert all(to_checkpoint_key(spec, k) == k for k in model_keys)


@pytest.mark.parametrize(
    "kind, f, norm",
    [("vq-f8", 8, False), ("llamagen-vq8", 8, True), ("llamagen-vq16", 16, True), ("taming-f16", 16, False)],
)
def test_spec_semantics(kind, f, norm):
    model = build_tokenizer(kind)
    assert model.downsample == f and model.normalized is norm
    assert model.codebook.shape == (KINDS[kind].codebook_size, KINDS[kind].code_dim)
    assert model.latent_grid(256) == (256 // f, 256 // f)


def test_attention_block_formula():
    torch.manual_seed(0)
    block = AttnBlock(32)
    x = torch.randn(2, 32, 4, 5)
    n = block.norm(x)
    q, k, v = (conv(n).flatten(2) for conv in (block.q, block.k, block.v))  # (B, c, hw)
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=-1)  # (B, query, key)
    expected = x + block.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(2, 32, 4, 5))
    torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)


def test_build_overrides():
    small = build_tokenizer("taming-f16", ch=32, code_dim=16)
    assert small.encoder.conv_in.weight.shape == (32, 3, 3, 3) and small.codebook.shape == (16384, 16)
    with pytest.raises(TypeError, match="ch_mult"):
        build_tokenizer("taming-f16", ch_mult=(1, 2))
    with pytest.raises(ValueError, match="valid kinds: vq-f8, llamagen-vq8"):
        build_tokenizer("vq-f32")


# ----------------------------------------------------------------------------- synthetic checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for kind, spec in KINDS.items():
        path = root / kind / spec.file_name
        path.parent.mkdir()
        out[kind] = (path, write_checkpoint(kind, path, seed=1, **small_widths(kind)))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip(checkpoints, kind):
    path, written = checkpoints[kind]
    tok = load_tokenizer(kind, path.parent)  # a folder resolves to the published file name
    spec = KINDS[kind]
    loaded = tok.state_dict()
    for key, value in written.items():
        if key != "quantize.codebook_used":
            assert torch.equal(loaded[from_checkpoint_key(spec, key)], value), key
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = tok.encode(images)
    f = spec.downsample
    assert codes.shape == (2, 32 // f, 32 // f) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < tok.codebook_size == 512

    # independent nearest neighbour on the pre-quantisation latents
    z = tok.quant_conv(tok.encoder(images)).permute(0, 2, 3, 1).reshape(-1, tok.code_dim)
    table = written["quantize.embedding.weight"]
    if spec.normalized:
        expected = (F.normalize(z, dim=-1) @ F.normalize(table, dim=-1).T).argmax(-1)
        torch.testing.assert_close(tok.codebook.norm(dim=-1), torch.ones(512))
        assert not torch.allclose(table.norm(dim=-1), torch.ones(512))
    else:
        expected = torch.cdist(z, table).argmin(-1)
        assert torch.equal(tok.codebook, table)
    assert torch.equal(codes.flatten(), expected)

    recon = tok.decode(codes)
    assert recon.shape == images.shape and recon.abs().max() <= 1
    vectors = F.embedding(codes, F.normalize(table, dim=-1) if spec.normalized else table).permute(0, 3, 1, 2)
    torch.testing.assert_close(recon, tok.decoder(tok.post_quant_conv(vectors)).clamp(-1, 1))


def test_reduced_widths_warn(checkpoints):
    path, _ = checkpoints["vq-f8"]
    with pytest.warns(UserWarning, match=r"ch 32 \(published 128\).*codebook_size 512 \(published 16384\)"):
        load_tokenizer("vq-f8", path)


def test_encode_decode_validate_inputs(checkpoints):
    tok = load_tokenizer("taming-f16", checkpoints["taming-f16"][0])
    with pytest.raises(ValueError, match="not a multiple of the downsampling factor 16"):
        tok.encode(torch.zeros(1, 3, 24, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tok.encode(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        tok.decode(torch.full((1, 2, 2), 512))


def test_missing_file_names_file_and_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vq_ds8_c2i\.pt.*FoundationVision/LlamaGen"):
        load_tokenizer("llamagen-vq8", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"expected the file last\.ckpt.*heibox"):
        load_tokenizer("taming-f16", tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="unknown tokenizer kind 'vqgan'; valid kinds: vq-f8, llamagen-vq8"):
        load_tokenizer("vqgan", tmp_path)


def test_wrong_kind_lists_keys_with_shapes(checkpoints):
    path, _ = checkpoints["vq-f8"]
    with pytest.raises(CheckpointMismatchError) as err:
        load_tokenizer("taming-f16", path)
    msg = str(err.value)
    assert str(path) in msg and "'taming-f16'" in msg and "last.ckpt" in msg
    assert "102 missing key(s): " in msg and "encoder.down.4.block.0.norm1.weight [64]" in msg
    assert "shape mismatch(es)" in msg


def test_shape_mismatch_and_unexpected_keys(tmp_path):
    state = synthetic_state_dict("llamagen-vq16", **small_widths("llamagen-vq16"))
    state["decoder.conv_blocks.0.attn.0.q.bias"] = torch.zeros(7)
    state["encoder.extra.weight"] = torch.zeros(3)
    path = write_llamagen_checkpoint(tmp_path / "vq_ds16_c2i.pt", state)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"1 unexpected key\(s\): encoder\.extra\.weight \[3\]; 1 shape mismatch\(es\): "
        r"decoder\.conv_blocks\.0\.attn\.0\.q\.bias file \[7\] vs model \[128\]",
    ):
        load_tokenizer("llamagen-vq16", path)


def test_llamagen_containers_and_optional_usage_buffer(tmp_path):
    state = synthetic_state_dict("llamagen-vq8", **small_widths("llamagen-vq8"))
    del state["quantize.codebook_used"]
    path = write_llamagen_checkpoint(tmp_path / "ema.pt", state, container="ema")
    tok = load_tokenizer("llamagen-vq8", path)
    assert torch.equal(tok.quantize.embedding.weight, state["quantize.embedding.weight"])


def test_llamagen_file_with_argparse_namespace_loads_safely(tmp_path):
    """LlamaGen's training script saves ``{"model": ..., "args": argparse.Namespace(...)}``;
    ``weights_only=True`` refuses the Namespace. The weights load, the Namespace stays inert."""
    import argparse

    state = synthetic_state_dict("llamagen-vq8", **small_widths("llamagen-vq8"))
    path = tmp_path / "user.pt"
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-4, codebook_size=16)}, path)
    tok = load_tokenizer("llamagen-vq8", path)
    assert torch.equal(tok.quantize.embedding.weight, state["quantize.embedding.weight"])


def test_html_page_saved_as_llamagen_checkpoint_is_named(tmp_path):
    path = tmp_path / "vq_ds8_c2i.pt"
    path.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(ValueError, match=r"vq_ds8_c2i\.pt is an HTML page, not a checkpoint"):
        load_tokenizer("llamagen-vq8", path)


def test_malicious_lightning_checkpoint_never_runs(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    state = synthetic_state_dict("vq-f8", **small_widths("vq-f8"))
    state["loss.payload"] = Payload()
    path = write_lightning_checkpoint(tmp_path / "vq-f8.ckpt", state)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_tokenizer("vq-f8", path)
    assert not (tmp_path / "pwned").exists()
