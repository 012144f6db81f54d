"""The runtime base of the ordinal radiograph tasks (knee KL grade, RUST): a model wrapper whose bundle carries a
class-set calibration (``sonogate.calibration.ordinal_calfile``) and radiograph out-of-distribution statistics
(``ood.npz``, ``sonogate.runtime.radiograph_checks.RadiographOOD``).

Input: a bundle and its inference adapter. What it loads: ``calibration`` (None without calibration.json: the
task's safe default on every case) with its ``calibration_sha256``, ``ood`` (None without ood.npz) and the image
statistics the OOD check reads. A subclass names the graph output its postprocess reads in ``logits_output`` and
implements preprocess / postprocess / analyze.
"""

from __future__ import annotations

from typing import ClassVar

from sonogate.calibration.ordinal_calfile import load_ordinal_calibration
from sonogate.core.bundle import Bundle, sha256_file
from sonogate.errors import BundleError
from sonogate.runtime.image_stats import ImageStats
from sonogate.runtime.model_api import InferenceAdapter, InputModel
from sonogate.runtime.radiograph_checks import RadiographOOD


class OrdinalRadiographModel(InputModel):
    """An ordinal radiograph task's wrapper with its calibration.json and ood.npz loaded (module docstring)."""

    logits_output: ClassVar[str] = ""

    def __init__(self, bundle: Bundle, adapter: InferenceAdapter):
        super().__init__(bundle, adapter)
        if self.logits_output not in adapter.output_names:
            raise BundleError(f"bundle {bundle.path} has no {self.logits_output} output")
        path = bundle.calibration_path
        self.calibration = load_ordinal_calibration(path, bundle.bundle_hash) if path.exists() else None
        self.calibration_sha256 = sha256_file(path) if self.calibration is not None else None
        ood_path = bundle.path / "ood.npz"
        self.ood = RadiographOOD(ood_path) if ood_path.exists() else None
        self.stats = ImageStats()
