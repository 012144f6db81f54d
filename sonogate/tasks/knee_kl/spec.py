"""The ``knee_kl`` task, declared: one knee radiograph (a cropped knee joint, as in the OAI-derived knee set) in, the
Kellgren-Lawrence osteoarthritis grade 0-4 out, with a conformal prediction set of grades.

The real-image proving ground of the ordinal path the ``rust`` task uses (issue 20): a small CNN trained from
scratch on the real knee radiographs (CC BY 4.0, Chen 2018 / OAI; attribution in every bundle's provenance) with an
ordinal head; the class-set calibration is exchangeable by image. The decision is per image: "grade set given"
when the image passes the radiograph checks and the set is not every grade, else "refer to reader" (the safe
default: a human reads the film).
"""

from __future__ import annotations

from sonogate.core.task import CalibrationSpec, DecisionSpec, InputSpec, OutputSpec, TaskSpec

KL_NAMES = ("0", "1", "2", "3", "4")

TASK = TaskSpec(
    id="knee_kl",
    version=1,
    title="Kellgren-Lawrence osteoarthritis grade from a knee radiograph",
    modality="DX",
    model_type="knee_kl_grade",
    inputs=(
        InputSpec(name="image", kind="image", view="knee_pa", height=224, width=224, channels=1, color="gray",
                  resize="letterbox", interpolation="area", mean=0.5, std=0.25),
    ),
    outputs=(
        OutputSpec(name="kl_logits", kind="ordinal", axes=("N", 5), names=KL_NAMES,
                   meaning="log class probabilities of KL grades 0 (none), 1 (doubtful), 2 (minimal), 3 (moderate), "
                           "4 (severe); softmax gives the probabilities whatever the head"),
        OutputSpec(name="features", kind="features", axes=("N", 256),
                   meaning="trunk features (out-of-distribution check)"),
    ),
    decision=DecisionSpec(
        unit="image",
        rule="a grade and a calibrated grade set when the image passes the radiograph checks; refer otherwise",
        outcomes=("graded", "refer to reader"),
        safe_default="refer to reader",
        reassuring=("graded",),
    ),
    calibration=CalibrationSpec(score="class_set_lac", exchangeable_unit="image", delta_default=0.1),
    analyze_columns=("kl_grade", "kl_grade_set"),
    parts={"model_wrapper": "sonogate.tasks.knee_kl.model:KneeKLModel",
           "exporter": "sonogate.tasks.knee_kl.export:EXPORTER",
           "cli": "sonogate.tasks.knee_kl.cli:add_parser"},
)
