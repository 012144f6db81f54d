"""The ``rust`` runtime wrapper (model type "multi_view_ordinal"): an AP and a lateral tibial radiograph in; per
cortex the RUST grade 1-3 with its calibrated set, the total with its conformal interval and the union call out
(``sonogate analyze`` columns ``ap_medial``, ``ap_lateral``, ``lat_anterior``, ``lat_posterior``, ``rust_total``,
``rust_total_lower``, ``rust_total_upper``, ``union``).

Preprocessing: a bundle whose manifest ``preprocessing.crop`` is "shaft" gets each view cut to the tibial shaft
strip first (``sonogate.tasks.rust.shaft.shaft_strip``, the same step as in training), then stretched (an identity
resize) and normalised as the input spec says; otherwise each view is letterboxed.

Refusals (one-line ``DataError``, no score): a view missing; a view that is colour, blank or unlike the training
radiographs (image statistics / feature distances, ``ood.npz``); the two files being the same image; the views
swapped (the "ap" file looking more lateral than the "lat" file beyond a margin, by a logistic view classifier on
image descriptors fitted at export; ``sonogate.runtime.radiograph_checks``).

Calibration (``calibration.json``, ``sonogate.calibration.ordinal_calfile``): LAC class sets per cortex with the
per-case maximum score (all four sets of a case hold their true grades with probability >= 1 - delta) and a
conformal interval on the total around the sum of the cortex grades (covers the true total with probability
>= 1 - delta per case). "united" only when the interval's lower end is >= 10 (the spec's threshold) and no
cortex's set holds grade 1 or is empty; anything else, and a bundle without calibration, is "not united".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from sonogate.calibration.class_sets import set_to_text
from sonogate.core.bundle import Bundle
from sonogate.errors import DataError
from sonogate.runtime.model_api import InferenceAdapter
from sonogate.runtime.ordinal_model import OrdinalRadiographModel
from sonogate.runtime.overlay import text_panel
from sonogate.runtime.radiograph_checks import check_gray_radiograph
from sonogate.tasks.rust.spec import CORTICES, TASK

GRADES = (1, 2, 3)
VIEWS = ("ap", "lat")
UNITED, NOT_UNITED = TASK.decision.reassuring[0], TASK.decision.safe_default
UNION_THRESHOLD = float(TASK.measurement("rust_total").threshold)
# Mean absolute grey-level difference (of 64 x 64 thumbnails) below which two views are one image.
SAME_IMAGE_LIMIT = 3.0


def median_grades(probabilities: np.ndarray) -> np.ndarray:
    """(..., 3) class probabilities -> (...) RUST grades 1-3: the ordinal median (the training rule)."""
    return np.argmax(np.cumsum(probabilities, axis=-1) >= 0.5 - 1e-9, axis=-1) + GRADES[0]


def union_call(total_lower: int | None, sets: np.ndarray | None) -> tuple[str, str]:
    """("united" or "not united", reason) from the interval's lower end and the (4, 3) per-cortex sets."""
    if total_lower is None or sets is None:
        return NOT_UNITED, "no calibration: union is never called"
    problems = []
    if total_lower < UNION_THRESHOLD:
        problems.append(f"the total may be as low as {total_lower} (< {UNION_THRESHOLD:g})")
    unbridged = [c for c, s in zip(CORTICES, sets) if s[0]]
    if unbridged:
        problems.append("grade 1 (fracture line, no callus) is plausible at " + ", ".join(unbridged))
    empty = [c for c, s in zip(CORTICES, sets) if not s.any()]
    if empty:
        problems.append("no grade is plausible at " + ", ".join(empty))
    if problems:
        return NOT_UNITED, "; ".join(problems)
    return UNITED, f"total >= {total_lower} >= {UNION_THRESHOLD:g} and every cortex at grade 2 or more"


def _thumbnail(gray: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)


