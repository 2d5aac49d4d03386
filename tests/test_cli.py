import hashlib

import pytest

from hvae.cli import build_parser, main
from hvae.data.shapes import ShapesDataset

SUBCOMMANDS = [
    "train",
    "train-autoencoder",
    "encode",
    "decode",
    "edit",
    "generate",
    "directions",
    "ui",
    "demo",
    "prepare-photos",
    "train-codec",
    "compress",
    "decompress",
    "info",
    "benchmark",
    "prior",
    "data",
]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: hvae {command}" in text and len(text.splitlines()) > 5


def test_top_level_help_lists_all_subcommands():
    help_text = build_parser().format_help()
    for command in SUBCOMMANDS:
        assert command in help_text


@pytest.fixture
def scene_folder(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    dataset = ShapesDataset(3, seed=5, size=64)
    for i in range(3):
        dataset[i][0].save(folder / f"scene{i}.png")
    return folder


def test_encode_then_decode_round_trip(tiny_pipeline_dir, scene_folder, tmp_path, capsys):
    codes = tmp_path / "codes"
    assert (
        main(
            [
                "encode",
                str(scene_folder),
                "-o",
                str(codes),
                "--model",
                str(tiny_pipeline_dir),
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "decode",
                str(codes),
                "-o",
                str(tmp_path / "decoded"),
                "--model",
                str(tiny_pipeline_dir),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "decoded").glob("*.png")) == [
        "scene0.png",
        "scene1.png",
        "scene2.png",
    ]


def test_edit_writes_one_image_per_input(tiny_pipeline_dir, scene_folder, tmp_path):
    out = tmp_path / "edited"
    assert (
        main(
            [
                "edit",
                str(scene_folder),
                "--set",
                "brighter=1.0",
                "-o",
                str(out),
                "--model",
                str(tiny_pipeline_dir),
            ]
        )
        == 0
    )
    assert len(list(out.glob("*.png"))) == 3


def test_generate_is_identical_across_batch_sizes(tiny_pipeline_dir, tmp_path):
    digests = []
    for batch_size in ("1", "3"):
        out = tmp_path / f"b{batch_size}"
        assert (
            main(
                [
                    "generate",
                    "-n",
                    "3",
                    "-o",
                    str(out),
                    "--prior",
                    "model",
                    "--seed",
                    "9",
                    "--batch-size",
                    batch_size,
                    "--model",
                    str(tiny_pipeline_dir),
                ]
            )
            == 0
        )
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir()})
    assert digests[0] == digests[1]  # images and manifest alike
    assert sorted(digests[0]) == [
        "manifest.jsonl",
        "sample_000000.png",
        "sample_000001.png",
        "sample_000002.png",
    ]


