"""Synthetic scenes with known generating factors, in the spirit of Shapes3D.

A scene is a wall (upper part), a floor (lower part) and one object standing
centred on the floor. Six factors generate it; each has canonical values that
datasets draw from, but any float in range renders, which is what editing
benchmarks need.

``orientation`` is the camera's yaw around the object: it tilts the wall/floor
boundary, turns the cube, and moves the light across round objects, so it is
visible for every shape.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

HUES = tuple(float(h) for h in np.linspace(0.0, 0.8, 10))
SCALES = tuple(float(s) for s in np.linspace(0.75, 1.25, 8))
SHAPES = ("cube", "cylinder", "sphere", "capsule")
ORIENTATIONS = tuple(float(o) for o in np.linspace(-30.0, 30.0, 15))

FACTOR_NAMES = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
# Where each continuous factor may lie: its canonical values' span (any float in it renders).
FACTOR_RANGES = {
    "floor_hue": (HUES[0], HUES[-1]),
    "wall_hue": (HUES[0], HUES[-1]),
    "object_hue": (HUES[0], HUES[-1]),
    "scale": (SCALES[0], SCALES[-1]),
    "orientation": (ORIENTATIONS[0], ORIENTATIONS[-1]),
}

# Scene geometry as fractions of the image size.
HORIZON = 0.55  # wall/floor boundary height at the image centre
HORIZON_TILT = 0.25  # boundary slope per unit sin(orientation)
BASE = 0.84  # where the object touches the floor
OBJECT_HEIGHT = 0.36  # object height at scale 1.0
SUPERSAMPLE = 2  # anti-aliasing: render larger, then box-filter down


@dataclass(frozen=True)
class SceneFactors:
    floor_hue: float
    wall_hue: float
    object_hue: float
    scale: float
    shape: str
    orientation: float

    def as_dict(self) -> dict:
        return asdict(self)


def _check_range(name: str, value: float, low: float, high: float) -> float:
    value = float(value)
    if not (low - 1e-9 <= value <= high + 1e-9) or math.isnan(value):
        raise ValueError(f"{name}={value} is outside [{low}, {high}]")
    return value


def _rgb(hue: float, value: float | np.ndarray = 1.0) -> np.ndarray:
    """Fully saturated colour of ``hue`` at brightness ``value`` (array-friendly)."""
    r, g, b = colorsys.hsv_to_rgb(hue, 1.0, 1.0)
    base = np.array([r, g, b], dtype=np.float32)
    return np.asarray(value, dtype=np.float32)[..., None] * base


def _object_mask_and_shade(
    shape: str, u: np.ndarray, v: np.ndarray, yaw: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mask and brightness of the object in its own frame.

    ``u`` is horizontal (units of object height, 0 at the centre line) and
    ``v`` vertical (0 at the base, 1 at the top). The light comes from the
    upper left of the room, so it moves across the object as the camera yaws.
    """
    light_angle = math.radians(-40.0) - yaw
    light = np.array([math.sin(light_angle), 0.55, math.cos(light_angle)])
    light = light / np.linalg.norm(light)

    def lambert(nx, ny, nz):
        return np.clip(0.35 + 0.65 * (nx * light[0] + ny * light[1] + nz * light[2]), 0.2, 1.0)

    if shape == "sphere":
        r = 0.5
        dx, dy = u / r, (v - r) / r
        mask = dx**2 + dy**2 <= 1.0
        nz = np.sqrt(np.clip(1.0 - dx**2 - dy**2, 0.0, 1.0))
        return mask, lambert(dx, dy, nz)

    if shape in ("cylinder", "capsule"):
        half_w = 0.34 if shape == "cylinder" else 0.26
        nx = np.clip(u / half_w, -1.0, 1.0)
        nz = np.sqrt(np.clip(1.0 - nx**2, 0.0, 1.0))
        if shape == "cylinder":
            cap = 0.08  # visible top ellipse, seen slightly from above
            body = (np.abs(u) <= half_w) & (v >= 0.0) & (v <= 1.0 - cap)
            top = (nx**2 + ((v - (1.0 - cap)) / cap) ** 2) <= 1.0
            shade = np.where(top & ~body, 0.95, lambert(nx, 0.0, nz))
            return body | top, shade
        # capsule: a rectangle with a half disc on each end
        centre_low, centre_high = half_w, 1.0 - half_w
        vc = np.clip(v, centre_low, centre_high)
        dy = (v - vc) / half_w
        mask = (nx**2 + dy**2 <= 1.0) & (np.abs(u) <= half_w)
        nz = np.sqrt(np.clip(1.0 - nx**2 - dy**2, 0.0, 1.0))
        return mask, lambert(nx, dy, nz)

    if shape == "cube":
        # A unit box turned by yaw+45 deg, seen orthographically from the side:
        # two vertical faces, each as wide as its projection.
        side = 0.62
        a = yaw + math.radians(45.0)
        corners = [(math.cos(a + k * math.pi / 2), math.sin(a + k * math.pi / 2)) for k in range(4)]
        xs = [side / math.sqrt(2) * c[0] for c in corners]
        depth = [c[1] for c in corners]
        front = int(np.argmax(depth))  # the corner nearest to the camera
        left, right = (front - 1) % 4, (front + 1) % 4
        x_front, x_left, x_right = xs[front], xs[left], xs[right]
        in_height = (v >= 0.0) & (v <= 1.0)
        in_left = in_height & (u >= min(x_left, x_front)) & (u <= max(x_left, x_front))
        in_right = in_height & (u >= min(x_front, x_right)) & (u <= max(x_front, x_right))

        # Outward normals of the two visible faces.
        def face_normal(i, j):
            mx = (corners[i][0] + corners[j][0]) / 2
            mz = (corners[i][1] + corners[j][1]) / 2
            n = math.hypot(mx, mz)
            return mx / n, mz / n

        nl, nr = face_normal(left, front), face_normal(front, right)
        shade = np.where(in_left, lambert(nl[0], 0.0, nl[1]), lambert(nr[0], 0.0, nr[1]))
        return in_left | in_right, shade

    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def render(
    floor_hue: float,
    wall_hue: float,
    object_hue: float,
    scale: float,
    shape: str,
    orientation: float,
    size: int = 128,
) -> Image.Image:
    """Render one scene as an RGB PIL image of ``size`` x ``size`` pixels."""
    floor_hue = _check_range("floor_hue", floor_hue, *FACTOR_RANGES["floor_hue"])
    wall_hue = _check_range("wall_hue", wall_hue, *FACTOR_RANGES["wall_hue"])
    object_hue = _check_range("object_hue", object_hue, *FACTOR_RANGES["object_hue"])
    scale = _check_range("scale", scale, *FACTOR_RANGES["scale"])
    orientation = _check_range("orientation", orientation, *FACTOR_RANGES["orientation"])
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    if size < 16:
        raise ValueError(f"size must be at least 16, got {size}")

    n = size * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float32) + 0.5) / n
    x, y = np.meshgrid(coords, coords)  # y grows downwards
    yaw = math.radians(orientation)

    boundary = HORIZON + HORIZON_TILT * math.sin(yaw) * (x - 0.5)
    is_floor = y >= boundary
    image = np.where(is_floor[..., None], _rgb(floor_hue), _rgb(wall_hue))

    # Soft contact shadow, kept away from the image corners.
    height = OBJECT_HEIGHT * scale
    shadow = ((x - 0.5) / (0.42 * height)) ** 2 + ((y - BASE) / (0.07 * height)) ** 2
    shadow_strength = np.where(is_floor, 0.45 * np.exp(-1.5 * shadow), 0.0)
    image = image * (1.0 - shadow_strength[..., None])

    u = (x - 0.5) / height
    v = (BASE - y) / height
    mask, shade = _object_mask_and_shade(shape, u, v, yaw)
    image = np.where(mask[..., None], _rgb(object_hue, shade), image)

    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").resize((size, size), Image.Resampling.BOX)


