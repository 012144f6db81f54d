"""The ``bmd`` runtime wrapper (model type "per_hip_regression"): one AP hip / pelvis radiograph in; per hip the
femoral-neck BMD (g/cm2) with its conformal interval, the T-score and the screening call out, or a refusal.

``create_model`` builds ``BmdModel`` for a bmd bundle (the spec's ``parts["model_wrapper"]``). The graph
(``net.BmdNet``) finds the neck itself: landmarks, an in-field logit and a heatmap peak per hip, the ROI in the
graph, the raw BMD and the embedding per hip. This wrapper (numpy only):

* refuses the whole radiograph (``DataError``, one line) when it is blank (gray SD < ``image_std_min``), saturated
  (share of pixels at 0 or 255 > ``image_clipped_max``), unlike the training radiographs by its image statistics
  (``sonogate.runtime.image_stats`` Mahalanobis distance above the 99.5th percentile of validation radiographs:
  another modality, another anatomy, an uncalibrated device), when the hips come in the wrong order (mirrored) or
  when no hip passes the hip checks;
* refuses one hip (its row: status "error", no BMD) when the hip is not in the field (in-field probability,
  ROI outside the image content), its landmarks are not found (heatmap peak below the bundle's threshold, neck
  distance outside the training range) or its embedding is out of
  distribution (Mahalanobis distance above the 99.5th percentile of validation hips, ``ood.npz``);
* applies calibration.json: corrected BMD = a x raw + b, interval corrected +- radius (conformal, one score per
  radiograph: the interval holds for both of its hips with probability >= 1 - delta), T-score and its bounds
  from the NHANES III young-female reference (0.858 +- 0.120 g/cm2);
* calls per hip "no referral" only when the T-score of the screening bound is above the threshold (-2.5:
  osteoporosis ruled out with the guarantee; the screening bound is ``bmd_g_cm2_decision``, whose radius is
  calibrated on osteoporotic hips only, so P(an osteoporotic hip is cleared) <= delta; without it the interval's
  lower bound; a site may set -1.0 in calibration.json ``thresholds.t_score`` to rule out
  osteopenia instead), else "DEXA referral" - also on any doubt: no calibration, a refused hip, an implausible
  value.

Device scope: calibration.json ``guarantee.devices`` lists the acquisition devices its guarantees hold for
("Manufacturer ManufacturerModelName" as DICOM states them; the phantom's devices are "sonogate phantom A" ... "D").
A DICOM radiograph of a device not in the list gets its BMD (corrected) without bounds and "DEXA referral" for
every hip: the calibration says nothing about that device until ``sonogate bmd recalibrate --device`` covers it.
An input without a device (PNG, or DICOM without both attributes) cannot be checked: the record notes it. No list
(``devices`` absent or null): not bound.

Sides: "right" is the patient's right hip, on the image's left (radiographic convention); a DICOM Patient
Orientation whose row direction is "R" mirrors the image first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np

from sonogate.core.bundle import Bundle, sha256_file
from sonogate.errors import BundleError, DataError
from sonogate.runtime.model_api import InferenceAdapter, InputModel
from sonogate.tasks.bmd.spec import TASK

SIDES = ("right", "left")
YOUNG_FEMALE_MEAN_G_CM2 = 0.858
YOUNG_FEMALE_SD_G_CM2 = 0.120
T_THRESHOLD = float(next(m.threshold for m in TASK.measurements if m.name == "t_score"))
PLAUSIBLE_BMD = tuple(next(m.plausible_range for m in TASK.measurements if m.name == "bmd_g_cm2"))
NO_REFERRAL, REFERRAL = TASK.decision.reassuring[0], TASK.decision.safe_default
OSTEOPENIA_T = -1.0
DEFAULT_CHECKS = {"in_field_min_probability": 0.5, "landmark_peak_min": 0.0, "neck_distance_range": [0.0, 1.0],
                  "ood_threshold": None, "image_ood_threshold": None, "image_std_min": 0.03, "image_clipped_max": 0.5}


def device_name(text: Any) -> str:
    """A device name with its blanks collapsed ("ACME  DR-1 " -> "ACME DR-1"); "" when there is none."""
    return " ".join(str(text or "").split())


def device_key(name: str) -> str:
    """Device names compare without case and repeated blanks ("SIEMENS  Ysio" == "Siemens Ysio")."""
    return device_name(name).casefold()


def acquisition_device(image: Any | None) -> str | None:
    """"Manufacturer ManufacturerModelName" of a DICOM input (None: not DICOM, or the header names neither)."""
    header = getattr(image, "header", None)
    if header is None:
        return None
    return device_name(" ".join(str(header.get(k, "") or "") for k in ("Manufacturer", "ManufacturerModelName"))) \
        or None


def t_score(bmd_g_cm2: float) -> float:
    return (bmd_g_cm2 - YOUNG_FEMALE_MEAN_G_CM2) / YOUNG_FEMALE_SD_G_CM2


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


@dataclass
class HipReading:
    """Raw graph outputs of one hip, in model-input units (landmarks in [0, 1])."""

    bmd: float
    head: np.ndarray
    neck: np.ndarray
    in_field: float
    peak: float
    ood_distance: float | None


def image_problem(gray: np.ndarray, checks: Mapping[str, Any]) -> str | None:
    """Why a gray uint8 radiograph cannot be read at all (blank, saturated), or None."""
    g = gray.astype(np.float32) / 255.0
    if float(g.std()) < float(checks["image_std_min"]):
        return f"blank image (gray SD {g.std():.3f} < {checks['image_std_min']}): no radiograph to read"
    clipped = float(np.mean((gray == 0) | (gray == 255)))
    if clipped > float(checks["image_clipped_max"]):
        return f"saturated image ({clipped:.0%} of pixels at 0 or 255): no BMD can be read from it"
    return None


def hip_problem(side: str, hip: HipReading, content: tuple[float, float, float, float],
                checks: Mapping[str, Any]) -> str | None:
    """Why one hip is refused (module docstring), or None. ``content``: (x0, y0, x1, y1) of the image inside the
    letterboxed model input, [0, 1]."""
    from sonogate.tasks.bmd.spec import ROI_SCALE  # not net.py: that is torch, and this runs without it

    if not math.isfinite(hip.bmd) or not np.all(np.isfinite(hip.head)) or not np.all(np.isfinite(hip.neck)):
        return f"{side} hip: no reading (non-finite model output)"
    if hip.in_field < float(checks["in_field_min_probability"]):
        return f"{side} hip: not fully in the field of view (in-field probability {hip.in_field:.2f})"
    x0, y0, x1, y1 = content
    d = hip.neck - hip.head
    dist = float(np.hypot(*d))
    half = ROI_SCALE * dist
    for point in (hip.head, hip.neck):
        if not (x0 <= point[0] <= x1 and y0 <= point[1] <= y1):
            return f"{side} hip: femoral head or neck outside the image"
    if hip.neck[0] - half < x0 - 0.02 or hip.neck[0] + half > x1 + 0.02 or hip.neck[1] - half < y0 - 0.02 \
            or hip.neck[1] + half > y1 + 0.02:
        return f"{side} hip: the neck region reaches beyond the image edge (hip not fully in the field)"
    if hip.peak < float(checks["landmark_peak_min"]):
        return f"{side} hip: femoral neck not found (landmark confidence {hip.peak:.3f} < {checks['landmark_peak_min']})"
    low, high = checks["neck_distance_range"]
    if not low <= dist <= high:
        return f"{side} hip: femoral neck not found (head-to-neck distance {dist:.3f} outside {low:.3f}..{high:.3f})"
    threshold = checks.get("ood_threshold")
    if threshold is not None and hip.ood_distance is not None and hip.ood_distance > float(threshold):
        return (f"{side} hip: image unlike the training radiographs (feature distance {hip.ood_distance:.1f} > "
                f"{float(threshold):.1f})")
    if not PLAUSIBLE_BMD[0] <= hip.bmd <= PLAUSIBLE_BMD[1]:
        return f"{side} hip: implausible BMD {hip.bmd:.3f} g/cm2 (unreliable reading)"
    return None


def referral(lower_t: float | None, threshold: float = T_THRESHOLD) -> tuple[str, str]:
    """(referral, reason) of one hip from the T-score's calibrated lower bound (None: no bound)."""
    if lower_t is None or not math.isfinite(lower_t):
        return REFERRAL, "no finite calibrated bound: refer on doubt"
    if lower_t > threshold:
        extra = "" if lower_t > OSTEOPENIA_T else f"; osteopenia (T <= {OSTEOPENIA_T:g}) not ruled out"
        return NO_REFERRAL, f"T-score lower bound {lower_t:.2f} > {threshold:g}: osteoporosis ruled out{extra}"
    return REFERRAL, f"T-score lower bound {lower_t:.2f} <= {threshold:g}: osteoporosis not ruled out"


