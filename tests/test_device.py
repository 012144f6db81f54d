"""Capture sources, the latest-frame grabber and compute backends, on real OpenCV / ORT / OpenVINO (no mocks)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.device.capture import ArraySource, VideoFileSource, open_source, to_bgr
from sonogate.device.grabber import LatestFrameGrabber
from sonogate.errors import SonogateError, SourceError

pytestmark = pytest.mark.torchfree

FPS = 30.0
PERIOD = 1.0 / FPS


def speckle_frames(count: int, size=(120, 160), seed=0, frozen=False) -> list[np.ndarray]:
    """Grey speckle frames with a moving bright bar (every frame differs unless ``frozen``)."""
    rng = np.random.default_rng(seed)
    h, w = size
    frames = []
    base = None
    for i in range(count):
        if base is None or not frozen:
            img = cv2.GaussianBlur(rng.rayleigh(40.0, (h, w)).astype(np.float32), (0, 0), 1.0)
            img = np.clip(img * 1.5, 0, 255).astype(np.uint8)
            cv2.line(img, (0, (7 * i) % h), (w - 1, (7 * i + 15) % h), 255, 3)
            base = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        frames.append(base)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "live.mp4", speckle_frames(45))  # 1.5 s at 30 fps


@pytest.fixture(scope="module")
def frozen_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "frozen.mp4", speckle_frames(60, frozen=True))


# --------------------------------------------------------------------------- capture sources
def test_file_source_reads_bgr_frames_and_reports_fps(video):
    with open_source(str(video), realtime=False) as src:
        assert isinstance(src, VideoFileSource)
        assert src.fps == pytest.approx(FPS)
        assert src.finite
        frames = []
        while True:
            ok, frame = src.read()
            if not ok:
                break
            frames.append(frame)
        assert frame is None
    assert len(frames) == 45
    assert all(f.shape == (120, 160, 3) and f.dtype == np.uint8 for f in frames)
    assert frames[0] is not frames[1]  # without ``out`` every frame is the caller's own array


def test_file_source_paced_at_its_fps_vs_unpaced(video):
    n = 15
    with open_source(str(video), realtime=True) as src:
        t0 = time.perf_counter()
        for _ in range(n):
            assert src.read()[0]
        paced = time.perf_counter() - t0
    with open_source(str(video), realtime=False) as src:
        t0 = time.perf_counter()
        for _ in range(n):
            assert src.read()[0]
        unpaced = time.perf_counter() - t0
    assert (n - 1) * PERIOD * 0.9 <= paced <= (n - 1) * PERIOD + 0.3
    assert unpaced < paced / 2


def test_realtime_file_skips_frames_for_a_slow_reader(video):
    with open_source(str(video), realtime=True) as src:
        src.read()
        time.sleep(5 * PERIOD)  # a live feed moves on while the reader is busy
        src.read()
        assert src.skipped >= 3


def test_file_source_loop(video):
    with open_source(str(video), loop=True, realtime=False) as src:
        assert not src.finite
        assert all(src.read()[0] for _ in range(100))
        assert src.loops == 2
    with open_source(str(video), loop=False, realtime=False) as src:
        assert sum(1 for _ in range(100) if src.read()[0]) == 45


def test_read_into_a_reused_buffer(video):
    with open_source(str(video), realtime=False) as src:
        buf = np.empty((120, 160, 3), np.uint8)
        ok, frame = src.read(out=buf)
        assert ok and frame is buf  # OpenCV decoded in place: no allocation per frame


@pytest.mark.parametrize(
    "spec, message",
    [
        ("/no/such/file.mp4", "cannot open source '/no/such/file.mp4': no such file"),
        ("/no/such/cine.dcm", "cannot open source '/no/such/cine.dcm': no such file"),
        ("/dev/video99", "cannot open source '/dev/video99'"),
        ("phantom:abc", "phantom seed must be an integer"),
        ("gopher://host/x", "unsupported scheme"),
        ("", "empty source"),
    ],
)
def test_bad_sources_raise_one_line_source_error(spec, message):
    with pytest.raises(SourceError) as info:
        open_source(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_not_a_video_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 10)
    with pytest.raises(SourceError, match="cannot open source .*junk.mp4"):
        open_source(str(junk))
    with pytest.raises(SourceError, match="not a file"):
        open_source(str(tmp_path))


def test_dead_stream_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(SourceError, match="cannot open source 'udp://127.0.0.1:9"):
        open_source("udp://127.0.0.1:9", open_timeout_s=0.5)
    assert time.perf_counter() - t0 < 5.0  # not OpenCV's default 30 s
    with pytest.raises(SourceError) as info:  # credentials never end up in messages or logs
        open_source("rtsp://admin:s3cret@127.0.0.1:9/live", open_timeout_s=0.5)
    assert "s3cret" not in str(info.value) and "rtsp://***@127.0.0.1:9/live" in str(info.value)


def write_dicom_cine(path: Path, frames: np.ndarray, frame_time_ms: float = 40.0) -> Path:
    """A minimal multi-frame ultrasound DICOM (8-bit MONOCHROME2, uncompressed) written with pydicom."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime = f"{frame_time_ms:g}"
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    ds.PixelData = frames.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _dicom_reader_available() -> bool:
    try:
        import sonogate.data.dicom as dicom_io
    except ImportError:
        return False
    return hasattr(dicom_io, "read_dicom_frames") or hasattr(dicom_io, "iter_dicom_frames")


