"""Batch jobs over folders: manifests, resume, reported failures, and Ray runs identical to local ones."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

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

    generate = ("generate", "-n", 64, "--prior", "model", *model)  # no fitted prior
    assert run(*generate, "-o", local / "gen", "--batch-size", 16) == 0
    assert run(*generate, "-o", remote / "gen", "--batch-size", 5, *ray_args) == 0
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


def test_results_arrive_per_forward_pass_so_the_progress_bar_moves(
    tiny_pipeline_dir, tiny_pipeline, nested_folder, tmp_path
):
    from hvae.batch import EditJob
    from hvae.batch_base import MICRO_BATCH, in_micro_batches

    calls = []
    outputs = in_micro_batches(list(range(MICRO_BATCH + 1)), lambda c: calls.append(c) or c)
    assert next(outputs) == 0 and len(calls) == 1  # the second micro-batch waits
    assert list(outputs)[-1] == MICRO_BATCH and len(calls) == 2

    class CountingPipeline:
        def __init__(self, pipe):
            self.pipe, self.calls = pipe, 0

        def __getattr__(self, name):
            return getattr(self.pipe, name)

        def __call__(self, images, **kwargs):
            self.calls += 1
            return self.pipe(images, **kwargs)

    job = EditJob([str(nested_folder)], tmp_path / "edited", {"brighter": 1.0})
    items = [{"item": image.name, "path": image.path} for image in job.inputs]
    pipe = CountingPipeline(tiny_pipeline)
    results = job.compute(pipe, items)  # two image sizes: two forward passes
    assert next(results)["error"] is None and pipe.calls == 1
    assert len(list(results)) == len(items) - 1 and pipe.calls == 2


def test_large_images_run_alone_not_as_sixteen_copies(
    tiny_pipeline, nested_folder, tmp_path, monkeypatch
):
    """An image over ALONE_ABOVE_PIXELS is computed in a pass of one (a 24 MP photo used to be
    padded to 16 copies of itself, and was refused over 4 MP); a pass of smaller ones still
    holds MICRO_BATCH images. A size always takes one way, so results do not depend on what
    else a job holds."""
    from hvae.batch import EditJob, EncodeJob
    from hvae.batch_base import MICRO_BATCH, runs_alone

    monkeypatch.setattr("hvae.batch_base.ALONE_ABOVE_PIXELS", 64 * 64)  # 96x64 runs alone
    assert runs_alone((96, 64), 16) and runs_alone((64, 96), 16)
    assert not runs_alone((64, 64), 16) and runs_alone((64, 65), 16)  # padded to 64x80
    tiny_pipeline.register_direction(
        "up", torch.ones(tiny_pipeline.hvae.latent_groups[0].z_channels)
    )
    passes = []

    class Recording:
        pixel_multiple = tiny_pipeline.pixel_multiple

        def __call__(self, images, **kwargs):
            passes.append([image.size for image in images])
            return tiny_pipeline(images, **kwargs)

        def encode(self, images):
            passes.append([image.size for image in images])
            return tiny_pipeline.encode(images)

    for job in (
        EditJob([str(nested_folder)], tmp_path / "edited", {"up": 1.0}),
        EncodeJob([str(nested_folder)], tmp_path / "codes"),
    ):
        passes.clear()
        items = [{"item": image.name, "path": image.path} for image in job.inputs]
        results = {r["item"]: r for r in job.compute(Recording(), items)}
        assert all(r["error"] is None for r in results.values())
        assert sorted(passes) == [[(64, 64)] * MICRO_BATCH, [(96, 64)]]
    # Alone, an image comes out as the pipeline edits it on its own.
    job = EditJob([str(nested_folder)], tmp_path / "again", {"up": 1.0})
    (wide,) = [{"item": i.name, "path": i.path} for i in job.inputs if i.name == "trip/wide"]
    (result,) = job.compute(tiny_pipeline, [wide])
    image = Image.open(wide["path"]).convert("RGB")
    assert result["data"] == _png(tiny_pipeline([image], edits={"up": 1.0})[0])


def _rewrite_manifest(path, change) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(change(r)) + "\n" for r in records))


def test_decode_fails_names_and_shards_that_leave_their_folders_and_goes_on(
    tiny_pipeline_dir, nested_folder, tmp_path, capsys
):
    codes, out = tmp_path / "codes", tmp_path / "work" / "decoded"
    model = ("--model", tiny_pipeline_dir)
    assert run("encode", nested_folder, "-o", codes, *model) == 0
    absolute = tmp_path / "absolute"
    bad = {
        "scene0": {"input": "../../escaped"},
        "scene1": {"input": str(absolute)},
        "scene2": {"shard": "../codes-00000.safetensors"},
    }
    _rewrite_manifest(codes / "manifest.jsonl", lambda r: r | bad.get(r["input"], {}))
    capsys.readouterr()
    assert run("decode", codes, "-o", out, *model) == 1
    captured = capsys.readouterr()
    assert "'..' folder" in captured.err and "an absolute path" in captured.err
    assert "2 done, 0 already done, 3 failed" in captured.out
    assert sorted(pngs(out)) == ["trip/scene0.png", "trip/wide.png"]
    assert sorted(p.name for p in tmp_path.rglob("*.png") if nested_folder not in p.parents) == [
        "scene0.png",
        "wide.png",
    ]


def test_a_damaged_codes_shard_fails_its_items_only(
    tiny_pipeline_dir, nested_folder, tmp_path, capsys
):
    from safetensors.torch import load_file, save_file

    codes, model = tmp_path / "codes", ("--model", tiny_pipeline_dir)
    assert run("encode", nested_folder, "-o", codes, *model) == 0
    records = read_manifest(codes / "manifest.jsonl")
    wide = next(r["shard"] for r in records if r["input"] == "trip/wide")
    # A shard claiming a huge image: refused before anything is allocated for it.
    save_file(
        load_file(codes / wide),
        codes / wide,
        metadata={"image_size": "[100000, 100000]", "feature_size": "[12500, 12500]"},
    )
    capsys.readouterr()
    assert run("decode", codes, "-o", tmp_path / "decoded", *model) == 1
    captured = capsys.readouterr()
    assert "failed: trip/wide" in captured.err and "not a codes shard" in captured.err
    assert "4 done, 0 already done, 1 failed" in captured.out


def test_outputs_that_would_be_one_file_are_refused_before_any_work(
    tiny_pipeline_dir, tmp_path, capsys
):
    from hvae.batch import list_inputs
    from hvae.errors import HVAEError

    image = ShapesDataset(1, seed=5, size=64)[0][0]
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    (two / "a.png").mkdir(parents=True)
    image.save(one / "a.png")
    image.save(two / "a.png" / "b.png")  # would go in a folder a.png, where the file a.png is
    with pytest.raises(HVAEError, match="written twice"):
        list_inputs([str(one), str(two)])

    image.save(one / "A.png")  # a.png and A.png are one file on macOS and Windows
    out = tmp_path / "out"
    args = ("--set", "brighter=1", "-o", out, "--model", tiny_pipeline_dir)
    assert run("edit", one, *args) == 2
    assert "written twice" in capsys.readouterr().err and not out.exists()

    # The same file given twice (alone and in its folder) is one input, not a clash.
    (one / "A.png").unlink()
    image.save(one / "c.png")
    assert run("edit", one, one / "a.png", *args) == 0
    assert sorted(pngs(out)) == ["a.png", "c.png"]

    # Names read from a codes folder are checked the same way.
    codes = tmp_path / "codes"
    assert run("encode", one, "-o", codes, "--model", tiny_pipeline_dir) == 0
    _rewrite_manifest(codes / "manifest.jsonl", lambda r: r | {"input": r["input"].upper()})
    capsys.readouterr()
    assert run("decode", codes, "-o", tmp_path / "decoded", "--model", tiny_pipeline_dir) == 0
    _rewrite_manifest(
        codes / "manifest.jsonl", lambda r: r | {"input": "Same" if r["row"] else "same"}
    )
    assert run("decode", codes, "-o", tmp_path / "d2", "--model", tiny_pipeline_dir) == 2
    assert "written twice" in capsys.readouterr().err and not (tmp_path / "d2").exists()


def test_outputs_never_follow_symlinks_planted_in_the_output_folder(
    tiny_pipeline_dir, nested_folder, tmp_path
):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    victim.write_text("keep me")
    out.mkdir()
    # The old writer's temporary names were predictable.
    for name in ("scene0", "scene1", "scene2"):
        (out / f".{name}.png.tmp").symlink_to(victim)
    args = ("edit", nested_folder, "--set", "brighter=1", "-o", out, "--model", tiny_pipeline_dir)
    assert run(*args) == 0
    assert victim.read_text() == "keep me"
    assert not (out / "scene0.png").is_symlink() and (out / "scene0.png").stat().st_size > 0


def test_existing_outputs_of_another_job_or_of_no_job_are_refused(
    tiny_pipeline_dir, nested_folder, tmp_path, capsys
):
    model = ("--model", tiny_pipeline_dir)
    before = pngs(nested_folder)
    # Into the inputs' own folder: every output is an input.
    assert run("edit", nested_folder, "--set", "brighter=1", "-o", nested_folder, *model) == 2
    assert "did not make" in capsys.readouterr().err and pngs(nested_folder) == before
    assert not (nested_folder / "manifest.jsonl").exists()

    # Outputs of another job with the same model, whose settings alone do not tell them apart.
    codes, edited = tmp_path / "codes", tmp_path / "edited"
    assert run("encode", nested_folder, "-o", codes, *model) == 0
    assert run("edit", nested_folder, "--set", "brighter=1", "-o", edited, *model) == 0
    capsys.readouterr()
    for folder in (codes, edited):
        assert run("decode", codes, "-o", folder, *model) == 2
        assert "another job" in capsys.readouterr().err

    # A file in the way without any manifest (another tool's output), then overwritten on request.
    decoded = tmp_path / "decoded"
    decoded.mkdir()
    (decoded / "scene1.png").write_bytes(b"someone else's")
    assert run("decode", codes, "-o", decoded, *model) == 2
    assert "scene1.png" in capsys.readouterr().err
    assert (decoded / "scene1.png").read_bytes() == b"someone else's"
    assert run("edit", nested_folder, "--set", "brighter=1", "-o", decoded, *model, "--force") == 0
    assert (decoded / "scene1.png").read_bytes() != b"someone else's"


def test_inputs_over_the_size_limit_fail_before_their_pixels_are_decoded(
    tiny_pipeline_dir, nested_folder, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("hvae.safe_io.MAX_PIXELS", 64 * 80)  # 96x64 is over it
    out = tmp_path / "edited"
    args = ("edit", nested_folder, "--set", "brighter=1", "-o", out, "--model", tiny_pipeline_dir)
    assert run(*args) == 1
    captured = capsys.readouterr()
    assert "failed: trip/wide" in captured.err and "over the limit of 5120" in captured.err
    assert len(pngs(out)) == 4


_KILLED_JOB = """
import os, signal, sys
from pathlib import Path
from hvae.batch_base import PngPerInputJob, drive, start_job

