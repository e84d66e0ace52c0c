"""Procedural, pre-filtered surface textures for the synthetic scene generator.

Every texture is a function of 2D surface coordinates ``(u, v)`` in metres and of the pixel footprint ``w``
(metres on the surface covered by one pixel). Patterns are box-filtered analytically over that footprint
(square waves and pulses exactly, noise octaves faded out above Nyquist), which anti-aliases the
high-frequency content for the price of one sample per pixel. The albedo depends only on the surface point
(and slightly on the footprint), so the shading stays multi-view consistent.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

# kind: (range of the pattern period in metres, range of its parameter; see ``Material.param``)
_RANGES = {
    "checker": ((0.1, 0.6), (0.0, 0.0)),
    "stripes": ((0.05, 0.4), (0.2, 0.7)),  # duty cycle
    "noise": ((0.08, 0.6), (1.5, 3.0)),  # contrast
    "bricks": ((0.2, 0.6), (0.03, 0.08)),  # mortar width, in brick lengths
    "dots": ((0.06, 0.3), (0.15, 0.4)),  # dot radius, in cells
    "gradient": ((1.0, 4.0), (0.1, 0.3)),  # blotch strength
    "marble": ((0.1, 0.5), (1.0, 3.0)),  # vein warp
}
KINDS = tuple(_RANGES)
_TABLE_BITS = 8  # value-noise lattice repeats every 256 cells
_ROW = (1 << _TABLE_BITS) + 1  # the table is stored with one wrapped extra row and column


@dataclass(frozen=True)
class Material:
    kind: str
    scale: float  # metres per pattern period
    angle: float  # rotation of the pattern on the surface (radians)
    offset: tuple[float, float]  # pattern phase, in periods
    colors: np.ndarray  # (3, 3) linear RGB
    param: float  # kind-specific: stripe duty, mortar width, dot radius, brick height...
    grain: float  # amplitude of the fine world-scale noise multiplied into every texture
    grain_scale: float  # metres per grain noise cell


def random_color(rng: np.random.Generator, value: tuple[float, float] = (0.25, 0.95)) -> np.ndarray:
    h, s, v = rng.uniform(0, 1), rng.uniform(0.1, 0.7), rng.uniform(*value)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) ** 2.2  # sRGB-ish -> linear


def random_material(rng: np.random.Generator, kinds: tuple[str, ...] = KINDS) -> Material:
    kind = str(rng.choice(kinds))
    dark, light = (0.15, 0.55), (0.5, 0.98)
    c0, c1 = random_color(rng, dark), random_color(rng, light)  # contrast guaranteed by the value ranges
    if rng.uniform() < 0.5:
        c0, c1 = c1, c0
    colors = np.stack([c0, c1, random_color(rng)])
    scale, param = _RANGES[kind]
    return Material(
        kind=kind,
        scale=float(rng.uniform(*scale)),
        angle=float(rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)])),
        offset=(float(rng.uniform(0, 100)), float(rng.uniform(0, 100))),
        colors=colors,
        param=float(rng.uniform(*param)),
        grain=float(rng.uniform(0.15, 0.4)),
        grain_scale=float(rng.uniform(0.008, 0.04)),
    )


def noise_table(rng: np.random.Generator) -> np.ndarray:
    """Random lattice values, flattened, with row/column 256 repeating 0 so that cell corners are base + offsets."""
    n = 1 << _TABLE_BITS
    table = rng.uniform(0, 1, (n, n)).astype(np.float32)
    return np.pad(table, ((0, 1), (0, 1)), mode="wrap").reshape(-1)


# --------------------------------------------------------------------------------------------------
# Filtered primitives (x in pattern periods, w = footprint in pattern periods)


def _pulse_integral(x: np.ndarray, duty: float) -> np.ndarray:
    fl = np.floor(x)
    return fl * duty + np.minimum(x - fl, duty)


def filtered_pulse(x: np.ndarray, w: np.ndarray, duty: float) -> np.ndarray:
    """Box-filtered indicator of ``frac(x) < duty`` over a window of width ``w``."""
    w = np.maximum(w, 1e-3)
    return (_pulse_integral(x + 0.5 * w, duty) - _pulse_integral(x - 0.5 * w, duty)) / w


def _cell(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    mask = (1 << _TABLE_BITS) - 1
    return (iy & mask) * _ROW + (ix & mask)


def _lattice(table: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    return table.take(_cell(ix, iy))


def value_noise(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1] with unit lattice spacing."""
    fx, fy = np.floor(x), np.floor(y)
    base = _cell(fx.astype(np.int32), fy.astype(np.int32))
    sx, sy = x - fx, y - fy
    sx = sx * sx * (3 - 2 * sx)
    sy = sy * sy * (3 - 2 * sy)
    a, b = table.take(base), table.take(base + 1)
    c, d = table.take(base + _ROW), table.take(base + (_ROW + 1))
    top = a + (b - a) * sx
    return top + ((c + (d - c) * sx) - top) * sy