def test_dicom_cine_source(tmp_path):
    if not _dicom_reader_available():
        pytest.skip("sonogate.data.dicom not available")
    cine = np.random.default_rng(0).integers(0, 255, (6, 40, 50), np.uint8)
    path = write_dicom_cine(tmp_path / "cine.dcm", cine, frame_time_ms=40.0)
    with open_source(str(path), realtime=False) as src:
        assert src.fps == pytest.approx(25.0) and src.name == "dicom:cine.dcm" and src.finite
        frames = []
        while (got := src.read())[0]:
            frames.append(got[1])
    assert len(frames) == 6 and frames[0].shape == (40, 50, 3)
    np.testing.assert_array_equal(frames[3][..., 1], cine[3])
    with open_source(str(path), loop=True, realtime=False, fps=50) as src:
        assert src.fps == 50 and all(src.read()[0] for _ in range(15))
    with LatestFrameGrabber(lambda: open_source(str(path), realtime=True)) as grabber:  # paced at 25 fps
        t0 = time.perf_counter()
        while grabber.state != "ended" and time.perf_counter() - t0 < 3:
            grabber.get(timeout=0.1)
        assert grabber.state == "ended" and 0.15 <= time.perf_counter() - t0 < 2.0


def test_dicom_that_is_not_dicom_is_a_source_error(tmp_path):
    fake = tmp_path / "cine.dcm"
    fake.write_bytes(b"\0" * 200)
    with pytest.raises(SourceError, match="cannot open source .*cine.dcm': ") as info:
        open_source(str(fake))
    assert "\n" not in str(info.value)


def test_phantom_source_renders_live():
    pytest.importorskip("sonogate.phantom.cine", reason="sonogate.phantom.cine not available")
    with open_source("phantom:1", realtime=False, fps=10) as src:
        assert src.name == "phantom:1" and src.fps == 10 and not src.finite
        for _ in range(3):
            ok, frame = src.read()
            assert ok and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        assert src.last_label is not None and "roi_x" in src.last_label


