"""Procedurally generated shapes: the embedded default dataset.

In the spirit of dSprites (Matthey et al. 2017): every image shows one bright, white shape on a
black background, large enough to read at 28x28, drawn from five independent generating
factors (sampled uniformly, in this order, from one ``numpy.random.default_rng(seed)`` so
that a seed fixes the whole dataset):

=============  ======================================================================
factor         meaning
=============  ======================================================================
``class``      shape index into :data:`SHAPE_CLASSES` (square, ellipse, triangle, cross,
               heart), stored as a float
``x``          horizontal position of the shape's centre in ``[0, 1]``: 0 is the leftmost,
               1 the rightmost centre that keeps this shape inside the frame
``y``          vertical position in ``[0, 1]``, 0 at the top (image row order)
``scale``      size in ``[0.6, 1]``: the shape's circumscribed circle has radius
               ``scale * 0.35 * size`` pixels (5.9 to 9.8 px at 28x28)
``rotation``   counter-clockwise rotation in radians, ``[0, 2 pi)``; the shapes are
               symmetric (square and cross every pi/2, triangle every 2 pi/3, ellipse
               every pi), so only the heart identifies the full angle
=============  ======================================================================

Shapes are white: a fully covered pixel is 255, so dynamic binarization (the Bernoulli
likelihood's default) leaves a shape's inside intact and draws only its one-pixel outline.
Positions are relative to the range that keeps each shape strictly inside the image with a
clear one-pixel border, so a large shape moves less in pixels than a small one while the
factors stay independent.

Rendering is vectorised over a pixel-centre grid: each class has a signed distance
function (negative inside), and a pixel's coverage is ``clip(0.5 - distance_px, 0, 1)``.
That one-pixel soft edge anti-aliases the outline at native resolution, so the images are
8-bit grey levels (0 and 255 inside and outside, the levels between on the outline) without
the cost of supersampling.

References: L. Matthey, I. Higgins, D. Hassabis, A. Lerchner, *dSprites: Disentanglement
testing Sprites dataset*, 2017.
"""

from __future__ import annotations

import math

import numpy as np

SHAPE_CLASSES: tuple[str, ...] = ("square", "ellipse", "triangle", "cross", "heart")
FACTOR_NAMES: tuple[str, ...] = ("class", "x", "y", "scale", "rotation")

_SCALE_RANGE = (0.6, 1.0)
# Circumradius at scale 1, as a fraction of the image side, and the smallest scale: the
# smallest shape (5.9 px at 28 px) keeps its corners and arms in a VAE's reconstruction (at
# scale 0.5 the small triangles came back as blobs); the largest leaves 5 px to move in.
_RADIUS_FRACTION = 0.35
# Clear border (px) between the soft edge and the frame; the soft edge itself reaches
# 0.5 px beyond the outline.
_MARGIN_PX = 1.0
# Images rendered at once: bounds temporary memory (~ a dozen float32 (chunk, size, size)
# arrays) without giving up vectorisation.
_CHUNK = 2048

_SQRT2 = math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)
_ELLIPSE_AXES = (1.0, 0.6)
# Cross: arm half-length a and half-width b with the arm corner (a, b) on the unit circle.
_CROSS_HALF_WIDTH_RATIO = 0.35
_CROSS_A = 1.0 / math.sqrt(1.0 + _CROSS_HALF_WIDTH_RATIO**2)
_CROSS_B = _CROSS_HALF_WIDTH_RATIO * _CROSS_A
# Inigo Quilez's heart has its tip at the origin and lobes of radius sqrt(2)/4 centred at
# (+-0.25, 0.75); its smallest enclosing circle is centred at (0, c) with radius c, where
# c solves c = |(0.25, 0.75 - c)| + sqrt(2)/4.
_HEART_RADIUS = 0.5 / (1.5 - _SQRT2 / 2.0)


def _sdf_box(u: np.ndarray, v: np.ndarray, half_x: float, half_y: float) -> np.ndarray:
    qx = np.abs(u) - half_x
    qy = np.abs(v) - half_y
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return outside + inside


def _sdf_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    half = 1.0 / _SQRT2
    return _sdf_box(u, v, half, half)


def _sdf_ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # The exact ellipse distance needs a quartic solve; the first-order estimate
    # f / |grad f| is exact on the outline, which is all a one-pixel soft edge needs.
    a, b = _ELLIPSE_AXES
    k0 = np.hypot(u / a, v / b)
    k1 = np.hypot(u / (a * a), v / (b * b))
    safe = k1 > 1e-6
    return np.where(safe, k0 * (k0 - 1.0) / np.where(safe, k1, 1.0), -b)


