"""One training loop for both stages, on ``accelerate``: CPU, one GPU (bf16) or many.

The loop owns what every run needs: mixed precision, EMA weights, gradient
skipping, checkpoints that resume exactly (model, optimizer, EMA, step and data
order), a progress bar and a JSONL log. Each stage supplies only how to draw a
batch for a step and how to compute its loss.

Checkpoints hold tensors (safetensors) and JSON, never a pickle: a run folder may come
from elsewhere, and unpickling a planted file runs its code. So the loop saves and loads
its state itself rather than with accelerate's ``save_state``/``load_state``, which
pickle the objects registered with it.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from hvae.errors import HVAEError


def _cpu_only() -> bool:
    return not torch.cuda.is_available()


def process_state() -> PartialState:
    """This process's place in a (possibly distributed) run.

    Accelerate fixes the distributed type when the first state object is made,
    and finds several CPU processes (torchrun, accelerate launch) only when told
    ``cpu=True``; so every caller gets its state here, never from a bare
    ``PartialState()``.
    """
    return PartialState(cpu=_cpu_only())


@dataclass
class TrainConfig:
    out_dir: str
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    lr_warmup_steps: int = 100
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 200.0
    skip_threshold: float = 400.0  # skip an update whose gradient norm is above this
    max_consecutive_skips: int = 25
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    seed: int = 0
    mixed_precision: str = "auto"  # "no", "bf16" or "auto" (bf16 where the hardware has it)
    channels_last: bool = False

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise HVAEError("steps and batch size must be positive")
        if self.mixed_precision not in ("auto", "no", "bf16"):
            raise HVAEError(
                f"mixed precision must be auto, no or bf16, got {self.mixed_precision!r}"
            )


class EMA:
    """Exponential moving average of a model's weights, with the usual warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        shadow = list(self.shadow.parameters())
        current = [p.detach().to(s.dtype) for s, p in zip(shadow, model.parameters(), strict=True)]
        torch._foreach_lerp_(shadow, current, 1.0 - decay)
        for ema_buffer, buffer in zip(self.shadow.buffers(), model.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.updates = int(state["updates"])


class GradientSkipper:
    """Skip updates with exploding or non-finite gradients, without skipping forever.

    A non-finite gradient is always skipped; ``max_consecutive`` of them in a row
    means training has diverged, and we stop with an error (the last checkpoint
    is kept). A finite gradient above the threshold is skipped too, but after
    ``max_consecutive`` such skips in a row the threshold doubles and the update
    goes through (clipped), so a threshold set too low cannot stall training.
    """

    def __init__(self, threshold: float, max_consecutive: int):
        self.threshold = threshold
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def should_skip(self, grad_norm: float) -> bool:
        if not math.isfinite(grad_norm):
            self.consecutive += 1
            self.total += 1
            if self.consecutive >= self.max_consecutive:
                raise HVAEError(
                    f"{self.consecutive} updates in a row had non-finite gradients: training diverged. "
                    "Lower the learning rate and resume from the last checkpoint."
                )
            return True
        if self.threshold > 0 and grad_norm > self.threshold:
            if self.consecutive + 1 >= self.max_consecutive:
                self.threshold *= 2.0
                self.consecutive = 0
                return False
            self.consecutive += 1
            self.total += 1
            return True
        self.consecutive = 0
        return False

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.threshold, self.consecutive, self.total = (
            state["threshold"],
            state["consecutive"],
            state["total"],
        )


class _StepCounter:
    def __init__(self):
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def resolve_precision(choice: str, on_gpu: bool | None = None) -> str:
    """What "auto" means: bf16 where it is fast (GPUs with bf16, CPUs with AMX-BF16), else
    "no". ``on_gpu`` defaults to whether a GPU is present; training that runs on the CPU
    whatever the machine has passes False."""
    if choice != "auto":
        return choice
    if on_gpu is None:
        on_gpu = torch.cuda.is_available()
    if on_gpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if _cpu_has_amx_bf16() else "no"


def _cpu_has_amx_bf16() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _checkpoints(out_dir: Path) -> list[Path]:
    found = [
        p for p in (out_dir / "checkpoints").glob("step-*") if re.fullmatch(r"step-\d+", p.name)
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = _checkpoints(Path(out_dir))
    return found[-1] if found else None


LossFn = Callable[[torch.nn.Module, torch.Tensor, int], tuple[torch.Tensor, dict]]
BatchFn = Callable[[int], torch.Tensor]


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batch_for_step: BatchFn,
    config: TrainConfig,
    resume: bool = True,
    description: str = "train",
) -> torch.nn.Module:
    """Train ``model`` and return its EMA copy (on CPU, fp32, eval mode).

    ``batch_for_step(i)`` must be a pure function of ``i``, which is what makes a
    resumed run see exactly the batches an uninterrupted one would; with several
    processes, process ``p`` of ``P`` asks for ``i = step * P + p``.
    ``loss_fn(model, batch, step)`` returns the loss and a dict of floats to log.
    """
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(config.mixed_precision)
    # Accelerate keeps one process-wide state and refuses an Accelerator of another
    # precision once it exists (a second run in the same Python process, after one
    # with "auto" on a CPU with AMX-BF16). Each run is its own, so the last run's
    # state is dropped; the process group, kept in PartialState, stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=precision, cpu=_cpu_only())
    set_seed(config.seed)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.99)
    )

    def lr_at(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, config.lr_warmup_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, step / config.steps)))
        return warm * (0.1 + 0.9 * cosine)

    # The scheduler stays outside prepare(): a prepared one steps once per process,
    # which would run the schedule P times too fast on P devices.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    # EMA before prepare(), so its copy has no autocast wrapper patched into forward.
    ema = EMA(model, config.ema_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    # prepare() moved the model to the training device; the EMA copy must follow it.
    ema.shadow.to(accelerator.device)
    if accelerator.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # batches keep one shape, so tuning pays off
    skipper = GradientSkipper(config.skip_threshold, config.max_consecutive_skips)
    counter = _StepCounter()
    run_state = {
        "model": accelerator.unwrap_model(model),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "ema": ema,
        "skipper": skipper,
        "counter": counter,
    }

    main = accelerator.is_main_process
    if not resume and main:
        # Starting afresh: old checkpoints and logs would otherwise be mistaken for this run's.
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        (out_dir / "train_log.jsonl").unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        _load_checkpoint(checkpoint, run_state, accelerator.process_index)
        accelerator.print(f"resumed from {checkpoint} at step {counter.step}")
        if main:
            _truncate_log(out_dir / "train_log.jsonl", counter.step)
    if main:
        (out_dir / "train_config.json").write_text(
            json.dumps(
                asdict(config)
                | {
                    "precision": precision,
                    "num_processes": accelerator.num_processes,
                    "distributed_type": str(accelerator.distributed_type),
                },
                indent=2,
            )
        )

    log_file = (out_dir / "train_log.jsonl").open("a") if main else None
    progress = tqdm(
        total=config.steps,
        initial=counter.step,
        desc=description,
        disable=not accelerator.is_main_process,
        dynamic_ncols=True,
    )
    started = time.time()
    model.train()
    while counter.step < config.steps:
        step = counter.step
        # Each process draws its own batch; with one process this is batch_for_step(step).
        batch = batch_for_step(step * accelerator.num_processes + accelerator.process_index).to(
            accelerator.device
        )
        if config.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            loss, logs = loss_fn(model, batch, step)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), config.grad_clip))
        skipped = skipper.should_skip(grad_norm)
        if not skipped:
            optimizer.step()
            ema.update(accelerator.unwrap_model(model))
        scheduler.step()
        counter.step += 1
        progress.update(1)

        if main and (counter.step % config.log_every == 0 or counter.step == config.steps):
            record = {
                "step": counter.step,
                "loss": loss.item(),
                "grad_norm": grad_norm,
                "skipped": skipper.total,
            }
            record |= {k: float(v) for k, v in logs.items()}
            record["lr"] = scheduler.get_last_lr()[0]
            record["seconds"] = round(time.time() - started, 1)
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
            progress.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "bpd", "psnr", "kl")}
            )
        if counter.step % config.checkpoint_every == 0 or counter.step == config.steps:
            _save_checkpoint(accelerator, run_state, out_dir, counter.step, config.keep_checkpoints)
    progress.close()
    if log_file is not None:
        log_file.close()
    return ema.shadow.float().cpu().eval()


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log records past the checkpoint we resume from: those steps are about to be
    redone. A line cut short by a kill goes too."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in kept))