def test_gray_frames_become_bgr_and_bad_frames_are_reported():
    gray = np.full((4, 5), 7, np.uint8)
    bgr = to_bgr(gray, "t")
    assert bgr.shape == (4, 5, 3) and (bgr == 7).all()
    out = np.empty((4, 5, 3), np.uint8)
    assert to_bgr(gray, "t", out) is out
    assert to_bgr(np.zeros((4, 5, 4), np.uint8), "t").shape == (4, 5, 3)  # BGRA loses alpha
    with pytest.raises(SourceError, match="float32"):
        to_bgr(np.zeros((4, 5, 3), np.float32), "cam")
    with pytest.raises(SourceError, match="shape"):
        to_bgr(np.zeros((4, 5, 2), np.uint8), "cam")
    with pytest.raises(SourceError, match="empty"):
        to_bgr(np.zeros((0, 5, 3), np.uint8), "cam")
    src = ArraySource("gray-cine", np.zeros((3, 8, 8), np.uint8), fps=30, realtime=False)
    ok, frame = src.read()
    assert ok and frame.shape == (8, 8, 3)


# --------------------------------------------------------------------------- grabber
def test_grabber_drops_frames_for_a_slow_consumer_and_serves_fresh_ones(video):
    def factory():
        return open_source(str(video), loop=True, realtime=True)
    ages, indices, ids = [], [], set()
    with LatestFrameGrabber(factory) as grabber:
        first = grabber.get(timeout=3.0)
        assert first is not None and grabber.state == "live"
        t_end = time.perf_counter() + 1.2
        while time.perf_counter() < t_end:
            time.sleep(3.2 * PERIOD)  # the consumer takes ~3 source periods per frame
            frame = grabber.get(timeout=1.0)
            assert frame is not None
            ages.append(time.perf_counter() - frame.t_capture)
            indices.append(frame.index)
            ids.add(id(frame.image))
            assert frame.image.shape == (120, 160, 3)
        stats = grabber.stats()
    assert frame.dropped_total > 0 and stats["dropped_total"] == frame.dropped_total
    assert all(b > a + 1 for a, b in itertools.pairwise(indices))  # frames in between were dropped, not queued
    # never older than one source period (plus scheduling slack on a shared CI machine)
    assert np.median(ages) <= PERIOD
    assert max(ages) <= PERIOD + 0.03
    assert len(ids) <= 3  # three rotating buffers, no per-frame allocation
    assert stats["frames_read"] >= stats["frames_taken"] + stats["dropped_total"] - 1
    print(f"\ngrabber overhead per frame: {stats['overhead_us_mean']:.1f} us, read {stats['read_ms_mean']:.2f} ms")


def test_grabber_reaches_end_of_file(video):
    with LatestFrameGrabber(lambda: open_source(str(video), realtime=False)) as grabber:
        t_end = time.perf_counter() + 5.0
        while grabber.state != "ended" and time.perf_counter() < t_end:
            grabber.get(timeout=0.1)
        assert grabber.state == "ended"
        assert "end of" in grabber.last_error
        assert grabber.get(timeout=0.1) is None


def test_grabber_detects_a_frozen_feed(frozen_video):
    def factory():
        return open_source(str(frozen_video), loop=True, realtime=True)
    with LatestFrameGrabber(factory, frozen_after_s=0.5, reconnect_backoff_s=(0.1,)) as grabber:
        assert grabber.get(timeout=2.0) is not None  # the first frames are published: frozen is not known yet
        t_end = time.perf_counter() + 3.0
        while grabber.state != "lost" and time.perf_counter() < t_end:
            time.sleep(0.05)
        assert grabber.state == "lost"
        assert "frozen" in grabber.last_error
        # it reconnects, sees the same picture again and stays lost; frozen frames are not served
        time.sleep(0.5)
        assert grabber.state == "lost"
        grabber.get(timeout=0.01)
        assert grabber.get(timeout=0.3) is None
        assert grabber.reconnects >= 1


def test_grabber_marks_a_stalled_feed_lost_then_recovers():
    frames = speckle_frames(4)

    def stalling():  # 10 frames, a 0.8 s stall (a blocked read), then frames again
        for i in range(10):
            yield frames[i % 4]
        time.sleep(0.8)
        for i in range(200):
            yield frames[i % 4]

    def factory():
        return ArraySource("stall", stalling, fps=FPS, loop=True)
    with LatestFrameGrabber(factory, stale_after_s=0.3, recover_after_s=0.05) as grabber:
        assert grabber.get(timeout=1.0) is not None
        t_end = time.perf_counter() + 2.0
        seen = []
        while time.perf_counter() < t_end and (not seen or seen[-1] != "live" or "lost" not in seen):
            seen.append(grabber.state)
            time.sleep(0.02)
        assert "lost" in seen and seen[-1] == "live"
        assert "no new frame" in grabber.last_error


