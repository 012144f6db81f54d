"""The ``bmd`` task, declared (seed 003: bone mineral density from a hip radiograph, semi-supervised).

One AP hip / pelvis radiograph in; per hip (right, left) the femoral-neck areal BMD in g/cm2, its T-score, a
conformal interval and a screening call out: "DEXA referral" unless the calibrated lower bound of the T-score rules
osteoporosis out (T > -2.5); the unsafe error is clearing an osteoporotic hip. The model finds the neck region
(landmarks + a neck ROI in the graph) itself. The lower bound the call uses is calibrated on osteoporotic hips
(calibration.json ``bmd_g_cm2_decision``). Commands: ``sonogate phantom bmd``, ``sonogate bmd train | ablation |
export | calibrate | evaluate``, ``sonogate train --task bmd`` (docs/tasks/bmd.md).
"""

from __future__ import annotations

from sonogate.core.task import (
    CalibrationSpec,
    DecisionSpec,
    InputSpec,
    MeasurementSpec,
    OutputSpec,
    TaskSpec,
)

# the neck ROI's half-side / head-to-neck-box distance, shared by the graph (net.py) and the torch-free runtime
# checks (model.py); ~1 sample per input pixel: neck and head rim
ROI_SCALE = 0.9

TASK = TaskSpec(
    id="bmd",
    version=1,
    title="Femoral-neck bone mineral density and osteoporosis screening from an AP hip radiograph",
    modality="DX",
    model_type="per_hip_regression",
    inputs=(
        InputSpec(name="image", kind="image", view="ap_pelvis", height=512, width=512, resize="letterbox",
                  interpolation="area", mean=0.5, std=0.25),
    ),
    outputs=(
        OutputSpec(name="bmd", kind="measurement", axes=("N", 2), units=("g/cm2", "g/cm2"),
                   names=("bmd_g_cm2_right", "bmd_g_cm2_left"),
                   meaning="femoral-neck areal BMD per hip (raw, before calibration), right then left"),
        OutputSpec(name="landmarks", kind="landmarks", axes=("N", 4, 2),
                   names=("head_center_r", "neck_box_r", "head_center_l", "neck_box_l"),
                   meaning="femoral head centre and femoral-neck box centre per hip, 0..1 of the input"),
        OutputSpec(name="in_field_logit", kind="quality", axes=("N", 2), names=("right", "left"),
                   meaning="logit that the hip (head and neck) is inside the field of view"),
        OutputSpec(name="landmark_peak", kind="quality", axes=("N", 4),
                   meaning="peak probability of each landmark heatmap (localisation confidence)"),
        OutputSpec(name="features", kind="features", axes=("N", 2, 128),
                   meaning="the regressor's embedding per hip (out-of-distribution check)"),
    ),
    measurements=(
        MeasurementSpec(name="bmd_g_cm2", unit="g/cm2", threshold=None, safe_side="above",
                        plausible_range=(0.2, 1.6),
                        dicom_code=("BMD-NECK", "99SONOGATE", "Femoral neck bone mineral density")),
        MeasurementSpec(name="t_score", unit="1", threshold=-2.5, safe_side="above", plausible_range=(-6.0, 6.0),
                        dicom_code=("T-SCORE", "99SONOGATE", "Femoral neck T-score")),
    ),
    decision=DecisionSpec(unit="image", rule="per hip: no referral only when the T-score's lower bound > -2.5",
                          outcomes=("no referral", "DEXA referral"), safe_default="DEXA referral",
                          reassuring=("no referral",)),
    calibration=CalibrationSpec(score="interval", exchangeable_unit="image", delta_default=0.1),
    analyze_columns=("side", "bmd_g_cm2", "bmd_lower", "bmd_upper", "t_score", "referral"),
    parts={"phantom_cli": "sonogate.tasks.bmd.cli:add_phantom_parser", "cli": "sonogate.tasks.bmd.cli:add_cli",
           "model_wrapper": "sonogate.tasks.bmd.model:BmdModel", "exporter": "sonogate.tasks.bmd.export:EXPORTER",
           "trainer": "sonogate.tasks.bmd.train:TRAINER"},
)
