"""Attribute directions: label sources and their errors, fitting semantics, conditional edits, storage."""

import numpy as np
import pytest
import torch
from PIL import Image

from hvae import directions
from hvae.cli import main
from hvae.data.images import to_pil
from hvae.data.shapes import ShapesDataset
from hvae.errors import HVAEError
from pipelines import HVAEPipeline


@pytest.fixture
def labelled_folder(tmp_path):
    """12 scenes and a CSV of their true factors."""
    folder = tmp_path / "scenes"
    folder.mkdir()
    rows = ["file,floor_hue,scale,constant"]
    for i, (image, factors) in enumerate(ShapesDataset(12, seed=21, size=64)):
        image.save(folder / f"s{i}.png")
        rows.append(f"s{i}.png,{factors.floor_hue},{factors.scale},1")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def saved_scenes(tmp_path):
    """A folder of 16 rendered scenes, for the CLI's unlabelled sources."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (image, _) in enumerate(ShapesDataset(16, seed=4, size=64)):
        image.save(folder / f"{i}.png")
    return folder


def test_a_label_direction_is_the_mean_latent_change_per_sd_of_the_attribute():
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(2000, generator=generator) * 4
    slope = torch.tensor([1.0, -2.0, 0.5, 0.0])
    latents = values[:, None] * slope + 0.3 * torch.randn(2000, 4, generator=generator)
    direction, r2 = directions.fit_label_direction(latents, values.numpy())
    assert r2 > 0.9
    expected = slope * float(values.std())
    assert torch.allclose(direction, expected, atol=0.05 * float(expected.norm()))


def test_a_field_follows_a_curved_attribute_and_holds_the_others():
    """An attribute that goes round a circle in latent space: a fixed vector cannot move
    along it, the field can, and it leaves the other attribute where it was."""
    rng = np.random.default_rng(0)
    angle, other = rng.uniform(0, 1.5 * np.pi, 1500), rng.uniform(-1, 1, 1500)

    def latent(a, b):
        return torch.tensor(np.stack([np.cos(a), np.sin(a), b], 1), dtype=torch.float32)

    latents = latent(angle, other)
    field, fits = directions.DirectionField.fit(latents, {"angle": angle, "other": other})
    assert fits["angle"] > 0.95 and fits["other"] > 0.95
    start_angle, start_other = np.array([0.5, 2.0, 3.5]), np.array([-0.5, 0.0, 0.5])
    start = latent(start_angle, start_other)
    moved = field.shift(start, torch.tensor([1.0, 0.0]))
    target = latent(start_angle + angle.std(), start_other)
    vector, _ = directions.fit_label_direction(latents, angle)
    field_error = (moved - target).norm(dim=1)
    vector_error = (start + vector - target).norm(dim=1)
    assert field_error.max() < 0.2
    assert field_error.mean() < 0.5 * vector_error.mean()
    assert torch.allclose(moved[:, 2], start[:, 2], atol=0.1)  # the other attribute is held


def test_label_tables_in_csv_and_celeba_format(tmp_path):
    (tmp_path / "a.csv").write_text("name,Smiling,age\nx.jpg,1,30\ny.jpg,-1,40\n")
    names, table = directions.read_label_table(tmp_path / "a.csv")
    assert names == ["x.jpg", "y.jpg"] and table == {"Smiling": [1.0, -1.0], "age": [30.0, 40.0]}
    (tmp_path / "list_attr_celeba.txt").write_text(
        "2\n5_o_Clock_Shadow Smiling\n000001.jpg -1  1\n000002.jpg  1 -1\n"
    )
    names, table = directions.read_label_table(tmp_path / "list_attr_celeba.txt")
    assert names == ["000001.jpg", "000002.jpg"]
    assert table == {"5_o_Clock_Shadow": [-1.0, 1.0], "Smiling": [1.0, -1.0]}


def test_labels_that_do_not_match_the_images_get_clear_errors(tmp_path):
    (tmp_path / "short.csv").write_text("file,a\nx.png,1,2\n")
    with pytest.raises(HVAEError, match="row 1 has 3 fields"):
        directions.read_label_table(tmp_path / "short.csv")
    (tmp_path / "text.csv").write_text("file,a\nx.png,tall\n")
    with pytest.raises(HVAEError, match="not a number"):
        directions.read_label_table(tmp_path / "text.csv")
    with pytest.raises(HVAEError, match="no such label file"):
        directions.read_label_table(tmp_path / "missing.csv")
    images = {"x.png": tmp_path / "x.png", "y.png": tmp_path / "y.png"}
    with pytest.raises(HVAEError, match="no labels for 1 image"):
        directions.labels_for(images, ["x.png"], {"a": [1.0]}, "t.csv")
    with pytest.raises(HVAEError, match="constant"):
        directions.check_labels({"a": np.ones(5)})


def test_cli_fits_from_a_csv_and_refuses_bad_columns(
    tiny_pipeline_dir, labelled_folder, tmp_path, capsys
):
    labels = tmp_path / "labels.csv"
    base = ["directions", "fit", str(labelled_folder), "--model", str(tiny_pipeline_dir)]
    assert main([*base, "--labels", str(labels), "--columns", "nosuch"]) == 2
    assert "no column(s) nosuch" in capsys.readouterr().err
    assert main([*base, "--labels", str(labels)]) == 2  # the constant column
    assert "'constant' is constant" in capsys.readouterr().err
    out = tmp_path / "with_directions"
    args = [*base, "--labels", str(labels), "--columns", "floor_hue", "scale", "-o", str(out)]
    assert main(args) == 0
    pipe = HVAEPipeline.from_pretrained(out)
    assert {"floor_hue", "scale"} <= set(pipe.directions)
    meta = pipe.direction_metadata()["scale"]
    assert meta == {
        "group": 0,
        "source": "labels",
        "units": "sd",
        "range": [-3.0, 3.0],  # a fresh fit is not measured: the default range
        "kind": "field",
        "groups": [0],
    }

    capsys.readouterr()
    assert main(["directions", "list", "--model", str(out), "--json"]) == 0
    assert '"floor_hue"' in capsys.readouterr().out


def test_fitted_fields_survive_save_and_load(tiny_pipeline, tmp_path):
    scenes, labels = directions.scene_labels(24, seed=5, size=64)
    directions.fit_directions(tiny_pipeline, scenes, labels, "scenes")
    tiny_pipeline.save_pretrained(tmp_path / "p")
    loaded = HVAEPipeline.from_pretrained(tmp_path / "p")
    assert loaded.direction_metadata() == tiny_pipeline.direction_metadata()
    codes = tiny_pipeline.encode(scenes[:3])
    edits = {"scale": 1.0, "wall_hue": -0.5}
    edited = tiny_pipeline.edit(codes, edits).latents[0]
    assert torch.equal(edited, loaded.edit(codes, edits).latents[0])
    assert not torch.allclose(edited, codes.latents[0])


def test_auto_pca_and_folder_sources(tiny_pipeline, tmp_path):
    images = [image for image, _ in ShapesDataset(16, seed=4, size=64)]
    fits = directions.fit_directions(tiny_pipeline, images, directions.auto_labels(images), "auto")
    assert set(fits) == set(directions.AUTO_STATISTICS)
    shares = directions.fit_pca(tiny_pipeline, images, 3)
    assert list(shares) == ["pc1", "pc2", "pc3"] and shares["pc1"] >= shares["pc2"] >= shares["pc3"]
    vectors = [tiny_pipeline._directions[f"pc{i}"].vector.flatten() for i in (1, 2, 3)]
    assert abs(float(vectors[0] @ vectors[1])) < 1e-4  # principal axes are orthogonal

    root = tmp_path / "classes"
    for name in ("day", "night"):
        (root / name).mkdir(parents=True)
    paths = []
    for i, image in enumerate(images[:6]):
        path = root / ("day" if i < 3 else "night") / f"{i}.png"
        image.save(path)
        paths.append(path)
    labels = directions.folder_labels(paths, root)
    assert labels["day"].tolist() == [1, 1, 1, 0, 0, 0] and labels["night"].sum() == 3


def test_auto_statistics_follow_the_pixels():
    dark, bright = (
        Image.new("RGB", (32, 32), (40, 40, 40)),
        Image.new("RGB", (32, 32), (200, 200, 200)),
    )
    warm, cool = (
        Image.new("RGB", (32, 32), (200, 100, 50)),
        Image.new("RGB", (32, 32), (50, 100, 200)),
    )
    assert (
        directions.image_statistics(bright)["brightness"]
        > directions.image_statistics(dark)["brightness"]
    )
    assert directions.image_statistics(warm)["warmth"] > directions.image_statistics(cool)["warmth"]
    assert (
        directions.image_statistics(warm)["saturation"]
        > directions.image_statistics(bright)["saturation"]
    )


def test_keep_projects_out_other_directions_and_interpolation_ends_at_both_codes(tiny_pipeline):
    channels = tiny_pipeline.hvae.latent_groups[0].z_channels
    a, b = torch.zeros(channels), torch.zeros(channels)
    a[0], a[1], b[1] = 1.0, 1.0, 1.0
    tiny_pipeline.register_direction("a", a)
    tiny_pipeline.register_direction("b", b)
    scenes = [image for image, _ in ShapesDataset(2, seed=8, size=64)]
    codes = tiny_pipeline.encode(scenes)
    free = tiny_pipeline.edit(codes, {"a": 1.0})
    held = tiny_pipeline.edit(codes, {"a": 1.0}, keep=["b"])
    change = (held.latents[0] - codes.latents[0])[:, :, 0, 0]
    assert torch.allclose(change @ b, torch.zeros(2), atol=1e-6)  # nothing along b
    assert not torch.allclose(free.latents[0], held.latents[0])
    with pytest.raises(HVAEError, match="unknown direction"):
        tiny_pipeline.edit(codes, {"a": 1.0}, keep=["nope"])

    first, second = tiny_pipeline.encode(scenes[:1]), tiny_pipeline.encode(scenes[1:])
    for t, expected in ((0.0, first), (1.0, second)):
        mixed = HVAEPipeline.interpolate(first, second, t)
        assert all(
            torch.allclose(x, y) for x, y in zip(mixed.latents, expected.latents, strict=True)
        )
        assert torch.allclose(mixed.detail, expected.detail)


def synthetic_moments(n: int = 400):
    """Moments of two groups (2 and 3 channels) and a 2-channel detail, where ``warm`` shifts
    channel 0 of group 1's mean and ``crisp`` raises the detail's spread; ``dark`` moves
    with ``warm`` (correlated attributes, as in photos)."""
    generator = torch.Generator().manual_seed(0)
    warm = torch.randn(n, generator=generator)
    crisp = torch.randn(n, generator=generator)
    dark = 0.8 * warm + 0.6 * torch.randn(n, generator=generator)
    noise = lambda *shape: 0.05 * torch.randn(*shape, generator=generator)  # noqa: E731
    means = [noise(n, 2), noise(n, 3)]
    means[1][:, 0] += 0.5 * warm
    means[1][:, 2] -= 0.5 * dark
    log_stds = [noise(n, 2), noise(n, 3)]
    detail = noise(n, 2) + 0.3 * crisp[:, None]
    moments = {"means": means, "log_stds": log_stds, "detail_log_stds": detail}
    labels = {"warm": warm.numpy(), "crisp": crisp.numpy(), "dark": dark.numpy()}
    return moments, labels


def test_moment_directions_shift_means_and_scale_spreads_per_sd():
    moments, labels = synthetic_moments()
    fitted, _ = directions.MomentDirections.fit(moments, labels)
    latents = [torch.zeros(1, 2, 1, 1), torch.randn(1, 3, 6, 6)]
    detail = torch.randn(1, 2, 5, 5)

    moved, same_detail = fitted.apply(latents, detail, torch.tensor([1.0, 0.0, 0.0]))
    change = (moved[1] - latents[1]).mean((0, 2, 3))
    assert change[0] == pytest.approx(0.5, abs=0.05)  # warm: +1 sd moves channel 0 by 0.5
    assert torch.allclose(same_detail, detail, rtol=0.05)
    spread = moved[1] - moved[1].mean((2, 3), keepdim=True)
    original = latents[1] - latents[1].mean((2, 3), keepdim=True)
    assert torch.allclose(spread, original, rtol=0.1, atol=1e-3)  # the layout is kept

    _, crisper = fitted.apply(latents, detail, torch.tensor([0.0, 2.0, 0.0]))
    assert float(crisper.std() / detail.std()) == pytest.approx(float(np.exp(0.6)), rel=0.05)


def test_keep_removes_what_a_moment_direction_carries_of_another():
    moments, labels = synthetic_moments()
    fitted, _ = directions.MomentDirections.fit(moments, labels)
    latents = [torch.zeros(1, 2, 1, 1), torch.zeros(1, 3, 4, 4)]
    warm = torch.tensor([1.0, 0.0, 0.0])
    # Fitted alone, warm carries dark's change too (channel 2 falls) ...
    carried = fitted.apply(latents, None, warm)[0][1].mean((0, 2, 3))
    assert carried[2] < -0.15
    # ... and keeping dark projects dark's direction out, while channel 0 still moves.
    kept = fitted.apply(latents, None, warm, keep=[2])[0][1].mean((0, 2, 3))
    dark = fitted.apply(latents, None, torch.tensor([0.0, 0.0, 1.0]))[0][1].mean((0, 2, 3))
    assert abs(float(kept @ dark)) < 0.1 * abs(float(carried @ dark))
    assert kept[0] > 0.05


def test_moment_directions_edit_any_size_and_survive_save_and_load(
    tiny_pipeline, tmp_path, capsys, saved_scenes
):
    folder = saved_scenes
    tiny_pipeline.save_pretrained(tmp_path / "p")
    args = ["directions", "fit", str(folder), "--auto", "--kind", "moments"]
    assert main([*args, "--model", str(tmp_path / "p")]) == 0
    assert "ridge regression" in capsys.readouterr().out
    pipe = HVAEPipeline.from_pretrained(tmp_path / "p")
    assert pipe.direction_metadata()["warmth"]["kind"] == "moments"
    assert pipe.edit_size is None  # moments apply at any size

    wide = Image.new("RGB", (96, 40), (200, 120, 40))
    codes = pipe.encode([wide])
    edited = pipe.edit(codes, {"warmth": 1.5}, keep=["brightness"])
    assert not torch.equal(pipe.decode_tensor(edited), pipe.decode_tensor(codes))
    assert pipe.decode(edited)[0].size == (96, 40)
    again = HVAEPipeline.from_pretrained(tmp_path / "p")
    assert torch.equal(
        again.decode_tensor(again.edit(codes, {"warmth": 1.5}, keep=["brightness"])),
        pipe.decode_tensor(edited),
    )
    assert main([*args, "--all-groups", "--model", str(tmp_path / "p")]) == 2


class PooledColours:
    """A stand-in stage 1 whose features are 8x8 mean colours, so pixel adjustments that
    are linear per pixel (saturation, warmth) are exactly linear maps of the features."""

    def encode(self, images):
        from hvae.data.images import to_tensor

        return torch.nn.functional.avg_pool2d(to_tensor(list(images)), 8)

    def decode(self, features, image_size):
        upsampled = torch.nn.functional.interpolate(features, scale_factor=8, mode="nearest")
        return upsampled[..., : image_size[0], : image_size[1]].clamp(-1, 1)


def colour_blocks(n: int, seed: int = 0) -> list[Image.Image]:
    """Pictures of 8x8 blocks of mid-range colours (no clipping under small adjustments)."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(60, 190, size=(n, 4, 4, 3)).astype(np.uint8)
    return [Image.fromarray(b.repeat(8, 0).repeat(8, 1)) for b in blocks]


