"""The runtime on a scanner the bundle was not calibrated for: ``scanner_status``, its reason, the overlay banner,
never "us_sufficient", and the way back once the images look like the calibration data again.

Real components throughout: the tiny ONNX bundle (tests/tiny_bundle.py) with real out-of-distribution statistics
fitted here on the image descriptors of its "home scanner" frames (sonogate.calibration.ood, as training does),
ONNX Runtime, the Session, the overlay drawn with OpenCV; the committed demo bundle on real DICOM data.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.calibration.aggregate import AggregationRule
from sonogate.calibration.calfile import CalibrationFile, MeasurementCalibration
from sonogate.calibration.ood import OOD_FILE, fit_ood, save_ood
from sonogate.core.bundle import Preprocessing, load_bundle, write_manifest
from sonogate.runtime.image_stats import DESCRIPTOR_VERSION, describe_images
from sonogate.runtime.overlay import NOT_CALIBRATED_BANNER, NOT_CALIBRATED_COLOUR, OverlayRenderer
from sonogate.runtime.preprocess import Preprocessor
from sonogate.runtime.recommend import Decision, Recommendation, Recommender, RecommenderConfig
from sonogate.runtime.session import NOT_CALIBRATED_REASON, ScannerDomainCheck, Session
from tests.tiny_bundle import speckled_frame, write_tiny_bundle

pytestmark = pytest.mark.torchfree

REPO = Path(__file__).resolve().parents[1]
WINDOW = ScannerDomainCheck.WINDOW
FPS = 15.0


def home_frame(rng: np.random.Generator) -> np.ndarray:
    """The tiny bundle's "home scanner": bright, fine speckle (the tiny model reads alpha ~ 71: reassuring)."""
    return speckled_frame(float(rng.uniform(190, 210)), rng)


def other_scanner_frame(rng: np.random.Generator) -> np.ndarray:
    """Another scanner's look: coarse (blurred, longer-correlated) speckle, same brightness. Still a "plane" for
    the tiny model (high variance), and bright enough that alpha would reassure if it were measured."""
    noise = cv2.GaussianBlur(rng.normal(0, 1, size=(96, 96)).astype(np.float32), (0, 0), 4.0)
    image = np.clip(200 + 60 * noise / noise.std(), 0, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2)


