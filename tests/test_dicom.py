"""DICOM in: the real files in ../shared/data, synthetic files for the encodings they lack, and broken files.

Real pydicom decoding everywhere (no mocks). Radiopaedia cines are read header-first and decoded one frame
each (JPEG 2000 is slow on 2 cores); one short cine is decoded completely.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

from sonogate.data.dicom import DicomImage, iter_dicom_frames, read_dicom, read_dicom_fps, read_dicom_frames
from sonogate.errors import DataError

pytestmark = pytest.mark.torchfree

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
SECRET_NAME = "Secretname^Patientfirst"
SECRET_ID = "SECRET-ID-4711"
SECRET_BIRTH = "20240229"


def make_dataset(pixels: np.ndarray, photometric: str, *, sop_class: str = US_MULTIFRAME, modality: str = "US",
                 bits: int = 8, frames: int | None = None, **attributes) -> Dataset:
    """A minimal but valid image object around ``pixels`` ((F,) H, W(, 3)), with a recognisable fake patient."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = SECRET_NAME, SECRET_ID, SECRET_BIRTH, "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20250101", "120000", "ACC1", "1"
    ds.ReferringPhysicianName = ""
    samples = 1 if photometric.startswith("MONOCHROME") or photometric == "PALETTE COLOR" else 3
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    shape = pixels.shape[-3:-1] if samples == 3 else pixels.shape[-2:]
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _assert_one_line_error(exc: DataError, name: str) -> None:
    text = str(exc)
    assert "\n" not in text
    assert text.startswith(f"cannot read DICOM {name}: "), text
    assert SECRET_NAME.split("^")[0] not in text and SECRET_ID not in text


# -- the real files -------------------------------------------------------------------------------------------
def _radiopaedia(shared_data: Path, kind: str) -> list[Path]:
    folder = shared_data / "hip-radiopaedia-ddh" / "dicoms" / kind
    files = sorted(folder.glob("*.dcm"))
    if not files:
        pytest.skip(f"no DICOM files in {folder}")
    return files


def test_radiopaedia_hip_cines_read_with_their_quirks_as_warnings(shared_data):
    files = _radiopaedia(shared_data, "ultrasound")
    assert len(files) == 12
    for path in files:
        image = read_dicom(path, max_frames=1)
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert image.kind == "ultrasound" and image.modality == "US"
        assert image.n_frames == int(header.NumberOfFrames) and 2 <= image.n_frames <= 17
        assert image.frames.shape == (1, header.Rows, header.Columns, 3) and image.frames.dtype == np.uint8
        assert 617 <= image.columns <= 1216
        # the quirks: SOP class says CR, Pixel Spacing is the [1, 1] placeholder, no Ultrasound Regions
        assert any("SOP class says Computed Radiography" in w for w in image.warnings), image.warnings
        assert any("placeholder" in w for w in image.warnings)
        assert image.mm_per_pixel is None and image.region is None
        frame = image.frames[0].astype(np.int16)
        assert 5 < frame.mean() < 200  # an image, not a black or saturated decode
        assert np.abs(frame[..., 0] - frame[..., 2]).mean() < 3  # grey B-mode stored as RGB: channels agree
        assert image.study_instance_uid and image.sop_instance_uid and image.photometric == "RGB"


def test_a_whole_radiopaedia_cine_decodes_frame_by_frame(shared_data):
    path = shared_data / "hip-radiopaedia-ddh" / "dicoms" / "ultrasound" / "167857.dcm"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    frames = read_dicom_frames(path)
    assert frames.shape == (4, 617, 854, 3) and frames.dtype == np.uint8
    streamed = list(iter_dicom_frames(path))
    assert len(streamed) == 4 and all(np.array_equal(a, b) for a, b in zip(frames, streamed))
    assert read_dicom_fps(path) is None  # no Frame Time in these files


def test_radiopaedia_pelvic_radiographs(shared_data):
    files = _radiopaedia(shared_data, "xray")
    assert len(files) == 10
    for path in files:
        image = read_dicom(path)
        assert image.kind == "radiograph" and image.modality == "DX"
        assert image.frames.shape == (1, 331, 331, 3)
        assert image.mm_per_pixel is None and any("placeholder" in w for w in image.warnings)
        assert 20 < image.frames.mean() < 200


