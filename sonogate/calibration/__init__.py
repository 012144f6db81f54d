"""Calibration: affine correction, one-sided conformal bounds, rule families and the policy report.

Never imports torch; numpy and the standard library only (matplotlib lazily, for report plots).
"""

from sonogate.calibration.aggregate import AggregationRule, aggregate_frames
from sonogate.calibration.calfile import CalibrationFile, MeasurementCalibration, load_calibration
from sonogate.calibration.conformal import (
    OneSidedConformal,
    conformal_rank,
    max_score_radius,
    min_calibration_size,
    one_sided_radius,
    pac_rank,
)
from sonogate.calibration.fit import (
    PredictionTable,
    apply_calibration,
    fit_calibration,
    read_predictions_csv,
)
from sonogate.calibration.rules import rule_holds

__all__ = [
    "AggregationRule",
    "CalibrationFile",
    "MeasurementCalibration",
    "OneSidedConformal",
    "PredictionTable",
    "aggregate_frames",
    "apply_calibration",
    "conformal_rank",
    "fit_calibration",
    "load_calibration",
    "max_score_radius",
    "min_calibration_size",
    "one_sided_radius",
    "pac_rank",
    "read_predictions_csv",
    "rule_holds",
]
