"""Parallel-ray casting of triangle meshes on a pixel grid, numpy only (no graph, no custom kernels).

``rasterize`` returns every (ray, triangle) crossing: the ray through pixel centre (i, j) travels along +depth;
its crossing with a triangle has that pixel's flat index ``i * shape[1] + j``, the depth there (mm), the face
index and ``facing`` = sign(n . ray direction) (+1 leaving a closed solid, -1 entering it). From these:
``first_hits`` (z-buffer: nearest crossing per ray, what an ultrasound beam reflects from), ``path_length``
(total length of solid a ray crosses, what a radiograph integrates) and parity fills (``shapes.voxelize``).

Pixel (i, j) has its centre at ``origin + pixel_mm * (i, j)`` in the (u, v) plane. (u, v, depth) must be a
right-handed frame for ``facing`` to be the sign of the outward normal along the ray.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# an irrational fraction of a pixel: keeps pixel centres off mesh edges that lie on grid lines (marching cubes)
_GRID_NUDGE = 1e-4 * np.sqrt(2.0)


@dataclass
class Hits:
    """Ray-triangle crossings: pixel (flat index), depth (mm along the ray), face (index), facing (+1 / -1)."""

    pixel: np.ndarray
    depth: np.ndarray
    face: np.ndarray
    facing: np.ndarray


def rasterize(uv: np.ndarray, depth: np.ndarray, faces: np.ndarray, origin, pixel_mm: float,
              shape: tuple[int, int]) -> Hits:
    """All crossings of the parallel rays of a (shape[0] x shape[1]) pixel grid with the triangles ``faces``.

    uv (V, 2) mm: vertex positions in the ray plane; depth (V,) mm: along the rays; faces (F, 3) int;
    origin (2,) mm: centre of pixel (0, 0); pixel_mm: pixel pitch.
    """
    pix = (np.asarray(uv, dtype=np.float64) - np.asarray(origin, dtype=np.float64)) / pixel_mm + _GRID_NUDGE
    tri = pix[faces]  # (F, 3, 2) in pixel units
    lo = np.maximum(np.ceil(tri.min(axis=1)).astype(np.int64), 0)
    hi = np.minimum(np.floor(tri.max(axis=1)).astype(np.int64), np.asarray(shape, dtype=np.int64) - 1)
    n_u = hi[:, 0] - lo[:, 0] + 1
    n_v = hi[:, 1] - lo[:, 1] + 1
    edge_ab = tri[:, 1] - tri[:, 0]
    edge_ac = tri[:, 2] - tri[:, 0]
    area2 = edge_ab[:, 0] * edge_ac[:, 1] - edge_ab[:, 1] * edge_ac[:, 0]
    valid = (n_u > 0) & (n_v > 0) & (np.abs(area2) > 1e-12)
    counts = np.where(valid, n_u * n_v, 0)
    face = np.repeat(np.arange(len(faces)), counts)
    if len(face) == 0:
        empty = np.zeros(0)
        return Hits(pixel=empty.astype(np.int64), depth=empty, face=empty.astype(np.int64), facing=empty)
    local = np.arange(len(face)) - np.repeat(np.cumsum(counts) - counts, counts)
    ii = lo[face, 0] + local // n_v[face]
    jj = lo[face, 1] + local % n_v[face]
    a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]
    qu, qv = ii.astype(np.float64), jj.astype(np.float64)
    w_a = ((b[:, 0] - qu) * (c[:, 1] - qv) - (b[:, 1] - qv) * (c[:, 0] - qu)) / area2[face]
    w_b = ((c[:, 0] - qu) * (a[:, 1] - qv) - (c[:, 1] - qv) * (a[:, 0] - qu)) / area2[face]
    w_c = 1.0 - w_a - w_b
    inside = (w_a >= 0) & (w_b >= 0) & (w_c >= 0)
    face, w_a, w_b, w_c = face[inside], w_a[inside], w_b[inside], w_c[inside]
    tri_depth = np.asarray(depth, dtype=np.float64)[faces[face]]
    hit_depth = w_a * tri_depth[:, 0] + w_b * tri_depth[:, 1] + w_c * tri_depth[:, 2]
    return Hits(pixel=ii[inside] * shape[1] + jj[inside], depth=hit_depth, face=face,
                facing=np.sign(area2[face]))


def first_hits(hits: Hits) -> np.ndarray:
    """Indices into ``hits`` of the nearest crossing (smallest depth) of every ray that crosses anything."""
    if len(hits.pixel) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((hits.depth, hits.pixel))
    starts = np.r_[0, np.flatnonzero(np.diff(hits.pixel[order])) + 1]
    return order[starts]


def path_length(hits: Hits, n_pixels: int) -> np.ndarray:
    """Length (mm) of closed solid each ray crosses, (n_pixels,): sum of exit depths minus entry depths."""
    return np.bincount(hits.pixel, weights=hits.facing * hits.depth, minlength=n_pixels)


def furthest_point_sample(points: np.ndarray, n_samples: int, start: int | None = None) -> np.ndarray:
    """Indices (n_samples,) of a furthest-point sample of ``points`` (N, 3), deterministic.

    Starts at ``start`` (default: the point furthest from the centroid, which does not depend on point order
    up to ties) and adds, each step, the point furthest from those chosen. Needs N >= n_samples.
    """
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) < n_samples:
        raise ValueError(f"furthest-point sampling needs at least {n_samples} points, got {len(pts)}")
    if start is None:
        start = int(np.argmax(((pts - pts.mean(axis=0)) ** 2).sum(axis=1)))
    # separate contiguous coordinate arrays: three 1-D passes per step are several times faster than (N, 3) sums
    x, y, z = (np.ascontiguousarray(pts[:, k]) for k in range(3))
    chosen = np.empty(n_samples, dtype=np.int64)
    chosen[0] = start
    nearest = (x - x[start]) ** 2 + (y - y[start]) ** 2 + (z - z[start]) ** 2
    scratch = np.empty_like(nearest)
    for k in range(1, n_samples):
        index = int(nearest.argmax())
        chosen[k] = index
        np.subtract(x, x[index], out=scratch)
        np.square(scratch, out=scratch)
        dist = scratch.copy()
        np.subtract(y, y[index], out=scratch)
        np.square(scratch, out=scratch)
        dist += scratch
        np.subtract(z, z[index], out=scratch)
        np.square(scratch, out=scratch)
        dist += scratch
        np.minimum(nearest, dist, out=nearest)
    return chosen