def test_grabber_reconnects_with_backoff_after_open_failures(video):
    attempts = []

    def flaky():
        attempts.append(time.perf_counter())
        if len(attempts) <= 3:
            raise SourceError(f"cannot open source 'flaky': attempt {len(attempts)} refused")
        return open_source(str(video), loop=True)

    grabber = LatestFrameGrabber(flaky, reconnect_backoff_s=(0.05, 0.1), fail_fast=False)
    with grabber:
        frame = grabber.get(timeout=3.0)
        assert frame is not None and grabber.state == "live"
    assert len(attempts) == 4
    gaps = np.diff(attempts)
    assert gaps[0] >= 0.09 and gaps[1] >= 0.09  # back-off: 0.05 then 0.1, the last value repeating
    assert grabber.state == "ended"


def test_grabber_fail_fast_raises_source_error():
    grabber = LatestFrameGrabber(lambda: open_source("/no/such/file.mp4"))
    with pytest.raises(SourceError, match="no such file"):
        grabber.start()
    assert grabber.state == "starting"


def test_grabber_reports_bad_frames_instead_of_crashing():
    bad = np.zeros((5, 8, 8, 3), np.float32)
    def factory():
        return ArraySource("float-cam", bad, fps=FPS, loop=True)
    with LatestFrameGrabber(factory, reconnect_backoff_s=(0.05,)) as grabber:
        assert grabber.get(timeout=0.3) is None
        assert grabber.state == "lost"
        assert "float32" in grabber.last_error and "float-cam" in grabber.last_error


def test_grabber_stop_is_prompt_and_idempotent(video):
    grabber = LatestFrameGrabber(lambda: open_source(str(video), loop=True)).start()
    assert grabber.get(timeout=2.0) is not None
    t0 = time.perf_counter()
    grabber.stop()
    grabber.stop()
    assert time.perf_counter() - t0 < 1.0
    assert grabber.state == "ended"
    assert grabber.get(timeout=0.1) is None


