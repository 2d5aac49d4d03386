"""Entropy coding of stage-1 features, with a hierarchical VAE as their prior.

The HVAE acts as a learned multi-level hyperprior (as in QRes-VAE): its latent
groups are quantized and coded top-down, each under the prior the groups above
predict, and the quantized features are coded last under the likelihood.

Quantization, the same in every place that needs it:
  latent group:  symbol = round(posterior_mean - prior_mean),  z = prior_mean + symbol
  features:      symbol = round((y - mean) / step),             y_hat = mean + step * symbol
Symbols are coded with a zero-mean Gaussian whose std is snapped to a fixed
table (``SCALE_TABLE``). The coder therefore never sees a network-computed
float, only table entries. A decoder that computes a mean one ulp off gets a
reconstruction one ulp off, not a corrupt stream; only a scale landing in a
different table bucket desynchronises it. In float32 that happened to 9 of 80
held-out streams encoded on 2 threads and decoded on 1, so the pipeline codes
in float64 (format version 2; see ``CODING_DTYPES`` in the compression
pipeline) and computes every image on its own (batch 1) on one thread.

Format version 3 codes the features in independent tiles (``hvae.codec.coding_tiles``),
each one image to the HVAE, with its own global group and its own ANS stream. Tiles
run on worker threads (``on_threads``), each running torch on one thread: that uses
every core, and a tile computes the same whichever thread runs it.

Training replaces rounding with uniform noise of the same width (the usual
relaxation), and the rate is the negative log-probability of the noisy values.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from hvae.layers import discretized_gaussian_log_prob
from hvae.model import HierarchicalVAE

# Every .hvz format version so far (1, 2) depends on these exact values: never change them.
SCALE_TABLE = np.exp(np.linspace(math.log(0.11), math.log(256.0), 64))
SYMBOL_LIMIT = 1023  # symbols are clamped to [-SYMBOL_LIMIT, SYMBOL_LIMIT] (and a warning says so)
_SCALE_BOUNDS = torch.from_numpy(np.sqrt(SCALE_TABLE[:-1] * SCALE_TABLE[1:]))
_GAUSSIAN = constriction.stream.model.QuantizedGaussian(-SYMBOL_LIMIT, SYMBOL_LIMIT)


def scale_indexes(log_scale: torch.Tensor) -> np.ndarray:
    """Index of the table entry nearest (in log space) to each std, as a flat int array."""
    scale = log_scale.detach().double().exp().flatten().cpu()
    return torch.bucketize(scale, _SCALE_BOUNDS).numpy()


def symbol_bits(symbols: np.ndarray, indexes: np.ndarray) -> float:
    """-log2 P of ``symbols`` under the coder's own (table-scale) Gaussians, in bits."""
    std = torch.from_numpy(SCALE_TABLE[indexes])
    k = torch.from_numpy(symbols.astype(np.float64))
    # Mass of the bin on the tail side, where both CDF values stay small and precise.
    mass = torch.special.ndtr((0.5 - k.abs()) / std) - torch.special.ndtr((-0.5 - k.abs()) / std)
    return float(-torch.log2(mass.clamp_min(2.0**-24)).sum())


@dataclass
class SymbolChunk:
    """Symbols that share one top-down step, with the table index of each one's scale."""

    symbols: np.ndarray  # int32, flat
    indexes: np.ndarray  # int, flat
    clamped: int = 0  # symbols that fell outside the coder's range and were clamped


def _chunk(values: torch.Tensor, log_scale: torch.Tensor) -> SymbolChunk:
    raw = values.detach().double().flatten().cpu().numpy()
    symbols = np.clip(raw, -SYMBOL_LIMIT, SYMBOL_LIMIT).astype(np.int32)
    return SymbolChunk(symbols, scale_indexes(log_scale), int((np.abs(raw) > SYMBOL_LIMIT).sum()))


