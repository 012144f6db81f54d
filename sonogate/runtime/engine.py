"""Model execution for one bundle: tensor in, per-frame measurements, plane probability and OOD distance out.

Inputs: a verified ``Bundle`` and a compute device name. Output per call: ``FrameResult``. The backend comes
from ``sonogate.device.compute`` (ONNX Runtime or OpenVINO); this module never imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sonogate.errors import BundleError
from sonogate.core.bundle import Bundle
from sonogate.runtime.image_stats import DESCRIPTOR_VERSION, ImageStats


@dataclass
class FrameResult:
    """One frame's raw model output. ``measurements`` are in the bundle's units, before calibration."""

    measurements: np.ndarray  # (m,) float64
    plane_probability: float
    ood_distance: float | None  # Mahalanobis distance of the features to the training set (None: no OOD model)
    ood_threshold: float | None
    # Mahalanobis distance of the input's image statistics to the training frames (None: bundle without it)
    image_ood_distance: float | None = None
    image_ood_threshold: float | None = None

    @property
    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.measurements))) and math.isfinite(self.plane_probability)

    @property
    def out_of_distribution(self) -> bool:
        """Either check says so. NaN counts as out of distribution."""
        for distance, threshold in ((self.ood_distance, self.ood_threshold),
                                    (self.image_ood_distance, self.image_ood_threshold)):
            if distance is not None and threshold is not None and not (distance <= threshold):
                return True
        return False


def _sigmoid(logit: float) -> float:
    """Numerically stable logistic. A non-finite logit means a broken model: NaN, which the caller treats as a
    fault (an infinitely confident "standard plane" must not pass the quality gate)."""
    if not math.isfinite(logit):
        return math.nan
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


class OodModel:
    """Mahalanobis distance of encoder features to the training features (mean, precision, threshold)."""

    def __init__(self, mean: np.ndarray, precision: np.ndarray, threshold: float):
        self.mean = mean.astype(np.float64)
        self.precision = precision.astype(np.float64)
        self.threshold = float(threshold)
        self._centred = np.empty_like(self.mean)

    @classmethod
    def from_bundle(cls, bundle: Bundle, prefix: str = "") -> OodModel | None:
        """The feature check (``prefix`` "") or the image-statistics check (``prefix`` "image_") of a bundle;
        None when the bundle has none (an image check named in the manifest but absent is an error)."""
        entry = bundle.manifest.get("ood")
        if not entry or (prefix and "image_descriptor" not in entry):
            return None
        if prefix and entry["image_descriptor"] != DESCRIPTOR_VERSION:
            raise BundleError(f"bundle image statistics are {entry['image_descriptor']!r}; this runtime computes "
                              f"{DESCRIPTOR_VERSION!r}")
        try:
            with np.load(bundle.file(entry["file"])) as data:
                return cls(data[prefix + "mean"], data[prefix + "precision"], float(data[prefix + "threshold"]))
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"bundle OOD statistics {entry.get('file')} are unreadable: {exc}") from None

    def distance(self, features: np.ndarray) -> float:
        np.subtract(features.reshape(-1), self.mean, out=self._centred)
        return float(math.sqrt(max(0.0, float(self._centred @ self.precision @ self._centred))))


def choose_variant(bundle: Bundle, precision: str) -> str:
    """Pick the bundle model for a precision request: 'int8' | 'float' | 'openvino' | 'auto' (int8 if present)."""
    if precision == "auto":
        for variant in ("int8", "float"):
            if variant in bundle.models:
                return variant
        return next(iter(bundle.models))
    if precision not in bundle.models:
        raise BundleError(f"bundle has no '{precision}' model (has: {', '.join(sorted(bundle.models))})")
    return precision


class InferenceEngine:
    """Runs the bundle's model on preprocessed tensors.

    ``infer(tensor)`` -> FrameResult. A backend exception propagates as RuntimeError; the caller turns it into
    a "no_recommendation" event instead of crashing.
    """

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 1, precision: str = "auto"):
        from sonogate.device.compute import create_backend

        self.bundle = bundle
        self.variant = choose_variant(bundle, precision)
        self.backend, self.device_note = create_backend(bundle.model_path(self.variant), device=device, threads=threads)
        self.ood = OodModel.from_bundle(bundle)
        self.image_ood = OodModel.from_bundle(bundle, prefix="image_")
        self.image_stats = ImageStats()
        self._norm = (float(bundle.preprocessing.mean), float(bundle.preprocessing.std))
        self.n_measurements = len(bundle.measurement_names)

    @property
    def device_name(self) -> str:
        return self.backend.name

    def infer(self, tensor: np.ndarray) -> FrameResult:
        outputs = self.backend.infer(tensor)
        measurements = np.asarray(outputs["measurements"], dtype=np.float64).reshape(-1)
        if measurements.size != self.n_measurements:
            # never spread a short output over the named measurements: that could reassure on garbage
            raise RuntimeError(f"model returned {measurements.size} measurements, the bundle names "
                               f"{self.n_measurements}")
        logit_values = np.asarray(outputs["plane_logit"]).reshape(-1)
        if logit_values.size != 1:
            raise RuntimeError(f"model returned {logit_values.size} plane logits, expected 1")
        plane_probability = _sigmoid(float(logit_values[0]))
        distance = None
        if self.ood is not None and "features" in outputs:
            distance = self.ood.distance(np.asarray(outputs["features"]))
        image_distance = None
        if self.image_ood is not None:
            image_distance = self.image_ood.distance(self.image_stats(tensor, *self._norm))
        return FrameResult(
            measurements=measurements,
            plane_probability=plane_probability,
            ood_distance=distance,
            ood_threshold=None if self.ood is None else self.ood.threshold,
            image_ood_distance=image_distance,
            image_ood_threshold=None if self.image_ood is None else self.image_ood.threshold,
        )
