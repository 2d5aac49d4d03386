"""Per-image seeds: what makes sampled image ``i`` of a run independent of how the run is
batched or spread over workers (``HVAEPipeline.sample``, ``hvae.batch.GenerateJob``)."""

import numpy as np


def image_seed(seed: int, index: int) -> int:
    """Seed of image ``index`` in a run started with ``seed``: independent of batching."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
