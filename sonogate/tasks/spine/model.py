"""The ``spine`` runtime wrapper (model type "point_completion"): an ultrasound cloud and a lateral radiograph of
one vertebra in, the completed vertebra (2,048 points, mm, in the ultrasound's frame) out. Torch-free.

``create_model`` builds ``SpineCompletionModel`` for a spine bundle (the spec's ``parts["model_wrapper"]``).
``sonogate analyze CASE_DIR... --bundle bundles/spine --out OUT`` hands it one case at a time: the folder's
``us_partial.ply`` (or ``.npy``; the input ``us_points``, view "us_partial") as a path and its ``xray.png`` (view
"xray") decoded. ``analyze``:

1. reads and checks both (``inputs``: empty / NaN / too few points / not millimetres; a colour, wrongly sized or
   non-lateral radiograph; an ultrasound cloud off the X-ray silhouette; mismatched or untrained levels): any
   failure is a ``DataError`` (one line; the case's row says error and no file is written);
2. makes the 2.5D X-ray cloud from the image with ``phantom.xray_cloud`` (the code that made the training data),
   embedded as the bundle's network was trained (``spine.network.xray_embedding``: x = 0, or half the bone path
   length, ``phantom.embed_xray``) and brings the ultrasound cloud to 2,048 points (``inputs.model_points``, noted when it resamples);
3. runs the graph (``us_points``, ``xray_points`` -> ``completed``, ``coarse``): deterministic, no sampling.

Level: ``meta.json`` beside the inputs (``level``, or ``us_level`` / ``xray_level``) when present, else "unknown"
(with a note): the network does not take the level, so an unknown level is no reason to refuse, but a stated one
must agree between the inputs and be a level the model was trained on.

``write_outputs`` writes ``OUT/<stem>.ply`` (the completed cloud, binary PLY, mm, the input's frame) and
``OUT/<stem>.png`` (``render_case``: the radiograph with its silhouette outline, the completion and the ultrasound
points projected on it, and an axial view). No decision and no calibration: a surgeon looks at the completion.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sonogate.core.bundle import Bundle
from sonogate.errors import BundleError, DataError
from sonogate.runtime.model_api import InferenceAdapter, InputModel
from sonogate.tasks.spine import inputs as spine_inputs
from sonogate.tasks.spine.inputs import InputRanges

US_VIEW, XRAY_VIEW = "us_partial", "xray"
COMPLETED_COLOUR = (230, 200, 40)  # BGR: cyan-blue
US_COLOUR = (40, 140, 255)  # BGR: orange
OUTLINE_COLOUR = (60, 220, 60)


class SpineCompletionModel(InputModel):
    """A spine bundle: ``analyze(frames, sources, notes)`` per case (module docstring)."""

    model_type: ClassVar[str] = "point_completion"

    def __init__(self, bundle: Bundle, adapter: InferenceAdapter):
        super().__init__(bundle, adapter)
        block = self.manifest.get("spine")
        if not isinstance(block, dict) or "input_ranges" not in block:
            raise BundleError(f"spine bundle {bundle.path} lacks its 'spine' block (input ranges, levels)")
        self.ranges = InputRanges.from_json(block["input_ranges"])
        self.trained_levels = tuple(str(level) for level in block.get("levels", ()))
        if not self.trained_levels:
            raise BundleError(f"spine bundle {bundle.path} names no trained levels")
        # bundles from before the embedding existed fed the plane embedding
        self.xray_embedding = str((block.get("network") or {}).get("xray_embedding", "plane"))
        if self.xray_embedding not in ("plane", "half_path"):
            raise BundleError(f"spine bundle {bundle.path}: unknown X-ray embedding {self.xray_embedding!r}")

    # -- the three steps -------------------------------------------------------------------------------------
    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """{"completed" (2048, 3), "coarse" (512, 3)} float64 mm of a batch-1 run."""
        return {name: np.asarray(outputs[name], dtype=np.float64)[0] for name in ("completed", "coarse")}

    def case_inputs(self, frames: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
        """Read and check one case (``frames``: view -> path of the cloud / decoded radiograph). Returns
        {"us_points", "xray_points" (2048, 3) float32, "xray_grey", "us_raw" (n, 3), "level", "overlap"}."""
        from sonogate.tasks.spine.phantom import embed_xray, xray_cloud

        missing = [view for view in (US_VIEW, XRAY_VIEW) if view not in frames]
        if missing:
            raise DataError(f"the case lacks {', '.join(missing)} (us_partial.ply and xray.png)")
        source = frames[US_VIEW]
        if not isinstance(source, (str, Path)):
            raise DataError("the ultrasound input must be a .ply or .npy point cloud file")
        us_raw = spine_inputs.check_us_cloud(spine_inputs.read_cloud(source), self.ranges)
        level = spine_inputs.case_level(Path(source).parent, self.trained_levels, notes)
        grey = spine_inputs.xray_grey(frames[XRAY_VIEW])
        spine_inputs.check_lateral_view(grey, self.ranges)
        overlap = spine_inputs.check_overlap(us_raw, grey, self.ranges)
        xray_points, path_mm = xray_cloud(grey)
        return {"us_points": spine_inputs.model_points(us_raw, notes),
                "xray_points": embed_xray(xray_points, path_mm, self.xray_embedding),
                "xray_grey": grey, "us_raw": us_raw, "level": level, "overlap": overlap}

    def complete(self, us_points: np.ndarray, xray_points: np.ndarray) -> dict[str, np.ndarray]:
        """The graph on one case's model inputs (2048, 3) mm each: {"completed", "coarse"} mm."""
        return self({"us_points": us_points, "xray_points": xray_points})

    # -- one case of ``sonogate analyze`` ----------------------------------------------------------------------
    def analyze(self, frames: Mapping[str, Any], sources: Any, notes: list[str]) -> dict[str, Any]:
        """The completion of one case: columns level, n_points, latency_ms (reading and checking the inputs,
        making the X-ray cloud and running the graph), plus what the outputs and the JSON record need."""
        started = time.perf_counter()
        case = self.case_inputs(frames, notes)
        out = self.complete(case["us_points"], case["xray_points"])
        latency = (time.perf_counter() - started) * 1000.0
        completed = out["completed"]
        if not np.all(np.isfinite(completed)):
            raise DataError("the model returned non-finite points for this case")
        return {"recommendation": None,
                "reason": "vertebra completed from ultrasound and a lateral X-ray (shape completion, no decision)",
                "columns": {"level": case["level"], "n_points": len(completed), "latency_ms": round(latency, 1)},
                "summary": {"us_points_given": len(case["us_raw"]), "xray_overlap": round(case["overlap"], 4),
                            "completed_extent_mm": [round(float(v), 2) for v in np.ptp(completed, axis=0)],
                            "completed_centroid_mm": [round(float(v), 2) for v in completed.mean(axis=0)]},
                "_arrays": {"completed": completed, "us_points": case["us_raw"], "xray_grey": case["xray_grey"]}}

    def write_outputs(self, out_dir: Path, stem: str, result: dict[str, Any], frames: Any) -> dict[str, str]:
        """``<stem>.ply`` (the completed cloud, mm) and ``<stem>.png`` (``render_case``) in ``out_dir``."""
        import cv2

        from sonogate.tasks.spine.ply import write_ply

        arrays = result.pop("_arrays")  # the arrays go to files, not into the JSON record
        ply_path, png_path = Path(out_dir) / f"{stem}.ply", Path(out_dir) / f"{stem}.png"
        write_ply(ply_path, arrays["completed"].astype(np.float32))
        picture = render_case(arrays["xray_grey"], arrays["completed"], arrays["us_points"],
                              f"{stem}  level {result['columns']['level']}")
        if not cv2.imwrite(str(png_path), picture):
            raise OSError(f"cannot write {png_path}")
        return {"ply": ply_path.name, "png": png_path.name}

    def algorithm(self):
        from sonogate.runtime.dicom_report import AlgorithmInfo

        return AlgorithmInfo(bundle_sha256=self.bundle.bundle_hash, device=self.device_name, task=self.task)

    def report_groups(self, result: Mapping[str, Any]) -> list:
        """No DICOM SR measurement groups: the output is a shape, not a measurement."""
        return []

    def annotate(self, frame: np.ndarray, result: Mapping[str, Any], image: Any | None) -> np.ndarray:
        """The case picture (``render_case``) when the result still carries its arrays, else the frame."""
        arrays = result.get("_arrays")
        if not arrays:
            return frame
        return render_case(arrays["xray_grey"], arrays["completed"], arrays["us_points"], "")


