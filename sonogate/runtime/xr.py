"""The pelvic X-ray (AP pelvis) bundle contract, torch-free: letterbox preprocessing, the whole-image predictor
and the conservative per-hip verdict.

A whole-pelvis X-ray bundle (``task`` "hip_xr", ``xr_contract`` "whole_pelvis", docs/xray.md) sees the whole
radiograph, so Hilgenreiner's line through both triradiate cartilages is inside the picture:

* preprocessing ``resize`` "letterbox": gray -> pad to a square (centred, ``pad_value``) -> resize to S x S
  (INTER_AREA) -> (x / 255 - mean) / std. The aspect ratio is kept, so angles measured in the model's
  coordinates equal angles in the image (a plain resize of a 2000 x 2500 radiograph would shear them).
* outputs: ``measurements`` (N, 4) = ai_deg right, ce_deg right, ai_deg left, ce_deg left (raw, before
  calibration); ``landmarks`` (N, 8, 2) (x, y) in [0, 1] of the model input, pixel-centre convention;
  ``ihdi_logits`` (N, 2, 4) IHDI grade I..IV per hip (right, left), the grade is the argmax; ``features``.
* "right" is the hip on the image's left of the model input (radiographic convention). The caller mirrors the
  radiograph first when Patient Orientation says the rows run toward the patient's right.

Training (``sonogate.models.xr_train``), export, calibration and the runtime all call ``letterbox`` here, so
the model always sees exactly what it was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sonogate.errors import BundleError
from sonogate.core.bundle import Bundle, load_bundle

XR_TASK = "hip_xr"
WHOLE_PELVIS = "whole_pelvis"
SIDES = ("right", "left")
XR_MEASURES = ("ai_deg", "ce_deg")
XR_OUTPUT_NAMES = ("ai_deg_right", "ce_deg_right", "ai_deg_left", "ce_deg_left")
# Design notes (../shared/design/clinical-and-statistical-notes.md): AI > 30 deg is dysplastic in a newborn;
# CE < 15 dysplastic, 15-20 borderline, > 20 normal (children). "Normal" needs both bounds on the safe side.
XR_THRESHOLDS = {"ai_deg": 30.0, "ce_deg": 20.0}
# Values outside these ranges are not anatomy but a failed reading (e.g. landmarks on the wrong structure give
# CE near 180 deg): such a hip is never called normal, whatever its bounds say.
PLAUSIBLE = {"ai_deg": (0.0, 60.0), "ce_deg": (-90.0, 60.0)}
IHDI_GRADES = (1, 2, 3, 4)
NORMAL = "normal within bounds"
NOT_NORMAL = "abnormal or uncertain"
_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class Letterbox:
    """Where the image went in the square: ``side`` pixels of the padded square, the image's offset
    (``pad_x``, ``pad_y``) in it, ``size`` the model input side. Coordinates follow the pixel-centre
    convention of the landmark head: image pixel centre i sits at (i + 0.5 + pad) / side in [0, 1]."""

    side: int
    pad_x: int
    pad_y: int
    size: int

    def to_image(self, points01: np.ndarray) -> np.ndarray:
        """(..., 2) model coordinates in [0, 1] -> (x, y) pixels of the original image."""
        p = np.asarray(points01, dtype=np.float64)
        return p * self.side - 0.5 - np.array([self.pad_x, self.pad_y], dtype=np.float64)

    def to_model(self, points_px: np.ndarray) -> np.ndarray:
        """(..., 2) pixels of the original image -> model coordinates in [0, 1]."""
        p = np.asarray(points_px, dtype=np.float64)
        return (p + 0.5 + np.array([self.pad_x, self.pad_y], dtype=np.float64)) / self.side


def letterbox(
    gray: np.ndarray, size: int, pad_value: int = 0, interpolation: str = "area"
) -> tuple[np.ndarray, Letterbox]:
    """Pad a gray uint8 image (H, W) to a centred square and resize it to (size, size).

    Output: the model-sized uint8 image and the ``Letterbox`` that maps landmarks back to the image.
    """
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("letterbox needs a 2-D uint8 gray image")
    h, w = gray.shape
    side = max(h, w)
    pad_x, pad_y = (side - w) // 2, (side - h) // 2
    if side != w or side != h:
        square = np.full((side, side), pad_value, dtype=np.uint8)
        square[pad_y : pad_y + h, pad_x : pad_x + w] = gray
    else:
        square = gray
    if side != size:
        square = cv2.resize(square, (size, size), interpolation=_INTERPOLATION.get(interpolation, cv2.INTER_AREA))
    return np.ascontiguousarray(square), Letterbox(side=side, pad_x=pad_x, pad_y=pad_y, size=size)


def mirror_points(points_px: np.ndarray, width: int) -> np.ndarray:
    """(x, y) pixels of a horizontally mirrored image of ``width`` columns -> pixels of the original."""
    p = np.array(points_px, dtype=np.float64, copy=True)
    p[..., 0] = width - 1 - p[..., 0]
    return p


def is_whole_pelvis(bundle: Bundle) -> bool:
    """True for the whole-image X-ray contract (per-side measurement names), False for anything else."""
    return bundle.manifest.get("xr_contract") == WHOLE_PELVIS or set(XR_OUTPUT_NAMES) <= set(bundle.measurement_names)


@dataclass
class XrPrediction:
    """Raw model output for one radiograph (before calibration).

    ``values``: name in ``XR_OUTPUT_NAMES`` -> degrees. ``ihdi_logits``: (2, 4) right, left, or None.
    ``landmarks``: landmark name -> (x, y) pixels of the image given to ``predict`` (None: the model has no
    landmark output). ``letterbox``: how the image was fitted to the model input.
    """

    values: dict[str, float]
    ihdi_logits: np.ndarray | None
    landmarks: dict[str, tuple[float, float]] | None
    letterbox: Letterbox

    def ihdi_grade(self, side: str) -> int | None:
        if self.ihdi_logits is None:
            return None
        row = self.ihdi_logits[SIDES.index(side)]
        return int(IHDI_GRADES[int(np.argmax(row))]) if np.all(np.isfinite(row)) else None


class XrPredictor:
    """Runs a whole-pelvis X-ray bundle on radiographs (ONNX Runtime / OpenVINO via ``create_backend``).

    Inputs: a verified ``Bundle`` (or its folder), device, threads, precision ("auto": int8 when present, as the
    ultrasound runtime). ``predict(frame)`` takes a gray or BGR uint8 image in the orientation the model expects
    (patient's right on the image's left) and returns an ``XrPrediction``.
    """

    def __init__(self, bundle: Bundle | str | Path, device: str = "auto", threads: int = 1, precision: str = "auto"):
        from sonogate.device.compute import create_backend
        from sonogate.runtime.engine import choose_variant

        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        if not is_whole_pelvis(self.bundle):
            raise BundleError(
                f"bundle {self.bundle.path} is not a whole-pelvis X-ray bundle (task {self.bundle.task!r})"
            )
        names = self.bundle.measurement_names
        missing = [n for n in XR_OUTPUT_NAMES if n not in names]
        if missing:
            raise BundleError(f"X-ray bundle {self.bundle.path} lacks measurements {', '.join(missing)}")
        self.index = {n: names.index(n) for n in XR_OUTPUT_NAMES}
        pre = self.bundle.manifest.get("preprocessing", {})
        if pre.get("resize", "letterbox") != "letterbox":
            raise BundleError(f"X-ray bundle preprocessing resize {pre.get('resize')!r} is not supported (letterbox)")
        p = self.bundle.preprocessing
        if p.height != p.width:
            raise BundleError(f"X-ray bundle input must be square, not {p.width}x{p.height}")
        self.size = p.height
        self.pad_value = int(pre.get("pad_value", 0))
        self.landmark_names = tuple(self.bundle.manifest.get("outputs", {}).get("landmarks", {}).get("names", ()))
        self.variant = choose_variant(self.bundle, precision)
        self.backend, self.device_note = create_backend(
            self.bundle.model_path(self.variant), device=device, threads=threads
        )
        self._scale = np.float32(1.0 / (255.0 * p.std))
        self._offset = np.float32(-p.mean / p.std)

    @property
    def device_name(self) -> str:
        return self.backend.name

    def tensor(self, frame: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """(1, C, S, S) float32 model input and the letterbox of a gray / BGR / BGRA uint8 image."""
        from sonogate.runtime.preprocess import to_gray

        gray = to_gray(frame)
        square, box = letterbox(gray, self.size, self.pad_value, self.bundle.preprocessing.interpolation)
        x = square.astype(np.float32) * self._scale + self._offset
        x = np.repeat(x[None, None], self.bundle.preprocessing.channels, axis=1)
        return np.ascontiguousarray(x, dtype=np.float32), box

    def predict(self, frame: np.ndarray) -> XrPrediction:
        x, box = self.tensor(frame)
        out = self.backend.infer(x)
        raw = np.asarray(out["measurements"], dtype=np.float64).reshape(-1)
        values = {n: float(raw[i]) for n, i in self.index.items()}
        ihdi = out.get("ihdi_logits")
        ihdi = None if ihdi is None else np.asarray(ihdi, dtype=np.float64).reshape(2, len(IHDI_GRADES))
        landmarks = None
        if "landmarks" in out and self.landmark_names:
            pts = box.to_image(np.asarray(out["landmarks"], dtype=np.float64).reshape(-1, 2))
            landmarks = {n: (float(x_), float(y_)) for n, (x_, y_) in zip(self.landmark_names, pts)}
        return XrPrediction(values=values, ihdi_logits=ihdi, landmarks=landmarks, letterbox=box)


def hip_verdict(
    ai_upper: float | None,
    ce_lower: float | None,
    ihdi_grade: int | None = None,
    thresholds: Mapping[str, float] | None = None,
    values: Mapping[str, float | None] | None = None,
) -> tuple[str, str]:
    """Conservative X-ray verdict for one hip: (NORMAL or NOT_NORMAL, reason).

    "normal within bounds" only when the calibrated AI upper bound is <= T_AI (30 deg) AND the CE lower bound
    is >= T_CE (20 deg) AND the IHDI grade (when the model gives one) is I AND the corrected ``values`` (when
    given) lie in the ``PLAUSIBLE`` ranges. A missing or infinite bound (no calibration, no finite radius) is
    never normal.
    """
    t = dict(XR_THRESHOLDS)
    t.update({k: float(v) for k, v in (thresholds or {}).items() if k in XR_THRESHOLDS})
    problems = []
    if ai_upper is None or not math.isfinite(ai_upper):
        problems.append("no AI upper bound")
    elif ai_upper > t["ai_deg"]:
        problems.append(f"AI bound {ai_upper:.1f} > {t['ai_deg']:g}")
    if ce_lower is None or not math.isfinite(ce_lower):
        problems.append("no CE lower bound")
    elif ce_lower < t["ce_deg"]:
        problems.append(f"CE bound {ce_lower:.1f} < {t['ce_deg']:g}")
    if ihdi_grade is not None and ihdi_grade != 1:
        problems.append(f"IHDI grade {('I', 'II', 'III', 'IV')[ihdi_grade - 1]}")
    for name, (low, high) in PLAUSIBLE.items():
        value = (values or {}).get(name)
        if value is not None and not low <= value <= high:
            problems.append(f"implausible {name} {value:.1f} (not in {low:g}..{high:g}): unreliable reading")
    if problems:
        return NOT_NORMAL, "; ".join(problems)
    return NORMAL, f"AI <= {ai_upper:.1f} <= {t['ai_deg']:g} and CE >= {ce_lower:.1f} >= {t['ce_deg']:g}"
