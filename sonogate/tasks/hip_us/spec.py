"""The ``hip_us`` task, declared (arXiv 2511.18457: selective imaging for infant hip dysplasia).

One grey ultrasound frame (the Graf coronal standard plane, ROI cropped) in; alpha, beta and coverage, a
standard-plane logit and encoder features out. Bounds are one-sided and joint (the max-score over the rule's
measurements), calibrated per sweep; the decision is taken over a window of recent standard-plane frames.
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
    id="hip_us",
    version=1,
    title="Infant hip ultrasound: Graf alpha / beta / coverage with calibrated bounds",
    modality="US",
    model_type="hip_us_frame",
    inputs=(
        InputSpec(name="image", kind="image", view="graf_coronal", height=160, width=160, channels=1, color="gray",
                  resize="stretch", interpolation="area", mean=0.5, std=0.25),
    ),
    outputs=(
        OutputSpec(name="measurements", kind="measurement", axes=("N", 3), units=("deg", "deg", "%"),
                   names=("alpha_deg", "beta_deg", "coverage_pct"), meaning="Graf alpha, beta, femoral-head coverage"),
        OutputSpec(name="plane_logit", kind="quality", axes=("N", 1),
                   meaning="logit of the probability that the frame is a usable Graf standard plane"),
        OutputSpec(name="features", kind="features", axes=("N", 512),
                   meaning="global-average-pooled encoder features (out-of-distribution check)"),
    ),
    measurements=(
        MeasurementSpec(name="alpha_deg", unit="deg", threshold=60.0, safe_side="above", plausible_range=(0.0, 90.0),
                        dicom_code=("ALPHA", "99SONOGATE", "Graf alpha angle")),
        MeasurementSpec(name="beta_deg", unit="deg", threshold=None, safe_side="below", plausible_range=(0.0, 120.0),
                        dicom_code=("BETA", "99SONOGATE", "Graf beta angle")),
        MeasurementSpec(name="coverage_pct", unit="%", threshold=50.0, safe_side="above",
                        plausible_range=(0.0, 100.0),
                        dicom_code=("COVERAGE", "99SONOGATE", "Femoral head coverage")),
    ),
    decision=DecisionSpec(
        unit="frame_window",
        rule="and",  # alpha AND coverage on their bounds; "or" and "alpha" are the calibration file's choice
        outcomes=("us_sufficient", "xray_recommended", "insufficient_image", "no_recommendation"),
        safe_default="no_recommendation",
        reassuring=("us_sufficient",),
    ),
    calibration=CalibrationSpec(score="one_sided_joint_max", exchangeable_unit="sweep", delta_default=0.1),
    parts={"model_wrapper": "sonogate.runtime.engine:ImageMeasurementModel",
           "trainer": "sonogate.tasks.hip_us.train:TRAINER", "exporter": "sonogate.tasks.hip_us.export:EXPORTER",
           "demo": "sonogate.tasks.hip_us.recipe:DEMO", "cli": "sonogate.tasks.hip_us.commands:register",
           "network": "sonogate.tasks.hip_us.net:HipUSNet", "network_outputs": "sonogate.tasks.hip_us.net:OUTPUT_NAMES"},
    analyze_columns=("recommendation", "graf_type", "alpha_deg", "alpha_deg_lower_bound", "beta_deg",
                     "beta_deg_upper_bound", "coverage_pct", "coverage_pct_lower_bound"),
    cli_names=("us",),
)
