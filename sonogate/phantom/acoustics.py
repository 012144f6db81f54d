"""Ultrasound image formation from tissue maps (numpy + OpenCV only).

The anatomy is described by three float32 maps on the internal grid (rows = depth, columns = lateral
position along a linear array, beams run straight down):

* ``diffuse``  backscatter amplitude of sub-resolution scatterers (tissue texture -> speckle),
* ``specular`` amplitude of coherent reflectors (bone surfaces, fascia, capsule),
* ``bone``     attenuation per pixel (nepers); its exclusive cumulative sum down each column makes the
  acoustic shadow behind bone.

Formation: a complex scatterer field (white noise x amplitude x transmission, plus the specular amplitude
on the real part) is convolved with a Gaussian point-spread function (lateral sigma > axial sigma), the
envelope is taken (Rayleigh statistics where scatterers dominate), tissue attenuation and the TGC curve
are applied, receiver noise fills the shadows and grows with TGC, then log compression to the device's
dynamic range and a display gamma give the grey levels.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from sonogate.phantom.devices import ScannerDevice

# Display top (0 dB = rms speckle of unit-amplitude tissue): soft tissue lands mid-grey, bone saturates.
_DISPLAY_TOP_DB = 36.0
_DB_PER_NEPER_AMPLITUDE = 20.0 / math.log(10.0)


def internal_size(device: ScannerDevice, size: int) -> int:
    """Side of the square grid the anatomy is drawn on for ``device`` at output ``size`` (pixels)."""
    return max(32, round(size * device.render_scale))


def new_speckle_field(rng: np.random.Generator, n: int) -> np.ndarray:
    """White scatterer field (2, n, n) float32: real and imaginary planes, zero mean, unit variance.

    Uniform noise is used instead of Gaussian because it is several times faster to draw, and the
    point-spread function sums many samples per resolution cell, so the field it produces is Gaussian
    all the same.
    """
    field = rng.random((2, n, n), dtype=np.float32)
    field -= np.float32(0.5)
    field *= np.float32(math.sqrt(12.0))
    return field


def psf_sigmas(device: ScannerDevice, n: int) -> tuple[float, float]:
    """(lateral, axial) Gaussian sigma of the resolution cell in pixels of an ``n``-pixel internal grid."""
    scale = n / 256.0  # device figures are for a 256-pixel output; the internal grid may be coarser
    lateral = max(0.45, device.speckle_px * scale)
    axial = max(0.4, lateral * device.axial_ratio)
    return lateral, axial


def depth_gain(device: ScannerDevice, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (tissue_gain, noise_boost), float32 (n,).

    tissue_gain: attenuation left after TGC, with the transmit-focus band and the near-field reverberation.
    noise_boost: factor that, put on the noise *before* tissue_gain, makes the receiver noise grow with the
    TGC curve (so deep shadows are grey, not black, as on real scanners).
    """
    depth_mm = (np.arange(n, dtype=np.float32) + 0.5) * np.float32(device.depth_mm / n)
    round_trip_db = device.attenuation_db_per_mm * depth_mm
    residual_db = (1.0 - device.tgc_compensation) * round_trip_db
    focus_mm = device.focus_depth_frac * device.depth_mm
    focus = 1.0 + 0.3 * np.exp(-(((depth_mm - focus_mm) / (0.18 * device.depth_mm)) ** 2))
    near_field = 1.0 + 1.2 * np.exp(-depth_mm / 0.6)  # skin / gel interface ring-down
    tissue_gain = (10.0 ** (-residual_db / 20.0)) * focus * near_field
    noise_boost = 10.0 ** (round_trip_db / 20.0)
    return tissue_gain.astype(np.float32), noise_boost.astype(np.float32)


