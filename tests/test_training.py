import json
import math
import os

import pytest
import torch
from PIL import Image

from hvae.errors import HVAEError
from hvae.train_hvae import batch_sampler, make_loss
from hvae.training import EMA, GradientSkipper, TrainConfig, latest_checkpoint, train

from .conftest import tiny_hvae


def test_skipper_skips_non_finite_and_stops_endless_divergence():
    skipper = GradientSkipper(threshold=10.0, max_consecutive=3)
    assert not skipper.should_skip(1.0)
    assert skipper.should_skip(math.nan)
    assert skipper.should_skip(math.inf)
    with pytest.raises(HVAEError, match="diverged"):
        skipper.should_skip(math.nan)


def test_skipper_raises_a_too_low_threshold_instead_of_skipping_forever():
    skipper = GradientSkipper(threshold=10.0, max_consecutive=3)
    assert skipper.should_skip(50.0) and skipper.should_skip(50.0)
    assert not skipper.should_skip(50.0)  # third in a row: the update goes through
    assert skipper.threshold == 20.0
    assert skipper.total == 2


def test_ema_tracks_the_weights():
    model = torch.nn.Linear(2, 2, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # warm-up decay min(0.5, 2/11) = 2/11
    expected = 1.0 - 2 / 11
    torch.testing.assert_close(ema.shadow.weight, torch.full((2, 2), expected))


def _run(out_dir, features, crash_at=None):
    config = TrainConfig(
        out_dir=str(out_dir),
        steps=6,
        batch_size=4,
        lr=1e-3,
        checkpoint_every=3,
        log_every=1,
        mixed_precision="no",
    )
    sampler = batch_sampler(features, 4, 0)

    def batch_for_step(step):
        if step == crash_at:
            raise RuntimeError("killed")
        return sampler(step)

    return train(
        tiny_hvae().train(), make_loss(kl_warmup_steps=2, free_bits=0.0), batch_for_step, config
    )


def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    # One thread: with more, MKL may change its thread count under load, and with it the summation order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_resume(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_resume(tmp_path):
    features = torch.randn(16, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    straight = _run(tmp_path / "a", features)
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path / "b", features, crash_at=4)  # dies after the step-3 checkpoint
    assert latest_checkpoint(tmp_path / "b").name == "step-3"
    with open(tmp_path / "b" / "train_log.jsonl", "a") as log:
        log.write('{"step": 5, "lo')  # a line cut short by a kill
    resumed = _run(tmp_path / "b", features)
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    logs = [
        json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in logs] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]  # the killed run's step 4 was redone, logged once
    assert {"bpd", "kl0", "nll_bpd"} <= set(logs[-1])


