"""Image -> model input tensor: the one image preprocessor of the runtime, with buffers allocated once.

Input: a captured frame or a stored image (BGR / BGRA / gray uint8), optionally the region (x, y, w, h) to crop.
Output: a float32 tensor in the input's layout (NCHW, or NHWC), ``x = (gray_uint8 / 255 - mean) / std`` after
the resize, and for a letterboxed input the ``Letterbox`` that maps model coordinates back to the image.

The resize is the input spec's ``resize``: "stretch" (resize to height x width, aspect not kept: the ultrasound
ROI) or "letterbox" (pad to a centred square with ``pad_value``, then resize to the square model input: the
aspect ratio is kept, so angles measured in the model's coordinates equal angles in the image). ``interpolation``
is "area", "linear" or "nearest" (OpenCV). Training, export, calibration and the runtime all use this module,
so a model always sees exactly what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sonogate.core.bundle import Preprocessing
from sonogate.core.task import InputSpec
from sonogate.errors import BundleError

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
RESIZE_TYPES = ("stretch", "letterbox")
LAYOUTS = ("NCHW", "NHWC")


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


@dataclass(frozen=True)
class Letterbox:
    """Where the image went in the square: ``side`` pixels of the padded square, the image's offset
    (``pad_x``, ``pad_y``) in it, ``size`` the model input side. Coordinates follow the pixel-centre
    convention of landmark heads: image pixel centre i sits at (i + 0.5 + pad) / side in [0, 1]."""

    side: int
    pad_x: int
    pad_y: int
    size: int

    def to_image(self, points01: np.ndarray) -> np.ndarray:
        """(..., 2) model coordinates in [0, 1] -> (x, y) pixels of the original image."""
        p = np.asarray(points01, dtype=np.float64)
        return p * self.side - 0.5 - np.array([self.pad_x, self.pad_y], dtype=np.float64)

    def to_model(self, points_px: np.ndarray) -> np.ndarray:
        """(..., 2) pixels of the original image -> model coordinates in [0, 1]."""
        p = np.asarray(points_px, dtype=np.float64)
        return (p + 0.5 + np.array([self.pad_x, self.pad_y], dtype=np.float64)) / self.side


def letterbox(
    gray: np.ndarray, size: int, pad_value: int = 0, interpolation: str = "area"
) -> tuple[np.ndarray, Letterbox]:
    """Pad a gray uint8 image (H, W) to a centred square and resize it to (size, size).

    Output: the model-sized uint8 image and the ``Letterbox`` that maps landmarks back to the image.
    """
    if not isinstance(gray, np.ndarray) or gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("letterbox needs a 2-D uint8 gray image")
    h, w = gray.shape
    side = max(h, w)
    pad_x, pad_y = (side - w) // 2, (side - h) // 2
    if side != w or side != h:
        square = np.full((side, side), pad_value, dtype=np.uint8)
        square[pad_y : pad_y + h, pad_x : pad_x + w] = gray
    else:
        square = gray
    if side != size:
        square = cv2.resize(square, (size, size), interpolation=INTERPOLATIONS.get(interpolation, cv2.INTER_AREA))
    return np.ascontiguousarray(square), Letterbox(side=side, pad_x=pad_x, pad_y=pad_y, size=size)


def mirror_points(points_px: np.ndarray, width: int) -> np.ndarray:
    """(x, y) pixels of a horizontally mirrored image of ``width`` columns -> pixels of the original."""
    p = np.array(points_px, dtype=np.float64, copy=True)
    p[..., 0] = width - 1 - p[..., 0]
    return p


_TRANSFORMS = {"": None, "transpose": None, "rotate_90_ccw": cv2.ROTATE_90_COUNTERCLOCKWISE,
               "rotate_90_cw": cv2.ROTATE_90_CLOCKWISE, "rotate_180": cv2.ROTATE_180, "flip_horizontal": None}


def transform_image(image: np.ndarray, transform: str) -> np.ndarray:
    """``image`` (H, W[, C]) turned by one of ``sonogate.core.task.IMAGE_TRANSFORMS`` (C-contiguous)."""
    if not transform:
        return image
    if transform == "transpose":
        return np.ascontiguousarray(np.swapaxes(image, 0, 1))
    if transform == "flip_horizontal":
        return np.ascontiguousarray(image[:, ::-1])
    return cv2.rotate(image, _TRANSFORMS[transform])


class ImagePreprocessor:
    """Crop, gray, resize (stretch or letterbox) and normalise one image input.

    Inputs: the input's ``InputSpec`` (height, width, channels, resize, interpolation, mean, std), ``pad_value``
    (letterbox padding, 0..255) and ``layout`` ("NCHW" or "NHWC"). ``__call__(frame, roi)`` returns the (1, ...)
    float32 tensor; ``with_meta(frame, roi)`` also returns the ``Letterbox`` (None for "stretch"). The stretched
    tensor is a reused buffer (no allocation per live frame: copy it to keep it); a letterboxed one is new.
    """

    def __init__(self, spec: InputSpec, pad_value: int = 0, layout: str = "NCHW"):
        if spec.kind != "image":
            raise BundleError(f"input {spec.name} is {spec.kind!r}, not an image")
        if spec.resize not in RESIZE_TYPES:
            raise BundleError(f"input {spec.name} resize {spec.resize!r} is not one of {', '.join(RESIZE_TYPES)}")
        if layout not in LAYOUTS:
            raise BundleError(f"input {spec.name} layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        if spec.resize == "letterbox" and spec.height != spec.width:
            raise BundleError(f"input {spec.name}: a letterboxed input must be square, not {spec.width}x{spec.height}")
        if spec.transform not in _TRANSFORMS:
            raise BundleError(f"input {spec.name} transform {spec.transform!r} is not one of "
                              f"{', '.join(t for t in _TRANSFORMS if t)}")
        if spec.height < 1 or spec.width < 1 or spec.channels < 1 or not spec.std > 0:
            raise BundleError(f"input {spec.name}: size {spec.width}x{spec.height}x{spec.channels} or std "
                              f"{spec.std} is not usable")
        self.spec = spec
        self.pad_value = int(pad_value)
        self.layout = layout
        height, width = spec.height, spec.width
        self._resized = np.empty((height, width), dtype=np.uint8)
        shape = (1, spec.channels, height, width) if layout == "NCHW" else (1, height, width, spec.channels)
        self._tensor = np.empty(shape, dtype=np.float32)
        # (x / 255 - mean) / std == x * scale + offset
        self._scale = np.float32(1.0 / (255.0 * spec.std))
        self._offset = np.float32(-spec.mean / spec.std)
        self._interpolation = INTERPOLATIONS.get(spec.interpolation, cv2.INTER_AREA)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def resized(self) -> np.ndarray:
        """The last model-sized gray image (uint8), reused buffer."""
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
        """The gray crop, turned by the input's ``transform`` (the model's orientation)."""
        if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3):
            raise FrameError("frame is not a 2-D or 3-D image array")
        gray = to_gray(self.crop(frame, roi))
        return transform_image(gray, self.spec.transform) if self.spec.transform else gray

    def with_meta(self, frame: np.ndarray, roi: tuple[int, int, int, int] | None = None
                  ) -> tuple[np.ndarray, Letterbox | None]:
        """(tensor, letterbox or None) of one frame; FrameError for a frame that is not a usable image."""
        gray = self.gray_roi(frame, roi)
        spec = self.spec
        if spec.resize == "letterbox":
            square, box = letterbox(gray, spec.height, self.pad_value, spec.interpolation)
            self._resized[...] = square
            tensor = np.empty_like(self._tensor)
            self._fill(tensor, square)
            return tensor, box
        cv2.resize(gray, (spec.width, spec.height), dst=self._resized, interpolation=self._interpolation)
        self._fill(self._tensor, self._resized)
        return self._tensor, None

    def _fill(self, tensor: np.ndarray, image: np.ndarray) -> None:
        plane = tensor[0, 0] if self.layout == "NCHW" else tensor[0, :, :, 0]
        np.multiply(image, self._scale, out=plane, casting="unsafe")
        plane += self._offset
        for channel in range(1, self.spec.channels):
            if self.layout == "NCHW":
                tensor[0, channel] = plane
            else:
                tensor[0, :, :, channel] = plane

    def __call__(self, frame: np.ndarray, roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
        return self.with_meta(frame, roi)[0]


def input_spec_of(preprocessing: Preprocessing, resize: str = "stretch") -> InputSpec:
    """The ``InputSpec`` of a bundle's v1 ``preprocessing`` block (one gray image input)."""
    return InputSpec(name=preprocessing.input_name, kind="image", height=preprocessing.height,
                     width=preprocessing.width, channels=preprocessing.channels, resize=resize,
                     interpolation=preprocessing.interpolation, mean=preprocessing.mean, std=preprocessing.std)


class Preprocessor(ImagePreprocessor):
    """The stretched one-image preprocessor of a bundle's ``Preprocessing`` (the live ultrasound input)."""

    def __init__(self, preprocessing: Preprocessing):
        super().__init__(input_spec_of(preprocessing))
        self.preprocessing = preprocessing
