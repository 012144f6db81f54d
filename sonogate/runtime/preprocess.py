"""Frame -> model input tensor, with buffers allocated once.

Input: a captured frame (BGR / BGRA / gray uint8) and the ultrasound region (x, y, w, h) inside it.
Output: a float32 NCHW view into a reused buffer, normalised as the bundle's ``Preprocessing`` says.
"""

from __future__ import annotations

import cv2
import numpy as np

from sonogate.core.bundle import Preprocessing

_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


class FrameError(ValueError):
    """A frame that cannot be used (wrong type, shape, or channel count). The runtime reports it, never crashes."""


def to_gray(frame: np.ndarray) -> np.ndarray:
    """Gray uint8 view/copy of a frame; raises FrameError for anything that is not an image."""
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"frame is not an array ({type(frame).__name__})")
    if frame.dtype != np.uint8:
        raise FrameError(f"frame dtype must be uint8, got {frame.dtype}")
    if frame.ndim not in (2, 3) or frame.shape[0] < 16 or frame.shape[1] < 16:
        raise FrameError(f"frame shape {frame.shape} is not an image of at least 16x16 pixels")
    if frame.ndim == 2:
        gray = frame
    elif frame.ndim == 3 and frame.shape[2] == 1:
        gray = frame[:, :, 0]
    elif frame.ndim == 3 and frame.shape[2] == 3:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        gray = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    else:
        raise FrameError(f"frame shape {frame.shape} is not a gray, BGR or BGRA image")
    if gray.shape[0] < 16 or gray.shape[1] < 16:
        raise FrameError(f"frame {gray.shape[1]}x{gray.shape[0]} is too small to measure")
    return gray


class Preprocessor:
    """Crop, gray, resize and normalise into preallocated buffers (no per-frame allocation of the tensor)."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing
        height, width = preprocessing.height, preprocessing.width
        self._resized = np.empty((height, width), dtype=np.uint8)
        self._tensor = np.empty((1, preprocessing.channels, height, width), dtype=np.float32)
        # (x / 255 - mean) / std == x * scale + offset
        self._scale = np.float32(1.0 / (255.0 * preprocessing.std))
        self._offset = np.float32(-preprocessing.mean / preprocessing.std)
        self._interpolation = _INTERPOLATION.get(preprocessing.interpolation, cv2.INTER_AREA)

    @property
    def resized(self) -> np.ndarray:
        """The last model-sized gray crop (uint8), reused buffer."""
        return self._resized

    def crop(self, frame: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
        if roi is None:
            return frame
        x, y, w, h = roi
        height, width = frame.shape[:2]
        x0, y0 = max(0, int(x)), max(0, int(y))
        x1, y1 = min(width, int(x + w)), min(height, int(y + h))
        if x1 - x0 < 16 or y1 - y0 < 16:
            raise FrameError(f"region of interest {roi} lies outside the {width}x{height} frame")
        return frame[y0:y1, x0:x1]

    def gray_roi(self, frame: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3):
            raise FrameError("frame is not a 2-D or 3-D image array")
        return to_gray(self.crop(frame, roi))

    def __call__(self, frame: np.ndarray, roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
        gray = self.gray_roi(frame, roi)
        cv2.resize(gray, (self.preprocessing.width, self.preprocessing.height), dst=self._resized,
                   interpolation=self._interpolation)
        plane = self._tensor[0, 0]
        np.multiply(self._resized, self._scale, out=plane, casting="unsafe")
        plane += self._offset
        for channel in range(1, self.preprocessing.channels):
            self._tensor[0, channel] = plane
        return self._tensor