class Job(PngPerInputJob):
    kind, total = "test", 40

    def __init__(self, out_dir, killed_writing):
        self.out_dir, self.killed_writing = Path(out_dir), killed_writing

    def settings(self, fingerprint):
        return {"model": fingerprint}

    def plan(self, manifest):
        return [{"item": f"x{i:02d}"} for i in range(40) if not manifest.finished(f"x{i:02d}")]

    def write(self, name, data):
        if name == self.killed_writing:
            os.kill(os.getpid(), signal.SIGKILL)
        super().write(name, data)

job = Job(sys.argv[1], sys.argv[2])
manifest, items = start_job(job, "model")
results = ({"item": item["item"], "data": b"png", "error": None} for item in items)
summary = drive(job, manifest, len(items), results)
print(summary.done, summary.already_done)
"""


def test_a_killed_job_keeps_every_finished_record_and_resumes_without_losing_them(tmp_path):
    out = tmp_path / "out"

    def job(killed_writing: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", _KILLED_JOB, str(out), killed_writing]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert job(killed_writing="x19.png").returncode == -9
    first = read_manifest(out / "manifest.jsonl")
    assert [r["input"] for r in first] == [f"x{i:02d}" for i in range(20)]
    assert sorted(p.name for p in out.glob("*.png")) == [f"x{i:02d}.png" for i in range(19)]
    # A kill in the middle of a line leaves it cut short; the next run must not glue its
    # first line to it (the manifest would no longer parse).
    with open(out / "manifest.jsonl", "a") as manifest:
        manifest.write('{"input": "x20", "sta')
    done = job(killed_writing="")
    assert done.returncode == 0 and done.stdout.split() == ["21", "19"]
    records = read_manifest(out / "manifest.jsonl")
    assert records[:20] == first  # x19 redone, its line not repeated
    assert [r["input"] for r in records[20:]] == [f"x{i:02d}" for i in range(20, 40)]
    assert len(list(out.glob("*.png"))) == 40
    assert (out / "manifest.jsonl").read_text().endswith("}\n")


def test_an_interrupted_encode_keeps_the_codes_it_computed(tiny_pipeline, nested_folder, tmp_path):
    from hvae.batch import EncodeJob
    from hvae.batch_base import drive, start_job

    job = EncodeJob([str(nested_folder)], tmp_path / "codes")
    manifest, items = start_job(job, tiny_pipeline.fingerprint())

    def stopped_after(results, n):
        for count, result in enumerate(results):
            if count == n:
                raise KeyboardInterrupt("stopped by signal 15")
            yield result

    with pytest.raises(KeyboardInterrupt):
        drive(job, manifest, len(items), stopped_after(job.compute(tiny_pipeline, items), 3))
    kept = read_manifest(tmp_path / "codes" / "manifest.jsonl")
    assert len(kept) == 3 and all((tmp_path / "codes" / r["shard"]).exists() for r in kept)
    job = EncodeJob([str(nested_folder)], tmp_path / "codes")
    manifest, items = start_job(job, tiny_pipeline.fingerprint())
    assert len(items) == 2