def fbm(table: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, octaves: int) -> np.ndarray:
    """Fractal noise in [0, 1]; octaves finer than about two pixels fade to their mean (0.5)."""
    total, norm, freq, amp = 0.0, 0.0, 1.0, 1.0
    for k in range(octaves):
        fade = np.minimum(np.maximum(2.0 - (4.0 * freq) * w, 0.0), 1.0)
        if not fade.any():
            break  # every further octave is finer still
        n = value_noise(table, x * freq + 17.3 * k, y * freq + 31.7 * k)
        total = total + amp * (0.5 + (n - 0.5) * fade)
        norm += amp
        freq, amp = freq * 2.0, amp * 0.5
    rest = sum(0.5**k for k in range(octaves)) - norm  # skipped octaves contribute their mean
    return (total + 0.5 * rest) / (norm + rest) if norm else np.full_like(x, 0.5)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Blend colours channel-first: a, b are (3,) or (3, N), t is (N,); returns (3, N)."""
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    return a + (b - a) * t


# --------------------------------------------------------------------------------------------------
# Materials


def albedo(mat: Material, table: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Linear RGB albedo, channel-first (3, N), of ``mat`` at surface coordinates ``u, v`` (metres) for a
    pixel footprint ``w`` (metres)."""
    ca, sa = np.float32(np.cos(mat.angle)), np.float32(np.sin(mat.angle))
    s = np.float32(1.0 / mat.scale)
    x = (ca * u - sa * v) * s + np.float32(mat.offset[0])
    y = (sa * u + ca * v) * s + np.float32(mat.offset[1])
    wp = w * s
    c0, c1, c2 = (c.astype(np.float32) for c in mat.colors)
    rgb = _PATTERNS[mat.kind](mat, table, x, y, wp, c0, c1, c2)
    g = np.float32(1.0 / mat.grain_scale)
    grain = fbm(table, u * g + 91.1, v * g + 13.7, w * g, 2)
    return rgb * (1.0 + np.float32(2.0 * mat.grain) * (grain - 0.5))


def _checker(mat, table, x, y, w, c0, c1, c2):
    a = 2.0 * filtered_pulse(x, w, 0.5) - 1.0
    b = 2.0 * filtered_pulse(y, w, 0.5) - 1.0
    return _mix(c0, c1, 0.5 + 0.5 * a * b)


def _stripes(mat, table, x, y, w, c0, c1, c2):
    rgb = _mix(c0, c1, filtered_pulse(x, w, mat.param))
    return _mix(rgb, c2, filtered_pulse(x + 0.37, w, 0.06))  # a thin accent line per period


def _noise(mat, table, x, y, w, c0, c1, c2):
    n = np.clip((fbm(table, x, y, w, 6) - 0.5) * mat.param + 0.5, 0.0, 1.0)
    return np.where(n < 0.5, _mix(c0, c1, 2 * n), _mix(c1, c2, 2 * n - 1))


def _bricks(mat, table, x, y, w, c0, c1, c2):
    h = 0.45  # brick height in brick lengths
    yr = y / h
    row = np.floor(yr)
    xs = x + 0.5 * (row.astype(np.int32) & 1)
    mortar = 1.0 - (1.0 - filtered_pulse(xs, w, mat.param)) * (1.0 - filtered_pulse(yr, w / h, mat.param / h))
    jitter = _lattice(table, np.floor(xs).astype(np.int32), row.astype(np.int32))
    brick = _mix(c0, c1, 0.6 * jitter)
    return _mix(brick, c2, mortar)


def _dots(mat, table, x, y, w, c0, c1, c2):
    row = np.floor(y)
    xs = x + 0.5 * (row.astype(np.int32) & 1)
    fx, fy = xs - np.floor(xs) - 0.5, y - row - 0.5
    d = np.sqrt(fx * fx + fy * fy)
    r = mat.param
    wc = np.maximum(w, 1e-3)
    cover = np.clip((r - d) / wc + 0.5, 0.0, 1.0)
    far = np.clip(2.0 * w - 0.5, 0.0, 1.0)  # footprint of a whole cell: use the mean coverage
    cover = cover + (np.float32(np.pi * r * r) - cover) * far
    dot = _mix(c1, c2, _lattice(table, np.floor(xs).astype(np.int32), row.astype(np.int32)))
    return _mix(c0, dot, cover)


def _gradient(mat, table, x, y, w, c0, c1, c2):
    ramp = np.abs((x * 0.5) % 2.0 - 1.0)  # slow triangle wave across the surface
    stains = fbm(table, x * 12.0, y * 12.0, w * 12.0, 5)  # blotches on top of the slow ramp
    rgb = _mix(c0, c1, ramp)
    return _mix(rgb, c2, np.clip((stains - 0.5) * 8.0 * mat.param + 0.3, 0.0, 1.0) * 0.7)


def _marble(mat, table, x, y, w, c0, c1, c2):
    warp = fbm(table, x * 0.7, y * 0.7, w * 0.7, 5)
    band = 0.5 + 0.5 * np.sin(2.0 * np.pi * (x + mat.param * warp))
    fade = np.clip(2.0 - 4.0 * w, 0.0, 1.0)  # bands finer than two pixels average out
    band = 0.5 + (band - 0.5) * fade
    rgb = _mix(c0, c1, band * band)
    return _mix(rgb, c2, np.clip(warp - 0.6, 0.0, 1.0) * 2.0)


_PATTERNS = {
    "checker": _checker,
    "stripes": _stripes,
    "noise": _noise,
    "bricks": _bricks,
    "dots": _dots,
    "gradient": _gradient,
    "marble": _marble,
}
