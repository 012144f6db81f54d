"""The ``knee_kl`` runtime wrapper (model type "knee_kl_grade"): one knee radiograph in; the KL grade, its
calibrated grade set and the per-grade probabilities out (``sonogate analyze`` columns ``kl_grade``,
``kl_grade_set``).

Before any grade: the image must be a gray radiograph (not colour, not blank: ``check_gray_radiograph``) and look
like the training radiographs (image statistics and feature Mahalanobis distances under the thresholds in the
bundle's ``ood.npz``); otherwise ``analyze`` raises a one-line ``DataError`` and no score is given.

Decision per image: "graded" when the checks pass and the calibrated set (``calibration.json``, LAC class sets,
coverage >= 1 - delta by image) is neither empty nor every grade; else the safe default "refer to reader".
``kl_grade`` is the model's grade (median of the ordinal distribution, as trained); ``kl_grade_set`` the set as
"1|2". Without a calibration the set column stays empty and the decision is "refer to reader".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from sonogate.calibration.class_sets import set_to_text
from sonogate.core.bundle import Bundle
from sonogate.runtime.model_api import InferenceAdapter
from sonogate.runtime.ordinal_model import OrdinalRadiographModel
from sonogate.runtime.overlay import text_panel
from sonogate.runtime.radiograph_checks import check_gray_radiograph
from sonogate.tasks.knee_kl.spec import TASK

KL_GRADES = (0, 1, 2, 3, 4)
GRADED, REFER = TASK.decision.reassuring[0], TASK.decision.safe_default


def median_grade(probabilities: np.ndarray) -> int:
    """The grade whose cumulative probability first reaches 0.5 (the ordinal median, as the training rule)."""
    return int(KL_GRADES[int(np.argmax(np.cumsum(probabilities) >= 0.5 - 1e-9))])


class KneeKLModel(OrdinalRadiographModel):
    """A knee_kl bundle with its calibration.json and ood.npz (module docstring)."""

    model_type: ClassVar[str] = "knee_kl_grade"
    logits_output: ClassVar[str] = "kl_logits"

    def __init__(self, bundle: Bundle, adapter: InferenceAdapter):
        super().__init__(bundle, adapter)
        spec = self.inputs[0]
        self._norm = (spec.mean, spec.std)

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict:
        logits = np.asarray(outputs["kl_logits"], dtype=np.float64).reshape(-1)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        feats = outputs.get("features")
        return {"probabilities": probs, "features": None if feats is None else np.asarray(feats).reshape(-1),
                "tensor": next(iter(meta["tensors"].values()))}

    def grade(self, frame_bgr: np.ndarray, what: str = "image") -> dict:
        """Checks, model, set of one radiograph -> {grade, probabilities, set (bool (5,) or None), checks}."""
        gray = check_gray_radiograph(frame_bgr, what)
        out = self(gray)
        checks = {}
        if self.ood is not None:
            checks = self.ood.check(self.stats(out["tensor"], *self._norm), out["features"], what)
        probs = out["probabilities"]
        sets = None if self.calibration is None else self.calibration.sets(probs[None])[0]
        return {"grade": median_grade(probs), "probabilities": probs, "set": sets, "checks": checks}

    def analyze(self, frame_bgr: np.ndarray, image: Any | None, notes: list[str]) -> dict[str, Any]:
        """One knee radiograph -> {recommendation, reason, columns {kl_grade, kl_grade_set}, probabilities, ...}."""
        g = self.grade(frame_bgr, str(getattr(image, "name", "") or "image"))
        if self.ood is None:
            notes.append("bundle has no ood.npz: the input was not checked against the training radiographs")
        columns = {"kl_grade": g["grade"], "kl_grade_set": ""}
        if g["set"] is None:
            notes.append("knee bundle has no calibration: grade without a set")
            recommendation, reason = REFER, "no calibrated grade set"
        else:
            columns["kl_grade_set"] = set_to_text(g["set"], list(KL_GRADES))
            size = int(g["set"].sum())
            if size == 0:
                recommendation, reason = REFER, "no grade is plausible at the calibrated level (empty set)"
            elif size == len(KL_GRADES):
                recommendation, reason = REFER, "every grade is plausible (uninformative set)"
            else:
                recommendation = GRADED
                reason = (f"KL {g['grade']}; grades {columns['kl_grade_set']} cover the true grade for >= "
                          f"{1 - self.calibration.delta:.0%} of images")
        return {"recommendation": recommendation, "reason": reason, "columns": columns,
                "probabilities": {str(k): round(float(p), 4) for k, p in zip(KL_GRADES, g["probabilities"])},
                "checks": g["checks"]}

    def algorithm(self):
        from sonogate.runtime.dicom_report import AlgorithmInfo

        return AlgorithmInfo(bundle_sha256=self.bundle.bundle_hash, calibration_sha256=self.calibration_sha256,
                             device=self.device_name, task=self.task,
                             delta=None if self.calibration is None else self.calibration.delta,
                             rule="LAC class set" if self.calibration is not None else None)

    def report_groups(self, result: Mapping[str, Any]) -> list:
        """One SR group: the KL grade with the lowest / highest grade of its set as bounds."""
        from sonogate.runtime.dicom_report import ReportGroup

        columns = result["columns"]
        members = [int(t) for t in str(columns.get("kl_grade_set") or "").split("|") if t != ""]
        values = {"value": float(columns["kl_grade"]), "lower_bound": float(min(members)) if members else None,
                  "upper_bound": float(max(members)) if members else None}
        return [ReportGroup(label="knee", measurements={"kl_grade": values},
                            recommendation=result.get("recommendation"), reason=result.get("reason"),
                            delta=None if self.calibration is None else self.calibration.delta)]

    def annotate(self, frame_bgr: np.ndarray, result: Mapping[str, Any], image: Any | None) -> np.ndarray:
        """The radiograph with the grade, its set and the decision written on a panel beside it."""
        columns = result["columns"]
        lines = [f"KL grade {columns['kl_grade']}", f"set {{{columns['kl_grade_set'] or '-'}}}",
                 str(result.get("recommendation") or "")]
        return text_panel(frame_bgr, lines, 280, 160, scale=0.7, first_baseline=36, line_step=34)
