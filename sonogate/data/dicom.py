"""Read ultrasound cines and pelvic radiographs from DICOM into BGR uint8 frames (torch-free: pydicom + numpy + cv2).

    from sonogate.data.dicom import read_dicom
    image = read_dicom("study/IM0001.dcm")
    image.frames            # (F, H, W, 3) uint8, BGR (OpenCV order); radiographs are windowed to 8 bits
    image.mm_per_pixel      # (x, y) in mm from Ultrasound Regions / Pixel Spacing, or None
    image.region            # (x, y, w, h) of the ultrasound image area from Ultrasound Regions, or None
    image.warnings          # wrong or missing tags that were worked around (never patient data)

What is decoded: native (uncompressed), JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000 and RLE through
pydicom 3's decoders (pylibjpeg with its openjpeg / libjpeg / rle plugins). Photometric interpretations:
MONOCHROME1/2 (modality LUT, then the file's VOI LUT or window, else a 0.5-99.5 percentile window; MONOCHROME1
inverted), RGB, YBR_FULL / YBR_FULL_422 / YBR_ICT / YBR_RCT (to RGB by the decoder), YBR_PARTIAL_420/422 and
PALETTE COLOR (the palette applied, 16-bit palettes reduced to 8 bits). Video transfer syntaxes (MPEG-2, H.264,
HEVC) are refused with one clear line.

Quirks handled with a warning instead of a crash (see docs/dicom.md): a SOP class that contradicts the Modality
(the Radiopaedia hip cines say "Computed Radiography Image Storage" for an ultrasound cine), a placeholder or
implausible Pixel Spacing ([1, 1]), Ultrasound Regions larger than the stored image (cropped or rescaled files),
missing Photometric Interpretation / Samples per Pixel / Bits Stored / Number of Frames, a file without the DICM
preamble.

Privacy: patient-level attributes (name, ID, birth date, ...) are kept on ``DicomImage.patient`` and in
``DicomImage.header`` only so that derived objects (SR, SC) link to the same patient and study in a PACS. They
are excluded from ``repr`` and never written into warnings, errors or logs by this module; pydicom's own parser
warnings (which may quote element values) are suppressed and counted instead.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings as _warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sonogate.errors import DataError

# SOP classes (PS3.4 B.5) grouped by what they hold.
_US_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
    "1.2.840.10008.5.1.4.1.1.6.2": "Enhanced US Volume Storage",
}
_XR_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}
_SC_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
}
_XR_MODALITIES = {"CR", "DX", "RG", "DR", "PX"}
_VIDEO_SYNTAXES = {
    "1.2.840.10008.1.2.4.100": "MPEG-2", "1.2.840.10008.1.2.4.100.1": "MPEG-2",
    "1.2.840.10008.1.2.4.101": "MPEG-2", "1.2.840.10008.1.2.4.101.1": "MPEG-2",
    "1.2.840.10008.1.2.4.102": "H.264", "1.2.840.10008.1.2.4.102.1": "H.264",
    "1.2.840.10008.1.2.4.103": "H.264", "1.2.840.10008.1.2.4.103.1": "H.264",
    "1.2.840.10008.1.2.4.104": "H.264", "1.2.840.10008.1.2.4.104.1": "H.264",
    "1.2.840.10008.1.2.4.105": "H.264", "1.2.840.10008.1.2.4.105.1": "H.264",
    "1.2.840.10008.1.2.4.106": "H.264", "1.2.840.10008.1.2.4.106.1": "H.264",
    "1.2.840.10008.1.2.4.107": "HEVC", "1.2.840.10008.1.2.4.108": "HEVC",
}

# Plausible physical pixel sizes (mm). Outside these a spacing is reported as implausible and not used.
_US_SPACING_MM = (0.005, 1.0)
_XR_SPACING_MM = (0.02, 2.0)

# Patient / study attributes kept for PACS linkage of derived objects (never logged).
_LINKAGE_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDsSequence",
    "PatientAge", "PatientWeight", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
    "ReferringPhysicianName", "StudyDescription",
)
_DEFAULT_FPS = 30.0


@dataclass
class DicomImage:
    """One DICOM image object, decoded to BGR uint8 frames.

    ``frames``: (F, H, W, 3) uint8 BGR for every kind (radiographs windowed to 8 bits, gray replicated to 3
    channels); empty (0, H, W, 3) when read with ``load_frames=False`` (``iter_frames`` then decodes lazily).
    ``kind``: "ultrasound", "radiograph" or "other" (from Modality first, the SOP class where Modality is missing).
    ``mm_per_pixel``: (x, y) = (column spacing, row spacing) in mm - note the order is the reverse of the DICOM
    Pixel Spacing attribute (row, column). ``region``: (x, y, w, h) of the ultrasound image area, clipped to the
    image. ``photometric``: the stored Photometric Interpretation (frames are always BGR).
    """

    frames: np.ndarray
    modality: str
    sop_class_uid: str
    photometric: str
    mm_per_pixel: tuple[float, float] | None
    region: tuple[int, int, int, int] | None
    frame_time_ms: float | None
    warnings: list[str]
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    kind: str = "other"
    transfer_syntax_uid: str = ""
    n_frames: int = 0
    rows: int = 0
    columns: int = 0
    laterality: str | None = None  # "R", "L", "B" or None, from ImageLaterality / Laterality
    patient_orientation: tuple[str, ...] | None = None
    spacing_source: str | None = None  # "ultrasound_regions", "pixel_spacing", "imager_pixel_spacing"
    region_clipped: bool = False  # the region had to be clipped to the image: it may not describe these pixels
    name: str = ""
    path: Path | None = field(default=None, repr=False)
    # For PACS linkage of the SR / SC only: hold patient data, never log or print them.
    patient: dict[str, Any] = field(default_factory=dict, repr=False)
    header: Any = field(default=None, repr=False)  # pydicom Dataset without Pixel Data

    def __repr__(self) -> str:  # compact, and never the patient attributes
        return (f"DicomImage(name={self.name!r}, kind={self.kind!r}, modality={self.modality!r}, "
                f"frames={tuple(self.frames.shape)} of {self.n_frames}, photometric={self.photometric!r}, "
                f"mm_per_pixel={self.mm_per_pixel}, region={self.region}, frame_time_ms={self.frame_time_ms}, "
                f"warnings={len(self.warnings)})")

    @property
    def sop_class_name(self) -> str:
        return sop_class_name(self.sop_class_uid)

    @property
    def fps(self) -> float | None:
        return None if not self.frame_time_ms else 1000.0 / self.frame_time_ms

    @property
    def is_ultrasound(self) -> bool:
        return self.kind == "ultrasound"

    @property
    def is_radiograph(self) -> bool:
        return self.kind == "radiograph"

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Yield (H, W, 3) BGR uint8 frames one at a time (decoded lazily when frames were not loaded)."""
        if len(self.frames):
            yield from self.frames
            return
        if self.path is None:
            return
        ds, _ = _open(self.path)
        yield from _iter_decoded(ds, self)  # notes made while decoding (e.g. a percentile window) land here

    def summary(self) -> dict[str, Any]:
        """JSON-safe description without patient data (for reports and logs)."""
        return {
            "kind": self.kind,
            "modality": self.modality,
            "sop_class_uid": self.sop_class_uid,
            "sop_class": self.sop_class_name,
            "transfer_syntax": _syntax_name(self.transfer_syntax_uid),
            "photometric": self.photometric,
            "frames": self.n_frames,
            "rows": self.rows,
            "columns": self.columns,
            "mm_per_pixel": None if self.mm_per_pixel is None else [round(v, 6) for v in self.mm_per_pixel],
            "spacing_source": self.spacing_source,
            "region": None if self.region is None else list(self.region),
            "frame_time_ms": self.frame_time_ms,
            "laterality": self.laterality,
        }


