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
    assert (
        main(["generate", "-n", "30", "-o", str(straight), "--model", str(tiny_pipeline_dir)]) == 0
    )
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
                "--seed",
                "1",
                "--model",
                str(tiny_pipeline_dir),
            ]
        )
        == 0
    )
    code, err = _error_of(
        ["generate", "-n", "2", "-o", str(out), "--seed", "2", "--model", str(tiny_pipeline_dir)],
        capsys,
    )
    assert code == 2 and "other settings" in err