def _relative_log_scale(log_scale: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """In the model's own dtype: rounding a float64 std to float32 first would give back
    the float32 hazard that computing in float64 removes."""
    dtype = torch.promote_types(log_scale.dtype, torch.float32)
    return log_scale.to(dtype) - step.to(dtype).log().view(-1, 1, 1, 1)


@torch.no_grad()
def encode_symbols(
    model: HierarchicalVAE, features: torch.Tensor, step: float
) -> tuple[list[SymbolChunk], torch.Tensor]:
    """Quantize one image's features (1, C, H, W) and all its latents; returns the chunks in
    decoding order and the reconstructed features that a decoder will rebuild from them."""
    if features.shape[0] != 1:
        raise ValueError("encode one image at a time: batching would change the arithmetic")
    chunks: list[SymbolChunk] = []
    dtype = model.head.weight.dtype
    steps = torch.tensor([step], dtype=torch.float32, device=features.device)

    def pick(prior_mean, prior_log_scale, posterior_mean):
        symbols = torch.round(posterior_mean - prior_mean)
        chunks.append(_chunk(symbols, prior_log_scale))
        return prior_mean + symbols

    mean, log_scale, _ = model.coding_pass(features.to(dtype), steps, pick)
    symbols = torch.round((features.to(dtype) - mean) / step)
    chunks.append(_chunk(symbols, _relative_log_scale(log_scale, steps)))
    return chunks, mean + step * symbols.clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT)


def pack(chunks: list[SymbolChunk]) -> bytes:
    """ANS-code the chunks so that ``unpack`` reads them back in the same order."""
    coder = constriction.stream.stack.AnsCoder()
    for chunk in reversed(chunks):  # a stack coder decodes in the reverse order of encoding
        if chunk.symbols.size:
            means = np.zeros(chunk.symbols.size)
            coder.encode_reverse(chunk.symbols, _GAUSSIAN, means, SCALE_TABLE[chunk.indexes])
    return coder.get_compressed().tobytes()


