"""Batch jobs over folders: manifests, resume, reported failures, and Ray runs identical to local ones."""

import hashlib
import json

import pytest

from hvae.batch import read_manifest
from hvae.cli import main
from hvae.codec import ArchiveReader
from hvae.data.shapes import ShapesDataset


@pytest.fixture
def nested_folder(tmp_path):
    """Scenes at two sizes, one in a subfolder whose stem clashes with a top-level file's stem."""
    folder = tmp_path / "photos"
    (folder / "trip").mkdir(parents=True)
    dataset = ShapesDataset(5, seed=11, size=64)
    for i in range(3):
        dataset[i][0].save(folder / f"scene{i}.png")
    dataset[3][0].save(folder / "trip" / "scene0.png")
    dataset[4][0].resize((96, 64)).save(folder / "trip" / "wide.png")
    return folder


def pngs(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def run(*args) -> int:
    return main([str(a) for a in args])


def test_encode_decode_folders_keep_relative_names_and_match_the_pipeline(
    tiny_pipeline_dir, tiny_pipeline, nested_folder, tmp_path
):
    from PIL import Image

    codes, decoded = tmp_path / "codes", tmp_path / "decoded"
    model = ("--model", tiny_pipeline_dir)
    assert run("encode", nested_folder, "-o", codes, "--batch-size", 2, *model) == 0
    # two image sizes -> two shards
    assert len(list(codes.glob("codes-*.safetensors"))) == 2
    assert run("decode", codes, "-o", decoded, *model) == 0
    assert sorted(pngs(decoded)) == [
        "scene0.png",
        "scene1.png",
        "scene2.png",
        "trip/scene0.png",
        "trip/wide.png",
    ]
    with Image.open(decoded / "trip" / "wide.png") as image:
        assert image.size == (96, 64)
    # The same bytes as the pipeline's own decode(encode(x)).
    original = Image.open(nested_folder / "trip" / "wide.png").convert("RGB")
    expected = tiny_pipeline.decode(tiny_pipeline.encode([original]))[0]
    assert (decoded / "trip" / "wide.png").read_bytes() == _png(expected)


def _png(image) -> bytes:
    from hvae.batch import png_bytes

    return png_bytes(image)


def test_edit_folder_reports_bad_inputs_goes_on_and_retries_them_on_rerun(
    tiny_pipeline_dir, nested_folder, tmp_path, capsys
):
    broken = nested_folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "edited"
    args = ("edit", nested_folder, "--set", "brighter=1", "-o", out, "--model", tiny_pipeline_dir)
    assert run(*args) == 1
    captured = capsys.readouterr()
    assert "broken" in captured.err and "1 failed" in captured.out
    records = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
    assert records["broken"]["status"] == "error" and "broken.png" in records["broken"]["error"]
    assert len(pngs(out)) == 5
    first = pngs(out)

    ShapesDataset(1, seed=3, size=64)[0][0].save(broken)  # the user fixes the file
    assert run(*args) == 0
    assert "1 done, 5 already done, 0 failed" in capsys.readouterr().out
    after = pngs(out)
    assert {k: v for k, v in after.items() if k != "broken.png"} == first
    assert "broken.png" in after


def test_edit_output_does_not_depend_on_batch_size(tiny_pipeline_dir, nested_folder, tmp_path):
    outputs = []
    for batch_size in (1, 4):
        out = tmp_path / f"b{batch_size}"
        args = ("edit", nested_folder, "--set", "brighter=0.5", "-o", out)
        assert run(*args, "--batch-size", batch_size, "--model", tiny_pipeline_dir) == 0
        outputs.append(pngs(out))
    assert outputs[0] == outputs[1]


def test_encode_resumes_with_only_the_new_inputs(
    tiny_pipeline_dir, nested_folder, tmp_path, capsys
):
    codes = tmp_path / "codes"
    model = ("--model", tiny_pipeline_dir)
    assert run("encode", nested_folder, "-o", codes, *model) == 0
    ShapesDataset(1, seed=99, size=64)[0][0].save(nested_folder / "late.png")
    capsys.readouterr()
    assert run("encode", nested_folder, "-o", codes, *model) == 0
    assert "1 done, 5 already done" in capsys.readouterr().out
    records = read_manifest(codes / "manifest.jsonl")
    assert sorted(r["input"] for r in records) == sorted(
        ["scene0", "scene1", "scene2", "trip/scene0", "trip/wide", "late"]
    )
    assert run("decode", codes, "-o", tmp_path / "decoded", *model) == 0
    assert len(pngs(tmp_path / "decoded")) == 6


def test_clashing_output_names_and_foreign_codes_are_refused(
    tiny_pipeline_dir, nested_folder, tmp_path, capsys
):
    from hvae.batch import list_inputs
    from hvae.errors import HVAEError

    (nested_folder / "scene0.jpg").write_bytes((nested_folder / "scene0.png").read_bytes())
    with pytest.raises(HVAEError, match="written twice"):
        list_inputs([str(nested_folder)])
    (nested_folder / "scene0.jpg").unlink()

    codes = tmp_path / "codes"
    assert run("encode", nested_folder, "-o", codes, "--model", tiny_pipeline_dir) == 0
    manifest = codes / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps(r | {"model": "0" * 16}) + "\n" for r in lines))
    assert run("decode", codes, "-o", tmp_path / "d", "--model", tiny_pipeline_dir) == 2
    assert "0000000000000000" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_runs_are_byte_identical_to_local_runs(
    ray_cluster, tiny_pipeline_dir, nested_folder, tmp_path
):
    model = ("--model", tiny_pipeline_dir)
    local, remote = tmp_path / "local", tmp_path / "ray"
    ray_args = ("--ray-workers", 2)

    assert run("generate", "-n", 64, "-o", local / "gen", "--batch-size", 16, *model) == 0
    assert (
        run("generate", "-n", 64, "-o", remote / "gen", "--batch-size", 5, *model, *ray_args) == 0
    )
    assert len(pngs(local / "gen")) == 64
    assert pngs(local / "gen") == pngs(remote / "gen")
    assert (local / "gen" / "manifest.jsonl").read_text().splitlines() != []

    edit = ("--set", "brighter=1")
    assert run("edit", nested_folder, *edit, "-o", local / "edit", *model) == 0
    assert run("edit", nested_folder, *edit, "-o", remote / "edit", *model, *ray_args) == 0
    assert pngs(local / "edit") == pngs(remote / "edit") and len(pngs(local / "edit")) == 5

    for where, extra in ((local, ()), (remote, ray_args)):
        assert run("encode", nested_folder, "-o", where / "codes", *model, *extra) == 0
        assert run("decode", where / "codes", "-o", where / "decoded", *model) == 0
    assert pngs(local / "decoded") == pngs(remote / "decoded")

    from tests.conftest import tiny_codec

    codec = tmp_path / "codec"
    tiny_codec().save_pretrained(codec)
    archives = [where / "all.hvz" for where in (local, remote)]
    assert run("compress", nested_folder, "-o", archives[0], "--model", codec) == 0
    assert run("compress", nested_folder, "-o", archives[1], "--model", codec, *ray_args) == 0
    assert archives[0].read_bytes() == archives[1].read_bytes()
    assert len(ArchiveReader(archives[0])) == 5


def test_edit_keep_is_recorded_and_unknown_names_fail_before_work(
    tiny_pipeline_dir, nested_folder, tmp_path, capsys
):
    out = tmp_path / "kept"
    base = ("edit", nested_folder, "--set", "brighter=1", "-o", out, "--model", tiny_pipeline_dir)
    assert run(*base, "--keep", "brighter") == 0
    records = read_manifest(out / "manifest.jsonl")
    assert {tuple(r["keep"]) for r in records} == {("brighter",)}
    assert run(*base, "--keep", "nosuch") == 2
    assert "nosuch" in capsys.readouterr().err