def test_flow_features_is_the_identity_at_zero_and_the_matrix_exponential_otherwise():
    features = torch.randn(2, 4, 6, 5)
    size = directions.FLOW_BANDS * 4 + 1
    assert torch.allclose(
        directions.flow_features(features, torch.zeros(size, size)), features, atol=1e-6
    )
    doubling = torch.zeros(size, size)
    doubling[:-1, :-1] = torch.eye(size - 1) * np.log(2.0)
    assert torch.allclose(directions.flow_features(features, doubling), 2 * features, atol=1e-5)
    shift = torch.zeros(size, size)
    shift[:4, -1] = torch.tensor([1.0, -1.0, 0.5, 0.0])  # moves the mean band only
    moved = directions.flow_features(features, shift)
    expected = features + shift[:4, -1][None, :, None, None]
    assert torch.allclose(moved, expected, atol=1e-5)


def test_feature_flows_fitted_on_pairs_explain_linear_adjustments_and_move_one_sd():
    images = colour_blocks(16)
    flows, fits = directions.FeatureFlows.fit(PooledColours(), images)
    # Brightness, saturation and warmth are per-pixel linear maps, and contrast one about
    # the picture's mean, so here exactly linear in the bands. (Sharpness is not tested:
    # on uniform 8x8 blocks it changes only block edges, which pooling averages away.)
    linear = ("brightness", "saturation", "warmth", "contrast")
    assert all(fits[name] > 0.95 for name in linear), fits
    # Strength 1 moves the statistic by about one sd of it over the fitting pictures.
    stage1, held_out = PooledColours(), colour_blocks(8, seed=1)
    for name in linear:
        spread = np.std([directions.image_statistics(i)[name] for i in images])
        k = flows.names.index(name)
        for image in held_out:
            features = stage1.encode([image])
            values = []
            for strength in (-1.0, 0.0, 1.0):
                moved = directions.flow_features(features, strength * flows.generators[k])
                decoded = to_pil(stage1.decode(moved, (32, 32)))[0]
                values.append(directions.image_statistics(decoded)[name])
            assert values[0] < values[1] < values[2], (name, values)
            assert 0.5 < (values[2] - values[0]) / 2 / spread < 1.5, (name, values, spread)