def sop_class_name(uid: str) -> str:
    for table in (_US_SOP_CLASSES, _XR_SOP_CLASSES, _SC_SOP_CLASSES):
        if uid in table:
            return table[uid]
    try:
        from pydicom.uid import UID

        name = UID(uid).name
        # only a registered name: an unknown value is shown as such, never quoted (a corrupt element can
        # run on into the patient module)
        return name if name and name != uid else "unrecognised SOP class"
    except Exception:  # noqa: BLE001
        return "unrecognised SOP class"


def _syntax_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        return UID(uid).name or uid
    except Exception:  # noqa: BLE001
        return uid


@contextlib.contextmanager
def quiet_dicom_libraries():
    """Silence pydicom / highdicom log records inside the block. Their messages can quote element values
    (e.g. "invalid value for VR PN: <the patient's name>"), which must never reach a log. Warnings are handled
    by the callers (counted or ignored)."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom")]
    states = [(logger.level, logger.propagate) for logger in loggers]
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        try:
            for logger in loggers:
                logger.setLevel(logging.CRITICAL + 1)
                logger.propagate = False
            yield
        finally:
            for logger, (level, propagate) in zip(loggers, states):
                logger.setLevel(level)
                logger.propagate = propagate


# -- errors ---------------------------------------------------------------------------------------------------
def _one_line(exc: BaseException | str, limit: int = 160) -> str:
    text = str(exc) if not isinstance(exc, str) else exc
    text = " ".join(text.split())
    if not text and isinstance(exc, BaseException):
        text = type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(name: str, reason: str) -> DataError:
    return DataError(f"cannot read DICOM {name}: {_one_line(reason)}")


# -- public API -----------------------------------------------------------------------------------------------
def read_dicom(path: str | os.PathLike, *, load_frames: bool = True, max_frames: int | None = None) -> DicomImage:
    """Read one DICOM image file. Raises DataError ("cannot read DICOM <name>: <reason>", one line) on a missing,
    corrupt, truncated or non-DICOM file, a file without pixel data, or pixel data no installed decoder reads.

    ``load_frames=False`` reads and checks the header only (``frames`` is empty; ``iter_frames()`` decodes on
    demand); ``max_frames`` keeps the first N frames.
    """
    path = Path(path)
    ds, image = _open(path)
    if load_frames:
        with quiet_dicom_libraries():
            image.frames = _decode_all(ds, image, max_frames=max_frames)
    return image


def read_dicom_frames(path: str | os.PathLike) -> np.ndarray:
    """(F, H, W, 3) BGR uint8 frames of a DICOM cine or image (the live capture source replays these)."""
    return read_dicom(path).frames


def read_dicom_fps(path: str | os.PathLike) -> float | None:
    """Frame rate of a cine from Frame Time / Frame Time Vector / Cine Rate, or None when the file has none."""
    _, image = _open(Path(path))
    return image.fps


def iter_dicom_frames(path: str | os.PathLike, *, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of a DICOM file one at a time as (H, W, 3) BGR uint8 (bounded memory for long cines)."""
    ds, image = _open(Path(path))
    yield from _iter_decoded(ds, image, max_frames=max_frames)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file has the DICM preamble marker (cheap check used to find DICOM files without a suffix)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


