"""The ``rust`` task, declared (seed 001: the Radiographic Union Score for Tibial fractures).

Two radiographs of one healing tibial shaft fracture in (AP and lateral); per cortex (AP medial, AP lateral,
lateral anterior, lateral posterior) an ordinal grade 1-3 with its probabilities, the total 4-12 and a union call
out. Calibration: conformal prediction sets per cortex and a conformal interval on the total, exchangeable by case;
"united" only when the whole set / interval says so (the unsafe error is calling a non-union united).
Inputs are shaft strips, 256 x 96 px: the full film height, the columns around the tibia found without labels
(``sonogate.tasks.rust.shaft``, applied by ``RustModel`` before the stretch, which is then an identity resize), so
the 1-3 px fracture line and callus are read at 1.6x the resolution of a 160 px letterbox (docs/tasks/rust.md).
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

CORTICES = ("ap_medial", "ap_lateral", "lat_anterior", "lat_posterior")

TASK = TaskSpec(
    id="rust",
    version=1,
    title="RUST fracture-union score from AP and lateral tibial radiographs",
    modality="DX",
    model_type="multi_view_ordinal",
    inputs=(
        InputSpec(name="ap", kind="image", view="ap", height=256, width=96, resize="stretch",
                  interpolation="area", mean=0.5, std=0.25),
        InputSpec(name="lat", kind="image", view="lat", height=256, width=96, resize="stretch",
                  interpolation="area", mean=0.5, std=0.25),
    ),
    outputs=(
        OutputSpec(name="cortex_logits", kind="ordinal", axes=("N", 4, 3), names=CORTICES,
                   meaning="per cortex, logits of RUST grades 1 (line visible, no callus), 2 (callus, line "
                           "visible), 3 (bridging callus, no line)"),
        OutputSpec(name="features", kind="features", axes=("N", 512),
                   meaning="pooled features of both views (out-of-distribution check)"),
    ),
    measurements=(
        MeasurementSpec(name="rust_total", unit="1", threshold=10.0, safe_side="above", plausible_range=(4.0, 12.0),
                        dicom_code=("RUST", "99SONOGATE", "Radiographic union score for tibial fractures")),
    ),
    decision=DecisionSpec(
        unit="case",
        rule="united only when the calibrated interval's lower end of the total is >= 10 and no cortex's "
             "prediction set holds grade 1 (both views checked)",
        outcomes=("united", "not united"),
        safe_default="not united",
        reassuring=("united",),
    ),
    calibration=CalibrationSpec(score="class_set_lac", exchangeable_unit="case", delta_default=0.1),
    analyze_columns=(*CORTICES, "rust_total", "rust_total_lower", "rust_total_upper", "union"),
    parts={"phantom_cli": "sonogate.tasks.rust.cli:add_phantom_parser", "cli": "sonogate.tasks.rust.cli:add_parser",
           "model_wrapper": "sonogate.tasks.rust.model:RustModel"},
)