def render_case(xray_grey: np.ndarray, completed: np.ndarray, us_points: np.ndarray, title: str,
                scale: int = 2) -> np.ndarray:
    """BGR picture of one case, two panels at 0.5 mm / ``scale`` per pixel: left, the lateral radiograph with its
    silhouette outlined (green), the completed points (blue) and the ultrasound points (orange) projected on it
    (y, z); right, the axial view (x across, posterior up) of the same points on black."""
    import cv2

    size = xray_grey.shape[0] * scale
    lateral = cv2.cvtColor(cv2.resize(xray_grey, (size, size), interpolation=cv2.INTER_NEAREST),
                           cv2.COLOR_GRAY2BGR)
    lateral = (lateral * 0.6).astype(np.uint8)
    mask = cv2.resize(spine_inputs.silhouette(xray_grey).astype(np.uint8), (size, size),
                      interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(lateral, contours, -1, OUTLINE_COLOUR, 1, cv2.LINE_AA)
    axial = np.zeros_like(lateral)
    half = (xray_grey.shape[0] - 1) / 2

    def draw(canvas, rows, cols, colour):
        r = np.rint((rows + 0.5) * scale - 0.5).astype(np.int64)
        c = np.rint((cols + 0.5) * scale - 0.5).astype(np.int64)
        keep = (r >= 0) & (r < size) & (c >= 0) & (c < size)
        for rr, cc in zip(r[keep], c[keep]):
            cv2.circle(canvas, (int(cc), int(rr)), 1, colour, -1, cv2.LINE_AA)

    for points, colour in ((completed, COMPLETED_COLOUR), (us_points, US_COLOUR)):
        rows, cols = spine_inputs.pixel_of(points)
        draw(lateral, rows, cols, colour)
        # axial: column = x, row = -y (posterior up), same pixel pitch and centre as the radiograph
        draw(axial, half - points[:, 1] / 0.5, points[:, 0] / 0.5 + half, colour)
    canvas = np.concatenate([lateral, np.full((size, 4, 3), 255, np.uint8), axial], axis=1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    lines = [title, "lateral X-ray: silhouette (green), completion (blue), ultrasound (orange)",
             "axial view (posterior up)", "shape completion from a phantom-trained model: not a measurement"]
    cv2.putText(canvas, lines[0], (8, 18), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(canvas, lines[1], (8, size - 10), font, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(canvas, lines[2], (size + 12, size - 10), font, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.putText(canvas, lines[3], (size + 12, 18), font, 0.4, (180, 180, 180), 1, cv2.LINE_AA)
    return canvas
