"""Former home of the pelvic X-ray runtime (kept so that older imports keep working; new code imports the names
where they live).

* ``letterbox``, ``Letterbox``, ``mirror_points``: the runtime's one image preprocessor,
  ``sonogate.runtime.preprocess`` (imported here).
* everything task-only (``XrPrediction``, ``hip_verdict``, ``XR_THRESHOLDS``, ``PLAUSIBLE``, ``NORMAL``,
  ``NOT_NORMAL``, ``XR_OUTPUT_NAMES``, ``IHDI_GRADES``, ``WHOLE_PELVIS``, ``XR_TASK``, ``is_whole_pelvis``,
  ``XrPredictor``): the hip_xr task's runtime wrapper module, found through the task registry (the spec's
  ``parts["model_wrapper"]``) when first asked for, so the runtime never imports a task package by name.
  ``XrPredictor(bundle)`` is ``create_model(bundle)`` checked to be a whole-pelvis X-ray model.
"""

from __future__ import annotations

import importlib
from typing import Any

from sonogate.runtime.preprocess import Letterbox, letterbox, mirror_points  # noqa: F401 - re-exported

_FORMER_TASK = "hip_xr"
_TASK_NAMES = ("XR_TASK", "WHOLE_PELVIS", "SIDES", "XR_MEASURES", "XR_OUTPUT_NAMES", "XR_THRESHOLDS", "PLAUSIBLE",
               "IHDI_GRADES", "NORMAL", "NOT_NORMAL", "XrPrediction", "XrPredictor", "hip_verdict", "is_whole_pelvis")


def __getattr__(name: str) -> Any:
    if name in _TASK_NAMES:
        from sonogate.core.registry import get_task

        module = importlib.import_module(get_task(_FORMER_TASK).parts["model_wrapper"].partition(":")[0])
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
