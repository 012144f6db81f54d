"""The ``hip_xr`` task, declared: an AP pelvic radiograph of an infant in, per hip the acetabular index (AI), the
centre-edge angle (CE) and the IHDI grade out, from landmarks the model places (docs/xray.md).

The image is letterboxed (aspect kept) to the model's square input; bounds are one-sided per measurement and
calibrated per image; a hip is "normal within bounds" only when AI's upper bound and CE's lower bound clear.
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

TASK = TaskSpec(
    id="hip_xr",
    version=1,
    title="Infant pelvic radiograph: acetabular index, centre-edge angle and IHDI grade per hip",
    modality="DX",
    model_type="hip_xr_pelvis",
    inputs=(
        InputSpec(name="image", kind="image", view="ap_pelvis", height=192, width=192, channels=1, color="gray",
                  resize="letterbox", interpolation="area", mean=0.5, std=0.25),
    ),
    outputs=(
        OutputSpec(name="measurements", kind="measurement", axes=("N", 4), units=("deg", "deg", "deg", "deg"),
                   names=("ai_deg_right", "ce_deg_right", "ai_deg_left", "ce_deg_left"),
                   meaning="acetabular index and centre-edge angle per hip, from the landmarks in the graph"),
        OutputSpec(name="landmarks", kind="landmarks", axes=("N", "K", 2),
                   meaning="landmark positions in the letterboxed model input, 0..1"),
        OutputSpec(name="ihdi_logits", kind="ordinal", axes=("N", 2, 4), names=("1", "2", "3", "4"),
                   meaning="IHDI grade logits, right then left hip"),
    ),
    measurements=(
        MeasurementSpec(name="ai_deg", unit="deg", threshold=30.0, safe_side="below", plausible_range=(0.0, 60.0),
                        dicom_code=("AI", "99SONOGATE", "Acetabular index")),
        MeasurementSpec(name="ce_deg", unit="deg", threshold=20.0, safe_side="above", plausible_range=(-90.0, 60.0),
                        dicom_code=("CE", "99SONOGATE", "Centre-edge angle")),
    ),
    decision=DecisionSpec(
        unit="image",
        rule="per hip: AI upper bound <= 30 deg and CE lower bound >= 20 deg",
        outcomes=("normal within bounds", "abnormal or uncertain"),
        safe_default="abnormal or uncertain",
        reassuring=("normal within bounds",),
    ),
    calibration=CalibrationSpec(score="one_sided", exchangeable_unit="image", delta_default=0.1),
    parts={"model_wrapper": "sonogate.tasks.hip_xr.model:HipXrPelvisModel",
           "phantom_cli": "sonogate.tasks.hip_xr.cli:add_phantom_parser",
           "calibrator": "sonogate.tasks.hip_xr.calibrate:CALIBRATOR",
           "trainer": "sonogate.tasks.hip_xr.train:TRAINER", "exporter": "sonogate.tasks.hip_xr.export:EXPORTER",
           "demo": "sonogate.tasks.hip_xr.recipe:DEMO"},
    analyze_columns=("right_ai_deg", "right_ai_deg_upper_bound", "right_ce_deg", "right_ce_deg_lower_bound",
                     "right_ihdi", "right_xr_verdict", "left_ai_deg", "left_ai_deg_upper_bound", "left_ce_deg",
                     "left_ce_deg_lower_bound", "left_ihdi", "left_xr_verdict"),
    cli_names=("xr",),
)