# -- header ---------------------------------------------------------------------------------------------------
def _dcmread(path: Path, name: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    notes: list[str] = []
    with quiet_dicom_libraries(), _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            # No 128-byte preamble + "DICM": some exporters write a bare data set. Accept it only when it parses
            # into something that really looks like an image object.
            try:
                ds = pydicom.dcmread(path, force=True)
                _ = ds.get("SOPClassUID"), ds.get("Rows"), ds.get("Columns")
            except Exception:  # noqa: BLE001
                raise _fail(name, "not a DICOM file") from None
            if not ("SOPClassUID" in ds and "Rows" in ds and "Columns" in ds):
                raise _fail(name, "not a DICOM file") from None
            notes.append("no DICOM preamble/file meta: read as a bare data set")
        except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError) as exc:
            raise _fail(name, f"corrupt or truncated file ({type(exc).__name__})") from None
        except Exception as exc:  # noqa: BLE001 - any parser failure is a data problem for the user
            raise _fail(name, f"corrupt file ({type(exc).__name__})") from None
    messages = " ".join(str(w.message).lower() for w in caught)
    if "end of file" in messages or "truncat" in messages or len(ds) == 0:
        raise _fail(name, "truncated file (ends inside a data element)")
    if caught:
        # pydicom's warnings can quote element values (patient names): count them, never repeat them
        notes.append(f"{len(caught)} DICOM parser warning(s) while reading the header (values not shown)")
    return ds, notes


def _open(path: Path):
    with quiet_dicom_libraries():  # pydicom warns with element values (names) when it validates lazily
        return _open_quietly(path)


def _open_quietly(path: Path):
    """(dataset, DicomImage without frames) after checking that pixel data is present and decodable in kind."""
    name = path.name
    if not path.is_file():
        raise _fail(name, "no such file")
    ds, notes = _dcmread(path, name)
    warnings_: list[str] = list(notes)
    try:
        image = _describe(ds, name, warnings_)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed element value in the header
        raise _fail(name, f"malformed header ({type(exc).__name__})") from None
    image.path = path
    return ds, image


def _get(ds, keyword: str, default=None):
    """A header value; a malformed element counts as missing (it is read lazily by pydicom and may raise)."""
    try:
        value = ds.get(keyword, default)
    except Exception:  # noqa: BLE001
        return default
    return default if value is None or value == "" else value