def _generic(shared_data: Path, name: str) -> Path:
    path = shared_data / "us-dicom-generic" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def test_palette_ultrasound_maps_to_colour_and_reads_its_region(shared_data):
    path = _generic(shared_data, "examples_palette.dcm")
    image = read_dicom(path)
    assert image.photometric == "PALETTE COLOR" and image.frames.shape == (1, 350, 800, 3)
    frame = image.frames[0].astype(np.int16)
    chroma = frame.max(axis=2) - frame.min(axis=2)
    assert (chroma > 30).mean() > 0.01  # the palette produced colour (indices alone would be grey)
    # same colours as pydicom's own palette application (16-bit entries reduced to 8 bits)
    ds = pydicom.dcmread(path)
    from pydicom.pixels import apply_color_lut

    expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)[..., ::-1]
    assert np.array_equal(image.frames[0], expected)
    assert image.mm_per_pixel == pytest.approx((0.2622878766, 0.2622878766))
    assert image.region == (120, 60, 680, 290) and image.region_clipped  # the region ran past the cropped file
    assert any("exceeds the 800x350 image" in w for w in image.warnings)


def test_ybr_cine_becomes_rgb_and_reads_ultrasound_region_spacing(shared_data):
    path = _generic(shared_data, "examples_ybr_color.dcm")
    image = read_dicom(path)
    assert image.photometric == "YBR_FULL_422"
    assert image.frames.shape == (30, 240, 320, 3) and image.n_frames == 30
    assert image.frame_time_ms == pytest.approx(33.333) and image.fps == pytest.approx(30.0, rel=1e-3)
    assert read_dicom_fps(path) == pytest.approx(30.0, rel=1e-3)
    assert image.spacing_source == "ultrasound_regions"
    assert image.mm_per_pixel == pytest.approx((0.5104970559, 0.5104970559))  # PhysicalDeltaX 0.051 cm
    assert image.region is not None and image.region[:2] == (84, 31)
    frames = image.frames.astype(np.int16)
    # YCbCr left as is would put Cb and Cr near 128 on this mostly dark grey image; RGB keeps channels together
    means = frames.reshape(-1, 3).mean(axis=0)
    assert means.max() < 60 and np.abs(means - means.mean()).max() < 5
    # and it equals an explicit conversion of the raw YCbCr decode
    ds = pydicom.dcmread(path)
    from pydicom.pixels import convert_color_space, pixel_array

    raw = pixel_array(ds, index=3, raw=True)
    rgb = convert_color_space(raw, "YBR_FULL", "RGB")
    assert np.abs(image.frames[3].astype(np.int16) - rgb[..., ::-1].astype(np.int16)).max() <= 2


def test_rgb_ultrasound_is_returned_in_bgr_order(shared_data):
    path = _generic(shared_data, "examples_rgb_color.dcm")
    image = read_dicom(path)
    ds = pydicom.dcmread(path)
    assert image.frames.shape == (1, 240, 320, 3)
    assert np.array_equal(image.frames[0], ds.pixel_array[..., ::-1])
    assert image.mm_per_pixel is None and image.region is None and image.frame_time_ms is None


def test_capture_source_replays_a_dicom_cine(shared_data):
    path = _generic(shared_data, "examples_ybr_color.dcm")
    from sonogate.device.capture import open_source

    source = open_source(str(path), realtime=False)
    try:
        assert source.fps == pytest.approx(30.0, rel=1e-3)
        count = 0
        while True:
            ok, frame = source.read()
            if not ok:
                break
            assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8
            count += 1
        assert count == 30
    finally:
        source.close()