# ---------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "hvae-checkpoint-1"
STATE_JSON, STATE_TENSORS = "state.json", "state.safetensors"


def _save_checkpoint(
    accelerator: Accelerator, run_state: dict, out_dir: Path, step: int, keep: int
) -> None:
    # Save under a temporary name, then rename, so an interrupted save never
    # leaves a half-written checkpoint that resume would pick up.
    final = out_dir / "checkpoints" / f"step-{step}"
    partial = out_dir / "checkpoints" / f"partial-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)  # before the barrier: every process writes into it
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tensors: dict[str, torch.Tensor] = {}
        state = {name: part.state_dict() for name, part in run_state.items()}
        document = {"format": CHECKPOINT_FORMAT, "state": _to_json(state, tensors)}
        save_file(tensors, partial / STATE_TENSORS)
        (partial / STATE_JSON).write_text(json.dumps(document))
    # Every process draws its own random numbers (dropout, posterior samples).
    (partial / f"rng-{accelerator.process_index}.json").write_text(json.dumps(_rng_state()))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in _checkpoints(out_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(checkpoint: Path, run_state: dict, process_index: int) -> None:
    """Restore ``run_state`` and this process's random generators from ``checkpoint``,
    reading its JSON and safetensors files only, or raise ``HVAEError`` saying why not."""
    if not (checkpoint / STATE_JSON).is_file():
        raise HVAEError(
            f"cannot resume from {checkpoint}: it was written by an older hvae, in pickle files "
            "that are not loaded because unpickling can run code. Finish that run with the "
            "version that started it, or start afresh with --no-resume (or a new output folder)."
        )
    try:
        document = json.loads((checkpoint / STATE_JSON).read_text())
        if document.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unknown checkpoint format {document.get('format')!r}")
        state = _from_json(document["state"], load_file(checkpoint / STATE_TENSORS))
        for name, part in run_state.items():
            part.load_state_dict(state[name])
        rng = checkpoint / f"rng-{process_index}.json"
        if rng.is_file():  # absent when resuming with more processes than the run had
            _set_rng_state(json.loads(rng.read_text()))
    except (OSError, SafetensorError, RuntimeError, KeyError, ValueError, TypeError) as error:
        raise HVAEError(
            f"cannot resume from {checkpoint}: it does not match this model or run ({error}). "
            "Use a new output folder, or --no-resume to start afresh."
        ) from None


def _to_json(value, tensors: dict[str, torch.Tensor]):
    """A state dict as JSON, its tensors moved (copied to the CPU) into ``tensors``. Dicts
    become ``{"dict": [[key, value], ...]}`` and tuples ``{"tuple": [...]}``, so that the
    integer keys of an optimizer's state and the tuples of its settings come back as such."""
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"tensor": name}
    if isinstance(value, dict):
        return {"dict": [[key, _to_json(item, tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_to_json(item, tensors) for item in value]}
    if isinstance(value, list):
        return [_to_json(item, tensors) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def _from_json(value, tensors: dict[str, torch.Tensor]):
    """The inverse of ``_to_json``."""
    if isinstance(value, list):
        return [_from_json(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    ((kind, content),) = value.items()
    if kind == "tensor":
        return tensors[content]
    if kind == "tuple":
        return tuple(_from_json(item, tensors) for item in content)
    if kind == "dict":
        return {key: _from_json(item, tensors) for key, item in content}
    raise ValueError(f"unknown value {kind!r}")


def _rng_state() -> dict:
    """This process's random generators as JSON."""
    version, words, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
