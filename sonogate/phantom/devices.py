"""Scanner "devices": presets for how a phantom hip is turned into pixels.

A real ultrasound cart differs from another one in gain, dynamic range (log compression), resolution cell
(speckle size), extra smoothing, the depth setting (which sets the pixel scale) and how the image is
oriented on screen. The anatomy is the same; only the imaging chain changes, so a model trained on some
presets and tested on another measures a device shift, not an anatomy shift.

Presets: ``A``, ``B``, ``C`` are the training devices, ``D`` is held out (never seen in training), and
``X_extreme_gain`` is an out-of-distribution variant (saturated, washed-out picture) for tests that the
runtime refuses to recommend from images unlike its training data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sonogate.errors import SonogateError


@dataclass(frozen=True)
class ScannerDevice:
    """One scanner preset (all figures are for a 256 x 256 output image; they scale with the size).

    name: preset key.
    description: one line for docs and reports.
    gain_db: overall gain added before log compression (0 = nominal; +20 saturates).
    dynamic_range_db: log-compression window; small values give a contrasty picture.
    speckle_px: lateral sigma of the resolution cell (point-spread function) in output pixels.
    axial_ratio: axial / lateral sigma of the resolution cell (axial resolution is finer on linear arrays).
    blur_px: extra lateral smoothing after detection (spatial compounding, persistence), output pixels.
    depth_mm: imaged depth; the field is square, so this also sets the width and the mm -> pixel scale.
    orientation: ``"horizontal"`` (as acquired: ilium horizontal on the left, skin at the top) or
        ``"vertical"`` (Graf's display convention: ilium vertical at the top, probe on the left).
    render_scale: internal resolution / output resolution (< 1 renders coarser and upsamples: soft picture).
    attenuation_db_per_mm: round-trip tissue attenuation before time-gain compensation.
    tgc_compensation: share of the attenuation the TGC curve restores (1 = perfectly flat with depth).
    noise_floor: electronic noise amplitude relative to tissue (speckle-like grain in acoustic shadows).
    haze: incoherent clutter / reverberation level, growing with depth (the grey veil over shadows).
    gamma: display gamma applied after log compression (> 1 darkens mid-greys).
    reject: grey level (0-255, before the gamma) below which the display is black, the scanner's reject
        control that hides low-level noise; the rest of the range is stretched to fill 0-``white``.
    white: grey level of the brightest echo (the top of the display's grey map). 255 on the presets; real
        carts' grey maps top out lower (the SPJ standard planes never exceed about 236).
    focus_depth_frac: depth of the transmit focus as a share of the depth (brighter, sharper band).
    footprint_frac: share of the image width covered by the transducer aperture (< 1 leaves black sides).
    smoothing: speckle reduction (share of a smoothed copy blended in, 0..1), as scanners' image processing.
    heldout: never used for training.
    ood: out-of-distribution variant (not a plausible clinical setting).
    """

    name: str
    description: str = ""
    gain_db: float = 0.0
    dynamic_range_db: float = 60.0
    speckle_px: float = 1.2
    axial_ratio: float = 0.55
    blur_px: float = 0.0
    depth_mm: float = 40.0
    orientation: str = "horizontal"
    render_scale: float = 1.0
    attenuation_db_per_mm: float = 0.9
    tgc_compensation: float = 0.75
    noise_floor: float = 0.004
    haze: float = 0.09
    gamma: float = 1.0
    reject: float = 0.0
    white: float = 255.0
    focus_depth_frac: float = 0.5
    footprint_frac: float = 1.0
    smoothing: float = 0.45
    heldout: bool = False
    ood: bool = False

    def __post_init__(self) -> None:
        if self.orientation not in ("horizontal", "vertical"):
            raise SonogateError(f"device {self.name}: orientation must be 'horizontal' or 'vertical'")
        if not (10.0 <= self.depth_mm <= 120.0):
            raise SonogateError(f"device {self.name}: depth_mm {self.depth_mm} outside 10..120")
        if not (0.25 <= self.render_scale <= 1.0):
            raise SonogateError(f"device {self.name}: render_scale {self.render_scale} outside 0.25..1")
        if not (0.0 <= self.reject < 128.0):
            raise SonogateError(f"device {self.name}: reject {self.reject} outside 0..128")
        if not (128.0 <= self.white <= 255.0):
            raise SonogateError(f"device {self.name}: white {self.white} outside 128..255")
        if self.dynamic_range_db <= 5.0:
            raise SonogateError(f"device {self.name}: dynamic_range_db must be > 5")


DEVICES: dict[str, ScannerDevice] = {
    "A": ScannerDevice(
        name="A",
        description="cart linear L12-5 at 4 cm, nominal gain, DR 60 dB, fine speckle, ilium horizontal",
        gain_db=0.0, dynamic_range_db=60.0, speckle_px=2.6, axial_ratio=0.33, blur_px=1.0, depth_mm=40.0,
        orientation="horizontal", render_scale=1.0, noise_floor=0.003, gamma=1.0, focus_depth_frac=0.5,
    ),
    "B": ScannerDevice(
        name="B",
        description="compact cart L10-4 at 4.5 cm, brighter, DR 54 dB, coarser speckle, softer image",
        gain_db=4.0, dynamic_range_db=54.0, speckle_px=3.2, axial_ratio=0.45, blur_px=1.4, depth_mm=45.0,
        orientation="horizontal", render_scale=0.8, noise_floor=0.005, gamma=0.9, focus_depth_frac=0.4,
        attenuation_db_per_mm=1.0, tgc_compensation=0.7,
    ),
    "C": ScannerDevice(
        name="C",
        description="Graf-convention display (ilium vertical, probe left) at 3.8 cm, darker, DR 66 dB",
        gain_db=-2.0, dynamic_range_db=66.0, speckle_px=2.8, axial_ratio=0.33, blur_px=1.0, depth_mm=38.0,
        orientation="vertical", render_scale=1.0, noise_floor=0.0025, gamma=1.1, focus_depth_frac=0.55, smoothing=0.6,
    ),
    "D": ScannerDevice(
        name="D",
        description="held out: handheld wireless probe at 5 cm, DR 48 dB, coarse smoothed speckle, narrower aperture",
        gain_db=8.0, dynamic_range_db=50.0, speckle_px=3.8, axial_ratio=0.5, blur_px=1.8, depth_mm=50.0,
        orientation="horizontal", render_scale=0.7, noise_floor=0.006, gamma=1.2, focus_depth_frac=0.35,
        attenuation_db_per_mm=1.0, tgc_compensation=0.7, footprint_frac=0.92, haze=0.12, smoothing=0.25, heldout=True,
    ),
}
# Out of distribution: device A with the gain turned far up and the dynamic range squeezed (washed out).
DEVICES["X_extreme_gain"] = replace(
    DEVICES["A"], name="X_extreme_gain", description="OOD: device A with +24 dB gain and 40 dB dynamic range",
    gain_db=24.0, dynamic_range_db=40.0, ood=True,
)

TRAIN_DEVICES: tuple[str, ...] = ("A", "B", "C")
HELDOUT_DEVICE: str = "D"
OOD_DEVICE: str = "X_extreme_gain"


def get_device(device: ScannerDevice | str) -> ScannerDevice:
    """The preset named ``device`` (or ``device`` itself when it already is one); SonogateError if unknown."""
    if isinstance(device, ScannerDevice):
        return device
    try:
        return DEVICES[str(device)]
    except KeyError:
        raise SonogateError(f"unknown phantom device {device!r} (known: {', '.join(DEVICES)})") from None


def parse_device_list(text: str) -> tuple[str, ...]:
    """``"A,B,C"`` -> ("A", "B", "C"), checking every name; SonogateError on an empty or unknown name."""
    names = tuple(part.strip() for part in str(text).split(",") if part.strip())
    if not names:
        raise SonogateError("no device named (expected e.g. A,B,C)")
    for name in names:
        get_device(name)
    return names