class _Planted:
    """Unpickling this creates the file ``marker``: what a planted pickle could do, harmlessly."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# Pickles that accelerate's load_state unpickled: its random states (weights_only=True,
# failures ignored), then the registered objects' custom_checkpoint_*.pkl (weights_only=False).
PICKLE_NAMES = [f"custom_checkpoint_{i}.pkl" for i in range(4)] + ["random_states_0.pkl"]


def test_resume_never_unpickles_what_is_planted_in_the_run_folder(tmp_path):
    import pickle

    features = torch.randn(16, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path / "run", features, crash_at=4)
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert not [p.name for p in checkpoint.iterdir() if p.suffix in (".pkl", ".bin")]
    marker = tmp_path / "code-ran"
    for name in PICKLE_NAMES:
        (checkpoint / name).write_bytes(pickle.dumps(_Planted(marker)))
    _run(tmp_path / "run", features)  # resumes from step 3
    assert not marker.exists()
    assert latest_checkpoint(tmp_path / "run").name == "step-6"

    # A run folder of the old, pickled format: a clear error, and nothing unpickled.
    old = tmp_path / "old" / "checkpoints" / "step-3"
    old.mkdir(parents=True)
    for name in PICKLE_NAMES:
        (old / name).write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(HVAEError, match="older hvae.*--no-resume"):
        _run(tmp_path / "old", features)
    assert not marker.exists()


def test_training_lowers_the_loss(tmp_path):
    features = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    config = TrainConfig(
        out_dir=str(tmp_path),
        steps=40,
        batch_size=8,
        lr=3e-3,
        checkpoint_every=100,
        log_every=1,
        mixed_precision="no",
    )
    train(
        tiny_hvae().train(),
        make_loss(kl_warmup_steps=1, free_bits=0.0),
        batch_sampler(features, 8, 0),
        config,
    )
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert sum(r["bpd"] for r in logs[-5:]) < sum(r["bpd"] for r in logs[:5])


def test_runs_of_different_precision_follow_each_other_in_one_process(tmp_path):
    # "auto" means bf16 on a CPU with AMX-BF16, and accelerate refused a second
    # Accelerator of another precision in the same process.
    features = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    for precision in ("bf16", "no", "bf16"):
        config = TrainConfig(
            out_dir=str(tmp_path / precision),
            steps=2,
            batch_size=4,
            checkpoint_every=100,
            mixed_precision=precision,
        )
        loss = make_loss(kl_warmup_steps=1, free_bits=0.0)
        train(tiny_hvae().train(), loss, batch_sampler(features, 4, 0), config)
        saved = json.loads((tmp_path / precision / "train_config.json").read_text())
        assert saved["precision"] == precision


def test_kl_weight_scales_only_the_kl_term_after_warm_up():
    features = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    model = tiny_hvae()
    losses = {}
    for weight in (1.0, 0.3, 0.0):
        torch.manual_seed(0)
        loss, logs = make_loss(kl_warmup_steps=1, free_bits=0.0, final_kl_weight=weight)(
            model, features, step=10
        )
        losses[weight] = loss.item()
        assert logs["kl_weight"] == weight
    nll_only, full = losses[0.0], losses[1.0]
    assert losses[0.3] == pytest.approx(nll_only + 0.3 * (full - nll_only), rel=1e-5)


def test_no_resume_starts_afresh_and_forgets_the_old_run(tmp_path):
    features = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    config = TrainConfig(
        out_dir=str(tmp_path),
        steps=4,
        batch_size=4,
        checkpoint_every=2,
        log_every=1,
        mixed_precision="no",
    )
    train(tiny_hvae().train(), make_loss(1, 0.0), batch_sampler(features, 4, 0), config)
    assert latest_checkpoint(tmp_path).name == "step-4"
    config.steps = 2
    train(
        tiny_hvae().train(), make_loss(1, 0.0), batch_sampler(features, 4, 0), config, resume=False
    )
    assert latest_checkpoint(tmp_path).name == "step-2"
    logs = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2]


def test_two_cpu_processes_train_data_parallel_with_accelerate_launch(tmp_path):
    """The documented multi-process command, on CPU: 2 ranks, gloo, both RNG states checkpointed, resumable."""
    import shutil
    import subprocess

    from .conftest import tiny_autoencoder

    if shutil.which("accelerate") is None:
        pytest.skip("the accelerate CLI is not on PATH")
    tiny_autoencoder().save_pretrained(tmp_path / "ae")
    out = tmp_path / "out"

    def launch(steps: int) -> str:
        command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
        command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        command += ["-m", "hvae.cli", "train", "--autoencoder", str(tmp_path / "ae")]
        command += ["--data", "shapes", "--out", str(out), "--preset", "tiny", "--scenes", "64"]
        command += ["--steps", str(steps), "--batch-size", "4", "--checkpoint-every", "3"]
        command += ["--cache-dir", str(tmp_path / "cache")]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    launch(3)
    config = json.loads((out / "run" / "train_config.json").read_text())
    assert config["num_processes"] == 2 and config["distributed_type"].endswith("MULTI_CPU")
    checkpoint = out / "run" / "checkpoints" / "step-3"
    assert (checkpoint / "rng-0.json").exists() and (checkpoint / "rng-1.json").exists()
    output = launch(6)
    assert "resumed from" in output and "step-3" in output
    assert (out / "run" / "checkpoints" / "step-6").exists()
    from pipelines import HVAEPipeline

    assert HVAEPipeline.from_pretrained(out).hvae.config.sample_size == 16


def test_global_only_images_send_nothing_through_the_spatial_groups():
    features = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    model = tiny_hvae()
    torch.manual_seed(0)
    out = model(features, global_only=torch.tensor([True, True, True, True]))
    assert float(out.kl_bits_per_dim[0]) > 0
    assert all(float(kl) == 0.0 for kl in out.kl_bits_per_dim[1:])
    torch.manual_seed(0)
    mixed = model(features, global_only=torch.tensor([True, False, True, False]))
    torch.manual_seed(0)
    plain = model(features)
    # Half the images pay for their spatial groups, so their KL lies between none and all.
    for kl_mixed, kl_plain in zip(
        mixed.kl_bits_per_dim[1:], plain.kl_bits_per_dim[1:], strict=True
    ):
        assert 0 < float(kl_mixed) < float(kl_plain)
    with pytest.raises(HVAEError, match="global_only_rate"):
        make_loss(kl_warmup_steps=1, free_bits=0.0, global_only_rate=1.0)


def test_train_on_random_crops_of_a_photo_folder(tmp_path):
    from hvae.cli import main
    from hvae.data.shapes import ShapesDataset
    from pipelines import HVAEPipeline
    from tests.conftest import tiny_autoencoder

    autoencoder = tmp_path / "ae"
    tiny_autoencoder().save_pretrained(autoencoder)
    data = tmp_path / "photos"
    data.mkdir()
    for i, (image, _) in enumerate(ShapesDataset(2, seed=1, size=96)):
        image.save(data / f"{i}.png")
    out = tmp_path / "editor"
    args = ["train", "--autoencoder", str(autoencoder), "--data", str(data), "--out", str(out)]
    args += ["--preset", "tiny", "--image-size", "64", "--crop-scales", "1.0", "0.5"]
    args += ["--steps", "3", "--batch-size", "4", "--global-only-rate", "0.5"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    pipe = HVAEPipeline.from_pretrained(out)
    # The folder gets a sampling prior fitted to crops of the training features ...
    assert pipe.fitted_prior is not None
    assert pipe.fitted_prior.about["fitted_on"] == "4096 random crops of the training features"
    assert pipe.sampler_id().startswith("fitted prior")
    # ... unless asked not to.
    assert main([*args, "--no-sample-prior", "--out", str(tmp_path / "bare")]) == 0
    assert HVAEPipeline.from_pretrained(tmp_path / "bare").fitted_prior is None
    # Trained on 64-pixel crops, it encodes whole images of other sizes (the global group pools).
    codes = pipe.encode([Image.open(data / "0.png")])
    assert codes.latents[0].shape[-2:] == (1, 1) and codes.feature_size == (24, 24)


def test_decoder_only_training_keeps_the_features_and_the_checks_are_clear(tmp_path, capsys):
    from hvae.cli import main
    from hvae.data.shapes import ShapesDataset
    from hvae.patch_autoencoder import PatchAutoencoder
    from tests.conftest import tiny_autoencoder

    start = tmp_path / "ae"
    trained = tiny_autoencoder()
    trained.register_to_config(scaling_factor=0.5, shift_factor=0.25)
    trained.save_pretrained(start)
    data = tmp_path / "photos"
    data.mkdir()
    for i, (image, _) in enumerate(ShapesDataset(2, seed=1, size=176)):
        image.save(data / f"{i}.png")
    common = ["train-autoencoder", "--data", str(data), "--crop", "176", "--batch-size", "2"]
    common += ["--steps", "3", "--lr", "1e-3", "--mixed-precision", "no"]
    out = tmp_path / "finetuned"
    args = [*common, "--out", str(out), "--init-from", str(start), "--train-decoder-only"]
    assert main([*args, "--ms-ssim-weight", "0.5"]) == 0

    tuned = PatchAutoencoder.from_pretrained(out)
    for name, value in trained.state_dict().items():
        same = torch.equal(tuned.state_dict()[name], value)
        assert same == name.startswith("encoder."), name  # encoder frozen, decoder trained
    assert (tuned.config.scaling_factor, tuned.config.shift_factor) == (0.5, 0.25)
    log = [json.loads(line) for line in (out / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(0 < row["ms_ssim"] <= 1 for row in log)

    def fails(extra, message):
        capsys.readouterr()
        assert main([*common, "--out", str(tmp_path / "x"), *extra]) == 2
        assert message in capsys.readouterr().err

    fails(["--train-decoder-only"], "needs --init-from")
    fails(["--init-from", str(start), "--latent-channels", "8"], "drop --latent-channels")
    fails(["--init-from", str(tmp_path)], "no config.json")
    fails(["--ms-ssim-weight", "0.5", "--crop", "128"], "at least 176")
    fails(["--init-from", str(start), "--quantization-steps", "0.5"], "--train-decoder-only")
    quantized = [*args, "--quantization-steps", "-1"]
    fails(quantized[len(common) :], "must be >= 0")


def test_quantization_steps_add_the_codecs_rounding_error_to_the_latents():
    from types import SimpleNamespace

    from hvae.train_autoencoder import make_loss

    class Recorder(torch.nn.Module):
        """Latents of zeros; keeps what the decoder is given."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.decoded = None

        def encode(self, pixels):
            return SimpleNamespace(latents=torch.zeros(pixels.shape[0], 4, 32, 32))

        def decode(self, latents):
            self.decoded = latents
            return SimpleNamespace(sample=torch.zeros(latents.shape[0], 3, 8, 8) + self.weight)

    pixels = torch.zeros(64, 3, 8, 8)
    model = Recorder()
    torch.manual_seed(0)
    make_loss(0.0, quantization_steps=(0.0, 1.0, 3.0), scaling_factor=0.5)(model, pixels, 0)
    # Per image: uniform in +-step/2 in feature units, so +-step in latent units at scale 0.5.
    reach = model.decoded.abs().flatten(1).amax(1)
    assert set(reach.gt(0).tolist()) == {False, True}  # step 0 leaves some images exact
    for step in (1.0, 3.0):
        drawn = reach[(reach > 0.5 * step) & (reach <= step)]
        assert len(drawn) > 0 and drawn.max() <= step and drawn.min() > 0.99 * step
    spread = model.decoded[reach > 2].std()
    assert abs(float(spread) - 6 / 12**0.5) < 0.05  # a uniform of width 6 (step 3 / 0.5)
