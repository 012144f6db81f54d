"""Task ``bmd`` (issue 21) beyond the phantom: data, ROI geometry, losses, metrics, conformal interval, the
runtime wrapper on a hand-built ONNX graph in real ONNX Runtime (rows per hip, bounds, referral, refusals)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sonogate.calibration.calfile import CalibrationFile, MeasurementCalibration
from sonogate.core.bundle import Preprocessing, load_bundle, write_manifest
from sonogate.errors import DataError
from sonogate.runtime.model_api import create_model
from sonogate.tasks.bmd.calibrate import coverage, fit_interval, image_scores
from sonogate.tasks.bmd.data import letterbox_gray, normalise, read_bmd_folder, split_patients, to_source
from sonogate.tasks.bmd.metrics import auc, regression_block
from sonogate.tasks.bmd.model import NO_REFERRAL, REFERRAL, BmdModel, referral, t_score
from sonogate.tasks.bmd.phantom import write_bmd_phantom

SIZE = 512
# right head, right neck box, left head, left neck box in [0, 1] of the input (the graph below returns these)
LANDMARKS01 = np.array([[0.30, 0.55], [0.25, 0.60], [0.70, 0.55], [0.75, 0.60]], np.float32)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return write_bmd_phantom(tmp_path_factory.mktemp("bmd") / "ph", 8, seed=5, size=256, progress=False)


# -- data ------------------------------------------------------------------------------------------------------
def test_folder_landmarks_match_label_pixels_and_splits_keep_patients_apart(phantom):
    folder = read_bmd_folder(phantom)
    assert len(folder) == 8 and folder.bmd.shape == (8, 2) and folder.landmarks.shape == (8, 4, 2)
    import csv

    with open(phantom / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    first = [r for r in rows if r["image"] == folder.images[0]]
    right = next(r for r in first if r["side"] == "R")
    # [0, 1] pixel-centre convention of a 256 px square image
    assert folder.landmarks[0, 1, 0] * 256 - 0.5 == pytest.approx(float(right["box_cx"]), abs=1e-4)
    assert folder.landmarks[0, 0, 1] * 256 - 0.5 == pytest.approx(float(right["lm_head_center_y"]), abs=1e-4)
    assert folder.bmd[0, 0] == pytest.approx(float(right["bmd_g_cm2"]))
    splits = split_patients(folder, seed=0)
    held = set(np.flatnonzero(np.isin(folder.devices, ("E", "F"))))
    assert set(splits["external"]) == held
    seen: dict[str, str] = {}
    for name, idx in splits.items():
        for patient in folder.patients[idx]:
            assert seen.setdefault(patient, name) == name  # a patient never lands in two splits


def test_letterbox_and_normalise_give_the_graph_input():
    gray = (np.arange(300 * 200) % 251).astype(np.uint8).reshape(300, 200)
    box = letterbox_gray(gray, 512)
    assert box.shape == (512, 512) and box[:, :40].max() == 0  # padded left and right
    assert box[256, 256] > 0
    x = normalise(to_source(box))
    assert x.dtype == np.float32 and x[0, 0] == pytest.approx(-2.0) and x.max() <= 2.0


# -- network geometry (torch) ----------------------------------------------------------------------------------
def test_soft_argmax_and_mirrored_neck_rois():
    torch = pytest.importorskip("torch")
    from sonogate.tasks.bmd.net import neck_roi_theta, sample_roi, soft_argmax

    heat = torch.full((1, 1, 32, 32), -1e4)
    heat[0, 0, 5, 20] = 0.0
    points, peak = soft_argmax(heat)
    assert points[0, 0].tolist() == pytest.approx([(20 + 0.5) / 32, (5 + 0.5) / 32])
    assert float(peak[0, 0]) == pytest.approx(1.0)
    # an asymmetric image and its mirror: the left hip's ROI of the mirror equals the right hip's ROI
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 64, 64, generator=gen)
    mirror = torch.flip(image, dims=[3])
    head, box = torch.tensor([[0.30, 0.40]]), torch.tensor([[0.22, 0.52]])
    flip = torch.tensor([[-1.0, 1.0]])
    right = sample_roi(image, neck_roi_theta(head, box, 1.0), 24)
    left = sample_roi(mirror, neck_roi_theta(head * flip + torch.tensor([[1.0, 0.0]]),
                                             box * flip + torch.tensor([[1.0, 0.0]]), -1.0), 24)
    assert torch.allclose(right, left, atol=1e-5)
    # the ROI centre samples the image at the neck-box centre, its x axis runs from the head along the neck
    theta = neck_roi_theta(head, box, 1.0)
    assert theta[0, :, 2].tolist() == pytest.approx((2 * box - 1)[0].tolist())
    u = (box - head) / (box - head).norm()
    assert (theta[0, :, 0] / theta[0, :, 0].norm()).tolist() == pytest.approx(u[0].tolist(), abs=1e-6)


def test_adaptive_triplet_follows_bmd_order():
    torch = pytest.importorskip("torch")
    from sonogate.tasks.bmd.train import adaptive_triplet

    y = torch.linspace(-1.0, 1.0, 32)
    ordered = torch.stack([torch.cos(1.2 * y), torch.sin(1.2 * y)], 1)  # distance grows with BMD difference
    shuffled = ordered[torch.randperm(32, generator=torch.Generator().manual_seed(1))]
    loss_ordered = adaptive_triplet(ordered, y, 0.5, torch.Generator().manual_seed(0))
    loss_shuffled = adaptive_triplet(shuffled, y, 0.5, torch.Generator().manual_seed(0))
    assert float(loss_ordered) < 0.02 < float(loss_shuffled)


def test_intensity_augmentation_gives_the_context_the_rois_gray_curve():
    torch = pytest.importorskip("torch")
    from sonogate.tasks.bmd.data import MEAN, STD
    from sonogate.tasks.bmd.train import augment_intensity

    gray = torch.linspace(0.05, 0.95, 80 * 80).reshape(1, 1, 80, 80).repeat(6, 1, 1, 1)
    roi = (gray - MEAN) / STD
    context = roi[:, :, :64, :64].clone()  # the same gray values, so the same curve must give the same output
    plain = augment_intensity(roi, torch.Generator().manual_seed(3), 1.0)
    with_context, context_out = augment_intensity(roi, torch.Generator().manual_seed(3), 1.0, context)
    assert torch.equal(plain, with_context)  # the context draws no random numbers: old runs stay reproducible
    roi_curve = augment_intensity(roi, torch.Generator().manual_seed(3), 0.0)  # strength 0: identity
    assert torch.allclose(roi_curve, roi, atol=1e-5)
    # the context follows the ROI's curve pixel for pixel, without the ROI's pixel noise (sd <= 0.01 gray)
    assert float((context_out - with_context[:, :, :64, :64]).abs().max()) * STD < 0.06
    assert float((context_out - context).abs().max()) * STD > 0.05  # and the curve did change the gray values


def test_context_regressor_sees_the_whole_radiograph_and_exports_to_onnx(tmp_path):
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from sonogate.tasks.bmd.net import BmdNet, Locator, Regressor, context_image

    torch.manual_seed(0)
    net = BmdNet(Locator(4), Regressor(4, context_width=4)).eval()
    image = torch.randn(2, 1, 512, 512) * 0.3
    far = image.clone()
    far[:, :, :64, :] += 2.0  # a band far from the neck: only the context sees it
    roi = torch.randn(2, 1, 80, 80)
    with torch.no_grad():
        bmd_far, *_ = net(far)
        near, far_bmd = (net.regressor(roi, context_image(x))[0] for x in (image, far))
        assert float((near - far_bmd).abs().max()) > 1e-5  # the same ROI reads differently in another radiograph
        with pytest.raises(ValueError, match="context"):
            net.regressor(roi)
    path = tmp_path / "context.onnx"
    torch.onnx.export(net, image, str(path), input_names=["image"], output_names=list(net.output_names),
                      opset_version=20, dynamo=False, dynamic_axes={"image": {0: "n"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["bmd"], {"image": far.numpy()[1:]})[0]
    assert np.allclose(got, bmd_far.numpy()[1:], atol=1e-4)


# -- metrics and the conformal interval -----------------------------------------------------------------------
def test_auc_and_regression_block():
    assert auc(np.array([3.0, 2.0, 1.0]), np.array([True, False, False])) == 1.0
    assert auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    block = regression_block(np.array([0.5, 0.7, 0.9, 1.1]), np.array([0.5, 0.8, 0.9, 1.0]))
    assert block["rmse"] == pytest.approx(math.sqrt(0.02 / 4), abs=1e-4)
    assert block["bias"] == pytest.approx(0.0, abs=1e-9) and block["n_osteoporotic"] == 1


def test_interval_uses_the_conformal_rank_of_per_image_scores():
    rng = np.random.default_rng(0)
    true = rng.uniform(0.5, 1.0, (19, 2))
    raw = (true - 0.1) / 1.1  # an affine bias the fit must undo
    raw_c = raw + np.linspace(0.001, 0.019, 19)[:, None] * np.array([1.0, 0.5])  # per-image score = left column
    fit = fit_interval(raw, true, np.ones_like(raw, bool), raw_c, true, np.ones_like(raw, bool), 0.1)
    assert fit["a"] == pytest.approx(1.1) and fit["b"] == pytest.approx(0.1)
    # n = 19, delta 0.1 -> rank ceil(20 * 0.9) = 18: the 18th smallest of the 19 scores
    scores = np.sort(image_scores(1.1 * raw_c + 0.1, true, np.ones_like(raw, bool)))
    assert fit["k"] == 18 and fit["radius"] == pytest.approx(scores[17])
    cov = coverage(raw_c, true, np.ones_like(raw, bool), fit)
    assert cov["image_coverage"] == pytest.approx(18 / 19, abs=1e-3)
    # an out-of-field hip does not count against its radiograph
    in_field = np.ones_like(raw, bool)
    in_field[-1, 0] = False
    assert coverage(raw_c, true, in_field, fit)["image_coverage"] == pytest.approx(1.0)


def test_screening_radius_is_calibrated_on_osteoporotic_hips_only():
    from sonogate.tasks.bmd.calibrate import fit_decision_radius

    true = np.full((12, 2), 0.9)
    true[:, 0] = np.r_[np.linspace(0.40, 0.55, 10), 0.9, 0.9]  # 10 radiographs with an osteoporotic right hip
    raw = true + 0.5  # hips of normal BMD overestimated by 0.5: they must not widen the screening radius
    raw[:10, 0] = true[:10, 0] + np.linspace(0.01, 0.10, 10)
    fit = fit_decision_radius(raw, true, np.ones_like(raw, bool), 1.0, 0.0, 0.1)
    # n = 10 osteoporotic radiographs, rank ceil(11 * 0.9) = 10: the largest overestimate of an osteoporotic hip
    assert fit["n"] == 10 and fit["k"] == 10 and fit["radius"] == pytest.approx(0.10)
    few = fit_decision_radius(raw[:7], true[:7], np.ones((7, 2), bool), 1.0, 0.0, 0.1)
    assert few["radius"] is None  # too few osteoporotic radiographs for delta 0.1: never clear


def test_referral_is_safe_on_doubt():
    assert referral(-2.4)[0] == NO_REFERRAL
    assert referral(-2.5)[0] == REFERRAL  # on the threshold: not ruled out
    assert referral(None)[0] == REFERRAL and referral(float("nan"))[0] == REFERRAL
    assert "osteopenia" in referral(-1.5)[1] and "osteopenia" not in referral(-0.5)[1]
    assert referral(-1.5, threshold=-1.0)[0] == REFERRAL


# -- the runtime wrapper on a hand-built graph ----------------------------------------------------------------
def handmade_bmd_bundle(folder: Path, calibrate: bool = True, devices: list[str] | None = None) -> Path:
    """bmd_right = 0.8 + 0.4 mean(left half of x), bmd_left = 0.8 + 0.4 mean(right half); in-field logit per hip
    = 20 (var(half) - 0.02) (a flat half is out of the field); fixed landmarks ``LANDMARKS01``; peak 0.5."""
    folder.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    outs = [helper.make_tensor_value_info("bmd", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["N", 4, 2]),
            helper.make_tensor_value_info("in_field_logit", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("landmark_peak", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2, 128])]
    c = {"half": np.array([SIZE // 2], np.int64), "zero": np.array([0], np.int64), "end": np.array([SIZE], np.int64),
         "axis": np.array([3], np.int64), "n1": np.array([-1, 1], np.int64), "n11": np.array([-1, 1, 1], np.int64),
         "gain": np.array(0.4, np.float32), "offset": np.array(0.8, np.float32), "vgain": np.array(20.0, np.float32),
         "voff": np.array(0.02, np.float32), "lm": LANDMARKS01[None], "peak": np.full((1, 4), 0.5, np.float32),
         "feat": np.zeros((1, 2, 128), np.float32), "z": np.array(0, np.float32)}
    nodes = []
    for side, (a, b) in (("r", ("zero", "half")), ("l", ("half", "end"))):
        nodes += [helper.make_node("Slice", ["image", a, b, "axis"], [f"h_{side}"]),
                  helper.make_node("ReduceMean", [f"h_{side}"], [f"m4_{side}"], axes=[1, 2, 3], keepdims=1),
                  helper.make_node("Reshape", [f"m4_{side}", "n1"], [f"m_{side}"]),
                  helper.make_node("Mul", [f"h_{side}", f"h_{side}"], [f"sq_{side}"]),
                  helper.make_node("ReduceMean", [f"sq_{side}"], [f"s4_{side}"], axes=[1, 2, 3], keepdims=1),
                  helper.make_node("Reshape", [f"s4_{side}", "n1"], [f"s_{side}"]),
                  helper.make_node("Mul", [f"m_{side}", f"m_{side}"], [f"mm_{side}"]),
                  helper.make_node("Sub", [f"s_{side}", f"mm_{side}"], [f"var_{side}"]),
                  helper.make_node("Sub", [f"var_{side}", "voff"], [f"vo_{side}"]),
                  helper.make_node("Mul", [f"vo_{side}", "vgain"], [f"logit_{side}"]),
                  helper.make_node("Mul", [f"m_{side}", "gain"], [f"g_{side}"]),
                  helper.make_node("Add", [f"g_{side}", "offset"], [f"bmd_{side}"])]
    nodes += [helper.make_node("Concat", ["bmd_r", "bmd_l"], ["bmd"], axis=1),
              helper.make_node("Concat", ["logit_r", "logit_l"], ["in_field_logit"], axis=1),
              helper.make_node("Reshape", ["m4_r", "n11"], ["m3"]),
              helper.make_node("Mul", ["m3", "z"], ["zero3"]),
              helper.make_node("Add", ["zero3", "lm"], ["landmarks"]),
              helper.make_node("Reshape", ["m4_r", "n1"], ["m2"]),
              helper.make_node("Mul", ["m2", "z"], ["zero2"]),
              helper.make_node("Add", ["zero2", "peak"], ["landmark_peak"]),
              helper.make_node("Add", ["zero3", "feat"], ["features"])]
    model = helper.make_model(helper.make_graph(nodes, "handmade_bmd", [x], outs,
                                                [numpy_helper.from_array(v, k) for k, v in c.items()]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    digest = write_manifest(folder, {
        "task": "bmd",
        "preprocessing": {**Preprocessing(height=SIZE, width=SIZE, mean=0.5, std=0.25).to_json(),
                          "resize": "letterbox", "pad_value": 0},
        "outputs": {"bmd": {"names": ["bmd_g_cm2_right", "bmd_g_cm2_left"], "units": ["g/cm2", "g/cm2"]}},
        "runtime_checks": {"in_field_min_probability": 0.5, "landmark_peak_min": 0.1,
                           "neck_distance_range": [0.03, 0.2], "ood_threshold": None, "image_std_min": 0.03,
                           "image_clipped_max": 0.5},
        "models": {"float": {"file": "model.onnx", "format": "onnx", "precision": "fp32"}},
    })
    if calibrate:
        common = {"a": 1.0, "b": 0.0, "radius": 0.05, "n": 99, "k": 90, "delta": 0.1}
        CalibrationFile(delta=0.1, rule="t lower > -2.5", mode="interval", thresholds={"t_score": -2.5},
                        measurements={"bmd_g_cm2": MeasurementCalibration(side="lower", **common),
                                      "bmd_g_cm2_upper": MeasurementCalibration(side="upper", **common)},
                        bundle_sha256=digest, task="bmd",
                        guarantee={"devices": devices}).save(folder / "calibration.json")
    return folder


def textured(mean_left: float, mean_right: float, sd: float = 40.0, flat_right: bool = False) -> np.ndarray:
    """A 512 x 512 gray image with given gray means per half (texture SD ``sd``; the right half flat if asked)."""
    rng = np.random.default_rng(3)
    image = np.empty((SIZE, SIZE), np.float64)
    image[:, : SIZE // 2] = mean_left + rng.normal(0, sd, (SIZE, SIZE // 2))
    image[:, SIZE // 2:] = mean_right + (0 if flat_right else rng.normal(0, sd, (SIZE, SIZE // 2)))
    return np.clip(np.round(image), 1, 254).astype(np.uint8)


def expected_bmd(gray_half: np.ndarray) -> float:
    return 0.8 + 0.4 * float(((gray_half.astype(np.float64) / 255 - 0.5) / 0.25).mean())


def test_wrapper_rows_bounds_and_referral(tmp_path):
    model = create_model(handmade_bmd_bundle(tmp_path / "b"), device="ort-cpu")
    assert isinstance(model, BmdModel)
    gray = textured(200, 70)
    notes: list[str] = []
    result = model.analyze(gray, None, notes)
    rows = {r["side"]: r for r in result["rows"]}
    assert set(rows) == {"right", "left"} and any("Patient Orientation" in n for n in notes)
    right, left = expected_bmd(gray[:, :256]), expected_bmd(gray[:, 256:])
    assert rows["right"]["bmd_g_cm2"] == pytest.approx(right, abs=2e-4)
    assert rows["right"]["bmd_lower"] == pytest.approx(right - 0.05, abs=2e-4)
    assert rows["right"]["bmd_upper"] == pytest.approx(right + 0.05, abs=2e-4)
    assert rows["right"]["t_score"] == pytest.approx(t_score(right), abs=0.01)
    assert rows["right"]["referral"] == NO_REFERRAL  # ~1.05 g/cm2: lower bound well above 0.558
    assert left - 0.05 < 0.558 and rows["left"]["referral"] == REFERRAL
    assert result["recommendation"] == REFERRAL
    groups = model.report_groups(result)
    assert [g.laterality for g in groups] == ["R", "L"]
    assert groups[0].measurements["bmd_g_cm2"]["lower_bound"] == pytest.approx(right - 0.05, abs=2e-4)
    assert model.annotate(np.dstack([gray] * 3), result, None).shape[1] > SIZE


def test_wrapper_mirrors_when_rows_run_to_the_patients_right(tmp_path):
    model = create_model(handmade_bmd_bundle(tmp_path / "b"), device="ort-cpu")
    gray = textured(200, 70)
    image = SimpleNamespace(patient_orientation=("R", "F"))
    rows = {r["side"]: r for r in model.analyze(gray, image, [])["rows"]}
    assert rows["right"]["bmd_g_cm2"] == pytest.approx(expected_bmd(gray[:, 256:]), abs=2e-4)


def dicom_radiograph(gray: np.ndarray, path: Path, **attributes) -> Path:
    """``gray`` as a DX radiograph (MONOCHROME2, 8 bits) with ``attributes`` (Manufacturer, ...), via pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    dx = "1.2.840.10008.5.1.4.1.1.1.1"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = dx
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "DX"
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left: the radiographic convention
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = gray.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth = 127.5, 256
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(gray).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_wrapper_refers_every_hip_of_a_device_its_calibration_does_not_cover(tmp_path):
    from sonogate.data.dicom import read_dicom

    bundle = handmade_bmd_bundle(tmp_path / "b", devices=["sonogate phantom A", "sonogate phantom B"])
    model = create_model(bundle, device="ort-cpu")
    gray = textured(200, 70)
    covered = read_dicom(dicom_radiograph(gray, tmp_path / "a.dcm", Manufacturer="Sonogate Phantom",
                                          ManufacturerModelName=" A"))
    other = read_dicom(dicom_radiograph(gray, tmp_path / "x.dcm", Manufacturer="ACME", ManufacturerModelName="X1"))
    rows = {r["side"]: r for r in model.analyze(covered.frames[0], covered, [])["rows"]}
    right = expected_bmd(gray[:, :256])
    # the DICOM's 8-bit window moves gray values by a level or so
    assert rows["right"]["bmd_lower"] == pytest.approx(right - 0.05, abs=0.01)
    assert rows["right"]["bmd_upper"] - rows["right"]["bmd_lower"] == pytest.approx(0.1, abs=2e-4)
    assert rows["right"]["referral"] == NO_REFERRAL  # same case as the PNG: the device is covered
    result = model.analyze(other.frames[0], other, [])
    assert result["recommendation"] == REFERRAL
    for row in result["rows"]:
        assert row["referral"] == REFERRAL and row["bmd_lower"] is None and row["bmd_upper"] is None
        assert "does not cover device 'ACME X1'" in row["reason"] and row["bmd_g_cm2"] is not None
    notes: list[str] = []
    unknown = {r["side"]: r for r in model.analyze(gray, None, notes)["rows"]}  # a PNG: no device to check
    assert unknown["right"]["referral"] == NO_REFERRAL and any("device unknown" in n for n in notes)
    unbound = create_model(handmade_bmd_bundle(tmp_path / "u"), device="ort-cpu")
    assert {r["side"]: r for r in unbound.analyze(other.frames[0], other, [])["rows"]}["right"][
        "referral"] == NO_REFERRAL  # no device list: not bound