def test_demo_writes_its_pictures_and_a_photo_archive(tiny_pipeline_dir, tmp_path, capsys):
    from tests.conftest import tiny_codec

    codec = tmp_path / "codec"
    tiny_codec().save_pretrained(codec)
    out = tmp_path / "demo"
    argv = ["demo", "-o", str(out), "-n", "2", "--model", str(tiny_pipeline_dir)]
    assert main([*argv, "--codec-model", str(codec)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"reconstructions.png", "samples_t0.8.png", "edit_strip.png", "photos.hvz"} <= names
    assert sorted(p.name for p in (out / "photos_decoded").iterdir()) == [
        "evening_glow.png",
        "wood.png",
    ]
    printed = capsys.readouterr().out
    assert str(out) in printed and "bpp" in printed and "MS-SSIM" in printed
    # The total comes last, after the slow photo part, not before it.
    lines = printed.strip().splitlines()
    assert lines[-1].startswith("done in") and sum("done in" in line for line in lines) == 1
    assert printed.index("scenes part") < printed.index("photo part") < printed.index("done in")
    # A rerun into the same folder replaces the demo's own outputs.
    assert main([*argv, "--codec-model", str(codec)]) == 0


def _error_of(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_unreadable_and_non_image_inputs_get_clear_errors(
    tiny_pipeline_dir, scene_folder, tmp_path, capsys
):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is text")
    code, err = _error_of(
        [
            "encode",
            str(not_image),
            "-o",
            str(tmp_path / "c0"),
            "--model",
            str(tiny_pipeline_dir),
        ],
        capsys,
    )
    assert code == 1 and "notes.png: not an image" in err
    code, err = _error_of(
        [
            "encode",
            str(tmp_path / "missing.png"),
            "-o",
            str(tmp_path / "c1"),
            "--model",
            str(tiny_pipeline_dir),
        ],
        capsys,
    )
    assert code == 2 and "no such file" in err
    # One bad file among good ones: the good ones are written, the bad one is reported, the exit code says so.
    (scene_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    code, err = _error_of(
        [
            "encode",
            str(scene_folder),
            "-o",
            str(tmp_path / "c2"),
            "--model",
            str(tiny_pipeline_dir),
        ],
        capsys,
    )
    assert code == 1 and "broken.png" in err
    assert len(list((tmp_path / "c2").glob("codes-*.safetensors"))) == 1


def test_wrong_model_folders_and_bad_arguments_get_clear_errors(
    tiny_pipeline_dir, scene_folder, tmp_path, capsys
):
    code, err = _error_of(["generate", "-o", str(tmp_path / "g"), "--model", str(tmp_path)], capsys)
    assert code == 2 and "model_index.json" in err
    code, err = _error_of(
        ["generate", "-o", str(tmp_path / "g"), "--model", str(tmp_path / "nowhere")], capsys
    )
    assert code == 2 and "no such model folder" in err
    code, err = _error_of(
        [
            "edit",
            str(scene_folder),
            "--set",
            "brighter",
            "-o",
            str(tmp_path / "e"),
            "--model",
            str(tiny_pipeline_dir),
        ],
        capsys,
    )
    assert code == 2 and "NAME=STRENGTH" in err
    code, err = _error_of(
        [
            "edit",
            str(scene_folder),
            "--set",
            "unknown=1",
            "-o",
            str(tmp_path / "e"),
            "--model",
            str(tiny_pipeline_dir),
        ],
        capsys,
    )
    assert code == 2 and "brighter" in err
    code, err = _error_of(
        [
            "decode",
            str(scene_folder / "scene0.png"),
            "-o",
            str(tmp_path / "d"),
            "--model",
            str(tiny_pipeline_dir),
        ],
        capsys,
    )
    assert code == 2 and "not a codes folder" in err


def test_generate_resumes_after_a_kill_with_no_duplicates(tiny_pipeline_dir, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"

    def generate_args(batch_size: int) -> list[str]:
        return [
            "generate",
            "-n",
            "30",
            "-o",
            str(out),
            "--prior",
            "model",
            "--batch-size",
            str(batch_size),
            "--model",
            str(tiny_pipeline_dir),
        ]

    command = [sys.executable, "-m", "hvae.cli", *generate_args(1)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (
        not manifest.exists() or len(manifest.read_text().splitlines()) < 3
    ):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = len(manifest.read_text().splitlines())
    assert 3 <= killed_at < 30, "the run should have been killed part-way"

    assert main(generate_args(4)) == 0
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(30))
    assert sorted(p.name for p in out.glob("*.png")) == [f"sample_{i:06d}.png" for i in range(30)]

    straight = tmp_path / "straight"
    assert main([*generate_args(16)[:4], str(straight), *generate_args(16)[5:]]) == 0
    for i in range(30):
        name = f"sample_{i:06d}.png"
        assert (out / name).read_bytes() == (straight / name).read_bytes(), name


def test_generate_refuses_to_mix_settings_in_one_folder(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "g"
    assert (
        main(
            [
                "generate",
                "-n",
                "2",
                "-o",
                str(out),
                "--prior",
                "model",
                "--seed",
                "1",
                "--model",
                str(tiny_pipeline_dir),
            ]
        )
        == 0
    )
    code, err = _error_of(
        [
            *("generate", "-n", "2", "-o", str(out), "--prior", "model", "--seed", "2"),
            *("--model", str(tiny_pipeline_dir)),
        ],
        capsys,
    )
    assert code == 2 and "other settings" in err


def test_both_data_set_commands_summarise_what_they_made_alike(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    import hvae.data.photo_corpus
    import hvae.data.wallpapers

    made = [("train", "photo"), ("train", "photo"), ("heldout", "texture")]
    corpus = {"pictures": [{"split": s, "kind": k} for s, k in made]}
    monkeypatch.setattr(hvae.data.photo_corpus, "prepare_photo_corpus", lambda *a, **k: corpus)
    wallpapers = [SimpleNamespace(split=s, kind=k) for s, k in made]
    monkeypatch.setattr(hvae.data.wallpapers, "prepare_wallpapers", lambda *a, **k: wallpapers)
    out = str(tmp_path / "set")
    summary = f"3 pictures -> {out}: 1 heldout/texture, 2 train/photo"
    assert main(["data", "photos", "--out", out, "--work", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [summary, f"manifest: {out}/manifest.json"]
    assert main(["prepare-photos", "--out", out]) == 0
    assert capsys.readouterr().out.splitlines() == [summary, f"provenance: {out}/provenance.json"]


# ---------------------------------------------------------------- models by name
def test_bundled_names_resolve_from_any_folder_and_a_folder_wins(tmp_path, monkeypatch):
    from hvae.loading import bundled_path, resolve_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HVAE_MODEL", raising=False)
    monkeypatch.delenv("HVAE_CODEC_MODEL", raising=False)
    for name in ("shapes", "photo-edit", "photo"):
        assert resolve_model(name) == str(bundled_path(name))
        assert (bundled_path(name) / "model_index.json").is_file()
    assert resolve_model(None) == str(bundled_path("shapes"))
    assert resolve_model(None, "codec") == str(bundled_path("photo"))
    monkeypatch.setenv("HVAE_MODEL", "photo-edit")
    assert resolve_model(None) == str(bundled_path("photo-edit"))
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "model_index.json").write_text("{}")
    assert resolve_model("shapes") == "shapes"


def test_a_folder_that_only_shares_a_bundled_name_does_not_hide_it(tmp_path, monkeypatch, capsys):
    from hvae.loading import bundled_path, note, resolve_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo-edit").mkdir()  # say, the photos to edit
    note.cache_clear()  # the note prints once per process
    assert resolve_model("photo-edit") == str(bundled_path("photo-edit"))
    assert resolve_model("photo-edit") == str(bundled_path("photo-edit"))
    err = capsys.readouterr().err
    assert err.count("./photo-edit is not a pipeline folder") == 1, err
    assert main(["directions", "list", "--model", "photo-edit"]) == 0
    assert "warmth" in capsys.readouterr().out


def test_a_bundled_model_loads_by_name_from_another_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["directions", "list", "--model", "shapes"]) == 0
    assert "wall_hue" in capsys.readouterr().out


def test_unknown_model_names_list_the_bundled_ones(tmp_path, monkeypatch, capsys):
    code, err = _error_of(["generate", "-o", str(tmp_path / "g"), "--model", "phot"], capsys)
    assert code == 2 and "phot: no such model folder" in err
    assert all(name in err for name in ("shapes", "photo-edit", "photo"))
    monkeypatch.setenv("HVAE_CODEC_MODEL", "nosuch")
    code, err = _error_of(["decompress", __file__, "-o", str(tmp_path / "d")], capsys)
    assert code == 2 and "$HVAE_CODEC_MODEL=nosuch" in err
    assert not (tmp_path / "g").exists() and not (tmp_path / "d").exists()


def test_a_pipeline_of_the_wrong_kind_is_named_and_refused(tiny_pipeline_dir, tmp_path, capsys):
    from tests.conftest import tiny_codec

    archive = tmp_path / "a.hvz"
    archive.write_bytes(b"not read: the model is refused first")
    command = ["decompress", str(archive), "-o", str(tmp_path / "d")]
    code, err = _error_of([*command, "--model", str(tiny_pipeline_dir)], capsys)
    assert code == 2 and f"{tiny_pipeline_dir}: an editing pipeline" in err
    assert "not a compression pipeline, so it cannot decompress" in err

    codec = tmp_path / "codec"
    tiny_codec().save_pretrained(codec)
    image = tmp_path / "x.png"
    ShapesDataset(1, seed=1, size=64)[0][0].save(image)
    for command in (
        ["edit", str(image), "--set", "brighter=1", "-o", str(tmp_path / "e")],
        ["generate", "-o", str(tmp_path / "g")],
    ):
        code, err = _error_of([*command, "--model", str(codec)], capsys)
        assert code == 2 and f"{codec}: a compression pipeline" in err
        assert f"not an editing pipeline, so it cannot {command[0]}" in err


def test_generate_refuses_a_model_without_a_sampling_prior_unless_asked(
    tiny_pipeline_dir, tmp_path, capsys
):
    out = tmp_path / "g"
    command = ["generate", "-n", "1", "-o", str(out), "--model", str(tiny_pipeline_dir)]
    code, err = _error_of(command, capsys)
    assert code == 2 and "no fitted sampling prior" in err and "--prior model" in err
    assert not out.exists()
    assert main([*command, "--prior", "model"]) == 0
    assert (out / "sample_000000.png").exists()


# ---------------------------------------------------------------- bad arguments and outputs
def test_strengths_must_be_numbers_and_temperatures_finite(capsys):
    from hvae.cli.batch import parse_edits
    from hvae.errors import HVAEError

    # NaN and infinity parse: the pipeline refuses them with the direction's range (below).
    assert parse_edits(["a=1.5", " b = -2 ", "c=nan"]).keys() == {"a", "b", "c"}
    assert parse_edits(["a=1.5", " b = -2 "]) == {"a": 1.5, "b": -2.0}
    with pytest.raises(HVAEError, match="must be a number"):
        parse_edits(["a=lots"])
    with pytest.raises(SystemExit):
        main(["generate", "-o", "out", "--temperature", "inf"])
    assert "must be a finite number" in capsys.readouterr().err


def test_compress_refuses_bad_outputs_before_any_work(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for i, path in enumerate((a, b)):
        ShapesDataset(1, seed=i, size=64)[0][0].save(path)
    original = a.read_bytes()
    # --model names nothing: every refusal must come before the model is even looked for.
    compress = ["compress", str(a), str(b), "--model", str(tmp_path / "no-model")]
    code, err = _error_of([*compress, "-o", str(a)], capsys)
    assert code == 2 and "is one of the inputs" in err and a.read_bytes() == original
    code, err = _error_of([*compress, "-o", str(tmp_path)], capsys)
    assert code == 2 and "is a folder" in err
    (tmp_path / "old.hvz").write_bytes(b"keep me")
    code, err = _error_of([*compress, "-o", str(tmp_path / "old.hvz")], capsys)
    assert code == 2 and "--force" in err and (tmp_path / "old.hvz").read_bytes() == b"keep me"
    code, err = _error_of([*compress, "-o", str(a / "x.hvz")], capsys)
    assert code == 2 and "cannot be created" in err and "is a file" in err
    code, err = _error_of(["edit", str(a), "--set", "x=1", "-o", str(b)], capsys)
    assert code == 2 and "is not a folder" in err


def test_compress_force_overwrites_and_reports_the_bytes_info_reports(tmp_path, capsys):
    from tests.conftest import tiny_codec

    codec = tmp_path / "codec"
    tiny_codec().save_pretrained(codec)
    image = tmp_path / "a.png"
    ShapesDataset(1, seed=0, size=64)[0][0].save(image)
    archive = tmp_path / "a.hvz"
    archive.write_bytes(b"an old archive")
    compress = ["compress", str(image), "-o", str(archive), "--model", str(codec)]
    assert main([*compress, "--refine-steps", "0", "--force"]) == 0
    compressed = capsys.readouterr().out
    assert main(["info", str(archive)]) == 0
    total = capsys.readouterr().out.strip().splitlines()[-1]
    size = f"{archive.stat().st_size} bytes"
    assert size in compressed and size in total  # the whole file, in both
    assert total.split("images, ", 1)[1] in compressed


def test_compress_tells_what_it_changed_in_a_transparent_picture(tmp_path, capsys):
    from tests.conftest import tiny_codec

    codec = tmp_path / "codec"
    tiny_codec().save_pretrained(codec)
    image = tmp_path / "cutout.png"
    picture = ShapesDataset(1, seed=0, size=64)[0][0].convert("RGBA")
    picture.putalpha(128)
    picture.save(image)
    archive = tmp_path / "a.hvz"
    assert main(["compress", str(image), "-o", str(archive), "--model", str(codec)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "cutout.png" in err


def test_os_errors_become_one_line(monkeypatch, capsys):
    import hvae.cli.codec

    def unwritable(args):
        raise PermissionError(13, "Permission denied", "/nowhere/out.hvz")

    monkeypatch.setattr(hvae.cli.codec, "cmd_info", unwritable)
    assert main(["info", "x.hvz"]) == 1
    assert capsys.readouterr().err == "hvae info: error: /nowhere/out.hvz: Permission denied\n"


# ---------------------------------------------------------------- processes
def _tiny_archive(path) -> None:
    """An archive of records with dummy payloads: enough for 'hvae info', no model needed."""
    from hvae.codec import STEP, ArchiveWriter, Record, join_tiles

    with ArchiveWriter(path, "0123456789abcdef") as writer:
        for i in range(3):
            writer.add(
                Record(
                    f"image{i}.png",
                    16,
                    16,
                    4,
                    STEP.pack(0.5) + join_tiles(64, [bytes(4 * (i + 1))]),
                )
            )


def test_info_into_a_closed_pipe_ends_quietly(tmp_path):
    import subprocess
    import sys

    archive = tmp_path / "a.hvz"
    _tiny_archive(archive)
    process = subprocess.Popen(
        [sys.executable, "-m", "hvae.cli", "info", "--json", str(archive)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # as `| head -1` does, before hvae has written anything
    err = process.stderr.read().decode()
    assert process.wait() == 141 and err == ""


def test_the_cli_imports_neither_torch_nor_the_pipelines(tmp_path):
    import subprocess
    import sys

    archive = tmp_path / "a.hvz"
    _tiny_archive(archive)
    heavy = ("torch", "diffusers", "pipelines", "PIL", "numpy")
    script = (
        "import sys\n"
        "from hvae.cli import build_parser, main\n"
        "build_parser().format_help()\n"
        f"assert main(['info', {str(archive)!r}]) == 0\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_sigterm_ends_a_job_like_ctrl_c(tiny_pipeline_dir, tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "g"
    command = [sys.executable, "-m", "hvae.cli", "generate", "-n", "200", "-o", str(out)]
    command += ["--prior", "model", "--batch-size", "1", "--model", str(tiny_pipeline_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (
        not manifest.exists() or len(manifest.read_text().splitlines()) < 2
    ):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGTERM)
    err = process.stderr.read().decode()
    assert process.wait() == 130  # as after Ctrl-C
    assert "hvae generate: interrupted (stopped by signal 15)" in err and "Traceback" not in err
    lines = manifest.read_text().splitlines()
    assert 2 <= len(lines) < 200 and all(json.loads(line)["index"] >= 0 for line in lines)


def test_edit_refuses_strengths_outside_a_directions_range_before_any_work(
    tiny_pipeline_dir, tmp_path, capsys
):
    import json

    path = tiny_pipeline_dir / "directions" / "directions.json"
    saved = json.loads(path.read_text())
    saved["brighter"]["range"] = [-0.5, 1.25]
    path.write_text(json.dumps(saved))
    image = tmp_path / "never-read.png"
    out = tmp_path / "e"
    # Refused before the input is read, the range named: also NaN and infinity.
    for strength in ("1e9", "1.5", "-0.75", "nan", "NaN", "inf", "-inf"):
        code, err = _error_of(
            [
                "edit",
                str(image),
                "--set",
                f"brighter={strength}",
                "-o",
                str(out),
                "--model",
                str(tiny_pipeline_dir),
            ],
            capsys,
        )
        assert code == 2 and "direction 'brighter' takes strengths from -0.5 to 1.25" in err
        assert not out.exists()
    assert main(["directions", "list", "--model", str(tiny_pipeline_dir)]) == 0
    listed = capsys.readouterr().out
    assert "strengths" in listed and "-0.5 to 1.25" in listed
    assert main(["directions", "list", "--json", "--model", str(tiny_pipeline_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["brighter"]["range"] == [-0.5, 1.25]