def lateral_profile(device: ScannerDevice, n: int) -> np.ndarray:
    """Per-column gain (n,) float32: aperture roll-off at the array ends, zero outside the footprint."""
    x = (np.arange(n, dtype=np.float32) + 0.5) / n  # 0..1 across the image
    half = 0.5 * device.footprint_frac
    inside = np.abs(x - 0.5) <= half
    edge = np.clip((half - np.abs(x - 0.5)) / 0.04, 0.0, 1.0)  # last 4 % of the aperture fade out
    profile = (0.55 + 0.45 * edge) * inside
    return profile.astype(np.float32)


@lru_cache(maxsize=32)
def _device_maps(device: ScannerDevice, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Per device and grid: (gain map, noise amplitude map, haze map (all (n, n) float32), gamma LUT (256,)
    uint8, PSF norm).

    The PSF norm compensates the variance white noise loses through a Gaussian PSF (1 / (4 pi sx sy)), so
    brightness does not depend on the speckle size of the device.
    """
    tissue_gain, noise_boost = depth_gain(device, n)
    gain = np.ascontiguousarray(tissue_gain[:, None] * lateral_profile(device, n)[None, :])
    sigma_lat, sigma_ax = psf_sigmas(device, n)
    norm = math.sqrt(4.0 * math.pi * sigma_lat * sigma_ax)
    noise = np.ascontiguousarray(np.broadcast_to((device.noise_floor * noise_boost * norm)[:, None], (n, n)),
                                 dtype=np.float32)
    # Haze: clutter and reverberation add incoherently; more of it deeper down (TGC lifts it).
    depth = (np.arange(n, dtype=np.float32) + 0.5) / n
    haze = np.ascontiguousarray(np.broadcast_to((device.haze * (0.15 + 2.0 * depth**2))[:, None], (n, n)),
                                dtype=np.float32)
    # Reject: grey levels below ``device.reject`` show black (scanners' low-level echo threshold).
    grey = np.clip((np.arange(256) - device.reject) / (255.0 - device.reject), 0.0, 1.0)
    lut = np.clip(device.white * grey**device.gamma + 0.5, 0, 255).astype(np.uint8)
    for array in (gain, noise, haze, lut):
        array.setflags(write=False)
    return gain, noise, haze, lut, norm


def form_image(
    diffuse: np.ndarray,
    specular: np.ndarray,
    bone: np.ndarray,
    device: ScannerDevice,
    field: np.ndarray,
    size: int,
    *,
    gain_offset_db: float = 0.0,
    contrast: float = 1.0,
    vignette: float = 0.0,
    row_gain: np.ndarray | None = None,
    looks: int = 1,
    grain: float = 0.0,
) -> np.ndarray:
    """B-mode grey image from tissue maps.

    Inputs: ``diffuse``, ``specular``, ``bone`` float32 (n, n) maps (see module doc); ``device``; ``field``
    the (2, n, n) scatterer noise (fresh per frame, or shared between cine frames so speckle moves with
    tissue); ``size`` the output side. Keyword-only, the operator's knobs within a preset (set once per
    sweep): ``gain_offset_db`` added to the preset gain, ``contrast`` dividing the dynamic range (> 1
    contrastier), ``vignette`` darkening at the lateral edges (share of the grey range lost at the very
    edge); ``row_gain`` (n,) float32 extra amplitude factor per row after detection (TGC sliders; None =
    flat, the schematic style); ``looks`` > 1 averages the envelopes of that many independent speckle
    realisations (the field rolled by a few resolution cells per look: the tissue stays, the speckle
    decorrelates), as spatial compounding does on real carts (1 = the schematic style); ``grain`` the sd in
    grey levels (at grey 64 and above, fading to 0 in black) of a pixel-level noise added after log compression (the scan converter's and video
    encoder's fine grain, taken from the scatterer field: no extra random draws; 0 = none). Output: uint8
    (size, size), as acquired (rows = depth).
    """
    n = diffuse.shape[0]
    gain, noise, haze, lut, norm = _device_maps(device, n)
    # Exclusive cumulative attenuation: a bone surface itself still echoes, everything below is shadowed.
    # (Column sums from the integral image: 4x faster than numpy's cumsum along axis 0.)
    # The beam has a width: smear the bone laterally so shadow edges are soft, as on real scans.
    sigma_lat, sigma_ax = psf_sigmas(device, n)
    bone = cv2.GaussianBlur(bone, (0, 0), sigmaX=1.2 * sigma_lat, sigmaY=0.3)
    integral = cv2.integral(bone, sdepth=cv2.CV_32F)  # float32 is exact enough: sums stay below ~1e4
    path = cv2.subtract(integral[1:, :-1], integral[1:, 1:])  # minus the inclusive column sum
    path += bone
    transmission = cv2.exp(path)

    amplitude = cv2.multiply(diffuse, transmission)
    amplitude = cv2.scaleAdd(amplitude, norm, noise)  # tissue * norm + receiver noise
    coherent = cv2.multiply(specular, transmission)
    envelope = None
    for look in range(max(1, int(looks))):
        planes = field if look == 0 else np.roll(field, (17 * look, 29 * look), axis=(1, 2))
        real = cv2.multiply(planes[0], amplitude)
        real += coherent
        imag = cv2.multiply(planes[1], amplitude)
        real = cv2.GaussianBlur(real, (0, 0), sigmaX=sigma_lat, sigmaY=sigma_ax, borderType=cv2.BORDER_REFLECT)
        imag = cv2.GaussianBlur(imag, (0, 0), sigmaX=sigma_lat, sigmaY=sigma_ax, borderType=cv2.BORDER_REFLECT)
        if envelope is None:
            envelope = cv2.magnitude(real, imag)
        else:
            envelope += cv2.magnitude(real, imag)
    if looks > 1:
        envelope *= np.float32(1.0 / looks)
    envelope = cv2.multiply(envelope, gain)
    if row_gain is not None:
        envelope *= row_gain[:, None]
    # Clutter is random too: modulate the haze with the (unblurred) scatterer field, a fine grain that the
    # display smoothing softens; a flat veil would look painted on.
    clutter = cv2.multiply(cv2.absdiff(field[1], 0.0), haze)
    envelope = cv2.magnitude(envelope, clutter)

    # Log compression: grey = 255 (dB - (top - gain) + DR) / DR, clipped, then the display gamma (a LUT).
    cv2.max(envelope, 1e-6, dst=envelope)
    decibel = cv2.log(envelope)
    dynamic_range = device.dynamic_range_db / max(0.2, float(contrast))
    scale = _DB_PER_NEPER_AMPLITUDE * 255.0 / dynamic_range
    offset = 255.0 * (dynamic_range - _DISPLAY_TOP_DB + device.gain_db + gain_offset_db) / dynamic_range
    display = decibel * np.float32(scale)
    display += np.float32(offset + 0.5)
    if vignette > 0:  # lens / aperture fall-off toward the lateral edges, in grey levels
        x = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
        display -= (np.float32(255.0 * vignette) * (2.0 * x) ** 4)[None, :]
    np.clip(display, 0.0, 255.0, out=display)
    image = display.astype(np.uint8)
    if device.gamma != 1.0 or device.reject > 0 or device.white != 255.0:
        image = cv2.LUT(image, lut)
    if device.blur_px > 0:
        blur = device.blur_px * n / 256.0
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=blur, sigmaY=0.4 * blur)
    if device.smoothing > 0:  # speckle reduction: blend in a smoothed copy (edges stay, grain softens)
        soft = cv2.GaussianBlur(image, (0, 0), sigmaX=1.6 * n / 256.0, sigmaY=0.8 * n / 256.0)
        image = cv2.addWeighted(image, 1.0 - device.smoothing, soft, device.smoothing, 0.0)
    if grain > 0:  # last, as the scan converter / video encoder adds it; fades out in black (no signal)
        grey = image.astype(np.float32)
        grey += field[0, ::-1] * cv2.min(grey, 64.0) * np.float32(grain / 64.0)  # flipped: not the speckle's
        image = np.clip(grey, 0.0, device.white).astype(np.uint8)  # the grey map's top bounds the grain too
    if n != size:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return image
