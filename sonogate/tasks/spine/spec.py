"""The ``spine`` task, declared (seed 002: US-X Complete, vertebra shape completion).

Two point clouds in: the partial posterior surface a 3D ultrasound sees (``us_points``) and the 2.5D cloud of one
lateral radiograph's silhouette (``xray_points``), 2,048 points each, in mm. The completed vertebra out (2,048
points, mm, in the ultrasound's frame), by a deterministic coarse-to-fine network (posterior mean, no sampling).
No decision and no calibration: a surgeon looks at the completion.

Views (how ``sonogate analyze`` finds a case's files): ``us_partial`` (``us_partial.ply`` / ``.npy``, the cloud)
and ``xray`` (``xray.png``, the lateral radiograph the wrapper turns into the 2.5D cloud ``xray_points``).
"""

from __future__ import annotations

from sonogate.core.task import InputSpec, OutputSpec, TaskSpec

TASK = TaskSpec(
    id="spine",
    version=1,
    title="Vertebra shape completion from ultrasound and one lateral X-ray",
    modality="US",
    model_type="point_completion",
    inputs=(
        InputSpec(name="us_points", kind="points", view="us_partial", n_points=2048, units="mm"),
        InputSpec(name="xray_points", kind="points", view="xray", n_points=2048, units="mm"),
    ),
    outputs=(
        OutputSpec(name="completed", kind="points", axes=("N", 2048, 3), units=("mm",),
                   meaning="the completed vertebra surface"),
        OutputSpec(name="coarse", kind="points", axes=("N", 512, 3), units=("mm",),
                   meaning="the coarse stage's completion"),
    ),
    analyze_columns=("level", "n_points", "latency_ms"),
    parts={"phantom_cli": "sonogate.tasks.spine.cli:add_phantom_parser",
           "model_wrapper": "sonogate.tasks.spine.model:SpineCompletionModel",
           "cli": "sonogate.tasks.spine.export:add_export_parser"},
)
