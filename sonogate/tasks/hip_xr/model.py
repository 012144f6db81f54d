"""The ``hip_xr`` runtime wrapper (model type "hip_xr_pelvis"): a radiograph in; per hip the acetabular index,
the centre-edge angle (with their calibrated bounds), the IHDI grade, landmarks and the conservative verdict out.

``create_model`` builds ``HipXrPelvisModel`` for any hip_xr bundle (the spec's ``parts["model_wrapper"]``). Two
bundle contracts (docs/xray.md):

* whole pelvis (``xr_contract`` "whole_pelvis", what ``sonogate export`` writes for an X-ray run): the whole
  radiograph is letterboxed into the square model input (``sonogate.runtime.preprocess``), which measures both
  hips at once (Hilgenreiner's line through both triradiate cartilages) and also returns IHDI logits (N, 2, 4)
  and 8 landmarks (N, 8, 2) in [0, 1] of the model input. Outputs ``measurements`` (N, 4) = ai_deg right,
  ce_deg right, ai_deg left, ce_deg left (raw, before calibration). "right" is the hip on the image's left of
  the model input (radiographic convention).
* one hip (older bundles whose ``measurements`` are ``ai_deg``, ``ce_deg``): the radiograph is split at the
  vertical midline; each half, the patient's left one mirrored, is stretched into the model.

Which side is the patient's right comes from Patient Orientation (row direction "L" or absent: radiographic
convention; "R": the image is mirrored first and the landmarks mapped back). ``predict(frame)`` gives the raw
``XrPrediction``; ``measure(frame, image, notes)`` per hip ``ai_deg`` / ``ce_deg`` {value, lower_bound,
upper_bound} (calibrated by the bundle's calibration.json: ``ai_deg`` side "upper", ``ce_deg`` side "lower"),
``verdict`` {value, reason} and, for whole-pelvis bundles, ``raw``, ``ihdi`` {grade, source} and ``landmarks``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonogate.core.bundle import Bundle, load_bundle, sha256_file
from sonogate.core.task import InputSpec
from sonogate.errors import BundleError
from sonogate.runtime.model_api import InferenceAdapter, InputModel, create_model
from sonogate.runtime.preprocess import Letterbox, mirror_points
from sonogate.tasks.hip_xr.spec import TASK

XR_TASK = TASK.id
WHOLE_PELVIS = "whole_pelvis"
SIDES = ("right", "left")
XR_MEASURES = ("ai_deg", "ce_deg")
XR_OUTPUT_NAMES = ("ai_deg_right", "ce_deg_right", "ai_deg_left", "ce_deg_left")
# Design notes (../shared/design/clinical-and-statistical-notes.md): AI > 30 deg is dysplastic in a newborn;
# CE < 15 dysplastic, 15-20 borderline, > 20 normal (children). "Normal" needs both bounds on the safe side.
XR_THRESHOLDS = {m.name: float(m.threshold) for m in TASK.measurements}
# Values outside these ranges are not anatomy but a failed reading (e.g. landmarks on the wrong structure give
# CE near 180 deg): such a hip is never called normal, whatever its bounds say.
PLAUSIBLE = {m.name: tuple(m.plausible_range) for m in TASK.measurements}
IHDI_GRADES = (1, 2, 3, 4)
NORMAL, NOT_NORMAL = TASK.decision.reassuring[0], TASK.decision.safe_default


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


def image_decision(hips: Mapping[str, Mapping[str, Any]], calibrated: bool) -> tuple[str, str]:
    """(outcome, reason) of one radiograph from its per-hip verdicts (``hip_verdict``): NORMAL only when the
    bundle is calibrated and every hip of ``SIDES`` is there with a NORMAL verdict; anything else is NOT_NORMAL."""
    if not calibrated:
        return NOT_NORMAL, "no calibration: no bounds, no reassurance"
    problems = []
    for side in SIDES:
        verdict = (hips.get(side) or {}).get("verdict") or {}
        if verdict.get("value") != NORMAL:
            problems.append(f"{side} hip: {verdict.get('reason') or 'no verdict'}")
    if problems:
        return NOT_NORMAL, "; ".join(problems)
    return NORMAL, "both hips normal within the calibrated bounds"


def _round(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), 3)


class HipXrPelvisModel(InputModel):
    """A hip_xr bundle with its optional calibration.json bound to it (module docstring)."""

    model_type: ClassVar[str] = "hip_xr_pelvis"

    def __init__(self, bundle: Bundle, adapter: InferenceAdapter):
        self.whole_pelvis = is_whole_pelvis(bundle)
        names = bundle.measurement_names
        if self.whole_pelvis:
            missing = [n for n in XR_OUTPUT_NAMES if n not in names]
            if missing:
                raise BundleError(f"X-ray bundle {bundle.path} lacks measurements {', '.join(missing)}")
            resize = (bundle.manifest.get("preprocessing") or {}).get("resize", "letterbox")
            if resize != "letterbox":
                raise BundleError(f"X-ray bundle preprocessing resize {resize!r} is not supported (letterbox)")
            p = bundle.preprocessing
            if p.height != p.width:
                raise BundleError(f"X-ray bundle input must be square, not {p.width}x{p.height}")
        elif not set(XR_MEASURES) <= set(names):
            raise BundleError(f"X-ray bundle {bundle.path} outputs {', '.join(names)}, not ai_deg and ce_deg")
        super().__init__(bundle, adapter)
        self.names = names
        self.index = {n: names.index(n) for n in XR_OUTPUT_NAMES} if self.whole_pelvis else {}
        outputs = bundle.manifest.get("outputs", {})
        self.landmark_names = tuple(outputs.get("landmarks", {}).get("names", ()))
        source = outputs.get("ihdi_logits", {}).get("source")
        self.ihdi_source = (source if source in ("geometry", "class_head") else "model") if self.whole_pelvis else None
        from sonogate.calibration.calfile import load_calibration

        path = bundle.calibration_path
        self.calibration = load_calibration(path, bundle_hash=bundle.bundle_hash) if path.exists() else None
        self.calibration_sha256 = sha256_file(path) if self.calibration is not None else None
        self.thresholds = dict(XR_THRESHOLDS)
        if self.calibration is not None:
            self.thresholds.update({k: float(v) for k, v in self.calibration.thresholds.items() if k in XR_THRESHOLDS})

    def image_input(self, spec: InputSpec) -> InputSpec:
        # one-hip bundles stretch each half-image crop, whatever the task's default
        if not self.whole_pelvis and "resize" not in (self.bundle.manifest.get("preprocessing") or {}):
            return replace(spec, resize="stretch")
        return spec

    # -- raw prediction ----------------------------------------------------------------------------------------
    def tensor(self, frame: np.ndarray) -> tuple[np.ndarray, Letterbox | None]:
        """(1, C, S, S) float32 model input and the letterbox of a gray / BGR / BGRA uint8 image."""
        return self.preprocessor.with_meta(frame)

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> XrPrediction:
        box = next(iter(meta["letterbox"].values()))
        raw = np.asarray(outputs["measurements"], dtype=np.float64).reshape(-1)
        values = {n: float(raw[i]) for n, i in self.index.items()}
        ihdi = outputs.get("ihdi_logits")
        ihdi = None if ihdi is None else np.asarray(ihdi, dtype=np.float64).reshape(2, len(IHDI_GRADES))
        landmarks = None
        if "landmarks" in outputs and self.landmark_names:
            pts = box.to_image(np.asarray(outputs["landmarks"], dtype=np.float64).reshape(-1, 2))
            landmarks = {n: (float(x_), float(y_)) for n, (x_, y_) in zip(self.landmark_names, pts)}
        return XrPrediction(values=values, ihdi_logits=ihdi, landmarks=landmarks, letterbox=box)

    def predict(self, frame: np.ndarray) -> XrPrediction:
        """Raw prediction for a gray or BGR uint8 radiograph in the orientation the model expects (whole pelvis)."""
        if not self.whole_pelvis:
            raise BundleError(f"bundle {self.bundle.path} is not a whole-pelvis X-ray bundle")
        return self(frame)

    # -- calibrated, per hip ---------------------------------------------------------------------------------
    def algorithm(self):
        from sonogate.runtime.dicom_report import AlgorithmInfo

        return AlgorithmInfo(bundle_sha256=self.bundle.bundle_hash, calibration_sha256=self.calibration_sha256,
                             device=self.device_name, task=self.bundle.task or XR_TASK,
                             delta=None if self.calibration is None else float(self.calibration.delta))

    def _bounded(self, name: str, value: float) -> dict[str, float | None]:
        """{value, lower_bound, upper_bound} of one raw prediction after the calibration (None = absent)."""
        entry: dict[str, float | None] = {"value": None, "lower_bound": None, "upper_bound": None}
        if math.isfinite(value):
            cal = None if self.calibration is None else self.calibration.measurements.get(name)
            if cal is None:
                entry["value"] = _round(value)
            else:
                entry["value"] = _round(cal.corrected(value))
                entry["lower_bound" if cal.side == "lower" else "upper_bound"] = _round(cal.bound(value))
        return entry

    def measure_hip(self, crop_bgr: np.ndarray) -> dict[str, dict[str, float | None]]:
        """One-hip bundles: AI and CE of one (right-facing) hip crop."""
        feeds, _ = self.preprocess(crop_bgr)
        outputs = self.adapter.infer_sync(feeds)
        raw = np.asarray(outputs["measurements"], dtype=np.float64).reshape(-1)
        return {name: self._bounded(name, float(value)) for name, value in zip(self.names, raw)
                if name in XR_MEASURES}

    def _verdict(self, hip: dict) -> None:
        ai = (hip.get("ai_deg") or {}).get("upper_bound")
        ce = (hip.get("ce_deg") or {}).get("lower_bound")
        values = {m: (hip.get(m) or {}).get("value") for m in XR_MEASURES}
        value, reason = hip_verdict(ai, ce, (hip.get("ihdi") or {}).get("grade"), self.thresholds, values)
        hip["verdict"] = {"value": value, "reason": reason}

    def measure(self, frame_bgr: np.ndarray, image: Any | None, notes: list[str]) -> dict[str, dict]:
        """Per hip ("right", "left") the calibrated measurements and verdict of one radiograph. ``image``: the
        DicomImage (for Patient Orientation) or None; ``notes`` receives one line per assumption made."""
        row_direction = ((image.patient_orientation if image is not None else None) or ("",))[0][:1]
        swapped = row_direction == "R"  # rows run toward the patient's right: the image's left is the patient's left
        if not swapped and row_direction != "L":
            notes.append("no Patient Orientation: assumed the radiographic convention (patient's right on the "
                         "image's left)")
        if not self.whole_pelvis:
            width = frame_bgr.shape[1]
            half = width // 2
            left_half, right_half = frame_bgr[:, :half], frame_bgr[:, width - half:]
            patient_right, patient_left = (right_half, left_half) if swapped else (left_half, right_half)
            hips = {"right": self.measure_hip(np.ascontiguousarray(patient_right)),
                    "left": self.measure_hip(np.ascontiguousarray(patient_left[:, ::-1]))}
        else:
            view = np.ascontiguousarray(frame_bgr[:, ::-1]) if swapped else frame_bgr
            pred = self.predict(view)
            hips = {}
            for side in SIDES:
                hips[side] = {m: self._bounded(m, pred.values[f"{m}_{side}"]) for m in XR_MEASURES}
                hips[side]["raw"] = {m: _round(pred.values[f"{m}_{side}"]) for m in XR_MEASURES}
                hips[side]["ihdi"] = {"grade": pred.ihdi_grade(side), "source": self.ihdi_source}
                if pred.landmarks:
                    suffix = f"_{side[0]}"
                    points = {n[: -len(suffix)]: p for n, p in pred.landmarks.items() if n.endswith(suffix)}
                    xy = np.array(list(points.values()), dtype=np.float64).reshape(-1, 2)
                    if swapped:
                        xy = mirror_points(xy, frame_bgr.shape[1])
                    hips[side]["landmarks"] = {n: [round(float(x), 2), round(float(y), 2)]
                                               for n, (x, y) in zip(points, xy)}
        for hip in hips.values():
            self._verdict(hip)
        return hips

    # -- one case of ``sonogate analyze`` ----------------------------------------------------------------------
    def analyze(self, frame_bgr: np.ndarray, image: Any | None, notes: list[str]) -> dict[str, Any]:
        """The analysis result of one radiograph: per hip measurements, bounds, IHDI and verdict (``hips``), and
        the radiograph's outcome (``recommendation``, the spec's decision unit is the image): "normal within
        bounds" only when the bundle is calibrated and both hips are normal within their bounds, else "abnormal
        or uncertain" with the hips' reasons."""
        hips = self.measure(frame_bgr, image, notes)
        if self.calibration is None:
            notes.append("X-ray bundle has no calibration: values without bounds")
        recommendation, reason = image_decision(hips, calibrated=self.calibration is not None)
        return {"recommendation": recommendation, "reason": reason, "hips": hips}

    def report_groups(self, result: Mapping[str, Any]) -> list:
        """The DICOM SR measurement groups of an ``analyze`` result (one per hip)."""
        from sonogate.tasks.hip_xr.report import report_groups

        return report_groups(result["hips"], None if self.calibration is None else float(self.calibration.delta))

    def annotate(self, frame_bgr: np.ndarray, result: Mapping[str, Any], image: Any | None) -> np.ndarray:
        """The radiograph with landmarks, lines and the per-hip panel (the DICOM SC)."""
        from sonogate.tasks.hip_xr.report import render_radiograph

        return render_radiograph(frame_bgr, result["hips"], image)


def XrPredictor(bundle: Bundle | str | Path, device: str = "auto", threads: int = 1,
                precision: str = "auto") -> HipXrPelvisModel:
    """The whole-pelvis X-ray model of ``bundle`` (``predict(frame) -> XrPrediction``); kept for former callers."""
    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if not is_whole_pelvis(bundle):
        raise BundleError(f"bundle {bundle.path} is not a whole-pelvis X-ray bundle (task {bundle.task!r})")
    model = create_model(bundle, device=device, threads=threads, precision=precision)
    if not isinstance(model, HipXrPelvisModel):
        raise BundleError(f"bundle {bundle.path} is not an X-ray bundle (task {bundle.task!r})")
    return model