class RustModel(OrdinalRadiographModel):
    """A rust bundle with its calibration.json and ood.npz (module docstring)."""

    model_type: ClassVar[str] = "multi_view_ordinal"
    logits_output: ClassVar[str] = "cortex_logits"

    def __init__(self, bundle: Bundle, adapter: InferenceAdapter):
        super().__init__(bundle, adapter)
        self._norm = {spec.name: (spec.mean, spec.std) for spec in self.inputs}
        # bundles trained on shaft strips (sonogate.tasks.rust.shaft) say so in their preprocessing block
        self.crop = (bundle.manifest.get("preprocessing") or {}).get("crop", "letterbox")
        self._shape = {spec.name: (spec.height, spec.width) for spec in self.inputs}

    def preprocess(self, inputs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Views by name -> graph feeds; a shaft-strip bundle first cuts each view's strip (as in training)."""
        if self.crop == "shaft" and isinstance(inputs, Mapping):
            import cv2

            from sonogate.tasks.rust.shaft import shaft_strip

            strips = {}
            for name, frame in inputs.items():
                gray = frame if frame.ndim == 2 else cv2.cvtColor(frame[..., :3], cv2.COLOR_BGR2GRAY)
                strips[name] = shaft_strip(np.ascontiguousarray(gray, dtype=np.uint8), *self._shape[name])[0]
            inputs = strips
        return super().preprocess(inputs)

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict:
        logits = np.asarray(outputs["cortex_logits"], dtype=np.float64).reshape(len(CORTICES), len(GRADES))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        feats = outputs.get("features")
        return {"probabilities": probs, "features": None if feats is None else np.asarray(feats).reshape(-1),
                "tensors": meta["tensors"]}

    def check_views(self, out: dict) -> dict:
        """Image statistics per view, features of the case, the view order; DataError on any failure."""
        from sonogate.runtime.radiograph_checks import view_descriptor

        checks: dict[str, Any] = {}
        if self.ood is None:
            return checks
        for view in VIEWS:
            d = self.ood.check(self.stats(out["tensors"][view], *self._norm[view]), None, f"{view} view")
            checks[f"{view}_image_distance"] = d["image_distance"]
        if out["features"] is not None:
            checks["feature_distance"] = self.ood.check(None, out["features"], "case")["feature_distance"]
        if self.ood.views is not None:
            z = {view: float(self.ood.views.logit(view_descriptor(out["tensors"][view], *self._norm[view],
                                                                   self.stats))[0]) for view in VIEWS}
            checks["view_order_margin"] = round(z["lat"] - z["ap"], 3)
            if z["ap"] - z["lat"] > self.ood.views.margin:
                raise DataError("the views look swapped: the 'ap' file looks like a lateral view and the 'lat' file "
                                "like an AP view; no score given")
        return checks

    def score(self, frames: Mapping[str, np.ndarray]) -> dict:
        """Both views -> {grades (4,), probabilities (4, 3), sets (4, 3) or None, total, lower, upper, checks}."""
        missing = [v for v in VIEWS if v not in frames]
        if missing:
            raise DataError(f"RUST needs an AP and a lateral view; missing: {', '.join(missing)}")
        grays = {}
        for view in VIEWS:
            frame = frames[view]
            if not isinstance(frame, np.ndarray):
                raise DataError(f"{view} view: not an image file")
            grays[view] = check_gray_radiograph(frame, f"{view} view")
        difference = float(np.mean(np.abs(_thumbnail(grays["ap"]) - _thumbnail(grays["lat"]))))
        if difference < SAME_IMAGE_LIMIT:
            raise DataError(f"the AP and lateral files are the same image (mean difference {difference:.1f} grey "
                            "levels): two different views are needed; no score given")
        out = self(grays)
        checks = self.check_views(out)
        probs = out["probabilities"]
        grades = median_grades(probs)
        total = int(grades.sum())
        sets = lower = upper = None
        if self.calibration is not None:
            sets = self.calibration.sets(probs)
            lo, hi = self.calibration.interval(np.array([float(total)]))
            lower, upper = int(lo[0]), int(hi[0])
        return {"grades": grades, "probabilities": probs, "sets": sets, "total": total, "lower": lower,
                "upper": upper, "checks": checks}

    def analyze(self, frames: Mapping[str, Any], sources: Any, notes: list[str]) -> dict[str, Any]:
        """One case (views "ap", "lat") -> {recommendation, reason, columns, cortex_sets, probabilities, checks}."""
        s = self.score(frames)
        if self.ood is None:
            notes.append("bundle has no ood.npz: the views were not checked against the training radiographs")
        if self.calibration is None:
            notes.append("rust bundle has no calibration: no sets or interval, union never called")
        recommendation, reason = union_call(s["lower"], s["sets"])
        columns = {name: int(g) for name, g in zip(CORTICES, s["grades"])}
        columns.update({"rust_total": s["total"], "rust_total_lower": s["lower"], "rust_total_upper": s["upper"],
                        "union": recommendation})
        result = {"recommendation": recommendation, "reason": reason, "columns": columns,
                  "probabilities": {c: [round(float(p), 4) for p in row] for c, row in zip(CORTICES, s["probabilities"])},
                  "checks": s["checks"]}
        if s["sets"] is not None:
            result["cortex_sets"] = {c: set_to_text(row, list(GRADES)) for c, row in zip(CORTICES, s["sets"])}
        return result

    def algorithm(self):
        from sonogate.runtime.dicom_report import AlgorithmInfo

        return AlgorithmInfo(bundle_sha256=self.bundle.bundle_hash, calibration_sha256=self.calibration_sha256,
                             device=self.device_name, task=self.task,
                             delta=None if self.calibration is None else self.calibration.delta,
                             rule="RUST interval lower >= 10 and no cortex set with grade 1")

    def report_groups(self, result: Mapping[str, Any]) -> list:
        """One SR group: each cortex grade (bounds: its set's lowest / highest grade) and the total with its
        interval; the union call as the recommendation."""
        from sonogate.runtime.dicom_report import ReportGroup

        columns = result["columns"]
        sets = result.get("cortex_sets") or {}
        measurements = {}
        for cortex in CORTICES:
            members = [int(t) for t in str(sets.get(cortex) or "").split("|") if t]
            measurements[cortex] = {"value": float(columns[cortex]),
                                    "lower_bound": float(min(members)) if members else None,
                                    "upper_bound": float(max(members)) if members else None}
        measurements["rust_total"] = {"value": float(columns["rust_total"]),
                                      "lower_bound": columns["rust_total_lower"],
                                      "upper_bound": columns["rust_total_upper"]}
        return [ReportGroup(label="tibia", measurements=measurements, recommendation=result.get("recommendation"),
                            reason=result.get("reason"),
                            delta=None if self.calibration is None else self.calibration.delta)]

    def annotate(self, frame_bgr: np.ndarray, result: Mapping[str, Any], image: Any | None) -> np.ndarray:
        """The AP film with the grades, sets, total and union call on a panel beside it (the DICOM SC)."""
        columns, sets = result["columns"], result.get("cortex_sets") or {}
        lines = [f"{c}: {columns[c]} {{{sets.get(c, '-')}}}" for c in CORTICES]
        lines += [f"RUST {columns['rust_total']} [{columns['rust_total_lower']}, {columns['rust_total_upper']}]",
                  str(columns["union"])]
        return text_panel(frame_bgr, lines, 360, 260, scale=0.6, first_baseline=32, line_step=30)