def _sdf_triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral triangle, centroid at the origin, apex at (0, 1) (Quilez's formula with
    # half-side sqrt(3)/2, i.e. circumradius 1).
    half_side = _SQRT3 / 2.0
    x = np.abs(u) - half_side
    y = v + half_side / _SQRT3
    fold = x + _SQRT3 * y > 0.0
    x, y = (
        np.where(fold, (x - _SQRT3 * y) / 2.0, x),
        np.where(fold, (-_SQRT3 * x - y) / 2.0, y),
    )
    x = x - np.clip(x, -2.0 * half_side, 0.0)
    return -np.hypot(x, y) * np.sign(y)


def _sdf_cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # The minimum of two distances is the exact distance to the union outside the shape;
    # inside it can overstate the depth, which the coverage clip hides.
    return np.minimum(_sdf_box(u, v, _CROSS_A, _CROSS_B), _sdf_box(u, v, _CROSS_B, _CROSS_A))


def _sdf_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = _HEART_RADIUS
    x = np.abs(u) * r
    y = v * r + r  # move the enclosing circle's centre to the origin
    upper = x + y > 1.0
    d_lobe = np.hypot(x - 0.25, y - 0.75) - _SQRT2 / 4.0
    t = 0.5 * np.maximum(x + y, 0.0)
    d_low = np.sqrt(np.minimum(x * x + (y - 1.0) ** 2, (x - t) ** 2 + (y - t) ** 2))
    d_low = d_low * np.sign(x - y)
    return np.where(upper, d_lobe, d_low) / r


# Signed distance in units of the circumradius for unit-circumradius shapes, y axis up.
_SDFS = (_sdf_square, _sdf_ellipse, _sdf_triangle, _sdf_cross, _sdf_heart)
assert len(_SDFS) == len(SHAPE_CLASSES)


def _render(
    cls: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    radius: np.ndarray,
    rotation: np.ndarray,
    size: int,
) -> np.ndarray:
    """Render one chunk; all arguments are float32 arrays of shape (B,) in pixel units."""
    centres = np.arange(size, dtype=np.float32) + np.float32(0.5)  # (size,)
    dx = centres[None, None, :] - cx[:, None, None]  # (B, 1, size)
    # Image rows grow downward; flip so that rotation is counter-clockwise as seen.
    dy = cy[:, None, None] - centres[None, :, None]  # (B, size, 1)
    cos = np.cos(rotation)[:, None, None]
    sin = np.sin(rotation)[:, None, None]
    inv_r = (1.0 / radius)[:, None, None]
    # Rotate the grid by -rotation, which rotates the shape by +rotation.
    u = (cos * dx + sin * dy) * inv_r  # (B, size, size)
    v = (cos * dy - sin * dx) * inv_r  # (B, size, size)
    sdf = np.empty_like(u)  # (B, size, size), in circumradius units
    for k, fn in enumerate(_SDFS):
        mask = cls == k
        if mask.any():
            sdf[mask] = fn(u[mask], v[mask])
    dist_px = sdf * radius[:, None, None]
    coverage = np.clip(np.float32(0.5) - dist_px, 0.0, 1.0)
    return np.rint(coverage * np.float32(255.0)).astype(np.uint8)  # (B, size, size)


def make_shapes(
    n: int, seed: int | np.random.SeedSequence = 0, size: int = 28
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Generate ``n`` shape images with their generating factors.

    :param n: number of images (0 gives empty arrays).
    :param seed: seed (or :class:`numpy.random.SeedSequence`) for
        ``numpy.random.default_rng``; the same seed, ``n`` and ``size`` give identical output.
    :param size: image side in pixels.
    :return: ``(images, factors, factor_names)``: ``images`` is uint8 of shape
        ``(n, 1, size, size)`` with background 0; ``factors`` is float32 of shape
        ``(n, 5)`` with columns :data:`FACTOR_NAMES` (see the module docstring);
        ``factor_names`` is ``list(FACTOR_NAMES)``.

    .. warning:: ``size`` must be at least 8 so the smallest shape spans a few pixels.
    """
    n = int(n)
    size = int(size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels, got {size}")
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, len(SHAPE_CLASSES), size=n)
    x = rng.random(n)
    y = rng.random(n)
    scale = rng.uniform(*_SCALE_RANGE, size=n)
    rotation = rng.uniform(0.0, 2.0 * math.pi, size=n)
    factors = np.stack([cls, x, y, scale, rotation], axis=1).astype(np.float32)
    # Float32 rounding can land a draw from [0, 2 pi) exactly on 2 pi; keep the range open.
    factors[:, 4] = np.where(factors[:, 4] >= np.float32(2.0 * math.pi), 0.0, factors[:, 4])

    radius = scale * (_RADIUS_FRACTION * size)
    low = radius + 0.5 + _MARGIN_PX  # outline + soft edge + clear border
    span = size - 2.0 * low
    cx = (low + x * span).astype(np.float32)
    cy = (low + y * span).astype(np.float32)
    radius = radius.astype(np.float32)
    rot32 = factors[:, 4]

    images = np.empty((n, 1, size, size), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, start + _CHUNK)
        images[sl, 0] = _render(cls[sl], cx[sl], cy[sl], radius[sl], rot32[sl], size)
    return images, factors, list(FACTOR_NAMES)
