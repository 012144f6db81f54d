"""The ``"realistic"`` rendering style of the ultrasound phantom (opt-in; ``"schematic"`` stays the default).

The schematic style (``hip_us._draw_scene`` + ``acoustics.form_image``) is geometrically exact but reads as
drawn: thin smooth bone arcs that hook round under the head like a bowl, a crescent "smile" for the ischium,
grainy uniform speckle, a thin soft-tissue layer. A model bundle was trained on it and the runtime checks the
low-level statistics of its input against those frames, so the schematic pixels must not change.

This module paints the same scene (same geometry, so labels are identical for a given seed) the way the real
SPJ standard planes in ``../shared/data`` look (``draw_scene``), framed as sonographers frame the joint
(``realistic_view``: zoomed so the head's radius is about a fifth of the width, the rim a little below
mid-depth; landmarks are returned for that framing), with the bony outline below the joint (trochanter,
ischium) varied per hip (``vary_anatomy``):

* a bright subcutaneous band of dense fine streaks with a bright superficial fascia at its floor;
* muscle with oblique fibre texture, crossed by thin, tapered fasciae of uneven spacing, each on its own
  oblique, gently bowed course (deep ones hug the joint), and many short bright perimysium dashes;
* the ilium and the femoral neck / greater trochanter as bright surfaces over grey bone blocks (the infant's
  thin bone passes some sound), the corner between ilium and roof rounded (``_round_rim``), the bony roof
  from the rim down to the lower limb and no further; echo thickness and block greys vary per hip;
* a dark cartilaginous head with many small "starry sky" flecks, the perichondrium over the cartilage
  roof, the echogenic labrum and a capsule that arches over the head onto the femoral neck;
* the ischium as a bright cancellous ball in a cloud of triradiate cartilage, softly shadowed;
* echo strength varying along every interface and a short pulse-length tail under strong reflectors.

The imaging chain is the device's with three compounded speckle looks (``REALISTIC_LOOKS``), a finer axial
cell, less post-blur, a display gamma that keeps muscle dark and reflectors saturated (``_GAMMA``), a small
reject, pixel-level grain added last (``REALISTIC_GRAIN``) and per-sweep TGC banding (``tgc_row_gain``).

Everything here draws from per-hip generators seeded by ``HipParams.tissue_seed`` (so frames of a sweep share
their anatomy texture) and never from the frame's ``rng``: the frame generator is consumed exactly as in the
schematic style, so both styles give the same labels and scatterer field for the same seed (the landmarks
differ only by the framing).
How close it gets, measured: ``benchmarks/phantom_realism.py`` and ``docs/phantom.md``.
Shared drawing and noise helpers: ``sonogate.phantom.raster``; the frame's geometry: ``hip_scene.HipScene``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

from sonogate.phantom import raster
from sonogate.phantom.devices import ScannerDevice
from sonogate.phantom.hip_scene import HipScene, drape_profile

STYLES: tuple[str, ...] = ("schematic", "realistic")
DEFAULT_STYLE = "schematic"
_GAIN_DB = 2.5
_GAMMA = 1.3  # an S-ish grey map: dark muscle, saturated reflectors, few mid greys (as on real carts)
_DR_DB = 6.0
_SPEC_SCALE = 0.4
_REJECT = 2.0  # grey levels shown black: real carts' reject keeps shadows and the head truly black
_WHITE = 234.0  # the grey map's top: the 26 SPJ standard planes peak at 213-241 (median 232), never 255
REALISTIC_GRAIN = 10.0  # grey levels of pixel-level grain after log compression (real captures have it)
REALISTIC_LOOKS = 3  # compounded speckle looks (real carts compound steered frames: smoother grain)


def check_style(style: str) -> str:
    """``style`` if it is one of ``STYLES``; SonogateError otherwise."""
    from sonogate.errors import SonogateError

    if style not in STYLES:
        raise SonogateError(f"unknown phantom style {style!r} (use {' or '.join(STYLES)})")
    return style


@lru_cache(maxsize=32)
def realistic_device(device: ScannerDevice) -> ScannerDevice:
    """The preset as the realistic style images it: half the preset's departure from a typical cart, then a
    finer resolution cell and less post-blur (real carts show a finer grain than the schematic presets), a
    wider log window, less haze. The render scale (and so the internal grid and the scatterer field shape) is
    unchanged."""
    # Half of each preset's departure from a typical cart is kept: the presets still differ (a shift to
    # measure), but the coarse, hazy, high-gain extremes that no real SPJ frame shows are pulled in.
    halfway = lambda value, typical: typical + 0.5 * (value - typical)
    return replace(
        device,
        speckle_px=halfway(device.speckle_px, 2.6) * 0.85,
        axial_ratio=halfway(device.axial_ratio, 0.33) * 0.75,
        blur_px=halfway(device.blur_px, 1.0) * 0.4,
        gain_db=halfway(device.gain_db, 0.0) + _GAIN_DB,
        dynamic_range_db=halfway(device.dynamic_range_db, 60.0) + _DR_DB,
        haze=halfway(device.haze, 0.0) * 0.3,
        noise_floor=device.noise_floor * 0.5,
        smoothing=min(0.5, device.smoothing),
        gamma=device.gamma * _GAMMA,
        reject=_REJECT,
        white=_WHITE,
    )


@dataclass(frozen=True)
class RealLook:
    """Per-sweep settings of the realistic style (fixed for a hip, like ``hip_us._Look``)."""

    band_mm: float  # thickness of the bright subcutaneous band
    band_gain: float  # its brightness
    septa: int  # number of long intermuscular septa
    muscle_gain: float  # muscle backscatter relative to nominal
    fibre_slope: float  # rise of the muscle striation per pixel to the right
    tgc_db: tuple[float, ...]  # TGC slider offsets (dB) from skin to depth
    gain_db: float  # overall gain correction of the style
    ilium_thickness: float  # width of the iliac and roof echoes relative to nominal
    fibre_contrast: float  # log-amplitude sd of the muscle's fibre texture
    deep_db: float  # echo of the tissue below the joint relative to the muscle above it
    block_levels: tuple[float, float]  # grey of the bone blocks under the ilium and the femoral neck (x muscle)
    head_flecks: int  # bright "starry sky" flecks in the cartilaginous head


@lru_cache(maxsize=256)
def real_look(seed: int) -> RealLook:
    g = np.random.default_rng([seed, 0x2EA1])
    tgc = g.normal(0.0, 1.3, 8)
    if g.random() < 0.5:  # one slider visibly off: a horizontal band
        tgc[int(g.integers(1, 8))] += float(g.choice([-1.0, 1.0]) * g.uniform(2.0, 4.0))
    return RealLook(
        band_mm=float(g.uniform(4.5, 9.0)),
        band_gain=float(g.uniform(0.6, 1.05)),
        septa=int(g.integers(4, 10)),
        muscle_gain=float(g.uniform(0.6, 1.8)),
        fibre_slope=float(g.uniform(-0.45, 0.1)),
        tgc_db=tuple(float(v) for v in tgc),
        gain_db=float(g.normal(0.0, 3.0)),
        ilium_thickness=float(g.uniform(0.7, 1.4)),
        fibre_contrast=float(g.uniform(0.25, 0.6)),
        deep_db=float(g.uniform(-8.0, 0.0)),
        block_levels=(float(g.uniform(0.4, 1.9)), float(g.uniform(0.1, 0.9))),
        head_flecks=int(g.integers(6, 30)),
    )


def realistic_view(params, depth_mm: float) -> tuple[float, float, float]:
    """Imaged field (left_mm, top_mm, width_mm) of the realistic style, in the acquisition frame of
    ``hip_us`` (x along the array, y depth), for hip ``params`` on a device imaging ``depth_mm``.

    Sonographers zoom and centre on the joint: on the real SPJ standard planes the femoral head's radius is
    about a fifth of the picture width, the bony rim sits a quarter of the width from the left edge and a
    little below mid-depth, and the tissue below the head reaches the lower edge. The schematic style images the device's
    whole field, which leaves the joint small and high with an empty lower third. Fixed per hip (a sweep
    keeps its framing; probe motion still moves the anatomy in the picture).
    """
    g = np.random.default_rng([params.tissue_seed, 0xF1E1D])
    width = float(np.clip(params.head_radius_mm / g.uniform(0.16, 0.24), 0.6 * depth_mm, depth_mm))
    left = params.rim_x_frac * depth_mm - float(g.uniform(0.18, 0.38)) * width
    top = params.rim_depth_mm - float(g.uniform(0.44, 0.62)) * width
    return left, top, width


def vary_anatomy(scene: HipScene, params, width_mm: float) -> HipScene:
    """``hip_us``'s ``scene`` with this hip's own bony outline below the joint: the femoral metaphysis
    (greater trochanter) 0.95-1.4 x the nominal size, its neck turned by -12..+10 deg, its cartilage gap to the
    head varied, and the ischium moved along (-0.3..+0.25 r) and across (1.15-1.4 r: at the head's foot)
    the ilium. The schematic style places these from the
    head alone, so every hip shares one silhouette (the blind readers' main cue); real hips differ. Nothing
    that alpha, beta or coverage depend on moves, and the returned landmarks follow the moved structures; the
    ischium's landmark stays inside the ``width_mm`` square picture (it is raised if it would not).
    Drawn from the per-hip generator (fixed for a sweep), never from the frame's ``rng``."""
    g = np.random.default_rng([params.tissue_seed, 0xA7A7])
    r, c, u, n = scene.head_radius, scene.head_center, scene.u, scene.n
    meta_r = scene.metaphysis_radius * float(g.uniform(0.95, 1.4))
    neck_dir = raster.rotate(u, float(g.uniform(-12.0, 10.0)))
    overlap = float(g.uniform(0.1, 0.3))  # how far the metaphysis reaches under the head (cartilage gap)
    along, down = float(g.uniform(-0.3, 0.25)), float(g.uniform(1.15, 1.4))
    # Landmark = ischium - 0.3 r n; keep its depth <= 97 % of the picture (n points deep).
    room = (0.97 * width_mm - c[1] - along * r * u[1]) / (r * max(n[1], 1e-6)) + 0.3
    down = max(1.1, min(down, room))
    return replace(
        scene,
        metaphysis_radius=meta_r,
        metaphysis_center=c + (r + meta_r - overlap * r) * neck_dir,
        ischium=c + along * r * u + down * r * n,
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


def draw_scene(scene: HipScene, params, npx: int, depth_mm: float, look) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue maps (diffuse, specular, bone) float32 (npx, npx) of the realistic style for ``hip_us``'s
    ``scene`` (geometry in mm, as acquired), ``params`` (the hip) and ``look`` (per-sweep operator look)."""
    rl = real_look(params.tissue_seed)
    g = np.random.default_rng([params.tissue_seed, 0x5EA2])
    k = npx / depth_mm
    mm = lambda v: max(1.0, v * k)
    c, r = scene.head_center * k, scene.head_radius * k
    u, n = scene.u, scene.n
    rows = np.arange(npx, dtype=np.float32)[:, None]
    drape = drape_profile(scene, k, npx)
    band = float(np.clip(rl.band_mm * k, 2.0, 0.45 * float(drape.min())))
    xs = np.linspace(-0.05 * npx, 1.05 * npx, 48)
    xcol = np.clip(xs, 0, npx - 1).astype(int)
    specular = np.zeros((npx, npx), np.float32)
    bone = np.zeros((npx, npx), np.float32)
    shade = np.zeros((npx, npx), np.float32)

    # Soft tissue: a bright subcutaneous band (dense fine streaks), then muscle (dim, faintly striated along
    # the fibres), blotchy deeper tissue; levels are backscatter amplitudes (1 = bright tissue).
    floor = (band + 0.4 * k * raster.smooth_noise(g, npx, 40)).astype(np.float32)[None, :]
    in_band = np.clip((floor - rows) / (0.5 * k) + 0.5, 0.0, 1.0)
    below_drape = np.clip((rows - drape.astype(np.float32)[None, :]) / (0.6 * r), 0.0, 1.0)
    fine = _streak_field(params.tissue_seed, npx, 1, 0.25 * npx, 0.35 * npx / 256.0 + 0.2, 0.0)
    fibres = _streak_field(params.tissue_seed, npx, 2, 0.12 * npx, 0.45 * npx / 256.0 + 0.25, rl.fibre_slope)
    blobs = _blob_field(params.tissue_seed, npx, 14)
    muscle_level = np.float32(0.11 * rl.muscle_gain)
    diffuse = cv2.exp(fibres * np.float32(rl.fibre_contrast) + blobs * np.float32(0.2)) * muscle_level
    diffuse += (in_band * np.float32(0.45 * rl.band_gain)) * cv2.exp(fine * np.float32(1.4))
    diffuse *= cv2.exp(below_drape * (blobs * np.float32(0.35) + np.float32(rl.deep_db / 8.686)))

    # Skin entry line and the superficial fascia at the floor of the band.
    if g.random() < 0.6:  # the probe face's echo: uneven, not on every scanner
        _wavy_line(specular, shade, g, xs, np.full(len(xs), 0.25 * k), g.uniform(1.0, 3.0), mm(0.25), 0.0)
    floor_line = band + 0.3 * k * raster.smooth_noise(g, len(xs), 5)
    _wavy_line(specular, shade, g, xs, floor_line, 6.0 * rl.band_gain, mm(0.25), 0.0)
    # Fasciae between the muscles: long, gently wavy lines following the layers, which drape over the joint
    # and converge on the ilium; a few fainter perimysium lines between them.
    top_line = band + 0.6 * k
    deep = drape[xcol] - 0.15 * r
    # Superficial layers run nearly straight; only the deep ones hug the joint's outline.
    deep_flat = np.polyval(np.polyfit(xs, deep, 1), xs)
    spacing = g.uniform(0.3, 1.7, rl.septa + 1)  # uneven layers (muscles differ in thickness)
    # Denser near the skin: the superficial muscles' fasciae and perimysium crowd the upper third.
    fractions = 0.04 + 0.93 * (np.cumsum(spacing)[:-1] / spacing.sum()) ** 1.5
    base_tilt = g.uniform(-0.5, 0.2)
    along = xs / npx - 0.5
    shares = []
    for f in fractions:
        # Each muscle boundary runs its own oblique, gently bowed course; neighbours are not parallel...
        tilt, bow = base_tilt + g.uniform(-0.3, 0.3), g.uniform(-0.5, 0.5)
        shares.append(np.clip(f + tilt * along + bow * (along**2 - 1.0 / 12.0), 0.02, 0.99))
    # ...but they converge and diverge without crossing (layers stay layers).
    shares = np.minimum(np.maximum.accumulate(np.asarray(shares) + 0.015 * np.arange(len(shares))[:, None]), 0.99)
    for f, share in zip(fractions, shares):
        hug = deep_flat + share**1.3 * (deep - deep_flat)
        ys = top_line + share * np.maximum(hug - top_line, 0.0) + 0.12 * k * raster.smooth_noise(g, len(xs), 4)
        ys = ys + 0.15 * k * raster.smooth_noise(g, len(xs), 14)  # long, gentle undulation
        a = int(g.integers(0, 6)) if g.random() < 0.5 else int(g.integers(0, len(xs) // 2))
        b = len(xs) - (int(g.integers(0, 6)) if g.random() < 0.6 else int(g.integers(0, len(xs) // 3)))
        # Superficial fasciae are the brightest (less tissue above them, square to the beam).
        # Hazy or crisp: muscle boundaries differ (not one pen stroke for all).
        _wavy_line(specular, shade, g, xs[a:b], ys[a:b], g.uniform(5.0, 16.0) * (1.6 - f), 1.0, 0.5,
                   haze=g.uniform(0.03, 0.09))
    for _ in range(int(g.integers(4, 20))):  # short bright dashes: perimysium, fibre bundles
        f = g.uniform(0.0, 1.0) ** 1.3
        ys = top_line + f * np.maximum(deep - top_line, 0.0) + 0.15 * k * raster.smooth_noise(g, len(xs), 10)
        a = int(g.integers(0, len(xs) - 4))
        b = min(len(xs), a + int(g.integers(3, 10)))
        _wavy_line(specular, shade, g, xs[a:b], ys[a:b], g.uniform(1.5, 5.0), 1.0, 0.0)
    # Dense fine septa in the subcutaneous band.
    for _ in range(int(g.integers(12, 24))):
        y0 = g.uniform(0.15, 0.95) * band
        a = int(g.integers(0, len(xs) - 8))
        b = min(len(xs), a + int(g.integers(6, 40)))
        ys = y0 + 0.2 * k * raster.smooth_noise(g, b - a, 8)
        _wavy_line(specular, shade, g, xs[a:b], ys, g.uniform(6.0, 16.0) * rl.band_gain, 1.0, 0.0)

    defect = scene.defect
    roof = scene.roof * k
    lab = scene.labrum * k
    low = scene.lower_limb * k
    rim = scene.rim * k
    mc, mr = scene.metaphysis_center * k, scene.metaphysis_radius * k
    center = tuple(round(v * 16) for v in c)

    # Joint: hypoechoic cartilage (acetabular roof, head, trochanter), the head with sparse bright specks.
    cart = np.vstack([roof[::-1], lab[None, :], c + 1.02 * r * (lab - c) / max(1e-6, float(np.hypot(*(lab - c)))),
                      c, low[None, :]])
    raster.fill(diffuse, cart, 0.05)
    raster.ellipse(diffuse, c + 1.3 * r * u - 0.3 * r * n, (1.0 * r, 0.7 * r),
                   math.degrees(math.atan2(u[1], u[0])), 0.06)
    cv2.circle(diffuse, center, round(r * 16), 0.075, -1, cv2.LINE_8, 4)
    # "Starry sky": flecks (vascular sinusoids) bunched in a few clusters, not sprinkled evenly; a few of
    # them short curved strands.
    count = rl.head_flecks
    hub_angle = g.uniform(0.0, 2.0 * math.pi, 4)
    hubs = c + (0.6 * r * np.sqrt(g.random(4)))[:, None] * np.stack([np.cos(hub_angle), np.sin(hub_angle)], axis=1)
    near = hubs[g.integers(0, 4, count)] + g.normal(0.0, 0.3 * r, (count, 2))
    rad = r * 0.92 * np.sqrt(g.random(count))
    th = g.uniform(0.0, 2.0 * math.pi, count)
    spread = np.stack([c[0] + rad * np.cos(th), c[1] + rad * np.sin(th)], axis=1)
    flecks = np.where((g.random(count) < 0.55)[:, None], near, spread)
    inside = np.hypot(*(flecks - c).T) < 0.95 * r
    for (x, y), v, w, tilt in zip(flecks[inside], 0.6 * g.uniform(0.6, 4.5, count) ** 2.0,
                                  g.uniform(0.3, 1.2, count) * k * 0.35, g.normal(0.0, 0.12, count)):
        cv2.line(specular, (round((x - w) * 16), round((y - w * tilt) * 16)),
                 (round((x + w) * 16), round((y + w * tilt) * 16)), float(v), 1, cv2.LINE_8, 4)
    for _ in range(int(g.integers(2, 7))):  # curved strands
        a0 = g.uniform(0, 360)
        strand = raster.arc_points(c + g.normal(0, 0.3 * r, 2), g.uniform(0.2, 0.6) * r, a0, a0 + g.uniform(30, 80), 6)
        _wavy_line(specular, shade, g, strand[:, 0], strand[:, 1], g.uniform(0.8, 2.5), 1.0, 0.0, points=strand)
    # Faint perichondrium round the head: a slightly irregular outline, not a drawn circle.
    ring = raster.arc_points(c, 1.01 * r, 0, 360, 40)
    ring += (0.05 * r * raster.smooth_noise(g, 40, 4))[:, None] * (ring - c) / r
    seen = np.clip(raster.smooth_noise(g, 39, 5) + 0.3, 0.0, 1.0)  # visible in stretches only
    raster.segments(specular, ring, g.uniform(0.4, 1.6) * seen * np.exp(0.5 * raster.smooth_noise(g, 39, 3)), 1)

    # Perichondrium over the cartilage roof (rim -> labrum), the capsule from the labrum over the head and on
    # to the neck, the gluteus minimus fascia above it: the bright arch over the head on real scans.
    if defect != "poor_capsule":
        top = c - (1.22 + 0.1 * g.random()) * r * n + 0.15 * r * u
        end = mc - (mr + 0.15 * r) * n + 0.2 * mr * u
        tb = np.linspace(0.0, 1.0, 20)[:, None]
        cap = (1 - tb) ** 2 * (lab - 0.1 * r * n) + 2 * (1 - tb) * tb * top + tb**2 * end
        cap = cap + (0.03 * r * raster.smooth_noise(g, len(cap), 4))[:, None] * n[None, :]
        _wavy_line(specular, shade, g, cap[:, 0], cap[:, 1], g.uniform(4.0, 12.0), mm(0.3), 0.3, points=cap)
        peri = np.vstack([rim - 0.1 * r * n, 0.5 * (rim + lab) - 0.25 * r * n, lab - 0.12 * r * n])
        _wavy_line(specular, shade, g, peri[:, 0], peri[:, 1], g.uniform(4.0, 7.0), mm(0.3), 0.0, points=peri)
        raster.polyline(diffuse, cap, 0.3, mm(0.9))
    else:
        smear = np.zeros_like(diffuse)  # capsule not resolved: a smeared, low-contrast region over the head
        raster.ellipse(smear, c - 0.8 * r * n, (1.2 * r, 0.5 * r), 0.0, 1.0)
        diffuse += cv2.GaussianBlur(smear, (0, 0), 0.3 * r) * cv2.exp(fibres * np.float32(0.5)) * np.float32(0.12)
    if defect != "no_labrum":
        radial = (lab - c) / max(1e-6, float(np.hypot(*(lab - c))))
        tangent = np.array([-radial[1], radial[0]])
        if tangent @ u < 0:
            tangent = -tangent
        tri = np.stack([lab - 0.14 * r * radial - 0.2 * r * tangent, lab + 0.18 * r * radial - 0.2 * r * tangent,
                        lab + 0.05 * r * radial + 0.5 * r * tangent])
        # A soft, ragged wedge (fibrocartilage in fat), not a clean triangle.
        tri = raster.resample(np.vstack([tri, tri[:1]]), max(1.0, 0.04 * r))
        middle = tri.mean(axis=0)
        tri = middle + (tri - middle) * (1.0 + 0.2 * raster.smooth_noise(g, len(tri), 3))[:, None]
        raster.fill(diffuse, tri, g.uniform(0.3, 0.7))
        raster.fill(specular, tri, g.uniform(0.2, 0.8))  # echogenic but not a pasted-on spike
    else:
        raster.ellipse(diffuse, lab, (0.3 * r, 0.2 * r), 0.0, 0.05)

    # Bone: bright echoes with a sharp top, a short pulse-length tail and a strong shadow.
    mu = 2.3 / mm(0.8)
    roof_drawn = roof if defect != "no_lower_limb" else roof[: max(3, int(len(roof) * 0.55))]
    il, roof_drawn = _round_rim(scene.ilium * k, roof_drawn, rim, g.uniform(0.12, 0.35) * r)
    trail, knob = g.uniform(0.6, 2.0), g.uniform(0.5, 2.0)
    _bone_echo(specular, bone, g, il, n, 22.0, mu, k, width=rl.ilium_thickness, trail_mm=trail,
               fade=g.uniform(0.4, 0.85), knob=knob)  # brightest and thickest at the rim
    m_away = -(math.sin(math.radians(scene.alpha)) * u - math.cos(math.radians(scene.alpha)) * n)
    _bone_echo(specular, bone, g, roof_drawn, m_away, 18.0, mu, k, floor=0.8, width=rl.ilium_thickness,
               trail_mm=0.6 * trail, knob=knob)
    # The gluteus minimus and periosteum on the ilium: a grey, brighter-than-muscle layer over the bone
    # near the rim, fading upward (the ilium is not a line in black muscle on real scans).
    reach = max(2, int(len(il) * g.uniform(0.4, 1.0)))
    over = np.zeros_like(diffuse)
    thick = g.uniform(1.0, 3.0)
    for share in np.linspace(0.0, 1.0, 5):
        raster.polyline(over, il[:reach] - (0.3 + share * thick) * k * n, 1.0 - 0.8 * share, max(1.0, 0.35 * thick * k))
    win = raster.drawn_window(over, 0)
    diffuse[win] += over[win] * np.float32(g.uniform(1.5, 4.0) * float(muscle_level))
    # Under the ilium and the femoral neck real scans show grey blocks, not black shadows: the infant's thin,
    # partly cartilaginous bone passes some sound and reverberates (``_bone_blocks`` fills them).
    end = roof_drawn[-1]
    blocks = [np.vstack([il[::-1], roof_drawn, [[end[0] + g.uniform(0.1, 0.8) * r, npx * 1.1], [il[-1, 0], npx * 1.1]]])]
    a_low = math.degrees(math.atan2(*(low - c)[::-1]))  # the lower limb's direction from the head's centre
    if defect != "no_lower_limb":
        raster.ellipse(specular, low, (0.9 * k, 0.6 * k), math.degrees(math.atan2(u[1], u[0])), 14.0)
        if g.random() < 0.8:
            # The acetabular fossa's floor: from the lower limb a soft (not bony, unshadowed) echo runs on
            # round under the head, closing the dark circle that real scans show.
            sweep = g.uniform(40.0, 110.0) * (1.0 if math.sin(math.radians(a_low)) * u[0] > 0 else -1.0)
            bowl = raster.arc_points(c, 1.0, a_low, a_low - sweep, 16) - c
            bowl = c + bowl * (r * (g.uniform(1.02, 1.12) + 0.04 * raster.smooth_noise(g, 16, 3)))[:, None]
            _wavy_line(specular, shade, g, bowl[:, 0], bowl[:, 1], g.uniform(3.0, 9.0), mm(0.3), 0.0, points=bowl)
    # Ischium (a rounded bony cap) in a cloud of triradiate cartilage and fat below the joint.
    isc = scene.ischium * k
    isc_angle = math.degrees(math.atan2(u[1], u[0]))
    raster.ellipse(diffuse, isc - 0.1 * r * n, (1.0 * r, 0.7 * r), isc_angle, 0.3)
    raster.ellipse(diffuse, 0.5 * (isc + low) - 0.2 * r * n, (0.5 * r, 0.35 * r), isc_angle + 30, 0.22)
    size, squash, bright = g.uniform(0.2, 0.36), g.uniform(0.7, 0.95), g.uniform(0.6, 1.4)
    dome = raster.arc_points(isc, size * r, 180.0 + isc_angle - 20, 360.0 + isc_angle + 20, 16)
    dome[:, 1] = isc[1] + (dome[:, 1] - isc[1]) * squash
    dome += (0.04 * r * raster.smooth_noise(g, len(dome), 3))[:, None] * n[None, :]
    cap_mask = np.zeros_like(specular)
    fluff = _blob_field(params.tissue_seed ^ 0x15C, npx, 48)
    # A ball: the cancellous bone fills the whole outline, fading toward the bottom (no flat floor).
    # Its outline is a lumpy, slightly lopsided oval (a noisy radius), not a drawn ellipse.
    raster.fill(cap_mask, _lumpy_outline(g, isc, 0.95 * size * r, 36, 0.16, lopsided=0.3, squash=squash), 1.0)
    raster.ellipse(cap_mask, isc + 0.45 * size * r * n, (0.8 * size * r, 0.5 * size * r), isc_angle, 0.45)
    _add_blurred(specular, cap_mask, 0.08 * r, fluff, 0.8, 3.5 * bright)  # cancellous
    halo = np.zeros_like(specular)
    raster.ellipse(halo, isc + 0.35 * r * n, (1.1 * r, 0.6 * r), isc_angle, 1.0)
    # Triradiate cartilage and fat round the ischium: a fluffy, coarse-grained cloud, not a smooth glow.
    _add_blurred(diffuse, halo, 0.2 * r, fluff, 0.9, g.uniform(0.08, 0.2))
    _bone_echo(specular, bone, g, dome, n, 20.0 * bright, 0.0, k, floor=0.5)
    # Below the head, between the acetabulum and the neck: fat, triradiate cartilage and ischium scatter as a
    # coarse grey mass down to the picture's edge. Left dark, the ilium's block reads as a pasted-in slab.
    a_neck = math.degrees(math.atan2(*(mc - c)[::-1])) if defect != "no_chondro_osseous" else 180.0 - a_low
    sweep = (a_neck - a_low + 180.0) % 360.0 - 180.0
    if ((90.0 - a_low) * math.copysign(1.0, sweep)) % 360.0 > abs(sweep):  # the other way, round the bottom
        sweep -= math.copysign(360.0, sweep)
    under_arc = raster.arc_points(c, 1.06 * r, a_low, a_low + sweep, 16)
    under = np.zeros_like(diffuse)
    raster.fill(under, np.vstack([under_arc, [[under_arc[-1, 0], npx * 1.1], [under_arc[0, 0], npx * 1.1]]]), 1.0)
    _add_blurred(diffuse, under, 0.12 * r, fluff, 0.7, g.uniform(0.4, 1.5) * float(muscle_level))
    raster.polyline(bone, np.stack([dome[0], dome[-1]]) + 0.9 * size * r * n, 0.3 * mu, mm(0.8))
    # Femoral neck / greater trochanter: the big bright arc on the right with a deep shadow below it.
    if defect != "no_chondro_osseous":
        facing = math.degrees(math.atan2(c[1] - mc[1], c[0] - mc[0]))
        # Not a perfect circle: the radius wanders away from the point that faces the head (the landmark
        # stays on the drawn surface), the top flattens, and the trochanter runs on to the right.
        angles = np.linspace(facing - g.uniform(0.0, 20.0), facing + 125.0, 28)
        away = np.clip(np.abs(angles - facing) / 60.0, 0.0, 1.0)
        radius = mr * (1.0 + away * (0.07 * raster.smooth_noise(g, len(angles), 5) + g.uniform(0.0, 0.12)))
        t = np.radians(angles)
        arc = np.stack([mc[0] + radius * np.cos(t), mc[1] + radius * np.sin(t)], axis=1)
        top_y = arc[:, 1].min()
        arc[:, 1] = np.where(arc[:, 1] < top_y + 0.1 * mr, top_y + 0.1 * mr - 0.6 * (top_y + 0.1 * mr - arc[:, 1]),
                             arc[:, 1])
        if arc[-1, 0] < npx:  # the trochanter's surface continues laterally, gently descending
            run = np.linspace(arc[-1, 0], npx * 1.05, 8)
            tail = np.stack([run, arc[-1, 1] + g.uniform(0.05, 0.3) * (run - arc[-1, 0])], axis=1)
            arc = np.vstack([arc, tail[1:]])
        inward = np.array([0.0, 1.0]) * np.ones((len(arc), 1))
        inward[: len(angles)] = (mc[None, :] - arc[: len(angles)]) / np.hypot(*(mc[None, :] - arc[: len(angles)]).T)[:, None]
        _bone_echo(specular, bone, g, arc, inward, 24.0 * g.uniform(0.7, 1.2), 0.5 * mu, k, floor=0.12)
        # The neck's medial side drops steeply from the arc to the lower edge.
        drop = np.stack([arc[0] + np.array([-0.08 * mr * f, 0.8 * mr * f]) for f in np.linspace(0.0, 1.0, 6)])
        drop = np.vstack([drop, [[drop[-1, 0] - 0.05 * mr, npx * 1.1]]])
        blocks.append(np.vstack([drop[::-1], arc, [[arc[-1, 0], npx * 1.1]]]))
    if params.ossific_nucleus_mm > 0:
        rn = params.ossific_nucleus_mm * k
        # Not a clean disc: a lumpy, mottled ossification front, brightest on the side facing the probe.
        middle = c + 0.1 * r * n
        pts = _lumpy_outline(g, middle, rn, 24, 0.15, width=2)
        nucleus = np.zeros_like(specular)
        raster.fill(nucleus, pts, 1.0)
        mottle = _blob_field(params.tissue_seed ^ 0x0551, npx, 40)
        _add_blurred(specular, nucleus, 0.15 * rn + 0.3, mottle, 0.8, g.uniform(1.5, 3.5))
        facing_probe = pts[:, 1] - middle[1] < -0.2 * np.hypot(*(pts - middle).T)
        _bone_echo(specular, bone, g, pts[facing_probe], n, g.uniform(3.0, 7.0), 0.0, k, floor=0.5, width=0.5)
        raster.fill(bone, pts, 0.08)

    diffuse *= np.float32(1.0) - cv2.GaussianBlur(shade, (0, 0), 0.3 * k)
    bone = cv2.GaussianBlur(bone, (0, 0), sigmaX=1.2 * k, sigmaY=0.2 * k)
    _bone_blocks(diffuse, bone, blocks, rl.block_levels, blobs, k, float(muscle_level))
    # Echo strength varies along every interface; every strong reflector trails off downward (pulse length).
    specular *= cv2.exp(_blob_field(params.tissue_seed ^ 0x7A7, npx, 24) * np.float32(0.35)) * np.float32(_SPEC_SCALE)
    kernel = _tail_kernel(round(0.25 * k))
    specular += cv2.filter2D(specular, -1, kernel, anchor=(0, len(kernel) - 1), borderType=cv2.BORDER_CONSTANT)
    return diffuse, specular, bone


def _add_blurred(dst, mask, sigma, texture, contrast, level) -> None:
    """``dst += blur(mask) * exp(contrast * texture) * level``, computed only round what ``mask`` holds
    (``raster.blur_local``): the per-frame blobs and masses (ischium, its cloud, the mass under the head, the
    ossific nucleus) mottled by a per-hip texture field."""
    win = raster.blur_local(mask, sigma)
    dst[win] += mask[win] * cv2.exp(texture[win] * np.float32(contrast)) * np.float32(level)


def _bone_blocks(diffuse, bone, polygons, levels, blobs, k, muscle_level) -> None:
    """Fill the bone regions (``polygons``, each running along the bone surface and closed below the image)
    with grey, speckling tissue that is brightest just under the surface and fades with depth, polygon i at
    ``levels[i]`` x ``muscle_level`` (the ilium and the neck pass sound differently, per hip). The fill is
    divided by the transmission through ``bone`` (the shadow map, already blurred) so that after
    ``acoustics.form_image`` attenuates it, it shows at the chosen level, between black (dense shadow, some
    scans) and a little brighter than muscle (most)."""
    npx = diffuse.shape[0]
    mask = np.zeros_like(diffuse)
    for polygon, level in zip(polygons, levels):
        raster.fill(mask, polygon, level)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.3 * k)
    top = np.argmax(mask > 0.5 * min(levels), axis=0).astype(np.float32)  # first bone row per column
    depth_below = np.maximum(np.arange(npx, dtype=np.float32)[:, None] - top[None, :], 0.0)
    profile = cv2.exp(depth_below * np.float32(-1.0 / (12.0 * k))) * np.float32(0.6)
    profile += np.float32(0.9) * cv2.exp(depth_below * np.float32(-1.0 / (2.5 * k)))
    transmission = cv2.exp(-(np.cumsum(bone, axis=0, dtype=np.float32) - bone))
    fill = mask * profile * cv2.exp(blobs * np.float32(0.3)) * np.float32(muscle_level)
    diffuse += fill / np.maximum(transmission, np.float32(0.02))


def _lumpy_outline(g, centre, radius, count, rough, width=3, lopsided=0.0, squash=1.0) -> np.ndarray:
    """Closed outline (count, 2) round ``centre``: a radius wandering by ``rough`` (relative sd, correlated over
    ``width`` points), bulging by up to ``lopsided`` on one random side, squashed vertically by ``squash``.
    Bony balls drawn as clean ellipses read as pasted in."""
    t = np.linspace(0.0, 2.0 * math.pi, count, endpoint=False)
    lump = 1.0 + rough * raster.smooth_noise(g, count, width)
    if lopsided > 0:
        lump = lump + g.uniform(-lopsided, lopsided) * np.cos(t - g.uniform(0, 6.3))
    lump *= radius
    return np.stack([centre[0] + lump * np.cos(t), centre[1] + squash * lump * np.sin(t)], axis=1)


def _round_rim(ilium, roof, rim, radius) -> tuple[np.ndarray, np.ndarray]:
    """(ilium, roof) polylines with the corner between them cut by a quadratic curve through ``rim``'s
    neighbourhood ``radius`` px long on each side. Real rims look rounded even on sharp (type I) roofs (the
    beam's width, the rim's own curvature); the rim landmark stays the geometric corner, within about a third
    of ``radius`` of the drawn curve. ``ilium`` starts at the rim and runs cranially; ``roof`` starts at (or
    just cranial of) the rim and runs to the lower limb."""
    from_rim = np.hypot(*(roof - rim).T)
    nearest = int(np.argmin(from_rim))
    beyond = np.nonzero(from_rim[nearest:] >= radius)[0]
    if from_rim[0] >= radius or len(beyond) == 0:  # already rounded at least this much, or a very short roof
        return ilium, roof
    j = nearest + int(beyond[0])
    along = np.hypot(*(ilium - rim).T)
    start = rim + radius * (ilium[1] - rim) / max(1e-9, float(along[1]))
    t = np.linspace(0.0, 1.0, 8)[:, None]
    corner = (1 - t) ** 2 * start + 2 * (1 - t) * t * rim + t**2 * roof[j]
    return np.vstack([start, ilium[along > radius]]), np.vstack([corner, roof[j + 1 :]])


def _wavy_line(specular, shade, g, xs, ys, level, thickness, belly, points=None, haze=0.04) -> None:
    """A fascia-like reflector: brightness varying along it, short gaps, in a glow of ``haze`` x its
    brightness; ``belly`` > 0 marks the band just below it in ``shade`` (the share of the diffuse echo lost
    there: hypoechoic muscle under a fascia)."""
    pts = points if points is not None else np.stack([xs, ys], axis=1)
    if len(pts) < 2:
        return
    m = len(pts) - 1
    gaps = np.where(raster.smooth_noise(g, m, 2) < -1.1, 0.12, 1.0)
    # Tapered ends: a fascia fades in and out of the plane instead of stopping bluntly.
    ramp = np.minimum(1.0, np.minimum(np.arange(m) + 0.5, m - 0.5 - np.arange(m)) / max(1.0, 0.2 * m))
    values = level * gaps * ramp**1.5 * np.exp(0.6 * raster.smooth_noise(g, m, 4))
    raster.segments(specular, pts, haze * values, 2.5 * thickness)  # beam-width glow
    raster.segments(specular, pts, values, thickness)
    if belly > 0:
        raster.polyline(shade, pts + np.array([0.0, 2.5 * thickness]), belly, 2.5 * thickness)


def _band(img, top, into, values, thick) -> None:
    """A band hanging from the polyline ``top`` (n, 2) into ``into`` (n, 2 unit vectors), ``thick`` (n,) px
    deep, one value per segment: a bone echo has a sharp leading edge and a thickness that varies along it,
    which a constant-width line (symmetric about the surface) does not show."""
    bottom = raster.fx(top + thick[:, None] * into).reshape(-1, 2)
    upper = raster.fx(top).reshape(-1, 2)
    quads = np.stack([upper[:-1], upper[1:], bottom[1:], bottom[:-1]], axis=1)  # one per segment
    fill = cv2.fillConvexPoly
    for quad, value in zip(quads, np.asarray(values, dtype=np.float64).tolist()):
        fill(img, quad, value, cv2.LINE_8, raster.SHIFT)


def _bone_echo(specular, bone, g, pts, into, peak, mu, k, floor=0.25, width=1.0, trail_mm=0.0, fade=0.0,
               knob=0.0) -> None:
    """Bone surface: a bright, slightly rough echo (dimmer where oblique to the beams) with a glow, and the
    attenuating band on the bone side that casts the shadow. ``into`` (2,) or (len(pts), 2) points into bone;
    ``width`` scales the echo's thickness (it differs from hip to hip); ``trail_mm`` > 0 adds a soft echo
    trailing that far into the bone (a thick surface echo with a sharp top and a fading lower edge, as the
    infant ilium shows); ``fade`` dims the echo by that share from the first point to the last."""
    pts = raster.resample(np.asarray(pts, dtype=np.float64), max(1.5, 0.5 * k))
    into = np.broadcast_to(np.asarray(into, dtype=np.float64), pts.shape) if np.ndim(into) == 1 else \
        np.array([np.interp(np.linspace(0, 1, len(pts)), np.linspace(0, 1, len(into)), into[:, i]) for i in (0, 1)]).T
    # Real bone echoes are uneven: the surface is a little jagged, the echo waxes, wanes and breaks off
    # (speckle, periosteum, the beam's incidence), and its thickness varies along it.
    pts = pts + (0.12 * k * raster.smooth_noise(g, len(pts), 3))[:, None] * into
    d = np.diff(pts, axis=0)
    seg_len = np.hypot(d[:, 0], d[:, 1])
    cos_i = np.abs(d[:, 0]) / np.maximum(seg_len, 1e-9)
    breaks = np.where(raster.smooth_noise(g, len(d), 3) < -1.2, 0.2, 1.0)
    values = peak * (floor + (1.0 - floor) * cos_i**2) * np.exp(0.55 * raster.smooth_noise(g, len(d), 6)) * breaks
    if fade > 0:
        values = values * (1.0 - fade * np.linspace(0.0, 1.0, len(values)))
    # A sharp-topped core band, ``knob`` times thicker at the first point (the rim), tapering over 3 mm, in a
    # beam-width glow that follows its thickness.
    along = np.concatenate([[0.0], np.cumsum(seg_len)])
    thick = (max(1.0, 0.4 * k * width) * (1.0 + knob * np.exp(-along / (3.0 * k)))
             * np.exp(0.3 * raster.smooth_noise(g, len(pts), 5)))
    _band(specular, pts - 0.3 * k * width * into, into, 0.2 * values, thick + 0.8 * k * width)
    _band(specular, pts, into, values, thick)
    raster.segments(specular, pts + 0.7 * k * width * into, 0.25 * values, max(1.0, 0.5 * k * width))  # tail inside
    for step in range(1, round(trail_mm / 0.4) + 1):  # the soft trail, fading with depth
        depth = 0.4 * step
        raster.segments(specular, pts + (0.5 + depth) * k * into, values * (0.22 * (1.0 - depth / (trail_mm + 0.4))),
                    max(1.0, 0.5 * k))
    if mu > 0:
        # The shadow starts under the core (deeper at a thick rim: the knob must show, not be shadowed).
        raster.polyline(bone, pts + (1.1 * k + thick[:, None] - thick.min()) * into, mu, max(1.0, 0.8 * k))
