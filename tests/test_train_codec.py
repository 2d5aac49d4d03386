"""The codec recipe end to end on a tiny autoencoder: train, save, resume, compress."""

import json

import numpy as np
import torch

from hvae.cli import main
from hvae.data.shapes import ShapesDataset
from hvae.train_codec import make_codec_model, make_rate_loss
from pipelines import HVAECompressionPipeline
from tests.conftest import tiny_autoencoder


def test_rate_loss_is_lower_at_coarser_steps():
    model = make_codec_model("tiny", 4)
    features = torch.randn(4, 4, 16, 16)
    fine, _ = make_rate_loss(0.05, 0.05, seed=0)(model, features, 0)
    coarse, _ = make_rate_loss(2.0, 2.0, seed=0)(model, features, 0)
    assert float(coarse) < float(fine)


def test_train_codec_saves_a_pipeline_that_compresses_and_resumes(tmp_path):
    autoencoder = tmp_path / "ae"
    tiny_autoencoder().save_pretrained(autoencoder)
    data = tmp_path / "images"
    data.mkdir()
    dataset = ShapesDataset(3, seed=1, size=128)
    for i in range(3):
        dataset[i][0].save(data / f"{i}.png")
    out = tmp_path / "codec"
    common = [
        "train-codec",
        "--autoencoder",
        str(autoencoder),
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--crop",
        "16",
        "--scales",
        "1",
        "0.5",
        "--batch-size",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--checkpoint-every",
        "2",
    ]
    assert main([*common, "--steps", "2"]) == 0
    assert main([*common, "--steps", "4"]) == 0  # resumes at step 2
    steps = [
        json.loads(line)["step"]
        for line in (out / "run" / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 4
    pipe = HVAECompressionPipeline.from_pretrained(out)
    image = dataset[0][0]
    decoded = pipe.decompress(pipe.compress(image, quality=6))[0]
    assert decoded.size == image.size
    assert np.asarray(decoded).std() > 0
