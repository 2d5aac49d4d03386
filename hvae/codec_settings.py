"""Defaults of the compression pipeline, kept free of torch so that ``hvae --help`` stays fast."""

DEFAULT_QUALITY = 4
QUALITY_LEVELS = 8
# Encoder-side search iterations per image (hvae.refine). On training photos, 8, 15, 30
# and 60 saved 13, 16, 18 and 21 % of the bits at equal PSNR (BD-rate), each iteration
# costing about 6 unrefined encodes (python benchmarks/refine_tuning.py); 0 turns it off.
DEFAULT_REFINE_STEPS = 15
# What that search trades bits against (hvae.refine.rd_cost).
TUNINGS = ("psnr", "ms-ssim")