def render_factors(factors: SceneFactors, size: int = 128) -> Image.Image:
    return render(**factors.as_dict(), size=size)


def sample_factors(rng: np.random.Generator) -> SceneFactors:
    """Draw one combination of canonical factor values."""
    return SceneFactors(
        floor_hue=HUES[rng.integers(len(HUES))],
        wall_hue=HUES[rng.integers(len(HUES))],
        object_hue=HUES[rng.integers(len(HUES))],
        scale=SCALES[rng.integers(len(SCALES))],
        shape=SHAPES[rng.integers(len(SHAPES))],
        orientation=ORIENTATIONS[rng.integers(len(ORIENTATIONS))],
    )


class ShapesDataset:
    """``n`` deterministic scenes: item ``i`` depends only on ``(seed, i)``.

    Yields ``(PIL.Image, SceneFactors)``. Rendering is lazy, so large ``n`` is cheap
    until used, and any item can be re-rendered without the others.
    """

    def __init__(self, n: int, seed: int = 0, size: int = 128):
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        self.n, self.seed, self.size = int(n), int(seed), int(size)

    def __len__(self) -> int:
        return self.n

    def factors(self, index: int) -> SceneFactors:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} scenes")
        return sample_factors(np.random.default_rng([self.seed, index]))

    def __getitem__(self, index: int) -> tuple[Image.Image, SceneFactors]:
        factors = self.factors(index)
        return render_factors(factors, self.size), factors

    def __iter__(self) -> Iterator[tuple[Image.Image, SceneFactors]]:
        for i in range(self.n):
            yield self[i]


