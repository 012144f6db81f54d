"""The generic image-measurement model: image in; measurements, an optional quality and OOD distances out.

Inputs: a verified ``Bundle`` and an ``InferenceAdapter`` (``sonogate.runtime.model_api.create_model`` builds both
from the bundle). Output per call: ``FrameResult``. The graph must have a ``measurements`` output (N, m) with the
bundle's m named measurements; an output of kind "quality" (a logit, e.g. the ultrasound standard-plane logit) and
one of kind "features" (for the Mahalanobis OOD check) are used when the manifest declares them, and a declared
quality output is then required. The backend comes from ``sonogate.device.compute`` (ONNX Runtime or OpenVINO);
this module never imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sonogate.core.bundle import Bundle
from sonogate.errors import BundleError
from sonogate.runtime.image_stats import DESCRIPTOR_VERSION, ImageStats
from sonogate.runtime.model_api import InferenceAdapter, InputModel, choose_variant  # noqa: F401 - re-exported


@dataclass
class FrameResult:
    """One frame's raw model output. ``measurements`` are in the bundle's units, before calibration."""

    measurements: np.ndarray  # (m,) float64
    plane_probability: float | None  # sigmoid of the quality logit; None: the model has no quality output
    ood_distance: float | None  # Mahalanobis distance of the features to the training set (None: no OOD model)
    ood_threshold: float | None
    # Mahalanobis distance of the input's image statistics to the training frames (None: bundle without it)
    image_ood_distance: float | None = None
    image_ood_threshold: float | None = None

    @property
    def finite(self) -> bool:
        return bool(np.all(np.isfinite(self.measurements))) and (
            self.plane_probability is None or math.isfinite(self.plane_probability))

    @property
    def out_of_distribution(self) -> bool:
        """Either check says so. NaN counts as out of distribution."""
        for distance, threshold in ((self.ood_distance, self.ood_threshold),
                                    (self.image_ood_distance, self.image_ood_threshold)):
            if distance is not None and threshold is not None and not (distance <= threshold):
                return True
        return False


@dataclass
class FrameRecord:
    """``ImageMeasurementModel.infer_record``: the frame's result and the raw arrays behind it."""

    result: FrameResult
    graph_measurements: np.ndarray  # (m,) the graph's own measurements (before any measurement head)
    features: np.ndarray | None  # (d,) the features output, None when the graph has none
    image_descriptor: np.ndarray | None  # (DESCRIPTOR_DIM,) image statistics of the model input


def _sigmoid(logit: float) -> float:
    """Numerically stable logistic. A non-finite logit means a broken model: NaN, which the caller treats as a
    fault (an infinitely confident "standard plane" must not pass the quality gate)."""
    if not math.isfinite(logit):
        return math.nan
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


MEASUREMENT_HEAD_KEY = "measurement_head"  # manifest block of a site head on the features (``sonogate adapt``)