class CubedColours(PooledColours):
    """Pooled colours cubed: a stage 1 whose features are not linear in colour, as a real
    one's are not, so that no flow fits every picture's adjustment exactly."""

    def encode(self, images):
        return super().encode(images) ** 3

    def decode(self, features, image_size):
        return super().decode(features.sign() * features.abs() ** (1 / 3), image_size)


def test_grey_copies_in_the_fit_keep_the_saturation_flow_from_tinting_grey_pictures():
    """Saturating or desaturating a grey picture in pixels changes nothing. Fitted on
    colourful pictures alone, the flow still tints a grey one; the grey copies' pairs
    (a request that changed nothing) make it tint less, either way."""
    stage1, grey = CubedColours(), colour_blocks(1, seed=9)[0].convert("L").convert("RGB")
    features = stage1.encode([grey])

    def tint(flows, strength):
        generator = strength * flows.generators[flows.names.index("saturation")]
        decoded = to_pil(stage1.decode(directions.flow_features(features, generator), (32, 32)))
        return directions.image_statistics(decoded[0])["saturation"]

    with_greys, _ = directions.FeatureFlows.fit(stage1, colour_blocks(16))
    without, _ = directions.FeatureFlows.fit(stage1, colour_blocks(16), grey_copies=False)
    assert tint(without, 0.0) == tint(with_greys, 0.0) == 0.0
    for strength in (-2.0, -1.0, 1.0, 2.0):
        assert tint(with_greys, strength) < 0.8 * tint(without, strength), strength


