"""A short hash that identifies models by their configs and weights."""

from __future__ import annotations

import hashlib
import json

import torch


def fingerprint(*models: torch.nn.Module) -> str:
    """16 hex digits over each model's config and every tensor in its state dict, in order."""
    digest = hashlib.sha256()
    for model in models:
        # Keys starting with "_" are bookkeeping (load path, library version), not the model.
        config = {
            k: v for k, v in dict(getattr(model, "config", {})).items() if not k.startswith("_")
        }
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:16]