class MeasurementHead:
    """A linear head on the graph's features that replaces some of its measurements (written by
    ``sonogate adapt`` when a ridge head on the frozen encoder's features beat the graph's own head on the site's
    labelled sweeps).

    The manifest block ``measurement_head`` names the file (listed in ``files``, so hashed and signed with the
    model), the features output it reads and the measurement names it replaces; the file holds ``weights``
    (k, d) and ``bias`` (k,), so value_j = weights[j] . features + bias[j] (the features' standardisation is
    folded in). Non-finite features give NaN, which every later step treats as "no measurement".
    """

    def __init__(self, names: tuple[str, ...], weights: np.ndarray, bias: np.ndarray):
        weights = np.asarray(weights, dtype=np.float64)
        bias = np.asarray(bias, dtype=np.float64).reshape(-1)
        if weights.ndim != 2 or weights.shape[0] != len(names) or bias.shape != (len(names),):
            raise BundleError(f"measurement head shapes do not match: weights {weights.shape}, bias {bias.shape}, "
                              f"{len(names)} names")
        if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(bias))):
            raise BundleError("measurement head has non-finite weights")
        self.names = tuple(names)
        self.weights = weights
        self.bias = bias

    @classmethod
    def from_bundle(cls, bundle: Bundle, measurement_names: tuple[str, ...]) -> MeasurementHead | None:
        """The bundle's head, or None when its manifest has no ``measurement_head`` block."""
        entry = bundle.manifest.get(MEASUREMENT_HEAD_KEY)
        if not entry:
            return None
        try:
            names = tuple(str(n) for n in entry["replaces"])
            file = str(entry["file"])
        except (KeyError, TypeError) as exc:
            raise BundleError(f"bundle {bundle.path}: measurement_head block is missing {exc}") from None
        if file not in (bundle.manifest.get("files") or {}):
            raise BundleError(f"bundle {bundle.path}: measurement head {file} is not listed (hashed) in the manifest")
        unknown = [n for n in names if n not in measurement_names]
        if unknown or not names:
            raise BundleError(f"bundle {bundle.path}: measurement head replaces {', '.join(unknown) or 'nothing'}, "
                              f"not among the measurements {', '.join(measurement_names)}")
        try:
            with np.load(bundle.file(file)) as data:
                return cls(names, data["weights"], data["bias"])
        except (OSError, KeyError, ValueError) as exc:
            raise BundleError(f"bundle measurement head {file} is unreadable: {exc}") from None

    def apply(self, measurements: np.ndarray, features: np.ndarray, index: Mapping[str, int]) -> np.ndarray:
        """``measurements`` (m,) with the head's names replaced by the head's values on ``features`` (d,)."""
        features = np.asarray(features, dtype=np.float64).reshape(-1)
        if features.shape[0] != self.weights.shape[1]:
            raise RuntimeError(f"measurement head expects {self.weights.shape[1]} features, the model returned "
                               f"{features.shape[0]}")
        values = self.weights @ features + self.bias
        out = np.array(measurements, dtype=np.float64)
        for name, value in zip(self.names, values):
            out[index[name]] = value
        return out


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


def _output_of_kind(outputs: Mapping[str, Mapping[str, Any]], kind: str) -> str | None:
    for name, entry in outputs.items():
        if isinstance(entry, Mapping) and entry.get("kind") == kind:
            return name
    return None


