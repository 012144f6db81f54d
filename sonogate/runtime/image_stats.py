"""Low-level image statistics of the model's input: the "is this the kind of image the bundle was calibrated
on" check that the encoder features cannot give.

Why a second out-of-distribution check: the SimSiam encoder is trained to be invariant to intensity, contrast,
blur and noise, so real scanner images, a cardiac cine and the phantom all land inside the Mahalanobis
ellipsoid of its pooled features (measured: docs/safety.md). The texture those invariances throw away is what
tells the domains apart: the intensity histogram, edge strength, speckle correlation length, the depth
profile. A Mahalanobis distance on these ``DESCRIPTOR_DIM`` numbers, fitted on the training frames and
thresholded at a high percentile of held-out in-distribution frames (``sonogate.calibration.ood.fit_ood``),
refuses images unlike the calibration data before any measurement of them can reassure.

Input: the preprocessed model input (S, S), either uint8 grey or the normalised float tensor with the bundle's
mean/std. Output: ``descriptor`` float64 (DESCRIPTOR_DIM,). numpy + OpenCV only (runtime side, no torch); the
training side calls the same function so the two cannot drift. Buffers are reused per image size.
"""

from __future__ import annotations

import cv2
import numpy as np

DESCRIPTOR_VERSION = "sonogate-image-stats/1"
HIST_BINS = 16
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
LAGS = (1, 2, 4, 8)
BANDS = 4
DESCRIPTOR_DIM = HIST_BINS + len(QUANTILES) + 1 + 4 + 1 + 2 * len(LAGS) + 2 * BANDS


class ImageStats:
    """``ImageStats()(image)`` -> descriptor (DESCRIPTOR_DIM,) float64 of one (S, S) image.

    ``image``: uint8 grey, or float32 with ``mean``/``std`` given (x = (g - mean) / std, g in [0, 1]).
    """

    def __init__(self) -> None:
        self._shape: tuple[int, int] | None = None
        self.out = np.empty(DESCRIPTOR_DIM, dtype=np.float64)

    def _buffers(self, shape: tuple[int, int]) -> None:
        if self._shape == shape:
            return
        self._shape = shape
        self.g = np.empty(shape, np.float32)
        self.gx = np.empty(shape, np.float32)
        self.gy = np.empty(shape, np.float32)
        self.centred = np.empty(shape, np.float32)
        self.u8 = np.empty(shape, np.uint8)

    def __call__(self, image: np.ndarray, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim == 4:  # (1, 1, S, S) model tensor
            image = image[0, 0]
        if image.ndim != 2:
            raise ValueError(f"image statistics need one grey image, got shape {image.shape}")
        self._buffers(image.shape)
        g = self.g
        if image.dtype == np.uint8:
            np.multiply(image, np.float32(1.0 / 255.0), out=g, casting="unsafe")
        else:
            np.multiply(image, np.float32(std), out=g, casting="unsafe")
            g += np.float32(mean)
        np.clip(g, 0.0, 1.0, out=g)
        np.multiply(g, 255.0, out=self.centred)
        np.rint(self.centred, out=self.centred)
        self.u8[...] = self.centred
        out = self.out
        pos = 0
        counts = np.bincount(self.u8.reshape(-1), minlength=256).astype(np.float64)
        counts /= counts.sum()
        out[pos : pos + HIST_BINS] = counts.reshape(HIST_BINS, -1).sum(1)
        pos += HIST_BINS
        cdf = np.cumsum(counts)
        out[pos : pos + len(QUANTILES)] = np.searchsorted(cdf, QUANTILES) / 255.0
        pos += len(QUANTILES)
        mu = float(g.mean())
        np.subtract(g, np.float32(mu), out=self.centred)
        var = float(np.square(self.centred).mean()) + 1e-8
        out[pos] = np.sqrt(var)
        pos += 1
        # Edge strength: Sobel magnitude moments and the share of strong edges (bone echoes, text strokes).
        cv2.Sobel(g, cv2.CV_32F, 1, 0, dst=self.gx, ksize=3)
        cv2.Sobel(g, cv2.CV_32F, 0, 1, dst=self.gy, ksize=3)
        cv2.magnitude(self.gx, self.gy, magnitude=self.gx)
        out[pos] = float(self.gx.mean())
        out[pos + 1] = float(np.sqrt(np.square(self.gx).mean()))
        out[pos + 2] = float((self.gx > 0.25).mean())
        out[pos + 3] = float((self.gx > 0.5).mean())
        pos += 4
        cv2.Laplacian(g, cv2.CV_32F, dst=self.gy, ksize=1)
        out[pos] = float(np.abs(self.gy).mean())
        pos += 1
        # Speckle / structure correlation length along both axes.
        c = self.centred
        for lag in LAGS:
            out[pos] = float((c[:, lag:] * c[:, :-lag]).mean()) / var
            out[pos + 1] = float((c[lag:] * c[:-lag]).mean()) / var
            pos += 2
        # Depth (rows) and lateral (columns) brightness profile: attenuation, TGC, shadows.
        h, w = g.shape
        for b in range(BANDS):
            out[pos + b] = float(g[b * h // BANDS : (b + 1) * h // BANDS].mean())
            out[pos + BANDS + b] = float(g[:, b * w // BANDS : (b + 1) * w // BANDS].mean())
        return out


def describe_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S) -> float64 (N, DESCRIPTOR_DIM): the descriptor of each image (used to fit the check)."""
    stats = ImageStats()
    return np.stack([stats(img).copy() for img in images]) if len(images) else np.empty((0, DESCRIPTOR_DIM))