def _describe(ds, name: str, warnings_: list[str]) -> DicomImage:
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = str(_get(ds, "SOPClassUID", ""))
        what = sop_class_name(sop) if sop else "no SOP class"
        raise _fail(name, f"no pixel data ({what}, not an image)")
    if "PixelData" not in ds:
        raise _fail(name, "float pixel data (parametric map) is not an ultrasound or radiograph image")

    # Transfer syntax: missing in bare data sets
    meta = getattr(ds, "file_meta", None)
    tsyntax = None if meta is None else meta.get("TransferSyntaxUID")
    if not tsyntax:
        implicit = getattr(ds, "is_implicit_VR", True)
        tsyntax = ImplicitVRLittleEndian if implicit in (True, None) else ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = tsyntax
        warnings_.append(f"no Transfer Syntax UID: assumed {UID(tsyntax).name}")
    tsyntax = UID(str(tsyntax))
    if str(tsyntax) in _VIDEO_SYNTAXES:
        raise _fail(name, f"{_VIDEO_SYNTAXES[str(tsyntax)]} video transfer syntax is not supported "
                          "(export the cine as multi-frame JPEG or uncompressed)")

    rows, columns = _get(ds, "Rows"), _get(ds, "Columns")
    if not rows or not columns:
        raise _fail(name, "image has no Rows/Columns")
    rows, columns = int(rows), int(columns)
    _repair_pixel_module(ds, name, tsyntax, rows, columns, warnings_)

    modality = str(_get(ds, "Modality", "") or "").upper().strip()
    sop_class_uid = str(_get(ds, "SOPClassUID", "") or "")
    kind = _kind(modality, sop_class_uid, warnings_)
    photometric = str(_get(ds, "PhotometricInterpretation", "")).upper().strip()
    n_frames = int(_get(ds, "NumberOfFrames", 1) or 1)

    region = None
    mm = None
    source = None
    region_clipped = False
    if kind == "ultrasound":
        region, mm, source, region_clipped = _ultrasound_regions(ds, rows, columns, warnings_)
        if mm is None:
            mm, source = _pixel_spacing(ds, _US_SPACING_MM, warnings_, radiograph=False)
    elif kind == "radiograph":
        mm, source = _pixel_spacing(ds, _XR_SPACING_MM, warnings_, radiograph=True)
    else:
        mm, source = _pixel_spacing(ds, (0.001, 10.0), warnings_, radiograph=False)

    laterality = _get(ds, "ImageLaterality") or _get(ds, "Laterality")
    laterality = str(laterality).upper() if laterality and str(laterality).upper() in ("R", "L", "B") else None
    orientation = _get(ds, "PatientOrientation")
    if orientation is not None:
        values = [orientation] if isinstance(orientation, str) else list(orientation)
        orientation = tuple(str(v).upper().strip() for v in values)
        orientation = orientation if any(orientation) else None

    header = _header_without_pixels(ds)
    patient = {kw: header[kw].value for kw in _LINKAGE_KEYWORDS if kw in header}

    return DicomImage(
        frames=np.empty((0, rows, columns, 3), dtype=np.uint8),
        modality=modality,
        sop_class_uid=sop_class_uid,
        photometric=photometric,
        mm_per_pixel=mm,
        region=region,
        frame_time_ms=_frame_time_ms(ds, warnings_) if n_frames > 1 else None,
        warnings=warnings_,
        study_instance_uid=str(_get(ds, "StudyInstanceUID", "")) or None,
        series_instance_uid=str(_get(ds, "SeriesInstanceUID", "")) or None,
        sop_instance_uid=str(_get(ds, "SOPInstanceUID", "")) or None,
        kind=kind,
        transfer_syntax_uid=str(tsyntax),
        n_frames=n_frames,
        rows=rows,
        columns=columns,
        laterality=laterality,
        patient_orientation=orientation,
        spacing_source=source,
        region_clipped=region_clipped,
        name=name,
        patient=patient,
        header=header,
    )


def _header_without_pixels(ds):
    """A new data set sharing every element of ``ds`` except the pixel data (ds itself is left intact)."""
    from pydicom.dataset import Dataset, FileMetaDataset

    header = Dataset()
    for element in ds:
        if element.tag.group != 0x7FE0:
            header.add(element)
    header.file_meta = FileMetaDataset(ds.file_meta) if getattr(ds, "file_meta", None) is not None else \
        FileMetaDataset()
    return header


