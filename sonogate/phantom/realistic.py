"""The ``"realistic"`` rendering style of the ultrasound phantom (opt-in; ``"schematic"`` stays the default).

The schematic style (``hip_us._draw_scene`` + ``acoustics.form_image``) is geometrically exact but clean: thin
smooth bone arcs on uniform speckle, a thin soft-tissue layer. A model bundle was trained on it and the runtime
checks the low-level statistics of its input against those frames, so the schematic pixels must not change.
This module adds, on top of the same tissue maps and the same geometry (labels and landmarks are identical
for a given seed), what real infant-hip scans show:

* a bright subcutaneous band of dense, wavy, discontinuous fibrous streaks, with a bright superficial fascia
  at its floor and a near-field haze;
* gluteal muscles with an oblique striated texture and long, wavy, interrupted intermuscular septa that fan
  out from the ilium / rim region and drape over the joint (hypoechoic muscle bellies below them);
* thick bright bone echoes (ilium, bony roof, lower limb) with a broad glow, a reverberation copy, and a
  strong but grainy posterior shadow;
* a brighter, irregular capsule and perichondrium, more "starry sky" dots in the cartilaginous head, blotchy
  deep tissue;
* finer speckle (smaller resolution cell, less post-blur), a log-compression window closer to real carts,
  and per-sweep TGC banding (slider-to-slider gain steps along depth).

Everything here draws from per-hip generators seeded by ``HipParams.tissue_seed`` (so frames of a sweep share
their anatomy texture) and never from the frame's ``rng``: the frame generator is consumed exactly as in the
schematic style, so both styles give the same labels, landmarks and scatterer field for the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from sonogate.phantom.devices import ScannerDevice

STYLES: tuple[str, ...] = ("schematic", "realistic")
DEFAULT_STYLE = "schematic"
_GAIN_DB = -7.0  # the realistic chain relative to the preset: a little darker, a wider log window
_DR_DB = 6.0
_SPEC_SCALE = 0.4


def check_style(style: str) -> str:
    """``style`` if it is one of ``STYLES``; SonogateError otherwise."""
    from sonogate.errors import SonogateError

    if style not in STYLES:
        raise SonogateError(f"unknown phantom style {style!r} (use {' or '.join(STYLES)})")
    return style


@lru_cache(maxsize=32)
def realistic_device(device: ScannerDevice) -> ScannerDevice:
    """The preset as the realistic style images it: finer resolution cell and less post-blur (real carts show
    a finer grain than the schematic presets), a lower gain, more clutter in the shadows. The render scale (and so the internal grid and the scatterer field shape) is unchanged."""
    return replace(
        device,
        speckle_px=device.speckle_px * 0.62,
        axial_ratio=device.axial_ratio * 0.75,
        blur_px=device.blur_px * 0.55,
        gain_db=device.gain_db + _GAIN_DB,
        dynamic_range_db=device.dynamic_range_db + _DR_DB,
        haze=device.haze * 1.3,
        noise_floor=device.noise_floor * 1.3,
        smoothing=0.6 * device.smoothing,
    )


@dataclass(frozen=True)
class RealLook:
    """Per-sweep settings of the realistic style (fixed for a hip, like ``hip_us._Look``)."""

    band_mm: float  # thickness of the bright subcutaneous band
    band_gain: float  # its brightness
    septa: int  # number of long intermuscular septa
    fibre_slope: float  # rise of the muscle striation per pixel to the right
    tgc_db: tuple[float, ...]  # TGC slider offsets (dB) from skin to depth
    gain_db: float  # overall gain correction of the style


@lru_cache(maxsize=256)
def real_look(seed: int) -> RealLook:
    g = np.random.default_rng([seed, 0x2EA1])
    tgc = g.normal(0.0, 1.3, 8)
    if g.random() < 0.5:  # one slider visibly off: a horizontal band
        tgc[int(g.integers(1, 8))] += float(g.choice([-1.0, 1.0]) * g.uniform(2.0, 4.0))
    return RealLook(
        band_mm=float(g.uniform(2.5, 5.5)),
        band_gain=float(g.uniform(0.8, 1.3)),
        septa=int(g.integers(3, 7)),
        fibre_slope=float(g.uniform(-0.28, -0.08)),
        tgc_db=tuple(float(v) for v in tgc),
        gain_db=float(g.normal(0.0, 1.5)),
    )


def tgc_row_gain(look: RealLook, n: int) -> np.ndarray:
    """Per-row amplitude factor (n,) float32 of the TGC sliders: smooth between sliders, banded overall."""
    knots = np.asarray(look.tgc_db, dtype=np.float64)
    pos = np.linspace(0.0, n - 1.0, len(knots))
    rows = np.arange(n, dtype=np.float64)
    idx = np.clip(np.searchsorted(pos, rows) - 1, 0, len(knots) - 2)
    w = (rows - pos[idx]) / (pos[idx + 1] - pos[idx])
    w = 0.5 - 0.5 * np.cos(math.pi * np.clip(w, 0.0, 1.0))
    db = knots[idx] * (1 - w) + knots[idx + 1] * w
    return (10.0 ** (db / 20.0)).astype(np.float32)


@lru_cache(maxsize=64)
def _streak_field(seed: int, npx: int, salt: int, length: float, width: float, slope: float) -> np.ndarray:
    """Zero-mean unit-sd field (npx, npx) float32 of streaks ``length`` px long and ``width`` px thick,
    rising by ``slope`` px per px to the right (negative = rising). Cached per hip."""
    g = np.random.default_rng([seed, salt])
    cols = max(8, int(npx / max(2.0, 0.25 * length)))
    white = g.random((npx, cols), dtype=np.float32) - np.float32(0.5)
    coarse = cv2.GaussianBlur(
        white,
        (0, 0),
        sigmaX=max(0.6, 0.25 * length * cols / npx),
        sigmaY=max(0.4, width),
        borderType=cv2.BORDER_REFLECT,
    )
    field = cv2.resize(coarse, (npx, npx), interpolation=cv2.INTER_LINEAR)
    if slope != 0.0:
        shear = np.float32([[1.0, 0.0, 0.0], [slope, 1.0, -0.5 * slope * npx]])
        field = cv2.warpAffine(field, shear, (npx, npx), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    field -= field.mean()
    field *= np.float32(1.0 / max(float(field.std()), 1e-6))
    field.setflags(write=False)
    return field


@lru_cache(maxsize=64)
def _blob_field(seed: int, npx: int, cells: int = 20) -> np.ndarray:
    """Smooth zero-mean unit-sd blotches (npx, npx) float32, ``npx / cells`` pixels across."""
    g = np.random.default_rng([seed, 0xB10B])
    coarse = g.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (npx, npx), interpolation=cv2.INTER_CUBIC)
    field -= field.mean()
    field *= np.float32(1.0 / max(float(field.std()), 1e-6))
    field.setflags(write=False)
    return field


@lru_cache(maxsize=16)
def _tail_kernel(length: int) -> np.ndarray:
    """(length + 2, 1) float32 kernel that smears a pixel downward with an exponential decay; used with the
    anchor on its last row (a zero tap), pixel i receives from the ``length + 1`` rows above it."""
    taps = np.exp(-np.arange(1, length + 2, dtype=np.float32) / max(1.0, 0.35 * length)) * np.float32(0.4)
    kernel = np.ascontiguousarray(np.concatenate([taps[::-1], [np.float32(0.0)]])[:, None])
    kernel.setflags(write=False)
    return kernel


@lru_cache(maxsize=16)
def _hann(width: int) -> np.ndarray:
    kernel = np.hanning(2 * width + 1)
    kernel /= math.sqrt(float((kernel**2).sum()))
    kernel.setflags(write=False)
    return kernel


def _wobble(g: np.random.Generator, count: int, width: int) -> np.ndarray:
    """Zero-mean, roughly unit-sd noise (count,) correlated over about ``width`` samples."""
    return np.convolve(g.standard_normal(count + 2 * width), _hann(width), "valid")[:count]


def _soften_schematic(scene, npx: int, depth_mm: float, drape: np.ndarray, specular: np.ndarray) -> None:
    """Tone down what the schematic style overdraws: its evenly bright soft-tissue lines (the realistic
    layers replace them) and its large, bright "starry sky" dots (real ones are fine and sparse)."""
    k = npx / depth_mm
    c, r = scene.head_center * k, scene.head_radius * k
    rows = np.arange(npx, dtype=np.float32)[:, None]
    soft = rows < (drape.astype(np.float32) - np.float32(0.55 * r))[None, :]
    specular *= np.where(soft, np.float32(0.15), np.float32(1.0))
    head = np.zeros_like(specular)
    cv2.circle(head, (round(c[0] * 16), round(c[1] * 16)), round(0.96 * r * 16), 1.0, -1, cv2.LINE_8, 4)
    specular *= 1.0 - np.float32(0.7) * head


def add_realism(
    scene,
    params,
    npx: int,
    depth_mm: float,
    look,
    drape: np.ndarray,
    diffuse: np.ndarray,
    specular: np.ndarray,
    bone: np.ndarray,
) -> None:
    """Add the realistic-style tissue to the schematic maps in place (see module doc).

    ``scene``/``params``/``look`` are ``hip_us``'s scene, hip and per-sweep look, ``drape`` the per-column
    depth (px) of the top of the deep structures, the maps float32 (npx, npx)."""
    from sonogate.phantom import hip_us as h

    rl = real_look(params.tissue_seed)
    _soften_schematic(scene, npx, depth_mm, drape, specular)
    g = np.random.default_rng([params.tissue_seed, 0x5EA1])
    k = npx / depth_mm
    c, r = scene.head_center * k, scene.head_radius * k
    u, n = scene.u, scene.n
    rows = np.arange(npx, dtype=np.float32)
    # (thinner where the joint comes close to the skin; at least a pixel)
    band = max(1.0, min(rl.band_mm * k, max(0.5 * float(drape.min()), 1.5 * k)))
    xs = np.linspace(-0.05 * npx, 1.05 * npx, 40)
    xcol = np.clip(xs, 0, npx - 1).astype(int)

    # Subcutaneous band: dense fine streaks (fat lobules and fibrous septa), brightest in the dermis.
    fine = _streak_field(params.tissue_seed, npx, 1, 0.18 * npx, 0.45 * npx / 256.0 + 0.25, 0.0)
    edge = band + 0.6 * k * _wobble(g, npx, 12).astype(np.float32)  # floor of the band, per column
    inside = np.clip((edge[None, :] - rows[:, None]) / (0.6 * k) + 0.5, 0.0, 1.0)
    near = (0.55 + 0.45 * np.exp(-rows / (0.35 * band)))[:, None]
    tex = cv2.exp(fine * np.float32(0.9))
    diffuse += (np.float32(2.4 * rl.band_gain) * inside * near) * tex
    streaks = cv2.max(fine - np.float32(0.9), 0.0)
    specular += (np.float32(22.0 * rl.band_gain) * inside) * streaks
    # Superficial fascia at the floor of the band: a bright, wavy, interrupted line.
    pts = np.stack([xs, band + 0.5 * k * _wobble(g, len(xs), 4)], axis=1)
    gaps = np.where(_wobble(g, len(xs) - 1, 2) < -0.9, 0.15, 1.0)
    h._segments(specular, pts, 14.0 * gaps * np.exp(0.35 * g.standard_normal(len(xs) - 1)), max(1.0, 0.35 * k))

    # Gluteal muscles between the band and the joint: oblique striation (fascicles) in the bellies.
    fib = _streak_field(params.tissue_seed, npx, 2, 0.07 * npx, 0.5 * npx / 256.0 + 0.3, rl.fibre_slope)
    muscle = (rows[:, None] > edge[None, :]) & (rows[:, None] < drape[None, :].astype(np.float32) - 0.2 * r)
    diffuse *= cv2.exp(np.where(muscle, fib * np.float32(0.55), np.float32(0.0)).astype(np.float32))

    # Intermuscular septa (gluteus medius / minimus fasciae): long, wavy, interrupted lines that fan out from
    # the tissue just above the rim, run on cranially over the ilium and rise toward the skin caudally,
    # draping over the capsule; a hypoechoic muscle belly lies just below each.
    rim = scene.rim * k
    limit = drape[xcol] - 0.12 * r
    for j in range(rl.septa):
        pc = rim - g.uniform(0.3, 0.9) * r * n - g.uniform(-0.3, 1.0) * r * u
        y_end = band + 0.6 * k + g.uniform(0.05, 0.8) * max(pc[1] - band - 0.6 * k, 0.0)
        s_right = np.clip((xs - pc[0]) / max(xs[-1] - pc[0], 1.0), 0.0, 1.0)
        ys = np.where(
            xs > pc[0],
            pc[1] + (y_end - pc[1]) * s_right ** g.uniform(0.55, 1.1),
            pc[1] + g.uniform(-0.12, 0.06) * (xs - pc[0]),
        )
        ys = np.minimum(ys + 0.35 * k * _wobble(g, len(xs), 3), limit)
        ys = np.maximum(ys, band + 0.5 * k)
        a, b = int(g.integers(0, 8)), len(xs) - int(g.integers(0, 6))
        seg = np.stack([xs[a:b], ys[a:b]], axis=1)
        gaps = np.where(_wobble(g, len(seg) - 1, 2) < -0.8, 0.08, 1.0)
        values = g.uniform(6.0, 15.0) * gaps * np.exp(0.5 * _wobble(g, len(seg) - 1, 2))
        h._segments(specular, seg, values, max(1.0, 0.2 * k))
        h._polyline(diffuse, seg + np.array([0.0, 0.9 * k]), 0.07, max(1.0, 0.9 * k))
    # Perimysium: shorter, fainter lines between them, following the layers.
    deep = drape[xcol] - 0.25 * r
    t = (xs - xs[0]) / (xs[-1] - xs[0])
    for _ in range(int(g.integers(5, 11))):
        f_left, f_right = g.uniform(0.5, 1.0), g.uniform(0.05, 0.8)
        f = f_left + (f_right - f_left) * t
        ys = band + 0.8 * k + f * np.maximum(deep - band - 0.8 * k, 0.0) + 0.45 * k * _wobble(g, len(xs), 3)
        a = int(g.integers(0, len(xs) - 8))
        b = min(len(xs), a + int(g.integers(6, 20)))
        seg = np.stack([xs[a:b], ys[a:b]], axis=1)
        h._segments(specular, seg, g.uniform(2.0, 5.0) * np.exp(0.5 * _wobble(g, len(seg) - 1, 2)), max(1.0, 0.18 * k))

    # Capsule and perichondrium: thicker, brighter, irregular.
    lab = scene.labrum * k
    if scene.defect != "poor_capsule":
        top = c - 1.3 * r * n + 0.2 * r * u
        tb = np.linspace(0.0, 1.0, 18)[:, None]
        cap = (1 - tb) ** 2 * (lab - 0.15 * r * n) + 2 * (1 - tb) * tb * top + tb**2 * (c + 1.3 * r * u - 0.9 * r * n)
        cap = cap - (0.12 * r) * n[None, :] + (0.06 * r * _wobble(g, len(cap), 2))[:, None] * n[None, :]
        values = g.uniform(2.0, 5.5) * np.exp(0.55 * _wobble(g, len(cap) - 1, 1))
        h._segments(specular, cap, values, max(1.0, 0.4 * k))
        h._polyline(diffuse, cap, 0.25, max(1.0, 1.0 * k))

    # Cartilaginous head: more "starry sky" (vascular channels): tiny bright dots.
    count = int(g.integers(10, 40))
    rad = r * 0.92 * np.sqrt(g.random(count))
    th = g.uniform(0.0, 2.0 * math.pi, count)
    sx = np.clip((c[0] + rad * np.cos(th)).astype(int), 0, npx - 1)
    sy = np.clip((c[1] + rad * np.sin(th)).astype(int), 0, npx - 1)
    specular[sy, sx] += g.uniform(0.8, 2.5, count).astype(np.float32)

    # Bone: thick bright echoes with a broad glow and a reverberation copy, then a dense shadow band.
    roof = scene.roof * k
    if scene.defect == "no_lower_limb":
        roof = roof[: max(3, int(len(roof) * 0.55))]
    m_away = -(math.sin(math.radians(scene.alpha)) * u - math.cos(math.radians(scene.alpha)) * n)
    for pts, into, peak in ((scene.ilium * k, n, 20.0), (roof, m_away, 15.0)):
        pts = h._resample(pts, max(1.5, 0.6 * k))
        d = np.diff(pts, axis=0)
        cos_i = np.abs(d[:, 0]) / np.maximum(np.hypot(d[:, 0], d[:, 1]), 1e-9)
        vals = peak * (0.3 + 0.7 * cos_i**2) * np.exp(0.3 * _wobble(g, len(d), 4))
        h._segments(specular, pts + (0.35 * k) * into, vals, max(1.0, 0.9 * k))  # thick bright core
        h._segments(specular, pts + (0.2 * k) * into, 0.25 * vals, max(2.0, 2.2 * k))  # glow
        h._segments(specular, pts + (1.7 * k) * into, 0.08 * vals, max(1.0, 0.5 * k))  # reverberation
        h._polyline(bone, pts + (1.2 * k) * into, 1.5 / max(1.0, 0.7 * k), max(1.0, 0.7 * k))
    if scene.defect != "no_lower_limb":
        h._ellipse(specular, scene.lower_limb * k, (1.1 * k, 0.7 * k), math.degrees(math.atan2(u[1], u[0])), 8.0)

    # Pulse length and reverberation: every strong reflector trails off downward over about a millimetre, so
    # bone and fascia echoes are thick bands with a bright top edge rather than thin lines.
    # Echo strength varies along every interface (roughness, angle, partial volume): patchy, broken lines.
    specular *= cv2.exp(_blob_field(params.tissue_seed ^ 0x7A7, npx, 32) * np.float32(0.4)) * np.float32(_SPEC_SCALE)
    kernel = _tail_kernel(round(0.9 * k))
    specular += cv2.filter2D(specular, -1, kernel, anchor=(0, len(kernel) - 1), borderType=cv2.BORDER_CONSTANT)

    # Deep tissue below the joint: blotchy (other muscles, fat, the pelvis), a bit brighter in places.
    blobs = _blob_field(params.tissue_seed, npx)
    below = np.clip((rows[:, None] - drape[None, :].astype(np.float32)) / (0.8 * r), 0.0, 1.0)
    diffuse *= cv2.exp(below * blobs * np.float32(0.45))
    # Near-field haze: reverberation between skin and the first layers (incoherent, it speckles).
    diffuse += (np.float32(0.25) * np.exp(-rows / (0.25 * band)))[:, None]
