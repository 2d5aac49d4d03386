"""Tiny models shared by the tests: small enough that the whole suite runs in minutes on 2 cores."""

from __future__ import annotations

import pytest
import torch

from hvae.data.shapes import ShapesDataset
from hvae.model import HierarchicalVAE
from hvae.patch_autoencoder import PatchAutoencoder
from hvae.train_codec import make_codec_model
from hvae.train_hvae import PRESETS
from pipelines import HVAECompressionPipeline, HVAEPipeline

torch.set_num_threads(2)


def tiny_hvae(**overrides) -> HierarchicalVAE:
    torch.manual_seed(0)
    return HierarchicalVAE(in_channels=4, sample_size=16, **(PRESETS["tiny"] | overrides)).eval()


def tiny_autoencoder() -> PatchAutoencoder:
    torch.manual_seed(0)
    return PatchAutoencoder(latent_channels=4, block_out_channels=(8, 16), patch_size=2).eval()


def scene_folder(folder, n: int = 3, size: int = 128):
    """A folder of ``n`` rendered scenes as PNGs (made once; training recipes read it)."""
    if not folder.exists():
        folder.mkdir(parents=True)
        dataset = ShapesDataset(n, seed=1, size=size)
        for i in range(n):
            dataset[i][0].save(folder / f"{i}.png")
    return folder


def tiny_codec(seed=0) -> HVAECompressionPipeline:
    torch.manual_seed(seed)
    autoencoder = PatchAutoencoder(latent_channels=4, block_out_channels=(8, 16), patch_size=4)
    pipe = HVAECompressionPipeline(
        autoencoder=autoencoder.eval(), hvae=make_codec_model("tiny", 4).eval()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def hvae_model() -> HierarchicalVAE:
    return tiny_hvae()


@pytest.fixture
def tiny_pipeline() -> HVAEPipeline:
    pipe = HVAEPipeline(autoencoder=tiny_autoencoder(), hvae=tiny_hvae())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_pipeline_dir(tmp_path, tiny_pipeline):
    path = tmp_path / "pipeline"
    tiny_pipeline.register_direction(
        "brighter", torch.ones(tiny_pipeline.hvae.latent_groups[0].z_channels)
    )
    tiny_pipeline.save_pretrained(path)
    return path