def test_feature_flow_solves_are_least_squares_over_the_right_pairs():
    """``solve(k, held)`` equals an explicit least-squares fit on the pairs of adjustments k
    and ``held`` only, and ``r_squared`` an explicit centred R^2."""
    rng = np.random.default_rng(3)
    flows = directions.FeatureFlows(["a", "b", "c"], channels=1)
    flows.ridge = 0.0
    size = flows.state_size  # 4: three bands of one channel and the constant
    pairs = []
    for k in (0, 1, 2):
        for _ in range(6):
            state = torch.tensor(rng.normal(size=(size, 5)))
            state[-1] = 1.0
            change = torch.tensor(rng.normal(size=(size - 1, 5)))
            stats = torch.tensor(rng.normal(size=3))
            flows.add_pair(k, state, change, stats)
            pairs.append((k, state, change, stats))

    def explicit(k, held):
        attributes = [k, *held]
        rows, targets = [], []
        for adjustment, state, change, stats in pairs:
            if adjustment in attributes:
                rows.append(torch.cat([stats[j] * state for j in attributes]).T)
                targets.append(change.T)
        design, target = torch.cat(rows), torch.cat(targets)
        return torch.linalg.lstsq(design, target).solution[:size].T, design, target

    for k, held in ((0, []), (1, [2]), (2, [0, 1])):
        weights, _, _ = explicit(k, held)
        assert torch.allclose(flows.solve(k, held)[:-1].double(), weights, atol=1e-5)
        assert not flows.solve(k, held)[-1].any()  # the constant stays constant
    flows.generators[1] = flows.solve(1)
    weights, design, target = explicit(1, [])
    residual = (target - design[:, :size] @ weights.T).pow(2).sum()
    centred = (target - target.mean(0)).pow(2).sum()
    count, total, squares = len(target), target.sum(0), float(target.pow(2).sum())
    assert abs(flows.r_squared(1, count, total, squares) - float(1 - residual / centred)) < 1e-4