def bundle_with_image_check(folder: Path, *, feature_threshold: float = 1.0) -> Path:
    """The tiny bundle plus ``ood.npz`` as training writes it: image statistics fitted on home-scanner frames
    (threshold: 99.5th percentile of held-out home frames); a feature check whose distance is always 0, refusing
    every frame when ``feature_threshold`` < 0 and none otherwise. Re-hashed and recalibrated like a real bundle."""
    write_tiny_bundle(folder, calibrate=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    preprocessor = Preprocessor(Preprocessing.from_json(manifest["preprocessing"]))
    rng = np.random.default_rng(11)
    resized = []
    for _ in range(400):
        preprocessor(home_frame(rng))
        resized.append(preprocessor.resized.copy())
    descriptors = describe_images(np.stack(resized))
    image_stats = fit_ood(descriptors[:300], descriptors[300:])
    features = {"mean": np.zeros(512), "precision": np.zeros((512, 512)), "threshold": feature_threshold,
                "percentile": 99.5, "shrinkage": 0.0, "n_train": 0, "n_heldout": 0}
    save_ood(folder / OOD_FILE, features, image_stats)
    manifest.pop("files", None)
    manifest["ood"] = {"file": OOD_FILE, "metric": "mahalanobis", "image_descriptor": DESCRIPTOR_VERSION,
                       "threshold": feature_threshold, "image_threshold": image_stats["threshold"]}
    bundle_hash = write_manifest(folder, manifest)
    CalibrationFile(
        delta=0.1, rule="and", mode="joint", thresholds={"alpha_deg": 60.0, "coverage_pct": 50.0},
        measurements={"alpha_deg": MeasurementCalibration("lower", radius=3.0, n=40, k=37),
                      "beta_deg": MeasurementCalibration("upper", radius=4.0, n=40, k=37),
                      "coverage_pct": MeasurementCalibration("lower", radius=5.0, n=40, k=37)},
        bundle_sha256=bundle_hash, aggregation=AggregationRule(min_frames=3, window=10).to_json(),
    ).save(folder / "calibration.json")
    assert load_bundle(folder).manifest["ood"]["image_descriptor"] == DESCRIPTOR_VERSION
    return folder


def documented_statuses(failed: list[bool], window: int = WINDOW) -> list[str]:
    """The rule as docs/events.md states it, written out independently: "not_calibrated" once the last ``window``
    evaluated frames are all in and >= 90 % failed; "calibrated" again when the share drops below 50 %."""
    statuses, calibrated = [], True
    for i in range(len(failed)):
        recent = failed[max(0, i + 1 - window): i + 1]
        share = sum(recent) / len(recent)
        if calibrated and len(recent) == window and share >= 0.9:
            calibrated = False
        elif not calibrated and share < 0.5:
            calibrated = True
        statuses.append("calibrated" if calibrated else "not_calibrated")
    return statuses


def _session(folder: Path) -> Session:
    return Session(folder, device="ort-cpu", detect_roi=False, config=RecommenderConfig(confirm_frames=3))


def _feed(session: Session, frames) -> list[dict]:
    start = session.frame_index
    return [session.process(frame, t_capture=1000.0 + (start + i) / FPS) for i, frame in enumerate(frames)]


def test_other_scanner_turns_not_calibrated_after_the_window_and_back(tmp_path):
    folder = bundle_with_image_check(tmp_path / "b")
    rng = np.random.default_rng(3)
    with _session(folder) as session:
        other = _feed(session, [other_scanner_frame(rng) for _ in range(WINDOW + 20)])
        # every frame of the other scanner fails the image check (and only that check)
        assert all(e["image_ood_distance"] > load_bundle(folder).manifest["ood"]["image_threshold"] for e in other)
        assert all(e["out_of_distribution"] and e["frame_measurements"] is not None for e in other)
        # the window must fill first: 44 frames are refused one by one as before, the 45th flips the status
        assert [e["scanner_status"] for e in other[: WINDOW - 1]] == ["calibrated"] * (WINDOW - 1)
        assert all(e["reason"] == "out-of-distribution image" for e in other[: WINDOW - 1])
        assert all(e["scanner_status"] == "not_calibrated" for e in other[WINDOW - 1:])
        for e in other[WINDOW - 1:]:
            assert e["recommendation"] == "insufficient_image" and e["candidate"] == "insufficient_image"
            assert e["reason"] == NOT_CALIBRATED_REASON and "sonogate adapt" in e["reason"]
            assert e["measurements"] is None and e["graf_type"] is None and e["accepted_frames"] == 0
            assert set(e["frame_measurements"]) == {"alpha_deg", "beta_deg", "coverage_pct"}  # kept for the log
        assert session.scanner_status == "not_calibrated"

        # the home scanner again: back to "calibrated" once fewer than half of the last 45 fail (23 good frames),
        # then the usual path to a recommendation (min_frames 3, confirm 3)
        home = _feed(session, [home_frame(rng) for _ in range(40)])
        # (the image check's threshold is the 99.5th percentile of held-out home frames: a few home frames fail)
        assert sum(e["out_of_distribution"] for e in home) <= 3
        everything = other + home
        assert [e["scanner_status"] for e in everything] == documented_statuses(
            [e["out_of_distribution"] for e in everything])
        back = next(i for i, e in enumerate(home) if e["scanner_status"] == "calibrated")
        assert 22 <= back <= 25 and {e["scanner_status"] for e in home[back:]} == {"calibrated"}
        assert all(e["recommendation"] == "insufficient_image" for e in home[:back])
        assert home[-1]["recommendation"] == "us_sufficient" and home[-1]["measurements"] is not None
        assert not any(e["recommendation"] == "us_sufficient" for e in other)
        json.dumps(home[-1])


def test_a_mostly_foreign_feed_never_reassures_and_the_banner_does_not_flicker(tmp_path):
    """Hysteresis: once not calibrated, a feed where 1 frame in 3 looks like home (67 % fail) stays not calibrated
    (67 % is above the 50 % way out), and its home-looking frames are never aggregated into a reassurance."""
    folder = bundle_with_image_check(tmp_path / "b")
    rng = np.random.default_rng(4)
    with _session(folder) as session:
        _feed(session, [other_scanner_frame(rng) for _ in range(WINDOW)])
        mixed = _feed(session, [home_frame(rng) if i % 3 == 0 else other_scanner_frame(rng) for i in range(120)])
    assert 0.6 <= np.mean([e["out_of_distribution"] for e in mixed]) <= 0.75
    assert {e["scanner_status"] for e in mixed} == {"not_calibrated"}
    assert {e["recommendation"] for e in mixed} == {"insufficient_image"}
    assert all(e["measurements"] is None for e in mixed)


def test_feature_check_alone_does_not_call_the_scanner_uncalibrated(tmp_path):
    """Unusual anatomy fails the feature check on a calibrated scanner (the demo cine's dysplastic hip): those
    frames are refused one by one as before, but the session must not blame the scanner."""
    folder = bundle_with_image_check(tmp_path / "b", feature_threshold=-1.0)  # every frame fails the feature check
    rng = np.random.default_rng(5)
    with _session(folder) as session:
        events = _feed(session, [home_frame(rng) for _ in range(2 * WINDOW)])
    assert all(e["out_of_distribution"] for e in events)
    assert {e["scanner_status"] for e in events} == {"calibrated"}
    assert {e["reason"] for e in events} == {"out-of-distribution image"}


def test_bundle_without_image_statistics_reports_calibrated_and_behaves_as_before(tmp_path):
    rng = np.random.default_rng(6)
    with _session(write_tiny_bundle(tmp_path / "b")) as session:
        events = _feed(session, [other_scanner_frame(rng) for _ in range(WINDOW + 5)])
    assert {e["scanner_status"] for e in events} == {"calibrated"}
    assert events[-1]["image_ood_distance"] is None and events[-1]["recommendation"] == "us_sufficient"


def test_reset_starts_the_scanner_record_again(tmp_path):
    """``sonogate analyze`` resets between files, which may come from different scanners."""
    rng = np.random.default_rng(7)
    with _session(bundle_with_image_check(tmp_path / "b")) as session:
        _feed(session, [other_scanner_frame(rng) for _ in range(WINDOW)])
        assert session.scanner_status == "not_calibrated"
        session.reset(next_hip=True)
        assert session.scanner_status == "calibrated" and session.scanner_check.seen == 0
        again = _feed(session, [other_scanner_frame(rng) for _ in range(WINDOW)])
    assert again[-2]["scanner_status"] == "calibrated" and again[-1]["scanner_status"] == "not_calibrated"


class _ReassuringRecommender(Recommender):
    """A recommender broken on purpose: it reassures where it must refuse (reaches the session's last guard)."""

    def out_of_domain(self, reason: str) -> Decision:
        return Decision(Recommendation.US_SUFFICIENT, Recommendation.US_SUFFICIENT, "broken", None, 5)


def test_session_guard_turns_a_reassurance_while_not_calibrated_into_a_fault(tmp_path):
    rng = np.random.default_rng(8)
    with _session(bundle_with_image_check(tmp_path / "b")) as session:
        session.recommender = _ReassuringRecommender(session.bundle.measurement_names, session.calibration)
        events = _feed(session, [other_scanner_frame(rng) for _ in range(WINDOW + 3)])
    assert not any(e["recommendation"] == "us_sufficient" for e in events)
    assert all(e["recommendation"] == "no_recommendation" and "internal error" in e["fault"]
               for e in events[WINDOW - 1:])


def _render(event: dict, frame: np.ndarray) -> tuple[np.ndarray, OverlayRenderer]:
    renderer = OverlayRenderer()
    canvas = renderer.render(frame, (0, 0, frame.shape[1], frame.shape[0]), event).copy()
    return canvas, renderer


def test_overlay_shows_the_not_calibrated_banner_and_no_numbers(tmp_path):
    rng = np.random.default_rng(9)
    with _session(bundle_with_image_check(tmp_path / "b")) as session:
        uncalibrated = _feed(session, [other_scanner_frame(rng) for _ in range(WINDOW)])[-1]
    with _session(bundle_with_image_check(tmp_path / "c")) as session:
        calibrated = _feed(session, [home_frame(rng) for _ in range(10)])[-1]
    assert uncalibrated["scanner_status"] == "not_calibrated" and calibrated["recommendation"] == "us_sufficient"
    frame = cv2.resize(home_frame(rng), (640, 480), interpolation=cv2.INTER_NEAREST)

    canvas, renderer = _render(uncalibrated, frame)
    assert renderer.banner_lines == NOT_CALIBRATED_BANNER == ("NOT CALIBRATED FOR THIS SCANNER",
                                                              "run sonogate adapt (docs/site.md)")
    assert renderer.drawn_text[:2] == list(NOT_CALIBRATED_BANNER)
    banner = canvas[:65, :640].reshape(-1, 3)
    in_colour = np.all(banner == NOT_CALIBRATED_COLOUR, axis=1).mean()
    white = np.all(banner >= 200, axis=1).mean()
    assert in_colour > 0.8 and white > 0.02  # a solid banner with text on it
    # both lines: white strokes in the upper and in the lower half of the banner
    assert np.all(canvas[8:32, :640] >= 200, axis=2).any() and np.all(canvas[38:60, :640] >= 200, axis=2).any()
    # no alpha / beta / coverage / Graf numbers from a model outside its domain
    assert not any(t.startswith(("alpha", "beta", "coverage", "Graf", "standard plane", "  >=", "  <="))
                   for t in renderer.drawn_text)
    assert any("measurements hidden" in t for t in renderer.drawn_text)

    reference, reference_renderer = _render(calibrated, frame)
    assert reference_renderer.banner_lines == ("ULTRASOUND SUFFICIENT",)
    assert any(t.startswith("alpha: ") and t.endswith(" deg") for t in reference_renderer.drawn_text)
    # the calibrated banner is 45 rows in its own colour; below it the image shows, where the other banner is
    assert not np.all(reference[:45, :640].reshape(-1, 3) == NOT_CALIBRATED_COLOUR, axis=1).any()
    assert np.array_equal(reference[50:64, 5:600], frame[50:64, 5:600])
    assert not np.array_equal(canvas[50:64, 5:600], frame[50:64, 5:600])

    # a fault while not calibrated shows the fault (the more urgent message), not the banner
    faulted = dict(uncalibrated, recommendation="no_recommendation", fault="source lost", reason="source lost")
    _, fault_renderer = _render(faulted, frame)
    assert fault_renderer.banner_lines == ("NO RECOMMENDATION",)


DEMO_BUNDLE = REPO / "demo" / "bundle"


def _demo_session() -> Session:
    if not (DEMO_BUNDLE / "manifest.json").exists():
        pytest.skip("demo bundle not present")
    return Session(DEMO_BUNDLE, device="ort-cpu")


def test_real_non_hip_dicom_with_the_demo_bundle_ends_not_calibrated(shared_data):
    """The pydicom palette ultrasound still (a real scanner, not a hip), held as a frozen probe shows it, through
    the phantom-trained demo bundle: refused frame by frame, then "not calibrated for this scanner"."""
    from sonogate.data.dicom import read_dicom

    path = shared_data / "us-dicom-generic" / "examples_palette.dcm"
    if not path.exists():
        pytest.skip(f"{path} not found")
    frame = next(read_dicom(path).iter_frames())
    with _demo_session() as session:
        events = _feed(session, [frame] * (WINDOW + 5))
    assert all(e["refusal"] is None and e["out_of_distribution"] for e in events)
    assert events[WINDOW - 2]["scanner_status"] == "calibrated"
    assert events[-1]["scanner_status"] == "not_calibrated" and events[-1]["reason"] == NOT_CALIBRATED_REASON
    assert not any(e["recommendation"] == "us_sufficient" for e in events)


def test_real_cardiac_cine_keeps_the_sector_refusal(shared_data):
    """The real non-hip cine (cardiac, sector probe): after its first frames the sector gate refuses every frame
    before the model. Gate refusals are not counted as scanner evidence (a sector probe needs a linear one, not
    adapt), so the session keeps saying why each frame is refused, and never reassures."""
    from sonogate.data.dicom import read_dicom

    path = shared_data / "us-dicom-generic" / "examples_ybr_color.dcm"
    if not path.exists():
        pytest.skip(f"{path} not found")
    frames = list(read_dicom(path).iter_frames())
    with _demo_session() as session:
        events = _feed(session, frames * 3)
    evaluated = [e for e in events if e["refusal"] is None]
    assert evaluated and all(e["out_of_distribution"] for e in evaluated)
    assert "sector" in events[-1]["refusal"] and "sector" in events[-1]["reason"]
    assert not any(e["recommendation"] == "us_sufficient" for e in events)


def test_real_hip_cine_from_another_scanner_ends_not_calibrated(shared_data):
    """A real infant-hip cine (Radiopaedia), swept back and forth as a live feed would show it: every frame fails
    the phantom bundle's image check; after the window the session says why and what to do."""
    from sonogate.data.dicom import read_dicom
    from sonogate.runtime.roi import RoiTracker

    path = shared_data / "hip-radiopaedia-ddh" / "dicoms" / "ultrasound" / "172533.dcm"
    if not path.exists():
        pytest.skip(f"{path} not found")
    image = read_dicom(path)
    frames = list(image.iter_frames())
    with _demo_session() as session:
        if image.region is not None and not image.region_clipped:
            session.roi_tracker = RoiTracker(manual=image.region)
            session.last_roi = image.region
        sweep = frames + frames[::-1]
        events = _feed(session, (sweep * (WINDOW // len(sweep) + 2))[: WINDOW + 10])
    assert all(e["out_of_distribution"] for e in events if e["refusal"] is None)
    assert events[-1]["scanner_status"] == "not_calibrated" and events[-1]["reason"] == NOT_CALIBRATED_REASON
    assert not any(e["recommendation"] == "us_sufficient" for e in events)


def test_analyze_says_not_calibrated_for_every_real_hip_cine_of_another_scanner(shared_data, tmp_path):
    """The issue's first complaint: `sonogate analyze` on the 12 real Radiopaedia cines said only "out of
    distribution" (0 usable frames), with no word on why. A stored cine is judged as a whole by the live rule's
    share (most are shorter than the live window), so each file now says the scanner is not calibrated."""
    from sonogate.runtime.analyze import AnalyzeOptions, analyze

    folder = shared_data / "hip-radiopaedia-ddh" / "dicoms" / "ultrasound"
    bundle = Path(__file__).resolve().parents[1] / "demo" / "bundle"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    picked = sorted(folder.glob("*.dcm"))[:3]
    summary = analyze(picked, AnalyzeOptions(bundle=str(bundle), out=str(tmp_path / "out"), write_dicom=False,
                                             device="ort-cpu", progress=False))
    assert len(summary.records) == 3
    for record in summary.records:
        result = record["result"]
        assert result["scanner_status"] == "not_calibrated" and result["reason"] == NOT_CALIBRATED_REASON
        assert result["recommendation"] == "insufficient_image" and result["measurements"] is None
        assert record["frames"]["image_check_failed"] == record["frames"]["processed"] > 0
