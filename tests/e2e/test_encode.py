"""The two CLIs for real tokenizers: ``benchmarks.tokenizer check`` and ``benchmarks.encode``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbones.tokenizers.pretrained import load_tokenizer, num_parameters
from benchmarks import encode, tokenizer
from benchmarks.data.images import ImageFolder, to_model_range
from benchmarks.data.shards import CodeShards
from tests.support.synthetic_ckpt import small_widths, write_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*widths differ from the published:UserWarning")
ROOT = Path(__file__).resolve().parents[2]
SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "vq-f8.ckpt"
    write_checkpoint("vq-f8", path, seed=3, **small_widths("vq-f8"))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """7 images in 2 classes, of sizes that need the centre crop."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i, (cls, shape) in enumerate(
        [
            ("cat", (40, 48)),
            ("cat", (36, 50)),
            ("cat", (64, 64)),
            ("cat", (33, 40)),
            ("dog", (48, 40)),
            ("dog", (70, 34)),
            ("dog", (32, 32)),
        ]
    ):
        (root / cls).mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def run_encode(ckpt, images, out, *extra) -> int:
    return encode.main(
        [
            "--tokenizer",
            "vq-f8",
            "--ckpt",
            str(ckpt),
            "--data",
            str(images),
            "--out",
            str(out),
            "--size",
            str(SIZE),
            "--shard-size",
            "3",
            "--batch-size",
            "2",
            "--workers",
            "0",
            "--no-progress",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, ckpt, images) -> Path:
    out = tmp_path_factory.mktemp("shards") / "flip"
    assert run_encode(ckpt, images, out, "--flip") == 0
    return out


def expected_codes(ckpt, images, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the whole folder computed directly (one batch), independent of the CLI."""
    folder = ImageFolder(images, SIZE)
    x = to_model_range(torch.stack([folder[i][0] for i in range(len(folder))]))
    tok = load_tokenizer("vq-f8", ckpt)
    return tok.encode(x.flip(-1) if flip else x).numpy(), np.array([label for _, label in folder.samples])


def test_encode_with_flips(encoded, ckpt, images):
    meta = json.loads((encoded / "meta.json").read_text())
    assert meta["complete"] and meta["flip"] and meta["num_images"] == 7 and meta["count"] == 14
    assert meta["classes"] == ["cat", "dog"] and meta["num_classes"] == 2 and meta["image_size"] == SIZE
    assert meta["grid"] == [4, 4] and meta["codebook_size"] == 512
    assert meta["tokenizer"]["kind"] == "vq-f8"
    assert meta["tokenizer"]["ckpt_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert [(s["index"], s["start"], s["count"], s["flip"]) for s in meta["shards"]] == [
        (0, 0, 3, False),
        (1, 3, 3, False),
        (2, 6, 1, False),
        (3, 0, 3, True),
        (4, 3, 3, True),
        (5, 6, 1, True),
    ]

    shards = CodeShards(encoded)
    codes, labels = shards.batch(torch.arange(14))
    plain, plain_labels = expected_codes(ckpt, images, flip=False)
    flipped, _ = expected_codes(ckpt, images, flip=True)
    assert np.array_equal(codes[:7].numpy(), plain) and np.array_equal(codes[7:].numpy(), flipped)
    assert np.array_equal(labels.numpy(), np.concatenate([plain_labels, plain_labels]))
    assert not np.array_equal(plain, flipped)


def test_resume_skips_finished_shards(tmp_path, ckpt, images, encoded):
    out = tmp_path / "resume"
    assert run_encode(ckpt, images, out) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.npy")}
    meta = (out / "meta.json").read_text()
    (out / "meta.json").unlink()  # as if the run died after shard 0 and before shard 1
    (out / "codes-00001.npy").unlink()
    assert run_encode(ckpt, images, out) == 0
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.npy")}
    assert (out / "meta.json").read_text() == meta
    assert after.keys() == before.keys()
    for name in before:
        assert after[name][0] == before[name][0]
        assert (after[name][1] == before[name][1]) == (name not in ("codes-00001.npy", "labels-00001.npy")), name
    plain, _ = expected_codes(ckpt, images, flip=False)
    assert np.array_equal(CodeShards(out).batch(torch.arange(7))[0].numpy(), plain)


def test_ranks_encode_disjoint_blocks(tmp_path, ckpt, images, encoded, monkeypatch):
    out = tmp_path / "ranks"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert run_encode(ckpt, images, out, "--flip", "--workers", "1") == 0
    assert sorted(p.name for p in out.glob("codes-*")) == ["codes-00001.npy", "codes-00004.npy"]
    assert not (out / "meta.json").exists()
    monkeypatch.setenv("RANK", "0")
    assert run_encode(ckpt, images, out, "--flip") == 0
    assert json.loads((out / "meta.json").read_text()) == json.loads((encoded / "meta.json").read_text())
    for name in (f"codes-{i:05d}.npy" for i in range(6)):
        assert np.array_equal(np.load(out / name), np.load(encoded / name)), name


def test_changed_configuration_is_refused(ckpt, images, encoded, capsys):
    assert run_encode(ckpt, images, encoded) == 1  # same folder, without --flip
    assert "differs in: flip" in capsys.readouterr().err


def test_encode_argument_errors(tmp_path, ckpt, images, capsys):
    for argv, message in [
        (["--tokenizer", "vq-f4"], "invalid choice: 'vq-f4'"),
        (["--ckpt", str(tmp_path)], "expected the file vq-f8.ckpt"),
        (["--size", "36"], "not a multiple of vq-f8's downsampling factor 8"),
        (["--data", str(tmp_path / "none")], "does not exist"),
    ]:
        base = {
            "--tokenizer": "vq-f8",
            "--ckpt": str(ckpt),
            "--data": str(images),
            "--out": str(tmp_path / "o"),
            "--size": "32",
        }
        base.update(dict(zip(argv[::2], argv[1::2])))
        with pytest.raises(SystemExit) as exit_info:
            encode.main([x for kv in base.items() for x in kv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_tokenizer_check(ckpt, images, tmp_path, capsys):
    assert tokenizer.main(["check", "--kind", "vq-f8", "--ckpt", str(ckpt)]) == 0
    printed = capsys.readouterr().out
    params = num_parameters(load_tokenizer("vq-f8", ckpt))
    for line in [
        "codebook size K:    512",
        "code dimension d:   4",
        "downsampling f:     8",
        f"parameters:         {params:,}",
        "normalised codes:   no",
    ]:
        assert line in printed

    out = tmp_path / "recon.png"
    assert (
        tokenizer.main(
            [
                "check",
                "--kind",
                "vq-f8",
                "--ckpt",
                str(ckpt),
                "--image",
                str(images / "cat" / "0.png"),
                "--out",
                str(out),
                "--size",
                "16",
            ]
        )
        == 0
    )
    assert "PSNR" in capsys.readouterr().out
    with Image.open(out) as img:
        assert img.size == (16, 16) and img.mode == "RGB"


def test_tokenizer_check_errors(tmp_path, ckpt, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tokenizer.main(["check", "--kind", "taming-f16", "--ckpt", str(tmp_path)])
    assert exit_info.value.code == 2 and "last.ckpt" in capsys.readouterr().err
    assert tokenizer.main(["check", "--kind", "taming-f16", "--ckpt", str(ckpt)]) == 1
    assert "does not match tokenizer kind 'taming-f16'" in capsys.readouterr().err
    assert tokenizer.main(["list"]) == 0
    assert "FoundationVision/LlamaGen" in capsys.readouterr().out
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.tokenizer", "check", "--kind", "vq-f32", "--ckpt", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "invalid choice: 'vq-f32'" in proc.stderr