# How many factors one training pair changes at once, and how often: most pairs teach one
# slider, the rest teach sliders moved together.
CHANGED_FACTORS = {1: 0.5, 2: 0.3, 3: 0.2}
# How often a continuous change asks for more than the range has left. Such a request stops
# at the range's end, as a slider does; an editor never shown one extrapolates into scenes
# no renderer made (a hue past the palette's end), and it dragged the wall/floor boundary
# with it in most of the scene editor's failed held-out edits.
OVERSHOOT_RATE = 0.25


def next_shape(shape: str) -> str:
    """The shape a scene becomes when its own shape is removed and no other is named."""
    return SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]


def edit_pair(
    source: SceneFactors, rng: np.random.Generator
) -> tuple[SceneFactors, dict[str, float]]:
    """A counterfactual of ``source`` for training an editor: the target scene, and the
    change that leads to it, in factor units (a continuous factor's difference; +1 or -1 for
    a shape, as a one-hot indicator).

    Continuous targets are uniform over the factor's range (so they are not canonical
    values, and no target is a canonical scene unless only the shape changed), except that
    ``OVERSHOOT_RATE`` of the changes ask for up to one range's width past one end: their
    target is that end, and the change is the request. The shape
    change is one of: a swap (+1 new, -1 old), an addition alone (+1 new), a removal
    alone (-1 old: the scene becomes ``next_shape``), or a request that cannot apply
    (removing an absent shape, adding the present one), which leaves the shape as it is.
    """
    counts = list(CHANGED_FACTORS)
    changed = rng.choice(
        FACTOR_NAMES, size=rng.choice(counts, p=list(CHANGED_FACTORS.values())), replace=False
    )
    target = source.as_dict()
    change: dict[str, float] = {}
    for name in map(str, changed):
        if name == "shape":
            old = source.shape
            others = [s for s in SHAPES if s != old]
            new = others[rng.integers(len(others))]
            kind = rng.choice(
                ["swap", "add", "remove", "absent", "present"], p=[0.4, 0.3, 0.2, 0.05, 0.05]
            )
            if kind == "swap":
                target["shape"], change[new], change[old] = new, 1.0, -1.0
            elif kind == "add":
                target["shape"], change[new] = new, 1.0
            elif kind == "remove":
                target["shape"], change[old] = next_shape(old), -1.0
            elif kind == "absent":
                change[new] = -1.0
            else:
                change[old] = 1.0
        else:
            low, high = FACTOR_RANGES[name]
            if rng.random() < OVERSHOOT_RATE:
                target[name] = end = float(high if rng.random() < 0.5 else low)
                past = rng.uniform(0.0, high - low)
                requested = end + past if end == high else end - past
            else:
                target[name] = requested = float(rng.uniform(low, high))
            change[name] = requested - getattr(source, name)
    return SceneFactors(**target), change