def test_wrapper_refuses_a_hip_out_of_field_and_bad_images(tmp_path):
    model = create_model(handmade_bmd_bundle(tmp_path / "b"), device="ort-cpu")
    result = model.analyze(textured(150, 120, flat_right=True), None, [])
    rows = {r["side"]: r for r in result["rows"]}
    assert rows["left"]["status"] == "error" and "not fully in the field" in rows["left"]["error"]
    assert rows["left"]["bmd_g_cm2"] is None and rows["left"]["t_score"] is None
    assert rows["left"]["referral"] == REFERRAL and rows["right"]["bmd_g_cm2"] is not None
    with pytest.raises(DataError, match="blank"):
        model.analyze(np.full((400, 300), 90, np.uint8), None, [])
    with pytest.raises(DataError, match="saturated"):
        saturated = textured(150, 120)
        saturated[:, :300] = 255
        model.analyze(saturated, None, [])
    with pytest.raises(DataError, match="no hip could be read"):
        model.analyze(textured(150, 120, sd=3.0), None, [])  # both halves nearly flat: neither hip in the field


def test_wrapper_without_calibration_refers_every_hip(tmp_path):
    bundle = handmade_bmd_bundle(tmp_path / "b", calibrate=False)
    model = create_model(load_bundle(bundle), device="ort-cpu")
    notes: list[str] = []
    rows = model.analyze(textured(200, 200), None, notes)["rows"]
    assert all(r["referral"] == REFERRAL and r["bmd_lower"] is None and r["bmd_g_cm2"] for r in rows)
    assert any("no calibration" in n for n in notes)


