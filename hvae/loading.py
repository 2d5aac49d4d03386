"""Finding and loading pipeline folders: a path, or the name of a bundled pipeline.

Every front end (the CLI, the UI, the benchmarks) loads models through here. The module
imports neither torch nor diffusers until a pipeline is actually loaded, so the CLI can
resolve names and fail on a wrong one in a fraction of a second.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from hvae.errors import HVAEError

# Installed as package data of ``hvae`` (a link to the repository's checkpoints/ folder,
# which a wheel stores as files), so the same path serves a checkout, an editable install
# and a wheel.
BUNDLED_ROOT = Path(__file__).resolve().parent / "checkpoints"

EDITING_CLASS = "HVAEPipeline"
CODEC_CLASS = "HVAECompressionPipeline"


@dataclass(frozen=True)
class ModelKind:
    """What a command needs: which pipeline class, where its default comes from."""

    class_name: str
    variable: str  # environment variable naming the default
    default: str  # bundled name used when neither --model nor the variable is given
    description: str


KINDS = {
    "pipeline": ModelKind(EDITING_CLASS, "HVAE_MODEL", "shapes", "an editing pipeline"),
    "codec": ModelKind(CODEC_CLASS, "HVAE_CODEC_MODEL", "photo", "a compression pipeline"),
}

# Bundled name -> the kind of pipeline it is (what the help texts and errors list).
BUNDLED = {"shapes": "pipeline", "photo-edit": "pipeline", "photo": "codec"}


def bundled_names(kind: str | None = None) -> list[str]:
    """Bundled pipeline names, of one ``kind`` or all."""
    return [name for name, of in BUNDLED.items() if kind is None or of == kind]


def bundled_path(name: str) -> Path:
    return BUNDLED_ROOT / name


def model_help(kind: str) -> str:
    """The --model help text of commands that load a ``kind`` pipeline."""
    spec = KINDS[kind]
    return (
        f"{spec.description}: a folder, or the name of a bundled one "
        f"({', '.join(bundled_names(kind))}); a pipeline folder of that name in the current "
        f"directory wins (default: ${spec.variable}, else {spec.default})"
    )


def resolve_model(name_or_path: str | None, kind: str = "pipeline") -> str:
    """The folder that ``--model`` means: an existing path, else a bundled name.

    ``None`` (no --model) falls back to ``$HVAE_MODEL`` / ``$HVAE_CODEC_MODEL``, then to
    the bundled default of ``kind``."""
    spec = KINDS[kind]
    given = name_or_path or os.environ.get(spec.variable) or spec.default
    origin = "" if name_or_path or given == spec.default else f"${spec.variable}="
    if Path(given).exists():
        if given not in BUNDLED or is_pipeline_folder(given):
            return given
        # A folder that only shares a bundled name (your photos in ./photo-edit, say) must
        # not hide the bundled model: users type the name, not a path.
        note(
            f"note: ./{given} is not a pipeline folder (no model_index.json); "
            f"using the bundled {given!r}"
        )
    if given in BUNDLED:
        path = bundled_path(given)
        if not is_pipeline_folder(path):
            raise HVAEError(f"the bundled pipeline {given!r} is not installed (no {path})")
        return str(path)
    listing = ", ".join(f"{name} ({KINDS[of].description})" for name, of in BUNDLED.items())
    raise HVAEError(
        f"{origin}{given}: no such model folder, and not a bundled pipeline; bundled: {listing}"
    )


def is_pipeline_folder(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


@functools.cache
def note(text: str) -> None:
    """Print ``text`` to stderr once per process: a command resolves its model more than once."""
    print(text, file=sys.stderr)


def pipeline_class(path: str | Path) -> str:
    """The pipeline class a folder's ``model_index.json`` names (read without torch)."""
    index = Path(path) / "model_index.json"
    try:
        return json.loads(index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise HVAEError(f"{path}: not a pipeline folder (no readable model_index.json)") from None


def kind_of(class_name: str) -> str:
    """The ``KINDS`` key of a pipeline class."""
    for name, spec in KINDS.items():
        if spec.class_name == class_name:
            return name
    raise HVAEError(f"unknown pipeline class {class_name!r}; known: {', '.join(KINDS)}")


def check_pipeline_class(path: str, kind: str, purpose: str | None = None) -> None:
    """Refuse, before loading, a folder of the wrong pipeline class: a codec cannot edit and
    an editing pipeline cannot compress or decompress, and loading one as the other would
    only fail later with a less helpful message."""
    spec, found = KINDS[kind], pipeline_class(path)
    if found == spec.class_name:
        return
    theirs = next((k.description for k in KINDS.values() if k.class_name == found), "a pipeline")
    action = f", so it cannot {purpose}" if purpose else ""
    raise HVAEError(
        f"{path}: {theirs} ({found}), not {spec.description}{action}; use {spec.description} "
        f"such as the bundled {' or '.join(bundled_names(kind))}"
    )


def load_pipeline(
    name_or_path: str | None,
    class_name: str = EDITING_CLASS,
    purpose: str | None = None,
):
    """A pipeline folder or bundled name loaded with ``pipelines.<class_name>``, its progress
    bars and diffusers' loading bars off. ``purpose`` ("edit", "decompress", ...) goes into
    the error for a folder of the wrong class."""
    kind = kind_of(class_name)
    path = resolve_model(name_or_path, kind)
    check_pipeline_class(path, kind, purpose)
    # Imported here: torch and diffusers take seconds to import.
    import diffusers.utils.logging

    import pipelines

    diffusers.utils.logging.disable_progress_bar()
    pipe = getattr(pipelines, class_name).from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_codec(name_or_path: str | None, purpose: str | None = None):
    """A compression pipeline: a folder, a bundled name, or (None) the default codec."""
    return load_pipeline(name_or_path, CODEC_CLASS, purpose)


def check_worth_sampling(pipe, model: str, prior: str, anyway: str = "give --prior model") -> None:
    """Refuse (``HVAEError``) to sample, unasked, from a model's own prior: the CLI's generate
    and the UI's Generate tab both ask here. Pipelines trained for editing or coding (the
    bundled photo-edit) have no fitted sampling prior, and their own prior decodes to
    meaningless blurs; ``prior="model"`` says the user wants it anyway, and ``anyway`` tells
    them how to say so in the front end at hand."""
    if prior == "auto" and pipe.sampler_id("auto") == "model prior":
        raise HVAEError(
            f"{model}: has no fitted sampling prior (sample_prior/), so it would sample from "
            "the model's own prior, which is meaningless for a pipeline trained for editing; "
            f"fit one with 'hvae prior fit --model {model} ...' (on its training images), or "
            f"{anyway} to sample from the model's own prior anyway"
        )
