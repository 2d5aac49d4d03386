"""The end-to-end codec recipe (train-codec --end-to-end) on a tiny codec."""

import json

import numpy as np
import pytest
import torch

from hvae.cli import main
from hvae.data.shapes import ShapesDataset
from hvae.errors import HVAEError
from hvae.patch_autoencoder import PatchAutoencoder
from hvae.train_rd import JointCodec, distortion_weight, load_joint_codec, make_rd_loss
from pipelines import HVAECompressionPipeline
from tests.conftest import scene_folder, tiny_codec


def scenes(n: int = 2) -> torch.Tensor:
    dataset = ShapesDataset(n, seed=3, size=128)
    arrays = np.stack([np.asarray(dataset[i][0]) for i in range(n)])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_the_loss_trains_every_part_and_the_rate_falls_with_the_step():
    pipe = tiny_codec()
    codec = JointCodec(pipe.autoencoder, pipe.hvae).train()
    pixels = scenes()
    torch.manual_seed(0)
    loss, logs = make_rd_loss(0.01, 0.05, 0.05, seed=0)(codec, pixels, 0)
    loss.backward()
    for name, part in (
        ("encoder", codec.autoencoder.encoder),
        ("decoder", codec.autoencoder.decoder),
        ("entropy model", codec.hvae),
    ):
        grads = [p.grad.abs().sum() for p in part.parameters() if p.grad is not None]
        assert grads and float(sum(grads)) > 0, f"no gradient reaches the {name}"
    torch.manual_seed(0)
    _, coarse = make_rd_loss(0.01, 2.0, 2.0, seed=0)(codec, pixels, 0)
    assert float(coarse["bpp"]) < float(logs["bpp"])
    assert float(coarse["psnr"]) < float(logs["psnr"])


def test_a_doubled_step_weighs_distortion_a_quarter():
    weights = distortion_weight(torch.tensor([0.5, 1.0]), 0.008)
    assert torch.allclose(weights, torch.tensor([0.032, 0.008]))


def rd_args(tmp_path, out) -> list[str]:
    start = tmp_path / "start"
    if not start.exists():
        tiny_codec().save_pretrained(start)
    data = scene_folder(tmp_path / "images")
    return [
        "train-codec",
        "--end-to-end",
        "--init-from",
        str(start),
        "--data",
        str(data),
        "--out",
        str(out),
        "--crop",
        "16",
        "--scales",
        "1",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--mixed-precision",
        "no",
    ]


def test_end_to_end_training_changes_stage_1_resumes_and_compresses(tmp_path):
    out = tmp_path / "e2e"
    common = rd_args(tmp_path, out)
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "4"]) == 0  # resumes at step 2
    log = [json.loads(line) for line in (out / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log][-1] == 4 and all("bpp" in row for row in log)
    start = PatchAutoencoder.from_pretrained(tmp_path / "start" / "autoencoder").state_dict()
    trained = PatchAutoencoder.from_pretrained(out / "autoencoder").state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start), "stage 1 did not train"
    config = json.loads((out / "autoencoder" / "config.json").read_text())
    assert "_name_or_path" not in config
    pipe = HVAECompressionPipeline.from_pretrained(out)
    image = ShapesDataset(1, seed=1, size=128)[0][0]
    decoded = pipe.decompress(pipe.compress(image, quality=6, refine_steps=0))[0]
    assert decoded.size == image.size and np.asarray(decoded).std() > 0


def test_end_to_end_needs_a_compression_pipeline_to_start_from(tmp_path, capsys):
    args = rd_args(tmp_path, tmp_path / "out")
    without_start = [a for a in args if a not in ("--init-from", str(tmp_path / "start"))]
    assert main([*without_start, "--steps", "1"]) == 2
    assert "give --init-from" in capsys.readouterr().err
    with pytest.raises(HVAEError, match="starts from a compression pipeline folder"):
        load_joint_codec(str(tmp_path / "images"))
    assert main([*args, "--steps", "1", "--lmbda", "-1"]) == 2
    assert "--lmbda must be a positive number" in capsys.readouterr().err