@torch.no_grad()
def decode_symbols(
    model: HierarchicalVAE, payload: bytes, step: float, feature_size: tuple[int, int]
) -> torch.Tensor:
    """Rebuild one image's quantized features from ``pack``'s bytes."""
    if len(payload) % 4:
        raise ValueError("payload length is not a whole number of 32-bit words")
    coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, dtype=np.uint32).copy())
    steps = torch.tensor([step], dtype=torch.float32, device=model.head.weight.device)

    def read(log_scale: torch.Tensor) -> torch.Tensor:
        indexes = scale_indexes(log_scale)
        # Every symbol costs some bits (no table std makes one certain), so an encoder's stack
        # is empty only before its first symbol: an empty coder here means a stream cut
        # short or forged, and stopping now saves decoding garbage at full size.
        if indexes.size and coder.is_empty():
            raise ValueError("the bitstream ended before the image did")
        symbols = coder.decode(_GAUSSIAN, np.zeros(indexes.size), SCALE_TABLE[indexes])
        return torch.from_numpy(symbols.astype(np.float32)).view(log_scale.shape)

    def pick(prior_mean, prior_log_scale, posterior_mean):
        return prior_mean + read(prior_log_scale).to(prior_mean.dtype)

    mean, log_scale, _ = model.coding_pass(None, steps, pick, feature_size)
    features = mean + step * read(_relative_log_scale(log_scale, steps)).to(mean.dtype)
    if not coder.is_empty():
        raise ValueError("the bitstream goes on after the image ended")
    return features


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside the block.

    Measured on the bundled photo model: 1 and 2 threads compute one image's sums
    differently (oneDNN splits them per thread count), enough to flip a rounded
    pixel now and then, and in float32 to desynchronise 9 of 80 streams (see
    ``CODING_DTYPES`` in the compression pipeline). Coding and decoding on one thread
    make the output bit-identical whatever the caller's thread setting; ``on_threads``
    gets the other cores back by running tiles side by side.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def on_threads(fn: Callable, items: Sequence, workers: int) -> Iterator:
    """``fn(item)`` for every item, yielded in order, computed on ``workers`` threads that each
    run torch on one thread (and in the caller's grad mode). The first exception is raised
    as soon as its item's turn comes, and items not yet started are dropped."""
    grad = torch.is_grad_enabled()

    def run(item):
        with torch.set_grad_enabled(grad):
            return fn(item)

    if workers <= 1:
        yield from map(run, items)
        return
    # Each thread sets its own OpenMP thread count (a per-thread setting), not only torch's.
    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = [pool.submit(run, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def decode_tiles(
    model: HierarchicalVAE,
    streams: Sequence[bytes],
    step: float,
    tiles: Sequence[tuple[int, int, int, int]],
    workers: int = 1,
) -> torch.Tensor:
    """float32 features (1, C, H, W) rebuilt from one ``pack`` stream per tile (top, bottom,
    left, right), the tiles covering [0, H) x [0, W); ``ValueError`` naming the first tile
    whose stream is damaged."""
    height, width = max(t[1] for t in tiles), max(t[3] for t in tiles)
    features = torch.empty(1, model.config.in_channels, height, width)

    def decode(index: int) -> torch.Tensor:
        top, bottom, left, right = tiles[index]
        try:
            return decode_symbols(model, streams[index], step, (bottom - top, right - left))
        except ValueError as error:
            raise ValueError(f"tile {index + 1} of {len(tiles)}: {error}") from None

    for (top, bottom, left, right), part in zip(
        tiles, on_threads(decode, range(len(tiles)), workers), strict=True
    ):
        features[..., top:bottom, left:right] = part
    return features


def rounded_rate_bits(
    model: HierarchicalVAE, features: torch.Tensor, steps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``encode_symbols`` would spend and rebuild, as differentiable functions of the
    features: per-image bits (under the continuous stds, not the table's) and the
    reconstructed features. Rounding passes gradients straight through."""
    bits: list[torch.Tensor] = []

    def round_straight_through(values: torch.Tensor) -> torch.Tensor:
        return values + (torch.round(values) - values).detach()

    def neg_log2_p(symbols: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(symbols)
        log_p = discretized_gaussian_log_prob(symbols, zero, log_scale.float(), 1.0)
        return -log_p.flatten(1).sum(1) / math.log(2)

    def pick(prior_mean, prior_log_scale, posterior_mean):
        symbols = round_straight_through(posterior_mean.float() - prior_mean.float())
        bits.append(neg_log2_p(symbols, prior_log_scale))
        return prior_mean + symbols

    mean, log_scale, _ = model.coding_pass(features, steps, pick)
    view = steps.float().view(-1, 1, 1, 1)
    symbols = round_straight_through((features.float() - mean.float()) / view)
    symbols = symbols.clamp(-SYMBOL_LIMIT, SYMBOL_LIMIT)  # as encode_symbols does
    bits.append(neg_log2_p(symbols, _relative_log_scale(log_scale, steps)))
    return torch.stack(bits).sum(0), mean.float() + view * symbols


def rate_bits(
    model: HierarchicalVAE,
    features: torch.Tensor,
    steps: torch.Tensor,
    feature_noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Training rate under the uniform-noise relaxation: per-image bits for the features,
    and per-image bits for each latent group (a list, top group first).

    ``feature_noise`` (uniform in [-0.5, 0.5), in steps; drawn here when not given) lets an
    end-to-end recipe decode the very features whose bits are counted."""
    latent_bits: list[torch.Tensor] = []

    def pick(prior_mean, prior_log_scale, posterior_mean):
        z = posterior_mean.float() + torch.rand_like(posterior_mean, dtype=torch.float32) - 0.5
        log_p = discretized_gaussian_log_prob(z, prior_mean.float(), prior_log_scale.float(), 1.0)
        latent_bits.append(-log_p.flatten(1).sum(1) / math.log(2))
        return z

    mean, log_scale, _ = model.coding_pass(features, steps, pick)
    view = steps.float().view(-1, 1, 1, 1)
    if feature_noise is None:
        feature_noise = torch.rand_like(features.float()) - 0.5
    noisy = features.float() + view * feature_noise
    bin_log_p = discretized_gaussian_log_prob(
        (noisy - mean.float()) / view,
        torch.zeros_like(noisy),
        _relative_log_scale(log_scale, steps),
        1.0,
    )
    return -bin_log_p.flatten(1).sum(1) / math.log(2), latent_bits
