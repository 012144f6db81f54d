"""The hip_xr task's report pieces: the annotated radiograph (DICOM Secondary Capture) and the per-hip groups of
the DICOM Structured Report, from ``HipXrPelvisModel.measure``'s per-hip result."""

from __future__ import annotations

import math

import cv2
import numpy as np

from sonogate.measurements import XR_MEASUREMENTS

HIPS = ("right", "left")


def verdict_text(hip: dict) -> str | None:
    """"<verdict>: <reason>" of one hip's result, None when it has no verdict."""
    verdict = hip.get("verdict") or {}
    return f"{verdict['value']}: {verdict.get('reason', '')}" if verdict.get("value") else None


def report_groups(hips: dict[str, dict], delta: float | None) -> list:
    """One SR measurement group per hip (AI and CE with their bounds, the verdict as the reason)."""
    from sonogate.runtime.dicom_report import ReportGroup

    names = [spec.name for spec in XR_MEASUREMENTS]
    return [ReportGroup(label=f"{hip} hip", measurements={n: hips[hip][n] for n in names if n in hips[hip]},
                        reason=verdict_text(hips[hip]), laterality=hip[0].upper(), delta=delta)
            for hip in HIPS]


def render_radiograph(frame_bgr: np.ndarray, hips: dict[str, dict], image) -> np.ndarray:
    """The radiograph with side labels and a panel of AI / CE (with bounds), IHDI and the verdict per hip.

    Whole-pelvis models: Hilgenreiner's line, the acetabular roof lines and the landmarks are drawn where the
    model put them; one-hip models: the midline the image was split at."""
    height, width = frame_bgr.shape[:2]
    panel = 300
    canvas = np.full((max(height, 300), width + panel, 3), 24, dtype=np.uint8)
    canvas[:height, :width] = frame_bgr
    landmarks = {hip: (hips.get(hip) or {}).get("landmarks") for hip in HIPS}
    thick = max(1, round(max(height, width) / 400))
    if all(landmarks.values()):

        def pt(hip: str, name: str):
            x, y = landmarks[hip].get(name, (math.nan, math.nan))
            return (round(x), round(y)) if math.isfinite(x) and math.isfinite(y) else None

        tri_r, tri_l = pt("right", "triradiate"), pt("left", "triradiate")
        if tri_r and tri_l:
            cv2.line(canvas, tri_r, tri_l, (0, 200, 255), thick, cv2.LINE_AA)  # Hilgenreiner
        for hip, colour in (("right", (80, 220, 80)), ("left", (80, 160, 255))):
            tri, edge = pt(hip, "triradiate"), pt(hip, "acetabular_edge")
            if tri and edge:
                cv2.line(canvas, tri, edge, colour, thick, cv2.LINE_AA)
            for name in ("triradiate", "acetabular_edge", "head_center", "h_point"):
                p = pt(hip, name)
                if p:
                    cv2.circle(canvas, p, 2 * thick + 1, colour, -1, cv2.LINE_AA)
    else:
        x_mid = width // 2
        for y in range(0, height, 12):
            cv2.line(canvas, (x_mid, y), (x_mid, min(height - 1, y + 6)), (0, 200, 255), 1)
    swapped = (getattr(image, "patient_orientation", None) or ("",))[0][:1] == "R"
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(canvas, "L" if swapped else "R", (6, 20), font, 0.6, (0, 200, 255), 2, cv2.LINE_AA)
    cv2.putText(canvas, "R" if swapped else "L", (width - 20, 20), font, 0.6, (0, 200, 255), 2, cv2.LINE_AA)
    x0, y = width + 12, 26
    cv2.putText(canvas, "X-ray measurements", (x0, y), font, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    y += 28
    for hip in HIPS:
        entry = hips.get(hip) or {}
        cv2.putText(canvas, f"{hip} hip", (x0, y), font, 0.55, (230, 230, 230), 1, cv2.LINE_AA)
        y += 22
        for spec in XR_MEASUREMENTS:
            values = entry.get(spec.name) or {}
            label = "AI" if spec.name == "ai_deg" else "CE"
            value = values.get("value")
            bound = values.get(f"{spec.bound_side}_bound")
            text = f"{label}: --" if value is None else f"{label}: {value:.1f} deg"
            if value is not None:
                text += f" ({'<=' if spec.bound_side == 'upper' else '>='} {bound:.1f})" if bound is not None \
                    else " (no bound)"
            cv2.putText(canvas, text, (x0 + 10, y), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            y += 20
        grade = (entry.get("ihdi") or {}).get("grade")
        if grade:
            cv2.putText(canvas, f"IHDI: {('I', 'II', 'III', 'IV')[int(grade) - 1]}", (x0 + 10, y), font, 0.5,
                        (255, 255, 255), 1, cv2.LINE_AA)
            y += 20
        verdict = (entry.get("verdict") or {}).get("value")
        if verdict:
            colour = (80, 220, 80) if verdict.startswith("normal") else (60, 160, 255)
            cv2.putText(canvas, verdict, (x0 + 10, y), font, 0.5, colour, 1, cv2.LINE_AA)
            y += 20
        y += 10
    cv2.putText(canvas, "algorithm output, unverified", (x0, canvas.shape[0] - 12), font, 0.4, (150, 150, 150), 1,
                cv2.LINE_AA)
    return canvas