def test_feature_flow_edits_compose_hold_the_latents_and_survive_save_and_load(
    tiny_pipeline, tmp_path, capsys, saved_scenes
):
    folder = saved_scenes
    tiny_pipeline.save_pretrained(tmp_path / "p")
    args = [
        "directions",
        "fit",
        str(folder),
        "--kind",
        "feature-flow",
        "--model",
        str(tmp_path / "p"),
    ]
    assert main([*args, "--folders"]) == 2  # flows need the auto statistics' pixel adjustments
    assert "use --auto" in capsys.readouterr().err
    assert main([*args, "--auto"]) == 0
    assert "as the flow predicts them" in capsys.readouterr().out
    pipe = HVAEPipeline.from_pretrained(tmp_path / "p")
    assert pipe.direction_metadata()["saturation"] == {
        "group": 0,
        "source": "auto",
        "units": "sd",
        "range": [-3.0, 3.0],
        "kind": "feature-flow",
        "groups": [],
    }
    assert pipe.edit_size is None
    assert main(["directions", "list", "--model", str(tmp_path / "p")]) == 0
    assert "stage-1 features (flow)" in capsys.readouterr().out

    wide = Image.new("RGB", (96, 40), (200, 120, 40))
    codes = pipe.encode([wide])
    once = pipe.edit(codes, {"saturation": 1.0, "warmth": -0.5})
    twice = pipe.edit(pipe.edit(codes, {"saturation": 0.5}), {"saturation": 0.5, "warmth": -0.5})
    assert all(torch.equal(a, b) for a, b in zip(once.latents, codes.latents, strict=True))
    assert torch.allclose(pipe.decode_tensor(once), pipe.decode_tensor(twice), atol=1e-5)
    assert not torch.allclose(pipe.decode_tensor(once), pipe.decode_tensor(codes), atol=1e-3)
    assert torch.equal(
        pipe.decode_tensor(pipe.edit(codes, {"saturation": 0.0})), pipe.decode_tensor(codes)
    )
    assert pipe.decode(once)[0].size == (96, 40)
    # Slider moves reuse the unedited stage-2 decode, but never for latents changed by hand.
    assert "whole" in codes.base_cache
    by_hand = pipe.edit(codes, {"saturation": 1.0, "warmth": -0.5})
    by_hand.latents[0] = by_hand.latents[0] + 1.0
    assert not torch.allclose(pipe.decode_tensor(by_hand), pipe.decode_tensor(once), atol=1e-3)
    halfway = pipe.interpolate(codes, once, 0.5)
    assert torch.allclose(halfway.feature_flow, once.feature_flow / 2)
    # Reloaded, the stored generators are the solves over each adjustment's own pairs, and
    # keep= solves jointly over the pairs of the moved and the kept attributes.
    flows = pipe._directions["saturation"].field
    k = flows.names.index("saturation")
    held = [flows.names.index(n) for n in ("brightness", "warmth")]
    assert torch.allclose(flows.solve(k), flows.generators[k], atol=1e-6)
    kept = pipe.edit(codes, {"saturation": 1.0}, keep=["brightness", "warmth"])
    assert torch.allclose(kept.feature_flow, flows.solve(k, held))
    assert not torch.allclose(kept.feature_flow, flows.generators[k])
    # The cached decode is not reused once the codes edited from have changed latents.
    first = pipe.decode_tensor(pipe.edit(codes, {"warmth": 1.0}))
    codes.latents[0] = codes.latents[0] + 1.0
    changed = pipe.decode_tensor(pipe.edit(codes, {"warmth": 1.0}))
    assert not torch.allclose(first, changed, atol=1e-3)