def _repair_pixel_module(ds, name: str, tsyntax, rows: int, columns: int, warnings_: list[str]) -> None:
    """Fill missing or contradictory Image Pixel attributes so the decoder can run; warn for each fix."""
    photometric = str(_get(ds, "PhotometricInterpretation", "")).upper().strip()
    samples = _get(ds, "SamplesPerPixel")
    if not photometric:
        photometric = "RGB" if samples and int(samples) == 3 else "MONOCHROME2"
        ds.PhotometricInterpretation = photometric
        warnings_.append(f"no Photometric Interpretation: assumed {photometric}")
    elif photometric != str(ds.PhotometricInterpretation):
        ds.PhotometricInterpretation = photometric  # stray spaces / lower case
    expected_samples = 1 if photometric.startswith("MONOCHROME") or photometric == "PALETTE COLOR" else 3
    if samples is None:
        ds.SamplesPerPixel = expected_samples
        warnings_.append(f"no Samples per Pixel: assumed {expected_samples} for {photometric}")
    elif int(samples) != expected_samples:
        if int(samples) == 3 and expected_samples == 1:
            warnings_.append(f"Photometric Interpretation {photometric} with 3 samples per pixel: read as RGB")
            ds.PhotometricInterpretation = photometric = "RGB"
        elif int(samples) == 1 and expected_samples == 3:
            warnings_.append(f"Photometric Interpretation {photometric} with 1 sample per pixel: read as MONOCHROME2")
            ds.PhotometricInterpretation = photometric = "MONOCHROME2"
        else:
            raise _fail(name, f"unsupported Samples per Pixel {samples}")
    allocated = _get(ds, "BitsAllocated")
    if allocated is None:
        raise _fail(name, "no Bits Allocated")
    if _get(ds, "BitsStored") is None:
        ds.BitsStored = int(allocated)
        warnings_.append("no Bits Stored: assumed equal to Bits Allocated")
    if _get(ds, "HighBit") is None:
        ds.HighBit = int(ds.BitsStored) - 1
    if _get(ds, "PixelRepresentation") is None:
        ds.PixelRepresentation = 0
        warnings_.append("no Pixel Representation: assumed unsigned")
    if int(_get(ds, "SamplesPerPixel", 1)) == 3 and _get(ds, "PlanarConfiguration") is None:
        ds.PlanarConfiguration = 0
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
                           "YBR_PARTIAL_420", "YBR_PARTIAL_422", "PALETTE COLOR"):
        raise _fail(name, f"unsupported Photometric Interpretation {photometric}")

    frames_value = _get(ds, "NumberOfFrames")
    try:
        n_frames = int(frames_value) if frames_value is not None else None
    except (TypeError, ValueError):
        n_frames = None
    if n_frames is not None and n_frames < 1:
        n_frames = None
    if not tsyntax.is_encapsulated:
        bits = int(allocated)
        frame_bytes = rows * columns * int(ds.SamplesPerPixel) * bits // 8
        if photometric == "YBR_FULL_422" and bits == 8:
            frame_bytes = frame_bytes * 2 // 3
        try:
            length = len(ds.PixelData)
        except Exception:  # noqa: BLE001
            raise _fail(name, "truncated pixel data") from None
        if frame_bytes <= 0:
            raise _fail(name, "empty image")
        if n_frames is None:
            n_frames = max(1, length // frame_bytes)
            if "NumberOfFrames" in ds or n_frames > 1:
                warnings_.append(f"no valid Number of Frames: {n_frames} frame(s) inferred from the pixel data length")
            if n_frames > 1 or "NumberOfFrames" in ds:
                ds.NumberOfFrames = n_frames
        if length < frame_bytes * n_frames:
            have = length // frame_bytes
            raise _fail(name, f"truncated pixel data ({length} of {frame_bytes * n_frames} bytes, "
                              f"{have} of {n_frames} frames)")
    elif n_frames is None:
        if frames_value is not None:
            warnings_.append("invalid Number of Frames: assumed 1")
        ds.NumberOfFrames = 1


def _kind(modality: str, sop_class_uid: str, warnings_: list[str]) -> str:
    by_sop = ("ultrasound" if sop_class_uid in _US_SOP_CLASSES else
              "radiograph" if sop_class_uid in _XR_SOP_CLASSES else None)
    by_modality = ("ultrasound" if modality == "US" else "radiograph" if modality in _XR_MODALITIES else
                   None if modality in ("", "OT") else "other")
    sop_name = sop_class_name(sop_class_uid) if sop_class_uid else "missing"
    if by_modality is None:
        if by_sop is None:
            if sop_class_uid in _SC_SOP_CLASSES or not sop_class_uid:
                warnings_.append(f"Modality {modality or 'missing'} and SOP class {sop_name} do not say whether this "
                                 "is an ultrasound or a radiograph")
            return "other"
        if not modality:
            warnings_.append(f"no Modality: {by_sop} assumed from the SOP class {sop_name}")
        return by_sop
    if by_sop is not None and by_sop != by_modality:
        warnings_.append(f"SOP class says {sop_name} but Modality is {modality}: treated as {by_modality} "
                         "(Modality trusted)")
    elif by_sop == "radiograph" and by_modality == "radiograph":
        expected = {"1.2.840.10008.5.1.4.1.1.1": {"CR"}}.get(sop_class_uid, {"DX", "DR", "PX", "RG"})
        if modality not in expected and sop_class_uid in _XR_SOP_CLASSES:
            warnings_.append(f"SOP class says {sop_name} but Modality is {modality}")
    if not sop_class_uid:
        warnings_.append("no SOP Class UID")
    return by_modality


def _ultrasound_regions(ds, rows: int, columns: int, warnings_: list[str]):
    """(region, mm_per_pixel, source, clipped) from the Sequence of Ultrasound Regions (PS3.3 C.8.5.5)."""
    sequence = _get(ds, "SequenceOfUltrasoundRegions")
    if not sequence:
        return None, None, None, False
    candidates = []
    for item in sequence:
        try:
            spatial = int(item.get("RegionSpatialFormat", 0) or 0)
            data_type = int(item.get("RegionDataType", 0) or 0)
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1), int(item.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue
        if spatial != 1 or x1 <= x0 or y1 <= y0:  # 1 = 2D (tissue or flow); M-mode / spectral are not images
            continue
        candidates.append((data_type, (x1 - x0 + 1) * (y1 - y0 + 1), (x0, y0, x1, y1), item))
    if not candidates:
        warnings_.append("Ultrasound Regions hold no 2D image region: no region or physical spacing")
        return None, None, None, False
    tissue = [c for c in candidates if c[0] in (1, 2, 3)] or candidates  # tissue / colour flow / PW on B-mode
    tissue.sort(key=lambda c: -c[1])
    if len(tissue) > 1:
        warnings_.append(f"{len(tissue)} 2D ultrasound regions (dual view?): using the largest")
    _, _, (x0, y0, x1, y1), item = tissue[0]
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(columns - 1, x1), min(rows - 1, y1)
    region = None
    clipped = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
    if cx1 - cx0 < 15 or cy1 - cy0 < 15:
        warnings_.append(f"ultrasound region ({x0},{y0})-({x1},{y1}) lies outside the {columns}x{rows} image: "
                         "ignored (the image was cropped or rescaled after acquisition)")
    else:
        region = (cx0, cy0, cx1 - cx0 + 1, cy1 - cy0 + 1)
        if clipped:
            warnings_.append(f"ultrasound region ({x0},{y0})-({x1},{y1}) exceeds the {columns}x{rows} image "
                             "(cropped or rescaled after acquisition?): region clipped, its spacing may not match "
                             "the stored pixels")
    try:
        unit_x = int(item.get("PhysicalUnitsXDirection", 0) or 0)
        unit_y = int(item.get("PhysicalUnitsYDirection", 0) or 0)
        dx = float(item.get("PhysicalDeltaX", 0.0) or 0.0)
        dy = float(item.get("PhysicalDeltaY", 0.0) or 0.0)
    except (TypeError, ValueError):
        warnings_.append("Ultrasound Region physical deltas are malformed: no physical spacing")
        return region, None, None, clipped
    if unit_x != 3 or unit_y != 3:  # 3 = cm
        warnings_.append(f"Ultrasound Region units are not cm (codes {unit_x}, {unit_y}): no physical spacing")
        return region, None, None, clipped
    mm = (abs(dx) * 10.0, abs(dy) * 10.0)
    lo, hi = _US_SPACING_MM
    if not all(math.isfinite(v) and lo <= v <= hi for v in mm):
        warnings_.append(f"Ultrasound Region spacing {mm[0]:.4g} x {mm[1]:.4g} mm/pixel is implausible: ignored")
        return region, None, None, clipped
    return region, mm, "ultrasound_regions", clipped


def _spacing_pair(value) -> tuple[float, float] | None:
    try:
        row, col = float(value[0]), float(value[1])
    except (TypeError, ValueError, IndexError):
        return None
    return (col, row)  # (x, y)


def _pixel_spacing(ds, plausible: tuple[float, float], warnings_: list[str], radiograph: bool):
    """(mm_per_pixel, source) from Pixel Spacing (or, for radiographs, Imager Pixel Spacing), when plausible."""
    lo, hi = plausible
    found_placeholder = False
    for keyword, source in (("PixelSpacing", "pixel_spacing"), ("ImagerPixelSpacing", "imager_pixel_spacing")):
        if keyword == "ImagerPixelSpacing" and not radiograph:
            continue
        value = _get(ds, keyword)
        if value is None:
            continue
        pair = _spacing_pair(value)
        if pair is None:
            warnings_.append(f"{keyword} is malformed: ignored")
            continue
        if pair == (1.0, 1.0):
            warnings_.append(f"{keyword} [1, 1] is a placeholder, not a calibration: no physical spacing")
            found_placeholder = True
            continue
        if not all(math.isfinite(v) and lo <= v <= hi for v in pair):
            warnings_.append(f"{keyword} {pair[1]:.4g} x {pair[0]:.4g} mm is implausible for this image: ignored")
            continue
        if keyword == "ImagerPixelSpacing":
            factor = _get(ds, "EstimatedRadiographicMagnificationFactor")
            try:
                factor = float(factor) if factor is not None else None
            except (TypeError, ValueError):
                factor = None
            if factor and 1.0 <= factor <= 2.0:
                pair = (pair[0] / factor, pair[1] / factor)
                warnings_.append("spacing from Imager Pixel Spacing corrected by the estimated magnification factor")
            else:
                warnings_.append("spacing from Imager Pixel Spacing (detector plane, not corrected for magnification)")
        return pair, source
    if radiograph and not found_placeholder and _get(ds, "PixelSpacing") is None \
            and _get(ds, "ImagerPixelSpacing") is None:
        warnings_.append("no Pixel Spacing: no physical spacing")
    return None, None


def _frame_time_ms(ds, warnings_: list[str]) -> float | None:
    def ok(value) -> float | None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) and 0.1 <= value <= 10000.0 else None

    value = ok(_get(ds, "FrameTime"))
    if value is not None:
        return value
    vector = _get(ds, "FrameTimeVector")
    if vector is not None:
        try:
            times = [float(v) for v in vector][1:]  # the first entry is 0 by definition
        except (TypeError, ValueError):
            times = []
        value = ok(sum(times) / len(times)) if times else None
        if value is not None:
            return value
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = ok(_get(ds, keyword))
        if rate is not None:
            return 1000.0 / rate
    warnings_.append(f"no Frame Time in this cine: timing unknown ({_DEFAULT_FPS:g} fps assumed where needed)")
    return None