# --------------------------------------------------------------------------- compute backends
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """conv -> relu -> global average pool -> flatten -> gemm: outputs 'measurements' (N,3) and 'features' (N,4)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(0, 0.1, (4,)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3)).astype(np.float32), "G"),
        numpy_helper.from_array(np.array([0.1, -0.2, 0.3], np.float32), "C"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["features"]),
        helper.make_node("Gemm", ["features", "G", "C"], ["measurements"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 32, 32])],
        [
            helper.make_tensor_value_info("measurements", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4]),
        ],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def _needs(device: str):
    from sonogate.device.compute import available_devices

    if device not in available_devices():
        pytest.skip(f"{device} not available here")


def test_available_devices_lists_what_is_installed():
    from sonogate.device.compute import DEVICES, available_devices

    devices = available_devices()
    assert devices[0] == "auto" and "ort-cpu" in devices
    assert set(devices) <= set(DEVICES)


def test_ort_and_openvino_agree(tiny_model, tmp_path):
    _needs("openvino-cpu")
    from sonogate.device.compute import create_backend

    batch = np.random.default_rng(1).normal(0, 1, (2, 1, 32, 32)).astype(np.float32)
    ort_backend, ort_note = create_backend(tiny_model, "ort-cpu")
    ov_backend, ov_note = create_backend(tiny_model, "openvino-cpu")
    assert ort_backend.name == "onnxruntime:CPUExecutionProvider" and ov_backend.name == "openvino:CPU"
    assert ort_backend.input_name == ov_backend.input_name == "image"
    assert ort_backend.output_names == ov_backend.output_names == ("measurements", "features")
    assert "warm-up" in ort_note and "1 thread" in ov_note
    a, b = ort_backend.infer(batch), ov_backend.infer(batch)
    assert a.keys() == b.keys() == {"measurements", "features"}
    for key in a:
        assert a[key].shape == b[key].shape
        np.testing.assert_allclose(a[key], b[key], atol=1e-4, rtol=1e-4)
    again = ov_backend.infer(batch)  # outputs are copies, not views of a reused tensor
    assert again["measurements"] is not b["measurements"]
    np.testing.assert_array_equal(again["measurements"], b["measurements"])

    import openvino as ov  # the same model as OpenVINO IR (.xml) gives the same numbers

    xml = tmp_path / "tiny.xml"
    ov.save_model(ov.Core().read_model(str(tiny_model)), str(xml))
    ir_backend, _ = create_backend(xml, "openvino-cpu")
    np.testing.assert_allclose(ir_backend.infer(batch)["measurements"], a["measurements"], atol=1e-4)
    auto_backend, _ = create_backend(tiny_model, "openvino-auto", warmup=1)
    np.testing.assert_allclose(auto_backend.infer(batch)["measurements"], a["measurements"], atol=1e-4)
    with pytest.raises(SonogateError, match="OpenVINO IR"):
        create_backend(xml, "ort-cpu")


def test_auto_prefers_openvino_and_says_so(tiny_model):
    from sonogate.device.compute import available_devices, create_backend

    backend, note = create_backend(tiny_model, "auto", warmup=1)
    if "openvino-cpu" in available_devices():
        assert backend.name == "openvino:CPU" and note.startswith("auto: using OpenVINO CPU")
    else:
        assert backend.name.startswith("onnxruntime") and "using ONNX Runtime CPU" in note


def test_unknown_and_absent_devices(tiny_model):
    from sonogate.device.compute import DEVICES, available_devices, create_backend

    with pytest.raises(SonogateError) as info:
        create_backend(tiny_model, "tpu")
    assert "unknown device 'tpu'" in str(info.value) and all(d in str(info.value) for d in DEVICES)
    absent = [d for d in DEVICES if d not in available_devices()]
    if not absent:
        pytest.skip("every device is available here")
    with pytest.raises(SonogateError) as info:
        create_backend(tiny_model, absent[0])
    assert f"device '{absent[0]}' is not available here (available: auto, ort-cpu" in str(info.value)


def test_bad_arguments(tiny_model, tmp_path):
    from sonogate.device.compute import create_backend

    with pytest.raises(SonogateError, match="model file not found"):
        create_backend(tmp_path / "missing.onnx", "ort-cpu")
    with pytest.raises(SonogateError, match="threads"):
        create_backend(tiny_model, "ort-cpu", threads=0)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(SonogateError, match="cannot load junk.onnx"):
        create_backend(junk, "ort-cpu")


@pytest.mark.parametrize("device", ["ort-cpu", "openvino-cpu"])
def test_a_failing_inference_raises_runtime_error_with_backend_name(tiny_model, device):
    _needs(device)
    from sonogate.device.compute import create_backend

    backend, _ = create_backend(tiny_model, device, warmup=0)
    with pytest.raises(RuntimeError) as info:
        backend.infer(np.zeros((1, 3, 32, 32), np.float32))  # 3 channels into a 1-channel conv
    assert str(info.value).startswith(backend.name + ": inference failed")


def test_device_package_never_imports_torch(tiny_model, video):
    code = (
        "import sys\n"
        "from sonogate.device.capture import open_source\n"
        "from sonogate.device.grabber import LatestFrameGrabber\n"
        "from sonogate.device.compute import create_backend\n"
        "from sonogate.runtime.roi import RoiTracker\n"
        f"create_backend({str(tiny_model)!r}, 'auto', warmup=1)\n"
        f"src = open_source({str(video)!r}, realtime=False); src.read(); src.close()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