# -- encodings the shared files lack --------------------------------------------------------------------------
def test_monochrome1_radiograph_is_windowed_and_inverted(tmp_path):
    pixels = np.full((64, 80), 3000, dtype=np.uint16)
    pixels[:, :40] = 1000  # left half low, right half high
    ds = make_dataset(pixels, "MONOCHROME1", sop_class=DX_PRESENTATION, modality="DX", bits=16,
                      WindowCenter=2000, WindowWidth=2000, ImagerPixelSpacing=[0.15, 0.14])
    image = read_dicom(save(ds, tmp_path / "dx.dcm"))
    assert image.kind == "radiograph" and image.frames.shape == (1, 64, 80, 3)
    gray = image.frames[0, :, :, 0]
    assert gray[:, :40].min() == 255 and gray[:, 40:].max() == 0  # MONOCHROME1: low values are white
    assert image.mm_per_pixel == pytest.approx((0.14, 0.15))  # (x, y) = (column, row) spacing
    assert image.spacing_source == "imager_pixel_spacing"
    assert any("Imager Pixel Spacing" in w for w in image.warnings)


def test_monochrome2_without_window_uses_a_percentile_window(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(100, 4000, size=(2, 48, 48)).astype(np.uint16)
    ds = make_dataset(pixels, "MONOCHROME2", bits=16, frames=2, FrameTime=40)
    image = read_dicom(save(ds, tmp_path / "mono16.dcm"))
    assert image.frames.shape == (2, 48, 48, 3) and image.frame_time_ms == 40.0
    assert image.frames.min() == 0 and image.frames.max() == 255
    assert any("percentile" in w for w in image.warnings)


def test_rle_monochrome_cine_decodes_losslessly(tmp_path):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, size=(5, 40, 56)).astype(np.uint8)
    ds = make_dataset(pixels, "MONOCHROME2", frames=5, FrameTime=50)
    ds.compress(RLELossless, pixels)
    image = read_dicom(save(ds, tmp_path / "rle.dcm"))
    assert image.frames.shape == (5, 40, 56, 3)
    assert np.array_equal(image.frames[..., 0], pixels) and np.array_equal(image.frames[..., 2], pixels)
    assert image.fps == pytest.approx(20.0)


