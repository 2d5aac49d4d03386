"""The fitted sampling prior: the mixture it fits, its sampling contract, and its pipeline wiring."""

import pytest
import torch

from hvae.cli import main
from hvae.errors import HVAEError
from hvae.latent_prior import FittedPrior
from pipelines import HVAEPipeline


def two_clusters(n: int = 600) -> torch.Tensor:
    """(n, 2 + 8) points: half near (+3, 0), half near (-3, 0), in a (1, 2, 2, 2) + (2,) layout."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0]]).repeat(n // 2, 1)
    coords = centres + 0.3 * torch.randn(n, 2, generator=generator)
    rest = 0.05 * torch.randn(n, 8, generator=generator)
    return torch.cat([coords, rest], 1)


def fitted(mixtures: int = 2) -> FittedPrior:
    prior, _ = FittedPrior.fit(two_clusters(), [0, 1], [(2, 1, 1), (2, 2, 2)], 4, mixtures)
    return prior


def generators(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_mixture_finds_the_two_clusters_and_samples_match_them():
    prior = fitted()
    first, second = prior.sample(generators(400), temperature=1.0)
    assert first.shape == (400, 2, 1, 1) and second.shape == (400, 2, 2, 2)
    x = first[:, 0, 0, 0]
    # Both clusters drawn, about equally, and nothing in the empty middle.
    assert 0.35 < (x > 0).float().mean() < 0.65
    assert (x.abs() > 1.5).float().mean() > 0.97
    assert x[x > 0].std() == pytest.approx(0.3, abs=0.08)
    assert second.std() == pytest.approx(0.05, abs=0.02)


def test_one_gaussian_cannot_fit_two_clusters_as_well():
    _, two = FittedPrior.fit(two_clusters(), [0, 1], [(2, 1, 1), (2, 2, 2)], 4, 2)
    _, one = FittedPrior.fit(two_clusters(), [0, 1], [(2, 1, 1), (2, 2, 2)], 4, 1)
    assert two > one + 1.0


def test_temperature_zero_gives_the_centres():
    first, _ = fitted().sample(generators(50), temperature=0.0)
    assert set(first[:, 0, 0, 0].round(decimals=0).tolist()) == {-3.0, 3.0}


def test_each_draw_depends_only_on_its_own_generator():
    prior = fitted()
    alone = prior.sample(generators(1, seed=7), 0.8)[0]
    batched = prior.sample(generators(3, seed=5), 0.8)[0]  # seeds 5, 6, 7
    assert torch.equal(batched[2:], alone)


def test_save_and_load_give_identical_draws(tmp_path):
    prior = fitted()
    prior.about = {"fitted_on": "test"}
    prior.save(tmp_path / "p")
    loaded = FittedPrior.load(tmp_path / "p")
    assert loaded.about == {"fitted_on": "test"}
    pairs = zip(prior.sample(generators(4), 0.8), loaded.sample(generators(4), 0.8), strict=True)
    for a, b in pairs:
        assert torch.equal(a, b)
    assert FittedPrior.load(tmp_path / "missing") is None


def test_fits_checks_the_group_shapes():
    prior = fitted()
    assert prior.fits([(2, 1, 1), (2, 2, 2), (4, 4, 4)])
    assert not prior.fits([(2, 1, 1), (2, 4, 4)])


def test_a_component_that_collapses_onto_a_few_points_starts_again():
    """Five far outliers in 10 dimensions and 16 components: without re-seeding, components
    end up holding almost no points (measured: 0.0), and sampling one copies its points."""
    jitter = 0.01 * torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    points = torch.cat([two_clusters(300), 40.0 + jitter])
    prior, _ = FittedPrior.fit(points, [0], [(10, 1, 1)], 10, 16)
    mass = prior.log_weights.exp() * len(points)
    assert mass.min() >= 11  # more points than dimensions in every component


def test_projecting_out_repeated_or_dependent_directions_removes_only_their_span():
    from hvae.directions import project_out

    a = torch.tensor([1.0, 0.0, 0.0, 0.0])
    vector = torch.ones(4)
    assert torch.allclose(project_out(vector, [a, a]), torch.tensor([0.0, 1.0, 1.0, 1.0]))
    assert torch.allclose(project_out(vector, [a, 2 * a, torch.zeros(4)]), project_out(vector, [a]))


def test_too_few_images_is_a_clear_error():
    with pytest.raises(HVAEError, match="at least 64 images"):
        FittedPrior.fit(two_clusters(20), [0, 1], [(2, 1, 1), (2, 2, 2)], 4, 32)


def test_prior_fit_command_wires_the_prior_into_the_pipeline(tiny_pipeline_dir, tmp_path, capsys):
    args = ["prior", "fit", "--scenes", "100", "--mixtures", "2", "--components", "4"]
    assert main([*args, "--model", str(tiny_pipeline_dir)]) == 0
    out = capsys.readouterr().out
    assert "a 2-component mixture" in out and "saved the sampling prior" in out
    pipe = HVAEPipeline.from_pretrained(tiny_pipeline_dir)
    assert pipe.fitted_prior is not None and pipe.fitted_prior.groups == [0, 1]
    assert pipe.fitted_prior.mixtures == 2
    assert pipe.fitted_prior.about["fitted_on"] == "100 rendered scenes, seed 0"

    # Image i depends only on (seed, i), whichever others are drawn with it.
    alone = pipe.sample(1, temperature=0.8, seed=3, indices=[4])[0]
    among = pipe.sample(3, temperature=0.8, seed=3, start=2)[2]
    assert alone.tobytes() == among.tobytes()
    assert pipe.sampler_id().startswith("fitted prior ")
    assert pipe.sampler_id("model") == "model prior"

    fitted_samples = pipe.sample(2, temperature=0.8, seed=3, prior="fitted")
    default_samples = pipe.sample(2, temperature=0.8, seed=3)
    model_samples = pipe.sample(2, temperature=0.8, seed=3, prior="model")
    assert [a.tobytes() for a in fitted_samples] == [a.tobytes() for a in default_samples]
    assert [a.tobytes() for a in fitted_samples] != [a.tobytes() for a in model_samples]

    # Another size has other spatial shapes: "auto" falls back to the model, "fitted" says why.
    other = pipe.sample(1, size=(32, 32), seed=3)
    assert [a.tobytes() for a in other] == [
        a.tobytes() for a in pipe.sample(1, size=(32, 32), seed=3, prior="model")
    ]
    with pytest.raises(HVAEError, match="another sample size"):
        pipe.sample(1, size=(32, 32), prior="fitted")
    with pytest.raises(HVAEError, match="prior must be one of"):
        pipe.sample(1, prior="mixture")

    # The prior survives save_pretrained, and a pipeline without one drops a stale folder.
    copy = tmp_path / "copy"
    pipe.save_pretrained(copy)
    again = HVAEPipeline.from_pretrained(copy)
    assert again.fitted_prior.about == pipe.fitted_prior.about
    assert [a.tobytes() for a in again.sample(2, temperature=0.8, seed=3)] == [
        a.tobytes() for a in fitted_samples
    ]
    again.fitted_prior = None
    again.save_pretrained(copy)
    assert not (copy / "sample_prior").exists()


def test_prior_fit_refuses_images_of_another_size(tiny_pipeline_dir, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 40), (i * 60, 0, 0)).save(folder / f"{i}.png")
    assert main(["prior", "fit", str(folder), "--model", str(tiny_pipeline_dir)]) == 2
    assert "not 64×64, the training size" in capsys.readouterr().err


def test_generate_with_the_model_prior_and_the_fitted_one_cannot_share_a_folder(
    tiny_pipeline_dir, tmp_path, capsys
):
    fit = ["prior", "fit", "--scenes", "100", "--mixtures", "2", "--components", "4"]
    assert main([*fit, "--model", str(tiny_pipeline_dir)]) == 0
    out = tmp_path / "g"
    generate = ["generate", "-n", "2", "-o", str(out), "--model", str(tiny_pipeline_dir)]
    assert main(generate) == 0
    capsys.readouterr()
    assert main([*generate, "--prior", "model"]) == 2
    assert "other settings" in capsys.readouterr().err
