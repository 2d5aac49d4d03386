"""The feature editor: learns edits from pairs, holds what it is not asked to move, and
plugs into the pipeline like any direction set."""

import pytest
import torch

from hvae.cli import main
from hvae.data.images import to_pil
from hvae.directions import FeatureEditor
from hvae.errors import HVAEError
from pipelines import HVAEPipeline


def synthetic_pairs(n: int = 512, seed: int = 0):
    """Features whose pairs differ by two known edits: "lift" adds 1 to channel 0 in the top
    half, "swap" moves channel 1 into channel 2 (a change that depends on the features)."""
    generator = torch.Generator().manual_seed(seed)
    sources = torch.randn(n, 3, 8, 8, generator=generator)
    strengths = torch.randint(-1, 2, (n, 2), generator=generator).float()
    targets = sources.clone()
    targets[:, 0, :4] += strengths[:, :1, None]
    swap = strengths[:, 1, None, None]
    targets[:, 2] += swap * sources[:, 1]
    return sources, targets, torch.arange(n), strengths


def test_a_new_editor_is_the_identity_and_fitting_learns_each_edit():
    sources, targets, index, strengths = synthetic_pairs()
    untrained = FeatureEditor(["lift", "swap"], ["sd", "sd"], channels=3, width=16)
    assert torch.equal(untrained(sources[:4], strengths[:4]), sources[:4])
    editor, explained = FeatureEditor.fit(
        sources,
        targets,
        index,
        strengths,
        ["lift", "swap"],
        ["sd", "sd"],
        steps=300,
        lr=3e-3,
        width=16,
    )
    # Shares of held-out pairs' change: an editor that learned nothing scores 0.
    assert explained["lift"] > 0.8 and explained["swap"] > 0.6, explained
    with torch.no_grad():
        lifted = editor(sources[:64], torch.tensor([1.0, 0.0])) - sources[:64]
    assert lifted[:, 0, :4].mean() > 0.7  # moves what it is asked to move
    assert lifted[:, 0, 4:].abs().mean() < 0.15  # and holds the rest
    assert lifted[:, 1:].abs().mean() < 0.15


def test_bf16_training_learns_each_edit_too():
    sources, targets, index, strengths = synthetic_pairs()
    names, units = ["lift", "swap"], ["sd", "sd"]
    common = dict(steps=300, lr=3e-3, width=16)
    editor, explained = FeatureEditor.fit(
        sources, targets, index, strengths, names, units, bf16=True, **common
    )
    assert explained["lift"] > 0.8 and explained["swap"] > 0.6, explained
    assert all(p.dtype == torch.float32 for p in editor.parameters())  # weights stay fp32
    plain, _ = FeatureEditor.fit(sources, targets, index, strengths, names, units, **common)
    assert not torch.equal(editor.out.weight, plain.out.weight)  # bf16 did run