def test_jpeg2000_rgb_cine_keeps_colour_order(tmp_path):
    pixels = np.zeros((3, 32, 48, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 200, 60, 10  # reddish in RGB
    pixels[1] += 20
    ds = make_dataset(pixels, "RGB", frames=3)
    ds.compress(JPEG2000Lossless, pixels)
    image = read_dicom(save(ds, tmp_path / "j2k.dcm"))
    assert image.frames.shape == (3, 32, 48, 3)
    assert np.array_equal(image.frames, pixels[..., ::-1])  # BGR


def test_native_ybr_full_is_converted_to_rgb(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((24, 32, 3), dtype=np.uint8)
    rgb[:, :16] = (220, 40, 30)
    rgb[:, 16:] = (20, 200, 60)
    ds = make_dataset(convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")
    image = read_dicom(save(ds, tmp_path / "ybr.dcm"))
    assert np.abs(image.frames[0].astype(int) - rgb[..., ::-1].astype(int)).max() <= 2


def test_missing_and_wrong_tags_give_warnings_not_crashes(tmp_path):
    pixels = np.arange(3 * 20 * 30, dtype=np.uint32).reshape(3, 20, 30).astype(np.uint8)
    ds = make_dataset(pixels, "MONOCHROME2", frames=3, PixelSpacing=[0.0, -1.0])
    del ds.PhotometricInterpretation
    del ds.BitsStored
    del ds.NumberOfFrames  # the pixel data length says 3
    del ds.Modality  # the SOP class says ultrasound
    image = read_dicom(save(ds, tmp_path / "tags.dcm"))
    assert image.frames.shape == (3, 20, 30, 3) and image.kind == "ultrasound"
    text = " ".join(image.warnings)
    for expected in ("no Photometric Interpretation", "no Bits Stored", "3 frame(s) inferred", "no Modality",
                     "implausible"):
        assert expected in text, image.warnings
    assert image.mm_per_pixel is None


def test_a_bare_data_set_without_preamble_is_read_with_a_warning(tmp_path):
    pixels = np.full((20, 20), 90, dtype=np.uint8)
    ds = make_dataset(pixels, "MONOCHROME2", sop_class="1.2.840.10008.5.1.4.1.1.6.1")
    path = tmp_path / "bare.dcm"
    # a raw implicit-VR little-endian data set: no preamble, no file meta
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    path.write_bytes(buffer.getvalue())
    image = read_dicom(path)
    assert image.frames.shape == (1, 20, 20, 3) and int(image.frames.mean()) == 90
    assert any("no DICOM preamble" in w for w in image.warnings)


def test_patient_data_never_appear_in_warnings_repr_or_summary(tmp_path):
    pixels = np.full((2, 16, 16, 3), 50, dtype=np.uint8)
    ds = make_dataset(pixels, "RGB", frames=2, PixelSpacing=[1, 1])
    ds.OtherPatientNames = "Another^Secretname"
    image = read_dicom(save(ds, tmp_path / "p.dcm"))
    assert image.patient["PatientID"] == SECRET_ID  # kept for linkage...
    visible = " ".join([repr(image), str(image), json.dumps(image.summary()), " ".join(image.warnings)])
    for secret in ("Secretname", SECRET_ID, SECRET_BIRTH):  # ...but never shown
        assert secret not in visible


# -- broken inputs --------------------------------------------------------------------------------------------
def test_random_bytes_png_renamed_and_empty_files_are_one_line_errors(tmp_path):
    (tmp_path / "random.dcm").write_bytes(np.random.default_rng(3).bytes(4000))
    _, png = cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "picture.dcm").write_bytes(png.tobytes())
    (tmp_path / "empty.dcm").write_bytes(b"")
    for name in ("random.dcm", "picture.dcm", "empty.dcm"):
        with pytest.raises(DataError) as info:
            read_dicom(tmp_path / name)
        _assert_one_line_error(info.value, name)
        assert "not a DICOM file" in str(info.value)
    with pytest.raises(DataError, match="cannot read DICOM missing.dcm: no such file"):
        read_dicom(tmp_path / "missing.dcm")


def test_truncated_files_are_one_line_errors(tmp_path, shared_data):
    real = shared_data / "hip-radiopaedia-ddh" / "dicoms" / "ultrasound" / "72628.dcm"
    if not real.is_file():
        pytest.skip(f"{real} not present")
    data = real.read_bytes()
    for fraction in (0.3, 0.97):
        path = tmp_path / f"cut{int(fraction * 100)}.dcm"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(DataError) as info:
            read_dicom(path)
        _assert_one_line_error(info.value, path.name)
        assert "truncated" in str(info.value)
    native = save(make_dataset(np.zeros((4, 32, 32), np.uint8), "MONOCHROME2", frames=4), tmp_path / "n.dcm")
    blob = native.read_bytes()
    native.write_bytes(blob[:-700])
    with pytest.raises(DataError, match="truncated pixel data") as info:
        read_dicom(native)
    _assert_one_line_error(info.value, "n.dcm")


def test_dicom_without_pixel_data_is_a_one_line_error(tmp_path):
    ds = make_dataset(np.zeros((8, 8), np.uint8), "MONOCHROME2")
    del ds.PixelData
    path = save(ds, tmp_path / "nopixels.dcm")
    with pytest.raises(DataError) as info:
        read_dicom(path)
    _assert_one_line_error(info.value, "nopixels.dcm")
    assert "no pixel data" in str(info.value)


def test_undecodable_pixel_data_is_a_one_line_error(tmp_path):
    ds = make_dataset(np.zeros((2, 16, 16, 3), np.uint8), "RGB", frames=2)
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51garbage" * 4, b"\x00" * 32])
    ds["PixelData"].VR = "OB"
    path = save(ds, tmp_path / "garbage.dcm")
    with pytest.raises(DataError) as info:
        read_dicom(path)
    _assert_one_line_error(info.value, "garbage.dcm")
    assert "cannot be decoded" in str(info.value)


def test_video_transfer_syntax_is_refused_clearly(tmp_path):
    ds = make_dataset(np.zeros((16, 16, 3), np.uint8), "YBR_PARTIAL_420")
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile
    ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "h264.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match="H.264 video transfer syntax is not supported") as info:
        read_dicom(path)
    _assert_one_line_error(info.value, "h264.dcm")


def test_dicom_image_is_a_dataclass_with_the_documented_fields():
    fields = DicomImage.__dataclass_fields__
    for name in ("frames", "modality", "sop_class_uid", "photometric", "mm_per_pixel", "region",
                 "frame_time_ms", "warnings", "study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        assert name in fields