class ImageMeasurementModel(InputModel):
    """Runs an image-measurement bundle (model types "image_measurement" and the ultrasound "hip_us_frame").

    ``infer(tensor)`` -> FrameResult for an already preprocessed (1, C, H, W) tensor (the live session times
    preprocessing and inference apart); calling the model on an image (or a dict name -> image for a model with
    several image inputs) preprocesses it first. A backend exception propagates as RuntimeError; the caller turns
    it into a "no_recommendation" event instead of crashing.
    """

    model_type: ClassVar[str] = "image_measurement"

    def __init__(self, bundle: Bundle, adapter: InferenceAdapter):
        super().__init__(bundle, adapter)
        self.measurement_output = "measurements"
        self.quality_output = _output_of_kind(self.outputs, "quality")
        self.features_output = _output_of_kind(self.outputs, "features") or "features"
        graph_outputs = set(adapter.output_names)
        for name in (self.measurement_output, self.quality_output):
            if name is not None and name not in graph_outputs:
                raise BundleError(f"bundle {bundle.path}: the model graph has no output {name!r} "
                                  f"(it has {', '.join(adapter.output_names)})")
        self.ood = OodModel.from_bundle(bundle)
        self.image_ood = OodModel.from_bundle(bundle, prefix="image_")
        self.image_stats = ImageStats()
        first = self.inputs[0]
        self._norm = (float(first.mean), float(first.std))
        if self.image_ood is not None and first.kind != "image":
            raise BundleError(f"bundle {bundle.path}: image statistics need an image as the first input")
        self.n_measurements = len(bundle.measurement_names)
        self.head = MeasurementHead.from_bundle(bundle, tuple(bundle.measurement_names))
        if self.head is not None and self.features_output not in graph_outputs:
            raise BundleError(f"bundle {bundle.path}: its measurement head reads the features output "
                              f"{self.features_output!r}, which the model graph does not have")
        self._measurement_index = {name: i for i, name in enumerate(bundle.measurement_names)}

    @property
    def per_image(self) -> PerImageAnalysis:
        """The per-image analysis of this model (calibration loaded on first use)."""
        if getattr(self, "_per_image", None) is None:
            self._per_image = PerImageAnalysis(self)
        return self._per_image

    def analyze(self, frame: np.ndarray, image: Any | None, notes: list[str]) -> dict[str, Any]:
        """One case of ``sonogate analyze`` (a task decided per image): values, bounds, decision, CSV columns."""
        return self.per_image.analyze(frame, image, notes)

    def algorithm(self):
        return self.per_image.algorithm()

    def report_groups(self, result: Mapping[str, Any]) -> list:
        return self.per_image.report_groups(result)

    def annotate(self, frame: np.ndarray, result: Mapping[str, Any], image: Any | None) -> np.ndarray:
        return self.per_image.annotate(frame, result, image)

    def infer(self, tensor: np.ndarray | Mapping[str, np.ndarray]) -> FrameResult:
        """FrameResult of preprocessed input(s): one tensor, or a dict input name -> tensor."""
        feeds = dict(tensor) if isinstance(tensor, Mapping) else {self.inputs[0].name: tensor}
        return self.postprocess(self.adapter.infer_sync(feeds), {"tensors": feeds})

    def infer_record(self, tensor: np.ndarray) -> FrameRecord:
        """Everything a site adaptation needs of one preprocessed (1, C, H, W) tensor: the FrameResult (head
        applied), the graph's own measurements, the features and the image-statistics descriptor."""
        feeds = {self.inputs[0].name: tensor}
        outputs = self.adapter.infer_sync(feeds)
        result = self.postprocess(outputs, {"tensors": feeds})
        graph = np.asarray(outputs[self.measurement_output], dtype=np.float64).reshape(-1)
        features = (np.asarray(outputs[self.features_output], dtype=np.float64).reshape(-1)
                    if self.features_output in outputs else None)
        descriptor = self.image_stats(tensor, *self._norm).copy() if self.inputs[0].kind == "image" else None
        return FrameRecord(result=result, graph_measurements=graph, features=features, image_descriptor=descriptor)

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> FrameResult:
        measurements = np.asarray(outputs[self.measurement_output], dtype=np.float64).reshape(-1)
        if measurements.size != self.n_measurements:
            # never spread a short output over the named measurements: that could reassure on garbage
            raise RuntimeError(f"model returned {measurements.size} measurements, the bundle names "
                               f"{self.n_measurements}")
        if self.head is not None:
            measurements = self.head.apply(measurements, outputs[self.features_output], self._measurement_index)
        plane_probability = None
        if self.quality_output is not None:
            logit_values = np.asarray(outputs[self.quality_output]).reshape(-1)
            if logit_values.size != 1:
                raise RuntimeError(f"model returned {logit_values.size} plane logits, expected 1")
            plane_probability = _sigmoid(float(logit_values[0]))
        distance = None
        if self.ood is not None and self.features_output in outputs:
            distance = self.ood.distance(np.asarray(outputs[self.features_output]))
        image_distance = None
        if self.image_ood is not None:
            tensor = meta["tensors"][self.inputs[0].name]
            image_distance = self.image_ood.distance(self.image_stats(tensor, *self._norm))
        return FrameResult(
            measurements=measurements,
            plane_probability=plane_probability,
            ood_distance=distance,
            ood_threshold=None if self.ood is None else self.ood.threshold,
            image_ood_distance=image_distance,
            image_ood_threshold=None if self.image_ood is None else self.image_ood.threshold,
        )


def InferenceEngine(bundle: Bundle, device: str = "auto", threads: int = 1,
                    precision: str = "auto") -> ImageMeasurementModel:
    """The image-measurement model of ``bundle`` (kept for callers of the former engine class)."""
    model = ImageMeasurementModel(bundle, InferenceAdapter(bundle, device=device, threads=threads,
                                                           precision=precision))
    return model


# -- one case of ``sonogate analyze`` for a generic per-image measurement task ------------------------------------
def _bound_key(side: str) -> str:
    return "lower_bound" if side == "lower" else "upper_bound"