class BmdModel(InputModel):
    """A bmd bundle with its calibration.json and ood.npz (module docstring)."""

    model_type: ClassVar[str] = TASK.model_type

    def __init__(self, bundle: Bundle, adapter: InferenceAdapter):
        super().__init__(bundle, adapter)
        missing = [n for n in ("bmd", "landmarks", "in_field_logit", "landmark_peak") if n not in adapter.output_names]
        if missing:
            raise BundleError(f"bmd bundle {bundle.path} lacks outputs {', '.join(missing)}")
        self.checks = {**DEFAULT_CHECKS, **(self.manifest.get("runtime_checks") or {})}
        ood_path = Path(bundle.path) / "ood.npz"
        self.ood = None
        if ood_path.is_file():
            with np.load(ood_path) as data:
                self.ood = {"mean": data["mean"].astype(np.float64), "precision": data["precision"].astype(np.float64),
                            "threshold": float(data["threshold"])}
                if "image_mean" in data:
                    self.ood.update({"image_mean": data["image_mean"].astype(np.float64),
                                     "image_precision": data["image_precision"].astype(np.float64),
                                     "image_threshold": float(data["image_threshold"])})
            if self.checks.get("image_ood_threshold") is None and "image_threshold" in self.ood:
                self.checks["image_ood_threshold"] = self.ood["image_threshold"]
            if self.checks.get("ood_threshold") is None:
                self.checks["ood_threshold"] = self.ood["threshold"]
        from sonogate.calibration.calfile import load_calibration

        path = bundle.calibration_path
        self.calibration = load_calibration(path, bundle_hash=bundle.bundle_hash) if path.exists() else None
        self.calibration_sha256 = sha256_file(path) if self.calibration is not None else None
        self.threshold = T_THRESHOLD
        devices = None if self.calibration is None else self.calibration.guarantee.get("devices")
        self.devices = None if devices is None else [str(d) for d in devices]
        self.device_keys = None if devices is None else {device_key(d) for d in self.devices}
        if self.calibration is not None and "t_score" in self.calibration.thresholds:
            self.threshold = float(self.calibration.thresholds["t_score"])

    # -- raw reading ---------------------------------------------------------------------------------------
    def image_distance(self, tensor: np.ndarray) -> float | None:
        """Mahalanobis distance of the model input's image statistics to the training radiographs (None: the bundle
        has no image statistics)."""
        if self.ood is None or "image_mean" not in self.ood:
            return None
        from sonogate.calibration.ood import mahalanobis
        from sonogate.runtime.image_stats import ImageStats

        p = self.bundle.preprocessing
        descriptor = ImageStats()(np.asarray(tensor, dtype=np.float32), mean=p.mean, std=p.std)
        return float(mahalanobis(descriptor[None], self.ood["image_mean"], self.ood["image_precision"])[0])

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, Any]:
        box = next(iter(meta["letterbox"].values()))
        bmd = np.asarray(outputs["bmd"], dtype=np.float64).reshape(2)
        lm = np.asarray(outputs["landmarks"], dtype=np.float64).reshape(4, 2)
        in_field = 1.0 / (1.0 + np.exp(-np.asarray(outputs["in_field_logit"], dtype=np.float64).reshape(2)))
        peak = np.asarray(outputs["landmark_peak"], dtype=np.float64).reshape(4)
        feats = outputs.get("features")
        hips = {}
        for s, side in enumerate(SIDES):
            distance = None
            if self.ood is not None and feats is not None:
                from sonogate.calibration.ood import mahalanobis

                f = np.asarray(feats, dtype=np.float64).reshape(2, -1)[s:s + 1]
                distance = float(mahalanobis(f, self.ood["mean"], self.ood["precision"])[0])
            hips[side] = HipReading(bmd=float(bmd[s]), head=lm[2 * s], neck=lm[2 * s + 1], in_field=float(in_field[s]),
                                    peak=float(min(peak[2 * s], peak[2 * s + 1])), ood_distance=distance)
        tensor = next(iter(meta["tensors"].values()))
        return {"hips": hips, "letterbox": box, "image_distance": self.image_distance(tensor)}

    def algorithm(self):
        from sonogate.runtime.dicom_report import AlgorithmInfo

        return AlgorithmInfo(bundle_sha256=self.bundle.bundle_hash, calibration_sha256=self.calibration_sha256,
                             device=self.device_name, task=self.bundle.task or TASK.id,
                             delta=None if self.calibration is None else float(self.calibration.delta),
                             rule=TASK.decision.rule)

    def device_problem(self, image: Any | None, notes: list[str]) -> str | None:
        """Why the calibration does not hold for this input's device (None: it does, or cannot be checked)."""
        if self.devices is None or self.calibration is None:
            return None
        device = acquisition_device(image)
        if device is None:
            notes.append("acquisition device unknown (no DICOM Manufacturer / model): the calibration's devices ("
                         + ", ".join(self.devices) + ") assumed")
            return None
        if device_key(device) in self.device_keys:
            return None
        return (f"calibration does not cover device {device!r} (calibrated for: {', '.join(self.devices)}): "
                "no bounds; recalibrate the bundle for this device (sonogate bmd recalibrate --device)")

    def _bounds(self, raw: float, covered: bool = True) -> dict[str, float | None]:
        """Corrected BMD and its interval (None bounds without calibration, for a device the calibration does not
        cover, or with an infinite radius)."""
        cal = None if self.calibration is None else self.calibration.measurements.get("bmd_g_cm2")
        upper_cal = None if self.calibration is None else self.calibration.measurements.get("bmd_g_cm2_upper")
        if cal is None:
            return {"value": raw, "lower_bound": None, "upper_bound": None}
        if not covered:
            return {"value": cal.corrected(raw), "lower_bound": None, "upper_bound": None}
        lower = cal.bound(raw)
        upper = upper_cal.bound(raw) if upper_cal is not None else math.inf
        decision_cal = self.calibration.measurements.get("bmd_g_cm2_decision", cal)
        decision = decision_cal.bound(raw)
        return {"value": cal.corrected(raw), "lower_bound": lower if math.isfinite(lower) else None,
                "upper_bound": upper if math.isfinite(upper) else None,
                "decision_bound": decision if math.isfinite(decision) else None}

    # -- one radiograph -----------------------------------------------------------------------------------
    def analyze(self, frame_bgr: np.ndarray, image: Any | None, notes: list[str]) -> dict[str, Any]:
        """The result of one radiograph: per hip a row (side, BMD, interval, T-score, referral) or a refusal."""
        if frame_bgr is None or not isinstance(frame_bgr, np.ndarray) or frame_bgr.ndim not in (2, 3) \
                or frame_bgr.size == 0:
            raise DataError("not an image")
        gray = frame_bgr if frame_bgr.ndim == 2 else cv2.cvtColor(frame_bgr[..., :3], cv2.COLOR_BGR2GRAY)
        problem = image_problem(gray, self.checks)
        if problem:
            raise DataError(problem)
        row_direction = ((getattr(image, "patient_orientation", None) if image is not None else None) or ("",))[0][:1]
        swapped = row_direction == "R"
        if not swapped and row_direction != "L":
            notes.append("no Patient Orientation: assumed the radiographic convention (patient's right on the "
                         "image's left)")
        view = np.ascontiguousarray(gray[:, ::-1]) if swapped else gray
        reading = self(view)
        distance, limit = reading["image_distance"], self.checks.get("image_ood_threshold")
        if distance is not None and limit is not None and distance > float(limit):
            raise DataError(f"image unlike the training radiographs (image-statistics distance {distance:.1f} > "
                            f"{float(limit):.1f}): not an AP hip radiograph of a calibrated device")
        uncovered = self.device_problem(image, notes)
        box = reading["letterbox"]
        h, w = view.shape[:2]
        content = ((box.pad_x) / box.side, (box.pad_y) / box.side, (box.pad_x + w) / box.side,
                   (box.pad_y + h) / box.side)
        hips_out: dict[str, dict] = {}
        problems = {}
        for side in SIDES:
            hip = reading["hips"][side]
            problems[side] = hip_problem(side, hip, content, self.checks)
            entry: dict[str, Any] = {"raw_bmd_g_cm2": _round(hip.bmd), "in_field_probability": _round(hip.in_field, 3),
                                     "landmark_peak": _round(hip.peak, 4), "ood_distance": _round(hip.ood_distance, 2)}
            points = box.to_image(np.stack([hip.head, hip.neck]))
            if swapped:
                points[:, 0] = w - 1 - points[:, 0]
            entry["landmarks"] = {"head_center": [round(float(points[0, 0]), 1), round(float(points[0, 1]), 1)],
                                  "neck_box_center": [round(float(points[1, 0]), 1), round(float(points[1, 1]), 1)]}
            if problems[side] is None:
                b = self._bounds(hip.bmd, covered=uncovered is None)
                decision_bound = b.pop("decision_bound", None)
                t = {k: None if v is None else t_score(v) for k, v in b.items()}
                decision, reason = referral(None if decision_bound is None else t_score(decision_bound),
                                            self.threshold)
                if uncovered:
                    decision, reason = REFERRAL, uncovered
                entry.update({"bmd_g_cm2": {k: _round(v) for k, v in b.items()},
                              "t_score": {k: _round(v, 2) for k, v in t.items()},
                              "decision_bound_g_cm2": _round(decision_bound),
                              "referral": decision, "reason": reason})
            else:
                entry.update({"bmd_g_cm2": None, "t_score": None, "referral": REFERRAL, "refused": problems[side],
                              "reason": f"refused: {problems[side]}"})
            hips_out[side] = entry
        right, left = reading["hips"]["right"], reading["hips"]["left"]
        if problems["right"] is None and problems["left"] is None and right.neck[0] >= left.neck[0]:
            raise DataError("the right hip was found right of the left one: not an AP pelvis in radiographic "
                            "convention (mirrored image?)")
        if all(problems.values()):
            raise DataError("no hip could be read (not an AP hip radiograph?): "
                            + "; ".join(problems[s] for s in SIDES))
        if self.calibration is None:
            notes.append("bmd bundle has no calibration.json: values without intervals, every hip referred")
        rows = []
        for side in SIDES:
            entry = hips_out[side]
            bmd, ts = entry.get("bmd_g_cm2") or {}, entry.get("t_score") or {}
            row = {"side": side, "bmd_g_cm2": bmd.get("value"), "bmd_lower": bmd.get("lower_bound"),
                   "bmd_upper": bmd.get("upper_bound"), "t_score": ts.get("value"), "referral": entry["referral"],
                   "reason": entry["reason"]}
            if entry.get("refused"):
                row.update({"status": "error", "error": entry["refused"]})
            rows.append(row)
        referred = [s for s in SIDES if hips_out[s]["referral"] == REFERRAL]
        recommendation = REFERRAL if referred else NO_REFERRAL
        reason = ("; ".join(f"{s}: {hips_out[s]['reason']}" for s in SIDES))
        return {"recommendation": recommendation, "reason": reason, "columns": {}, "rows": rows, "hips": hips_out}

    def report_groups(self, result: Mapping[str, Any]) -> list:
        """One DICOM SR group per hip: BMD and T-score with their bounds, the referral and its reason."""
        from sonogate.runtime.dicom_report import ReportGroup

        delta = None if self.calibration is None else float(self.calibration.delta)
        groups = []
        for side in SIDES:
            hip = result["hips"][side]
            measurements = {}
            if hip.get("bmd_g_cm2"):
                measurements = {"bmd_g_cm2": dict(hip["bmd_g_cm2"]), "t_score": dict(hip["t_score"])}
            groups.append(ReportGroup(label=f"{side} hip", measurements=measurements,
                                      recommendation=hip["referral"], reason=hip["reason"],
                                      laterality=side[0].upper(), delta=delta))
        return groups

    def annotate(self, frame_bgr: np.ndarray, result: Mapping[str, Any], image: Any | None) -> np.ndarray:
        """The radiograph with the found femoral heads / necks and a per-hip panel (the DICOM SC)."""
        frame = frame_bgr if frame_bgr.ndim == 3 else cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
        height, width = frame.shape[:2]
        panel = 340
        canvas = np.full((max(height, 260), width + panel, 3), 24, dtype=np.uint8)
        canvas[:height, :width] = frame[..., :3]
        font = cv2.FONT_HERSHEY_SIMPLEX
        thick = max(1, round(max(height, width) / 400))
        x0, y = width + 12, 26
        cv2.putText(canvas, "Femoral-neck BMD", (x0, y), font, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        y += 28
        for side, colour in (("right", (80, 220, 80)), ("left", (80, 160, 255))):
            hip = result["hips"][side]
            head, neck = hip["landmarks"]["head_center"], hip["landmarks"]["neck_box_center"]
            if not hip.get("refused"):
                cv2.line(canvas, (round(head[0]), round(head[1])), (round(neck[0]), round(neck[1])), colour, thick,
                         cv2.LINE_AA)
                cv2.circle(canvas, (round(neck[0]), round(neck[1])), 3 * thick + 1, colour, -1, cv2.LINE_AA)
            cv2.putText(canvas, f"{side} hip", (x0, y), font, 0.55, (230, 230, 230), 1, cv2.LINE_AA)
            y += 22
            if hip.get("bmd_g_cm2"):
                b, t = hip["bmd_g_cm2"], hip["t_score"]
                lo, hi = b.get("lower_bound"), b.get("upper_bound")
                text = f"BMD {b['value']:.3f} g/cm2" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None
                                                        else "")
                cv2.putText(canvas, text, (x0, y), font, 0.45, colour, 1, cv2.LINE_AA)
                y += 20
                cv2.putText(canvas, f"T-score {t['value']:.2f}", (x0, y), font, 0.45, colour, 1, cv2.LINE_AA)
                y += 20
            else:
                cv2.putText(canvas, "refused: no BMD", (x0, y), font, 0.45, (0, 0, 255), 1, cv2.LINE_AA)
                y += 20
            cv2.putText(canvas, hip["referral"], (x0, y), font, 0.5, (0, 200, 255), 1, cv2.LINE_AA)
            y += 30
        cv2.putText(canvas, "screening estimate, not a DEXA result", (x0, canvas.shape[0] - 12), font, 0.38,
                    (150, 150, 150), 1, cv2.LINE_AA)
        return canvas
