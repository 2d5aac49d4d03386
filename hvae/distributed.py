"""Distributed batch inference on Ray Data (optional: ``pip install -e ".[distributed]"``).

Ray runs only the pure ``compute`` step of a batch job (see ``hvae.batch``): each
worker loads the pipeline once and turns batches of work items into PNG or
safetensors bytes. The driver plans from the manifest and records results
exactly as a local run does, so the files are byte-identical to a
single-process run and an interrupted Ray run resumes like a local one.

``RAY_ADDRESS`` selects an existing cluster; without it a local one is started
with one CPU per worker. Every node must have this package installed and see
the model folder and the input paths (a shared filesystem).
"""

from __future__ import annotations

import os

from hvae.batch_base import JobSummary, drive, start_job
from hvae.errors import HVAEError


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate extra of Ray
    except ImportError:
        raise HVAEError("distributed runs need Ray Data: pip install -e '.[distributed]'") from None
    return ray


def _plain(value):
    """Arrow hands back numpy scalars; the manifest wants plain JSON values."""
    if isinstance(value, bytes | str) or value is None:
        return value
    return value.item() if hasattr(value, "item") else value


class _Worker:
    """One per Ray actor: loads the job's pipeline class once, then computes batches of items."""

    def __init__(self, model: str, job):
        from hvae.loading import load_pipeline

        self.pipe = load_pipeline(model, job.pipeline)
        self.job = job

    def __call__(self, batch):
        items = [
            {key: _plain(value) for key, value in row.items()} for row in batch.to_dict("records")
        ]
        results = list(self.job.compute(self.pipe, items))
        return {key: [r[key] for r in results] for key in ("item", "data", "error")}


def map_on_ray(job, items: list[dict], model: str, workers: int = 2, batch_size: int = 16):
    """Yield ``job.compute`` results for ``items``, computed by ``workers`` Ray actors."""
    ray = require_ray()
    if not items:
        return
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(
            address=address,
            num_cpus=None if address else workers,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    # The driver's own bar (hvae.batch.drive) is the job's one progress bar.
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.from_items(items).map_batches(
        _Worker,
        fn_constructor_kwargs={"model": str(model), "job": job},
        batch_size=batch_size,
        batch_format="pandas",
        concurrency=workers,
        num_cpus=1,
    )
    for row in dataset.iter_rows():
        yield {key: _plain(row[key]) for key in ("item", "data", "error")}


def run_job_on_ray(
    job, model: str, fingerprint: str, workers: int = 2, batch_size: int = 16
) -> JobSummary:
    """Run ``job`` with its compute step spread over ``workers`` Ray actors."""
    require_ray()
    manifest, items = start_job(job, fingerprint)
    results = map_on_ray(job, items, model, workers, batch_size)
    return drive(job, manifest, len(items), results)