# -- pixels ---------------------------------------------------------------------------------------------------
def _decode_all(ds, image: DicomImage, max_frames: int | None = None) -> np.ndarray:
    total = image.n_frames if max_frames is None else min(image.n_frames, max_frames)
    out = np.empty((total, image.rows, image.columns, 3), dtype=np.uint8)
    count = 0
    for frame in _iter_decoded(ds, image, max_frames=total):
        out[count] = frame
        count += 1
    if count < total:
        raise _fail(image.name, f"truncated pixel data ({count} of {total} frames decoded)")
    return out


def _iter_decoded(ds, image: DicomImage, max_frames: int | None = None) -> Iterator[np.ndarray]:
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import as_pixel_options

    name = image.name
    tsyntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise _fail(name, f"transfer syntax {_syntax_name(str(tsyntax))} is not supported") from None
    if not decoder.is_available:
        raise _fail(name, f"no decoder installed for {_syntax_name(str(tsyntax))} "
                          "(install pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg, pylibjpeg-rle)")
    total = image.n_frames if max_frames is None else min(image.n_frames, max_frames)
    window = None
    frames = None
    for index in range(total):
        # the quiet block never spans a ``yield``: warning filters and logger levels are process-wide state
        with quiet_dicom_libraries():
            try:
                if frames is None:
                    frames = decoder.iter_array(ds, indices=range(total), raw=False, validate=True,
                                                **as_pixel_options(ds))
                array, meta = next(frames)
                bgr, window = _to_bgr(array, str(meta.get("photometric_interpretation", image.photometric)),
                                      ds, image, window)
            except StopIteration:
                raise _fail(name, f"truncated pixel data ({index} of {total} frames decoded)") from None
            except DataError:
                raise
            except MemoryError:
                raise _fail(name, "not enough memory to decode the pixel data") from None
            except Exception as exc:  # noqa: BLE001 - decoder errors are data errors for the user
                raise _fail(name, f"pixel data cannot be decoded ({type(exc).__name__})") \
                    from None
        yield bgr