def test_the_same_pairs_and_seed_fit_the_same_editor_whatever_ran_before():
    pairs = (*synthetic_pairs(64), ["lift", "swap"], ["sd", "sd"])
    first, _ = FeatureEditor.fit(*pairs, steps=3, width=16)
    torch.rand(7)  # other work in between moves the global random state
    second, _ = FeatureEditor.fit(*pairs, steps=3, width=16)
    third, _ = FeatureEditor.fit(*pairs, steps=3, width=16, seed=1)
    weights = [e.state_dict() for e in (first, second, third)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_editor_directions_fit_from_the_cli_compose_and_survive_save_and_load(
    tiny_pipeline, tmp_path, capsys
):
    tiny_pipeline.save_pretrained(tmp_path / "p")
    base = ["directions", "fit", "--model", str(tmp_path / "p"), "--kind", "feature-editor"]
    assert main([*base, "--auto", str(tmp_path)]) == 2
    assert "use --pairs CSV, or --scenes N" in capsys.readouterr().err
    fit = [*base, "--scenes", "24", "--pairs-per-scene", "2", "--steps", "3"]
    assert main([*fit, "--resume"]) == 2  # nothing to continue yet
    assert "it has 0" in capsys.readouterr().err
    assert main(fit) == 0
    assert "held-out pairs' feature change predicted" in capsys.readouterr().out
    first = HVAEPipeline.from_pretrained(tmp_path / "p")._directions["scale"].field.state_dict()
    assert main([*fit, "--resume", "--lr", "1e-2"]) == 0  # continues the saved editor
    resumed = HVAEPipeline.from_pretrained(tmp_path / "p")._directions["scale"].field
    assert any(not torch.equal(first[k], v) for k, v in resumed.state_dict().items())
    with pytest.raises(HVAEError, match="moves"):  # pairs of other attributes cannot continue it
        FeatureEditor.fit(
            *synthetic_pairs(64), ["lift", "swap"], ["sd", "sd"], steps=1, start=resumed
        )
    pipe = HVAEPipeline.from_pretrained(tmp_path / "p")
    metadata = pipe.direction_metadata()
    assert metadata["sphere"]["units"] == "class" and metadata["scale"]["units"] == "sd"
    assert {m["kind"] for m in metadata.values()} == {"feature-editor"}
    assert pipe.edit_size == 64  # the size of the scenes it was trained on
    assert main(["directions", "list", "--model", str(tmp_path / "p")]) == 0
    assert "stage-1 features (editor)" in capsys.readouterr().out

    editor = pipe._directions["scale"].field
    with torch.no_grad():  # a trained editor is no longer the identity
        editor.out.weight.normal_(0, 0.05)
    scenes = [torch.rand(3, 64, 64) for _ in range(2)]
    codes = pipe.encode(to_pil(torch.stack(scenes) * 2 - 1))
    once = pipe.edit(codes, {"scale": 1.0, "sphere": 1.0}, keep=["floor_hue"])
    twice = pipe.edit(pipe.edit(codes, {"scale": 0.5}), {"scale": 0.5, "sphere": 1.0})
    assert all(torch.equal(a, b) for a, b in zip(once.latents, codes.latents, strict=True))
    assert torch.allclose(pipe.decode_tensor(once), pipe.decode_tensor(twice), atol=1e-5)
    assert not torch.allclose(pipe.decode_tensor(once), pipe.decode_tensor(codes), atol=1e-3)
    assert torch.equal(
        pipe.decode_tensor(pipe.edit(codes, {"scale": 0.0})), pipe.decode_tensor(codes)
    )
    halfway = pipe.interpolate(codes, once, 0.5)
    assert torch.allclose(halfway.feature_editor[1], once.feature_editor[1] / 2)
    # What was saved is what decodes: a reload gives the same edited images.
    pipe.save_pretrained(tmp_path / "q")
    again = HVAEPipeline.from_pretrained(tmp_path / "q")
    assert torch.allclose(
        again.decode_tensor(again.edit(codes, {"scale": 1.0, "sphere": 1.0})),
        pipe.decode_tensor(once),
        atol=1e-5,
    )


def write_pairs(folder, n: int = 24, size: int = 64, header: str = "before,after,brighter,redder"):
    """``n`` random images and edited copies (brighter, or redder, by a known amount) with the
    CSV that describes them; returns the CSV's path."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = [header]
    for i in range(n):
        before = rng.integers(0, 200, (size, size, 3)).astype(np.float64)
        brighter, redder = (1.0, 0.0) if i % 2 else (0.0, -1.0 if i % 4 else 1.0)
        after = before + 40 * brighter
        after[..., 0] += 40 * redder
        for name, pixels in ((f"{i}.png", before), (f"{i}-edited.png", after)):
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / name)
        rows.append(f"{i}.png,{i}-edited.png,{brighter},{redder}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    return folder / "pairs.csv"


def test_user_pairs_from_a_csv_fit_an_editor(tiny_pipeline, tmp_path, capsys):
    from PIL import Image

    tiny_pipeline.save_pretrained(tmp_path / "p")
    folder = tmp_path / "pairs"
    folder.mkdir()
    table = write_pairs(folder)
    base = ["directions", "fit", "--model", str(tmp_path / "p"), "--pairs", str(table)]
    assert main(base) == 2  # the default kind is a field, which pairs cannot train
    assert "--kind feature-editor" in capsys.readouterr().err
    fit = [*base, "--kind", "feature-editor", "--steps", "5"]
    assert main([*fit, "--editor-width", "8", "-o", str(tmp_path / "narrow")]) == 0
    assert HVAEPipeline.from_pretrained(tmp_path / "narrow")._directions["redder"].field.width == 8
    assert main(fit) == 0
    out = capsys.readouterr().out
    assert "brighter:" in out and "redder:" in out
    pipe = HVAEPipeline.from_pretrained(tmp_path / "p")
    metadata = pipe.direction_metadata()
    assert metadata["redder"] == metadata["redder"] | {
        "kind": "feature-editor",
        "source": "pairs",
        "units": "unit of pairs.csv",
    }
    assert pipe.edit_size == 64
    # The global-group summary is the least-squares change per unit over the pairs.
    summary = pipe._directions["brighter"].vector
    assert summary.numel() == pipe.hvae.latent_groups[0].z_channels
    assert summary.isfinite().all() and summary.abs().sum() > 0
    codes = pipe.encode([Image.open(folder / "0.png")])
    editor = pipe._directions["brighter"].field
    with torch.no_grad():
        editor.out.weight.normal_(0, 0.05)  # five steps barely move it; make the edit visible
    assert not torch.allclose(
        pipe.decode_tensor(pipe.edit(codes, {"brighter": 1.0})), pipe.decode_tensor(codes)
    )
    small = pipe.encode([Image.open(folder / "0.png").resize((32, 32))])
    with pytest.raises(HVAEError, match="64×64 images, the size they were fitted at"):
        pipe.edit(small, {"redder": 1.0})  # would run, but at a size it never saw


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda f: (f / "pairs.csv").write_text("a,b,c\n1.png,1-edited.png,1\n"), "header must be"),
        (lambda f: (f / "3.png").unlink(), "not found, e.g."),
        (lambda f: write_pairs(f, header="before,after,brighter,redder,never"), "fields"),
        (lambda f: write_pairs(f, size=32), "are not 64×64"),
        (lambda f: write_pairs(f, n=12), "at least 20 pairs"),
    ],
)
def test_pair_tables_that_do_not_match_their_images_get_clear_errors(
    tiny_pipeline, tmp_path, capsys, spoil, message
):
    write_pairs(tmp_path)
    spoil(tmp_path)
    fit = ["directions", "fit", "--model", str(tmp_path / "p"), "--kind", "feature-editor"]
    tiny_pipeline.save_pretrained(tmp_path / "p")
    assert main([*fit, "--pairs", str(tmp_path / "pairs.csv"), "--steps", "1"]) == 2
    assert message in capsys.readouterr().err


def test_a_pair_column_that_never_changes_is_an_error(tmp_path):
    from hvae.directions import read_pair_table

    table = write_pairs(tmp_path)
    lines = table.read_text().splitlines()
    rows = [lines[0] + ",never"] + [line + ",0" for line in lines[1:]]
    table.write_text("\n".join(rows))
    with pytest.raises(HVAEError, match="never change"):
        read_pair_table(table)
    pairs, changes = read_pair_table(write_pairs(tmp_path))
    assert pairs[1] == (tmp_path / "1.png", tmp_path / "1-edited.png")
    assert list(changes) == ["brighter", "redder"] and changes["brighter"][1] == 1.0


def test_label_fits_refuse_the_editor_kind(tiny_pipeline):
    import numpy as np

    from hvae.directions import fit_directions

    with pytest.raises(HVAEError, match="trained on pairs"):
        fit_directions(tiny_pipeline, [], {"a": np.array([0.0, 1.0])}, "labels", "feature-editor")
