"""Defaults of the compression pipeline, kept free of torch so that ``hvae --help`` stays fast."""

from hvae.errors import HVAEError

DEFAULT_QUALITY = 4
QUALITY_LEVELS = 8
# Encoder-side search iterations per image (hvae.refine). On training photos, 8, 15, 30
# and 60 saved 13, 16, 18 and 21 % of the bits at equal PSNR (BD-rate), each iteration
# costing about 1.4 unrefined encodes (python benchmarks/refine_tuning.py); 0 turns it off.
DEFAULT_REFINE_STEPS = 15
# What that search trades bits against (hvae.refine.rd_cost).
TUNINGS = ("psnr", "ms-ssim")


def check_tune(tune: str) -> None:
    if tune not in TUNINGS:
        raise HVAEError(f"tune must be one of {', '.join(TUNINGS)}, got {tune!r}")


def check_refine_steps(refine_steps: int) -> None:
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
        raise HVAEError(f"refine_steps must be a whole number >= 0, got {refine_steps!r}")


# End-to-end training's distortion weight at step 1, in bpp per squared 8-bit level
# (hvae.train_rd: step s weighs DEFAULT_LMBDA / s^2). It is the trade-off the encoder search
# makes (hvae.refine.RD_WEIGHT = 180 levels² per bpp at step 1), and near where the frozen
# stage 1 sits: on the bundled photo codec, feature noise of variance v adds about 300·v
# squared levels to the decoded MSE, for which high-rate theory gives 1.5 / (ln 2 · 300).
DEFAULT_LMBDA = 1 / 180