class PerImageAnalysis:
    """``analyze`` / ``report_groups`` / ``annotate`` / ``algorithm`` of an ``ImageMeasurementModel`` whose task is
    decided per image (knee KL, BMD...): calibrated values and one-sided bounds per measurement, and the decision
    from the manifest's measurements (threshold and safe side) and decision block."""

    def __init__(self, model: ImageMeasurementModel):
        from sonogate.calibration.calfile import load_calibration
        from sonogate.core.bundle import sha256_file

        self.model = model
        bundle = model.bundle
        path = bundle.calibration_path
        self.calibration = load_calibration(path, bundle_hash=bundle.bundle_hash) if path.exists() else None
        self.calibration_sha256 = sha256_file(path) if self.calibration is not None else None
        self.specs = {str(m["name"]): m for m in model.manifest.get("measurements") or ()}
        self.decision = model.manifest.get("decision") or {}

    def _measurement(self, name: str, raw: float) -> tuple[dict[str, float | None], str]:
        """({value, lower_bound, upper_bound}, bound side) of one raw value; the side comes from the calibration,
        else from the safe side of the task's threshold ("above" -> a lower bound matters)."""
        entry: dict[str, float | None] = {"value": None, "lower_bound": None, "upper_bound": None}
        spec = self.specs.get(name) or {}
        side = "upper" if spec.get("safe_side") == "below" else "lower"
        cal = None if self.calibration is None else self.calibration.measurements.get(name)
        if cal is not None:
            side = cal.side
        if math.isfinite(raw):
            entry["value"] = round(float(cal.corrected(raw) if cal is not None else raw), 3)
            if cal is not None:
                bound = cal.bound(raw)
                entry[_bound_key(side)] = round(float(bound), 3) if math.isfinite(bound) else None
        return entry, side

    def analyze(self, frame: np.ndarray, image: Any | None, notes: list[str]) -> dict[str, Any]:
        result = self.model(frame)
        measurements, columns, problems = {}, {}, []
        for name, raw in zip(self.model.bundle.measurement_names, result.measurements):
            entry, side = self._measurement(name, float(raw))
            measurements[name] = entry
            columns[name] = entry["value"]
            columns[f"{name}_{side}_bound"] = entry[_bound_key(side)]
            spec = self.specs.get(name) or {}
            threshold, safe_side = spec.get("threshold"), spec.get("safe_side", "none")
            low, high = spec.get("plausible_range") or (None, None)
            value, bound = entry["value"], entry[_bound_key(side)]
            if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
                problems.append(f"implausible {name} {value:g}")
            if threshold is None or safe_side == "none":
                continue
            if bound is None:
                problems.append(f"no {name} bound")
            elif (safe_side == "above" and bound < threshold) or (safe_side == "below" and bound > threshold):
                problems.append(f"{name} bound {bound:g} not {safe_side} {threshold:g}")
        if result.out_of_distribution:
            problems.append("image out of distribution")
        if result.plane_probability is not None:
            columns["quality"] = round(result.plane_probability, 4)
        reassuring = list(self.decision.get("reassuring") or ())
        outcome = self.decision.get("safe_default") if problems or not reassuring else reassuring[0]
        reason = "; ".join(problems) if problems else "every bound on its safe side"
        if self.calibration is None:
            notes.append(f"{self.model.task} bundle has no calibration: values without bounds")
        columns["decision"] = outcome
        return {"recommendation": outcome, "reason": reason, "measurements": measurements, "columns": columns}

    def algorithm(self):
        from sonogate.runtime.dicom_report import AlgorithmInfo

        return AlgorithmInfo(bundle_sha256=self.model.bundle.bundle_hash, calibration_sha256=self.calibration_sha256,
                             device=self.model.device_name, task=self.model.task or None,
                             delta=None if self.calibration is None else float(self.calibration.delta))

    def report_groups(self, result: Mapping[str, Any]) -> list:
        from sonogate.runtime.dicom_report import ReportGroup

        return [ReportGroup(label=self.model.task, measurements=dict(result["measurements"]),
                            recommendation=result.get("recommendation"), reason=result.get("reason"),
                            delta=None if self.calibration is None else float(self.calibration.delta))]

    def annotate(self, frame: np.ndarray, result: Mapping[str, Any], image: Any | None) -> np.ndarray:
        """The image with a side panel: each measurement with its bound, then the decision."""
        from sonogate.runtime.overlay import text_panel

        lines = [self.model.task]
        for name, entry in result["measurements"].items():
            text = f"{name}: --" if entry["value"] is None else f"{name}: {entry['value']:g}"
            if entry.get("lower_bound") is not None:
                text += f" (>= {entry['lower_bound']:g})"
            elif entry.get("upper_bound") is not None:
                text += f" (<= {entry['upper_bound']:g})"
            lines.append(text)
        lines += [str(result.get("recommendation") or ""), "algorithm output, unverified"]
        return text_panel(frame, lines, 300, 200)