# ---------------------------------------------------------------- strength ranges
def test_each_direction_keeps_its_range_and_edits_refuse_strengths_outside_it(
    tiny_pipeline, tmp_path
):
    import json

    channels = tiny_pipeline.hvae.latent_groups[0].z_channels
    tiny_pipeline.register_direction("a", torch.ones(channels), strength_range=(-1.0, 2.0))
    tiny_pipeline.register_direction("b", torch.ones(channels))
    assert tiny_pipeline.direction_metadata()["a"]["range"] == [-1.0, 2.0]
    assert tiny_pipeline.strength_range("b") == directions.DEFAULT_STRENGTH_RANGE
    tiny_pipeline.save_pretrained(tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "directions" / "directions.json").read_text())
    assert saved["a"]["range"] == [-1.0, 2.0]

    # A folder saved before ranges existed: its directions get the documented default.
    del saved["a"]["range"]
    (tmp_path / "p" / "directions" / "directions.json").write_text(json.dumps(saved))
    assert HVAEPipeline.from_pretrained(tmp_path / "p").strength_range("a") == (-3.0, 3.0)

    codes = tiny_pipeline.encode(ShapesDataset(1, seed=1, size=64)[0][0])
    assert tiny_pipeline.edit(codes, {"a": 2.0, "b": -3.0}).latents[0] is not None
    for strength in (2.01, -1.5, float("nan"), float("inf"), 1e9):
        with pytest.raises(HVAEError, match="direction 'a' takes strengths from -1 to 2"):
            tiny_pipeline.edit(codes, {"a": strength})


