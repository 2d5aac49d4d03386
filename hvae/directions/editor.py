"""Attribute edits learned from pairs: a conditional network on the stage-1 features.

Where an image's factors can be changed one at a time (a renderer, a camera rig,
an editor's before/after), pairs of an image and its counterfactual show exactly
what a slider should do. ``FeatureEditor`` learns that map: given an image's
stage-1 features and the requested change of every attribute, it predicts the
counterfactual's features. Directions fitted across images by regression (fields,
moments) carry whatever merely comes with an attribute in those images and the
errors of a linear read-out; on the scenes, moving a hue that way tilted the
floor in half of the held-out cases. Trained on pairs, the network is told that
everything not named stays, and it learns where each factor lives in the picture
(the floor, the wall, the object's silhouette and shading).

Strengths are the change in sds of the attribute over the fitting images, as for
every other direction; a binary attribute (one of several classes, such as the
scene's shape) moves in class units instead: +1 makes the image that class, -1
removes it (see ``hvae.data.shapes.edit_pair`` for what removal becomes), since
a fraction of an sd of a class is not an image.

Like ``FeatureFlows`` it moves no latents: an edit adds its strengths to
``codes.feature_editor``, and decoding runs the network on the decoded features
(the latents plus the kept detail), so a zero edit decodes exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hvae.errors import HVAEError


class ConditionedBlock(nn.Module):
    """A residual block whose hidden activations are scaled and shifted by the edit."""

    def __init__(self, channels: int, condition: int):
        super().__init__()
        self.norm = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Linear(condition, 2 * channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm(x)))
        scale, shift = self.film(condition)[..., None, None].chunk(2, 1)
        return x + self.conv2(F.silu(h * (1 + scale) + shift))


class FeatureEditor(nn.Module):
    """``features, strengths -> edited features``: a small U-Net (three resolutions, the
    lowest seeing the whole scene) conditioned on the strengths of every attribute, that
    adds its output to the features. See the module docstring."""

    kind = "feature-editor"
    # Fully convolutional, but what it learned of where things lie in the picture (the
    # floor's boundary, the object's base) holds at the feature size it was trained on.
    any_size = False
    groups: tuple[int, ...] = ()

    def __init__(
        self,
        names: Sequence[str],
        units: Sequence[str],
        channels: int,
        width: int = 32,
        blocks: int = 1,
    ):
        super().__init__()
        if len(units) != len(names):
            raise HVAEError(f"got {len(units)} units for {len(names)} attributes")
        self.names, self.units = list(names), list(units)
        self.channels, self.width, self.blocks = channels, width, blocks
        k, wide = len(names), 2 * width
        self.condition = nn.Sequential(nn.Linear(k, 4 * k), nn.SiLU(), nn.Linear(4 * k, 4 * k))
        cond = 4 * k
        self.stem = nn.Conv2d(channels + k, width, 3, padding=1)
        self.fine = nn.ModuleList(ConditionedBlock(width, cond) for _ in range(blocks))
        self.down1 = nn.Conv2d(width, wide, 3, stride=2, padding=1)
        self.middle = nn.ModuleList(ConditionedBlock(wide, cond) for _ in range(blocks))
        self.down2 = nn.Conv2d(wide, wide, 3, stride=2, padding=1)
        self.coarse = nn.ModuleList(ConditionedBlock(wide, cond) for _ in range(blocks))
        self.up2 = nn.Conv2d(2 * wide, wide, 3, padding=1)
        self.middle_up = nn.ModuleList(ConditionedBlock(wide, cond) for _ in range(blocks))
        self.up1 = nn.Conv2d(wide + width, width, 3, padding=1)
        self.fine_up = nn.ModuleList(ConditionedBlock(width, cond) for _ in range(blocks))
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts as the identity edit
        nn.init.zeros_(self.out.bias)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "names": self.names,
            "units": self.units,
            "channels": self.channels,
            "width": self.width,
            "blocks": self.blocks,
        }

    def forward(self, features: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
        """Edited features; ``strengths`` is (K,) for the whole batch or (N, K). Computed in the
        editor's own precision, returned in the features'."""
        given = features
        features = features.to(self.out.weight)
        n, _, height, width = features.shape
        strengths = strengths.to(features).expand(n, len(self.names))
        condition = self.condition(strengths)
        # Any size: pad to the two halvings and crop back.
        pad_h, pad_w = (-height) % 4, (-width) % 4
        x = F.pad(features, (0, pad_w, 0, pad_h), mode="replicate")
        planes = strengths[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        fine = self.run(self.fine, self.stem(torch.cat([x, planes], 1)), condition)
        middle = self.run(self.middle, self.down1(fine), condition)
        coarse = self.run(self.coarse, self.down2(middle), condition)
        up = F.interpolate(coarse, scale_factor=2.0, mode="nearest")
        middle = self.run(self.middle_up, self.up2(torch.cat([up, middle], 1)), condition)
        up = F.interpolate(middle, scale_factor=2.0, mode="nearest")
        fine = self.run(self.fine_up, self.up1(torch.cat([up, fine], 1)), condition)
        return (features + self.out(F.silu(fine))[..., :height, :width]).to(given.dtype)

    @staticmethod
    def run(blocks: nn.ModuleList, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            x = block(x, condition)
        return x

    def edit_codes(self, codes, strengths: torch.Tensor, keep: Sequence[int] = ()) -> None:
        """Add ``strengths`` (K,) to the codes' pending edit (``codes`` is already a copy).
        ``keep`` needs nothing: the network was trained to hold every attribute it is not
        asked to move. A zero edit adds nothing, so it decodes as the unedited codes."""
        if not strengths.any():
            return
        previous = codes.feature_editor
        if previous is not None and previous[0] is not self:
            raise HVAEError("these codes were already edited by another feature editor")
        total = strengths if previous is None else previous[1] + strengths
        codes.feature_editor = (self, total)

    @classmethod
    def fit(
        cls,
        sources: torch.Tensor,
        targets: torch.Tensor,
        source_index: torch.Tensor,
        strengths: torch.Tensor,
        names: Sequence[str],
        units: Sequence[str],
        steps: int = 4000,
        batch_size: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
        width: int = 32,
        blocks: int = 1,
        start: FeatureEditor | None = None,
        bf16: bool = False,
    ) -> tuple[FeatureEditor, dict[str, float]]:
        """Train on pairs: ``targets[i]`` (P, C, H, W) is ``sources[source_index[i]]`` changed by
        ``strengths[i]`` (P, K). Returns the editor and, per attribute, the fraction of its
        pairs' feature change the editor explains on a tenth of the pairs held out from
        training (1 - residual / change, summed over those pairs). ``start`` continues
        training that editor (fitted on the same pairs and ``seed``, so the held-out tenth
        stays held out) instead of a new one. ``bf16`` trains under bf16 autocast (faster on
        CPUs with AMX-BF16; the weights stay fp32)."""
        from tqdm.auto import tqdm

        if len(targets) < 20:
            raise HVAEError(f"a feature editor needs at least 20 pairs, got {len(targets)}")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(targets), generator=generator)
        held, train = order[: len(order) // 10], order[len(order) // 10 :]
        if start is None:
            with torch.random.fork_rng(devices=[]):  # the same seed, the same editor, every run
                torch.manual_seed(seed)
                editor = cls(names, units, sources.shape[1], width, blocks)
        else:
            if (start.names, start.units, start.channels) != (
                list(names),
                list(units),
                sources.shape[1],
            ):
                raise HVAEError(
                    f"the editor to continue moves {start.names} of {start.channels}-channel "
                    f"features; these pairs move {list(names)} of {sources.shape[1]}-channel ones"
                )
            editor = start.train()
            generator.manual_seed(seed + 1)  # new batches; the same held-out pairs
        optimizer = torch.optim.AdamW(editor.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
        progress = tqdm(range(steps), desc="training the editor", dynamic_ncols=True)
        for step in progress:
            batch = train[torch.randint(len(train), (batch_size,), generator=generator)]
            before, after = sources[source_index[batch]], targets[batch]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                predicted = editor(before, strengths[batch])
            loss = F.mse_loss(predicted.float(), after)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(editor.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            if step % 50 == 0:
                progress.set_postfix(loss=f"{loss.item():.4f}")
        editor.eval()
        return editor, editor.explained(sources, targets, source_index, strengths, held)

    @torch.no_grad()
    def explained(self, sources, targets, source_index, strengths, pairs) -> dict[str, float]:
        """Per attribute, over ``pairs`` that move it: 1 - |predicted - target|^2 / |change|^2."""
        residual = np.zeros(len(self.names))
        change = np.zeros(len(self.names))
        for batch in pairs.split(256):
            before, after = sources[source_index[batch]], targets[batch]
            errors = (self(before, strengths[batch]) - after).pow(2).flatten(1).sum(1)
            changes = (after - before).pow(2).flatten(1).sum(1)
            moves = (strengths[batch] != 0).double()
            residual += (moves * errors[:, None].double()).sum(0).numpy()
            change += (moves * changes[:, None].double()).sum(0).numpy()
        return {
            n: float(1 - r / max(c, 1e-12))
            for n, r, c in zip(self.names, residual, change, strict=True)
        }