def _to_bgr(array: np.ndarray, photometric: str, ds, image: DicomImage, window):
    """One decoded frame -> (H, W, 3) uint8 BGR. ``window`` carries a percentile window across frames."""
    photometric = photometric.upper().strip()
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if photometric == "PALETTE COLOR":
        return _palette_to_bgr(array, ds, image), window
    if array.ndim == 2:
        if not photometric.startswith("MONOCHROME"):
            photometric = "MONOCHROME2"
        gray, window = _gray_to_uint8(array, ds, photometric, image, window)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), window
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"unexpected decoded frame shape {array.shape}")
    if photometric in ("YBR_FULL", "YBR_FULL_422", "YBR_ICT"):  # decoders normally convert these already
        from pydicom.pixels import convert_color_space

        array = convert_color_space(array, "YBR_FULL", "RGB")
    elif photometric in ("YBR_PARTIAL_420", "YBR_PARTIAL_422"):
        array = _ybr_partial_to_rgb(array)
    rgb = _to_uint8_colour(array, ds)
    return np.ascontiguousarray(rgb[:, :, ::-1]), window


def _to_uint8_colour(array: np.ndarray, ds) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    stored = int(_get(ds, "BitsStored", 16) or 16)
    shift = max(0, stored - 8)
    return np.clip(array.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def _ybr_partial_to_rgb(array: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 limited range (Y 16-235, Cb/Cr 16-240) -> RGB uint8."""
    y = array[:, :, 0].astype(np.float32) - 16.0
    cb = array[:, :, 1].astype(np.float32) - 128.0
    cr = array[:, :, 2].astype(np.float32) - 128.0
    r = 1.164 * y + 1.596 * cr
    g = 1.164 * y - 0.392 * cb - 0.813 * cr
    b = 1.164 * y + 2.017 * cb
    return np.clip(np.stack([r, g, b], axis=2) + 0.5, 0, 255).astype(np.uint8)


def _palette_to_bgr(array: np.ndarray, ds, image: DicomImage) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(array, ds)
    if rgb.dtype != np.uint8:
        try:
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except (AttributeError, IndexError, TypeError, ValueError):
            bits = 16
        if bits > 8 and int(rgb.max(initial=0)) <= 255:
            note = "palette declared 16-bit but holds 8-bit entries: used as 8-bit"
            if note not in image.warnings:
                image.warnings.append(note)
            rgb = rgb.astype(np.uint8)
        else:
            rgb = np.clip(rgb.astype(np.int64) >> max(0, bits - 8), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _gray_to_uint8(array: np.ndarray, ds, photometric: str, image: DicomImage, window):
    """Modality LUT, then VOI LUT / window (or a percentile window), to uint8; MONOCHROME1 inverted."""
    if array.dtype == np.uint8 and "WindowCenter" not in ds and "VOILUTSequence" not in ds \
            and "ModalityLUTSequence" not in ds and float(_get(ds, "RescaleSlope", 1) or 1) == 1.0:
        gray = array
    else:
        gray, window = _window(array, ds, image, window)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return np.ascontiguousarray(gray), window


def _window(array: np.ndarray, ds, image: DicomImage, window):
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(array, ds).astype(np.float32)
    voi = _get(ds, "VOILUTSequence")
    if voi:
        from pydicom.pixels import apply_voi_lut

        try:
            lut = np.asarray(voi[0].LUTData, dtype=np.float64)
            mapped = apply_voi_lut(values.astype(array.dtype) if values.dtype != array.dtype else values, ds,
                                   prefer_lut=True).astype(np.float32)
            lo, hi = float(lut.min()), float(lut.max())
            if hi > lo:
                return np.clip((mapped - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8), window
        except Exception:  # noqa: BLE001 - fall back to the window or percentiles
            _note(image, "VOI LUT unreadable: used the window or a percentile window instead")
    center, width = _first(_get(ds, "WindowCenter")), _first(_get(ds, "WindowWidth"))
    if center is not None and width is not None and width >= 1.0:
        function = str(_get(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if function == "SIGMOID":
            out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "LINEAR_EXACT":
            out = ((values - center) / width + 0.5) * 255.0
        else:
            out = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), window
    if window is None:  # one window for the whole cine, from its first frame, so frames stay comparable
        lo, hi = np.percentile(values, [0.5, 99.5])
        if hi <= lo:
            hi = lo + 1.0
        window = (float(lo), float(hi))
        _note(image, "no VOI window in the file: used the 0.5-99.5 percentile range of the first frame")
    lo, hi = window
    return np.clip((values - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8), window


def _first(value) -> float | None:
    if value is None:
        return None
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            value = value[0]
        value = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return value if math.isfinite(value) else None


def _note(image: DicomImage, text: str) -> None:
    if text not in image.warnings:
        image.warnings.append(text)
