"""Is this input a radiograph of the kind a bundle was trained on? Checks the per-image radiograph tasks (knee KL
grade, RUST) run before any score is given (numpy + OpenCV; no torch).

* ``check_gray_radiograph(frame)``: a colour picture (a photograph, a colour Doppler frame) or a blank / flat image
  is refused with a one-line ``DataError``; returns the gray uint8 image.
* ``RadiographOOD``: two Mahalanobis checks read from a bundle's ``ood.npz`` (``sonogate.calibration.ood``): the
  low-level image statistics of the model input (``sonogate.runtime.image_stats``: intensity histogram, edges,
  texture correlation, band means; what tells an ultrasound frame or a grey photograph from a radiograph) and the
  network's pooled features; each thresholded at a high percentile of held-out in-distribution images.
* ``ViewClassifier``: a logistic regression on a per-view descriptor (``view_descriptor``: the image statistics plus
  the spectrum of the column profile, which counts bones side by side) that says which view an image looks more like
  (RUST: AP or lateral); a case whose "ap" file looks more lateral than its "lat" file by more than a margin (the
  99th percentile over correctly labelled validation pairs) is refused as swapped. Fitted at export
  (``fit_view_classifier``) and stored in ood.npz.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sonogate.errors import DataError

# Mean absolute difference between colour channels (grey levels) above which a picture is colour, not a radiograph
# (JPEG chroma noise of a grey image stays below 2; a colour photograph is far above 10).
COLOUR_LIMIT = 6.0
# Standard deviation of the grey levels below which an image is blank (no anatomy to grade).
FLAT_LIMIT = 4.0


def check_gray_radiograph(frame: np.ndarray, what: str = "image") -> np.ndarray:
    """The gray uint8 (H, W) of ``frame`` (gray, BGR or BGRA uint8); DataError when it is colour, blank or tiny."""
    import cv2

    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or min(frame.shape[:2]) < 32:
        raise DataError(f"{what}: not a usable radiograph (an 8-bit image of at least 32 x 32 pixels is needed)")
    if frame.ndim == 3 and frame.shape[2] >= 3:
        bgr = frame[..., :3].astype(np.int16)
        chroma = float(np.mean(np.abs(bgr[..., 0] - bgr[..., 1]) + np.abs(bgr[..., 1] - bgr[..., 2])) / 2.0)
        if chroma > COLOUR_LIMIT:
            raise DataError(f"{what}: a colour picture, not a radiograph (colour difference {chroma:.0f} grey levels)")
        gray = cv2.cvtColor(np.ascontiguousarray(frame[..., :3]), cv2.COLOR_BGR2GRAY)
    else:
        gray = frame if frame.ndim == 2 else frame[..., 0]
    if float(gray.std()) < FLAT_LIMIT:
        raise DataError(f"{what}: a blank image (grey-level spread {float(gray.std()):.1f}), not a radiograph")
    return np.ascontiguousarray(gray)


class RadiographOOD:
    """Out-of-distribution checks from ``ood.npz`` (keys of ``sonogate.calibration.ood.save_ood``; optional view
    classifier keys ``view_weights``, ``view_bias``, ``view_names``).

    ``image_distance(descriptor)`` / ``feature_distance(features)``: Mahalanobis distances; ``check(descriptor,
    features, what)`` raises DataError (one line) when either is beyond its threshold."""

    def __init__(self, path: str | Path):
        with np.load(path) as data:
            self.mean = data["mean"].astype(np.float64)
            self.precision = data["precision"].astype(np.float64)
            self.threshold = float(data["threshold"])
            self.image_mean = data.get("image_mean", None)
            self.image_precision = data.get("image_precision", None)
            self.image_threshold = float(data["image_threshold"]) if "image_threshold" in data else None
            self.views = (ViewClassifier(data["view_weights"], data["view_bias"], [str(v) for v in data["view_names"]],
                                         float(data["view_margin"]) if "view_margin" in data else 0.0)
                          if "view_weights" in data else None)

    @staticmethod
    def _distance(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> float:
        diff = np.asarray(x, dtype=np.float64).reshape(-1) - mean
        return float(np.sqrt(max(diff @ precision @ diff, 0.0)))

    def feature_distance(self, features: np.ndarray) -> float:
        return self._distance(features, self.mean, self.precision)

    def image_distance(self, descriptor: np.ndarray) -> float | None:
        if self.image_mean is None:
            return None
        return self._distance(descriptor, self.image_mean, self.image_precision)

    def check(self, descriptor: np.ndarray | None, features: np.ndarray | None, what: str = "image") -> dict:
        """{"image_distance", "feature_distance"} of one input; DataError when unlike the training radiographs."""
        out = {"image_distance": None, "feature_distance": None}
        if descriptor is not None and self.image_mean is not None:
            d = self.image_distance(descriptor)
            out["image_distance"] = round(d, 2)
            if d > self.image_threshold:
                raise DataError(f"{what}: not a radiograph like the model's training images (image statistics "
                                f"distance {d:.1f} > {self.image_threshold:.1f}); no score given")
        if features is not None:
            d = self.feature_distance(features)
            out["feature_distance"] = round(d, 2)
            if d > self.threshold:
                raise DataError(f"{what}: out of the model's training distribution (feature distance {d:.1f} > "
                                f"{self.threshold:.1f}); no score given")
        return out


PROFILE_BINS = 19


def view_descriptor(tensor: np.ndarray, mean: float, std: float, stats) -> np.ndarray:
    """Descriptor of one preprocessed view (the model input tensor (1, 1, S, S) or (S, S), normalised with
    ``mean`` / ``std``): ``stats`` (a ``sonogate.runtime.image_stats.ImageStats``) output plus the magnitudes of the
    first ``PROFILE_BINS`` Fourier coefficients of the standardised column-mean profile."""
    image = np.asarray(tensor, dtype=np.float32).reshape(np.asarray(tensor).shape[-2:])
    profile = image.mean(axis=0)
    profile = (profile - profile.mean()) / (profile.std() + 1e-6)
    spectrum = np.abs(np.fft.rfft(profile))[1 : PROFILE_BINS + 1]
    return np.concatenate([stats(image, mean, std).copy(), spectrum])


class ViewClassifier:
    """Logistic regression over per-view descriptors: ``logit(x (n, D)) -> (n,)`` (> 0: the second view, e.g.
    lateral), ``probability``; ``margin``: the logit difference beyond which a pair is called swapped."""

    def __init__(self, weights: np.ndarray, bias, names: list[str], margin: float = 0.0):
        self.weights = np.asarray(weights, dtype=np.float64).reshape(-1)
        self.bias = float(np.asarray(bias).reshape(()))
        self.names = names
        self.margin = float(margin)

    def logit(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64).reshape(-1, self.weights.size) @ self.weights + self.bias

    def probability(self, features: np.ndarray) -> np.ndarray:
        z = np.asarray(features, dtype=np.float64).reshape(-1, self.weights.size) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def fit_view_classifier(first: np.ndarray, second: np.ndarray, l2: float = 1e-2, steps: int = 2000) -> dict:
    """Fit P(second view | features) by gradient descent on standardised features (numpy).

    Inputs (n1, F) features of first-view images, (n2, F) of second-view images. Output {"view_weights" (F,),
    "view_bias", "train_accuracy"} in the raw feature units (standardisation folded in)."""
    x = np.concatenate([first, second]).astype(np.float64)
    y = np.concatenate([np.zeros(len(first)), np.ones(len(second))])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w + b, -60, 60)))
        grad = p - y
        w -= 0.5 * (z.T @ grad / len(y) + l2 * w)
        b -= 0.5 * float(grad.mean())
    weights = w / sd
    bias = b - float(mu @ weights)
    acc = float(np.mean(((x @ weights + bias) > 0) == (y == 1)))
    return {"view_weights": weights, "view_bias": np.float64(bias), "train_accuracy": acc}