@pytest.mark.parametrize("bad", [[0.5, 2.0], [-1.0, -0.5], [-1.0], ["low", 1.0], [None, 1]])
def test_saved_ranges_that_are_not_ranges_are_refused_on_load(tiny_pipeline_dir, bad):
    import json

    path = tiny_pipeline_dir / "directions" / "directions.json"
    saved = json.loads(path.read_text())
    saved["brighter"]["range"] = bad
    path.write_text(json.dumps(saved))
    with pytest.raises(HVAEError, match="direction 'brighter': range must be"):
        HVAEPipeline.from_pretrained(tiny_pipeline_dir)


def _with_fields(folder, spec):
    import json

    (folder / "directions" / "fields.json").write_text(json.dumps([spec]))
    return folder


def test_fields_json_is_checked_against_bounds_and_the_model_before_anything_is_built(
    tiny_pipeline_dir, monkeypatch
):
    from hvae.directions import kinds

    editor = {"kind": "feature-editor", "names": ["x"], "units": ["sd"], "channels": 4}
    cases = [
        (editor | {"width": 10**9, "blocks": 1}, "width must be between 1 and 4096"),
        (
            editor | {"width": 8, "blocks": 1, "channels": 3},
            "3-channel features; this model's have 4",
        ),
        (editor | {"width": "8", "blocks": 1}, "needs 'width' \\(int\\)"),
        ({"kind": "feature-flow", "names": ["x"], "channels": 10**12}, "channels must be between"),
        (
            {"kind": "moments", "names": ["x"], "group_channels": [5], "detail_channels": 4},
            "groups of \\[5\\]",
        ),
        (
            {
                "kind": "field",
                "names": ["x"],
                "groups": [99],
                "dim": 4,
                "components": 2,
                "hidden": 8,
            },
            "latent groups \\[99\\]",
        ),
        (
            {"kind": "field", "names": [], "groups": [0], "dim": 4, "components": 2, "hidden": 8},
            "1 to 256 attribute names",
        ),
        ({"kind": "warp"}, "unknown kind"),
    ]
    for spec, message in cases:
        _with_fields(tiny_pipeline_dir, spec)
        with pytest.raises(HVAEError, match=f"fields.json: entry 0: .*{message}"):
            HVAEPipeline.from_pretrained(tiny_pipeline_dir)
    # Within every bound but too large as a whole: counted without allocating, then refused.
    monkeypatch.setattr(kinds, "MAX_ELEMENTS", 1000)
    _with_fields(tiny_pipeline_dir, editor | {"width": 8, "blocks": 1})
    with pytest.raises(HVAEError, match="feature-editor direction set of [0-9,]+ weights is over"):
        HVAEPipeline.from_pretrained(tiny_pipeline_dir)
    (tiny_pipeline_dir / "directions" / "fields.json").write_text("{not json")
    with pytest.raises(HVAEError, match="fields.json: unreadable"):
        HVAEPipeline.from_pretrained(tiny_pipeline_dir)