def test_analyze_writes_one_row_per_hip(tmp_path):
    import csv

    import cv2

    from sonogate.runtime.analyze import AnalyzeOptions, analyze

    bundle = handmade_bmd_bundle(tmp_path / "b")
    cv2.imwrite(str(tmp_path / "hips.png"), textured(200, 70))
    cv2.imwrite(str(tmp_path / "one_hip.png"), textured(150, 120, flat_right=True))
    cv2.imwrite(str(tmp_path / "blank.png"), np.full((300, 300), 90, np.uint8))
    analyze([str(tmp_path / "hips.png"), str(tmp_path / "one_hip.png"), str(tmp_path / "blank.png")],
            AnalyzeOptions(bundle=str(bundle), out=str(tmp_path / "out"), progress=False))
    with open(tmp_path / "out" / "analysis.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    header = list(rows[0])
    assert header[:1] == ["input"] and {"side", "bmd_g_cm2", "bmd_lower", "bmd_upper", "t_score", "referral"} <= set(header)
    by = {(Path(r["input"]).name, r["side"]): r for r in rows}
    assert by[("hips.png", "right")]["referral"] == NO_REFERRAL and by[("hips.png", "left")]["referral"] == REFERRAL
    assert float(by[("hips.png", "right")]["bmd_lower"]) < float(by[("hips.png", "right")]["bmd_g_cm2"])
    refused = by[("one_hip.png", "left")]
    assert refused["status"] == "error" and refused["bmd_g_cm2"] == "" and "field" in refused["error"]
    assert by[("one_hip.png", "right")]["status"] == "ok"
    blank = [r for r in rows if Path(r["input"]).name == "blank.png"]
    assert len(blank) == 1 and blank[0]["status"] == "error" and "blank" in blank[0]["error"]


# -- the shipped bundle (bundles/bmd) on phantom and foreign inputs -------------------------------------------
SHIPPED = Path(__file__).resolve().parents[1] / "bundles" / "bmd"


@pytest.fixture(scope="module")
def shipped():
    if not (SHIPPED / "manifest.json").is_file():
        pytest.skip("bundles/bmd not built (sonogate bmd export)")
    return create_model(SHIPPED, device="ort-cpu")


@pytest.mark.torchfree  # the runtime side: a vendor without torch runs this bundle
def test_shipped_bundle_reads_an_adult_pelvis_with_calibrated_intervals(shipped):
    from sonogate.tasks.bmd import phantom as ph

    rng = np.random.default_rng(7)
    image = ph.render_radiograph(ph.sample_subject(rng, "A"), rng, 512).image
    result = shipped.analyze(image, None, [])
    radius = shipped.calibration.measurements["bmd_g_cm2"].radius
    assert [r["side"] for r in result["rows"]] == ["right", "left"]
    for row in result["rows"]:
        assert row.get("status") != "error"
        assert 0.2 <= row["bmd_g_cm2"] <= 1.6
        assert row["bmd_upper"] - row["bmd_lower"] == pytest.approx(2 * radius, abs=2e-4)
        decision = result["hips"][row["side"]]["decision_bound_g_cm2"]
        assert decision is None or decision <= row["bmd_lower"] + 1e-9 or decision <= row["bmd_g_cm2"]
        assert row["referral"] == referral(None if decision is None else (decision - 0.858) / 0.120)[0]


@pytest.mark.torchfree  # the runtime side: a vendor without torch runs this bundle
def test_shipped_bundle_never_reads_foreign_images(shipped):
    from sonogate.phantom import hip_us
    from sonogate.tasks.bmd import phantom as ph

    rng = np.random.default_rng(3)
    us = hip_us.render_us_frame(hip_us.sample_hip_params(rng), rng, "A", 384).image
    subject = ph.with_hip_out_of_field(ph.sample_subject(rng, "B"), "L")
    one_hip = ph.render_radiograph(subject, rng, 512).image
    for image in (us, one_hip, np.zeros((512, 512), np.uint8)):
        try:
            rows = {r["side"]: r for r in shipped.analyze(image, None, [])["rows"]}
        except DataError:
            continue  # the whole image refused: no BMD at all
        assert rows["left"]["bmd_g_cm2"] is None and rows["left"]["status"] == "error"


# -- ensembles of regressors behind one locator ---------------------------------------------------------------
def tiny_run(folder: Path, seed: int, locator_state=None) -> Path:
    """A run folder as ``sonogate bmd train`` writes it (checkpoint.pt, regressor_round1.pt), random weights."""
    torch = pytest.importorskip("torch")
    from sonogate.tasks.bmd.net import Locator, Regressor
    from sonogate.tasks.bmd.train import BMD_CHECKPOINT_FORMAT, phase_file

    torch.manual_seed(seed)
    locator, final, earlier = Locator(4), Regressor(4), Regressor(4)
    if locator_state is not None:
        locator.load_state_dict(locator_state)
    folder.mkdir(parents=True)
    torch.save(earlier.state_dict(), phase_file(folder, "round1"))
    torch.save({"task": "bmd", "format": BMD_CHECKPOINT_FORMAT, "locator": locator.state_dict(), "locator_width": 4,
                "regressor": final.state_dict(), "width": 4, "context_width": 0,
                "config": {"data": "/nowhere", "seed": seed, "method": "st_triplet", "labelled_fraction": 0.1},
                "data": {"path": "/nowhere", "splits_seed": 0}, "metrics": {"val": {"r": 0.5}}},
               folder / "checkpoint.pt")
    return folder


def test_ensemble_averages_its_members_in_one_onnx_graph_with_their_heads_float(tmp_path):
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    from sonogate.export.quantize import nodes_with_weights
    from sonogate.tasks.bmd.ensemble import load_member
    from sonogate.tasks.bmd.export import BmdExporter
    from sonogate.tasks.bmd.net import BmdNet, Regressor, RegressorEnsemble
    from sonogate.tasks.bmd.train import build_bmd_model

    first = tiny_run(tmp_path / "a", 0)
    locator = torch.load(first / "checkpoint.pt", weights_only=False)["locator"]
    second = tiny_run(tmp_path / "b", 1, locator)
    member = load_member(f"{second}@round1")  # the phase's weights replace the final ones
    assert torch.equal(member["regressor"]["head.weight"],
                       torch.load(second / "regressor_round1.pt", weights_only=True)["head.weight"])
    with pytest.raises(DataError, match="no saved phase 'round7'"):
        load_member(f"{second}@round7")
    ckpt = torch.load(first / "checkpoint.pt", weights_only=False)
    ckpt["members"] = [{"regressor": member["regressor"], "width": 4, "context_width": 0}]
    exporter = BmdExporter()
    net = exporter.load_model(ckpt)
    assert isinstance(net.regressor, RegressorEnsemble) and net.regressor.embed_dim == 256
    single = build_bmd_model({k: v for k, v in ckpt.items() if k != "members"})
    image = torch.randn(2, 1, 512, 512) * 0.3
    with torch.no_grad():
        bmd, _, *_, features = net(image)
        alone = single(image)[0]
        other = BmdNet(single.locator, net.regressor.members[1]).eval()(image)[0]
    assert torch.allclose(bmd, (alone + other) / 2, atol=1e-6) and features.shape == (2, 2, 256)
    path = tmp_path / "ensemble.onnx"
    torch.onnx.export(net, image, str(path), input_names=["image"], output_names=list(net.output_names),
                      opset_version=20, dynamo=False, dynamic_axes={"image": {0: "n"}})
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["bmd"], {"image": image.numpy()})
    assert np.allclose(got[0], bmd.numpy(), atol=1e-4)
    # both members' fully connected layers stay float (INT8 clipped the BMD head's tails), plus the presence head
    assert len(nodes_with_weights(path, exporter.float_weight_prefixes)) == 5
    with pytest.raises(ValueError, match="all with or all without context"):
        RegressorEnsemble([Regressor(4), Regressor(4, context_width=4)])


def test_ensemble_refuses_members_with_another_locator(tmp_path):
    pytest.importorskip("torch")
    from sonogate.tasks.bmd.ensemble import write_ensemble_run

    first, second = tiny_run(tmp_path / "a", 0), tiny_run(tmp_path / "b", 1)
    with pytest.raises(DataError, match="another locator"):
        write_ensemble_run([str(first), str(second)], tmp_path / "e")
    with pytest.raises(DataError, match="no training checkpoint"):
        write_ensemble_run([str(tmp_path / "missing")], tmp_path / "e")
