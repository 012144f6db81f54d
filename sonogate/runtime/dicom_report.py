"""DICOM out: a TID 1500 Measurement Report (Comprehensive SR) of the measurements with their calibrated bounds,
and a Secondary Capture of the annotated frame, both linked to the source image (torch-free: highdicom + pydicom).

    from sonogate.runtime.dicom_report import AlgorithmInfo, ReportGroup, write_sr, write_sc, read_sr
    algorithm = AlgorithmInfo.from_session(session)
    group = ReportGroup.from_event(event)                    # one sweep: values, bounds, recommendation
    write_sr("out/x.sr.dcm", source_image, [group], algorithm)
    write_sc("out/x.sc.dcm", source_image, annotated_bgr, algorithm)
    read_sr("out/x.sr.dcm")                                  # -> plain dict (values, units, bounds, ...)

SR content tree (TID 1500 "Imaging Measurement Report", built with highdicom):

    Language, Observation context (device observer: sonogate, UID derived from the bundle sha256)
    Procedure reported: (363679005, SCT, "Imaging procedure")
    Imaging Measurements
      Measurement Group (TID 1501), one per sweep / per hip
        Tracking identifier + UID, Finding site (24136001, SCT, "Hip joint") with laterality when known
        Algorithm identification (TID 4019): name "sonogate", version, parameters "bundle_sha256=...",
          "calibration_sha256=...", "delta=...", "rule=...", "device=...", "task=..."
        Source image reference (the analysed image; its SOP class/instance as stored)
        NUM (99SONOGATE, ALPHA | BETA | COVERAGE | AI | CE) value + UCUM unit (deg, %)
          HAS PROPERTIES NUM (99SONOGATE, LOWER-BOUND | UPPER-BOUND) in the same unit  (TID 310/311)
          HAS PROPERTIES NUM (99SONOGATE, DELTA) unit 1: the conformal miscoverage level of that bound
        CODE (121075, DCM, "Recommendation") = (99SONOGATE, US-SUFFICIENT | XRAY-RECOMMENDED | ...)
        CODE (99SONOGATE, GRAF-TYPE) = (99SONOGATE, GRAF-IA ...)   when a Graf type is known
        TEXT (121106, DCM, "Comment") = the reason (e.g. "alpha_deg bound 45.2 < 60")

No standard code exists for the Graf angles, the femoral-head coverage or a conformal bound, so they use the
private coding scheme ``99SONOGATE`` declared in the Coding Scheme Identification Sequence. The report is
PRELIMINARY and UNVERIFIED (an algorithm's output, not a signed report).

Linkage: same Study Instance UID and patient / study modules as the source (copied by highdicom for PACS
filing), new Series and SOP Instance UIDs for the SR and for the SC, the source referenced in the SR evidence
(Current Requested Procedure Evidence Sequence) and in each measurement group. Patient data are copied into the
DICOM objects only; nothing here logs or prints them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sonogate import __version__
from sonogate.data.dicom import quiet_dicom_libraries as _quiet
from sonogate.errors import SonogateError
from sonogate.measurements import BY_NAME

SCHEME = "99SONOGATE"
SCHEME_NAME = "sonogate private codes"
MANUFACTURER = "sonogate"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902

# name -> (code value, code meaning)
MEASUREMENT_CODES: dict[str, tuple[str, str]] = {
    "alpha_deg": ("ALPHA", "Graf alpha angle"),
    "beta_deg": ("BETA", "Graf beta angle"),
    "coverage_pct": ("COVERAGE", "Femoral head coverage"),
    "ai_deg": ("AI", "Acetabular index"),
    "ce_deg": ("CE", "Centre-edge angle"),
}
LOWER_BOUND = ("LOWER-BOUND", "One-sided conformal lower bound")
UPPER_BOUND = ("UPPER-BOUND", "One-sided conformal upper bound")
DELTA = ("DELTA", "Conformal miscoverage level")
GRAF_TYPE = ("GRAF-TYPE", "Graf hip type")
RECOMMENDATION_CODES: dict[str, tuple[str, str]] = {
    "us_sufficient": ("US-SUFFICIENT", "Ultrasound sufficient"),
    "xray_recommended": ("XRAY-RECOMMENDED", "X-ray recommended"),
    "insufficient_image": ("INSUFFICIENT-IMG", "Image not usable"),
    "no_recommendation": ("NO-RECOMMEND", "No recommendation"),
    "no_xray_model": ("NO-XRAY-MODEL", "No X-ray model"),
}
UNIT_MEANINGS = {"deg": "degree", "%": "percent", "1": "no units"}


class ReportError(SonogateError):
    """An SR or SC cannot be built or written (one line)."""


@dataclass
class AlgorithmInfo:
    """Who measured: goes into AlgorithmIdentificationSequence-equivalent TID 4019 items and the SR header."""

    bundle_sha256: str
    calibration_sha256: str | None = None
    version: str = __version__
    name: str = "sonogate"
    device: str | None = None
    task: str | None = None
    delta: float | None = None
    rule: str | None = None

    @classmethod
    def from_session(cls, session) -> AlgorithmInfo:
        calibration = getattr(session, "calibration", None)
        return cls(
            bundle_sha256=session.bundle.bundle_hash,
            calibration_sha256=session.calibration_sha256,
            device=session.device_name,
            task=session.bundle.task or None,
            delta=None if calibration is None else float(calibration.delta),
            rule=None if calibration is None else str(calibration.rule),
        )

    def parameters(self) -> list[str]:
        values = [f"bundle_sha256={self.bundle_sha256}",
                  f"calibration_sha256={self.calibration_sha256 or 'none'}"]
        if self.delta is not None:
            values.append(f"delta={self.delta:g}")
        if self.rule:
            values.append(f"rule={self.rule}")
        if self.device:
            values.append(f"device={self.device}")
        if self.task:
            values.append(f"task={self.task}")
        return values

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "bundle_sha256": self.bundle_sha256,
                "calibration_sha256": self.calibration_sha256, "device": self.device, "task": self.task,
                "delta": self.delta, "rule": self.rule}


@dataclass
class ReportGroup:
    """One measurement group: a sweep (ultrasound) or one hip (radiograph).

    ``measurements``: {name: {"value", "lower_bound", "upper_bound"}} as in the event dict (None = absent or
    infinite). ``laterality``: "R", "L" or None (unknown: no finding-site laterality is claimed).
    """

    label: str
    measurements: dict[str, dict[str, float | None]] = field(default_factory=dict)
    recommendation: str | None = None
    reason: str | None = None
    graf_type: str | None = None
    laterality: str | None = None
    delta: float | None = None
    frame_numbers: list[int] | None = None  # 1-based frames of the source the group refers to (None: whole)

    @classmethod
    def from_event(cls, event: dict, label: str = "sweep", laterality: str | None = None,
                   delta: float | None = None) -> ReportGroup:
        return cls(label=label, measurements=dict(event.get("measurements") or {}),
                   recommendation=event.get("recommendation"), reason=event.get("reason"),
                   graf_type=event.get("graf_type"), laterality=laterality, delta=delta)


# -- helpers --------------------------------------------------------------------------------------------------
def _finite(value) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def _ucum(unit: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=unit, scheme_designator="UCUM", meaning=UNIT_MEANINGS.get(unit, unit))


def _graf_code(graf: str):
    value = "GRAF-" + re.sub(r"[^A-Z0-9]+", "-", graf.upper()).strip("-")
    return _code(value[:16], f"Graf type {graf}")


def _laterality_code(laterality: str | None):
    from pydicom.sr.codedict import codes

    return {"R": codes.SCT.Right, "L": codes.SCT.Left}.get(laterality or "")


def _uid(seed: str | None = None) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(prefix=None, entropy_srcs=[seed]) if seed else generate_uid(prefix=None)


_PATIENT_STUDY_DEFAULTS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                           "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
_REFERENCE_KEYWORDS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "Rows", "Columns", "SamplesPerPixel", "PixelRepresentation", "BitsAllocated", "NumberOfFrames",
    "PhotometricInterpretation", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
    "DeviceSerialNumber", "InstitutionName", "InstitutionalDepartmentName", "StationName",
    "IssuerOfPatientID", "OtherPatientIDsSequence", "PatientAge", "PatientWeight", "PatientSize",
    "StudyDescription", "PatientComments", "EthnicGroup",
)


def reference_dataset(image) -> Any:
    """The source's header reduced to what the SR / SC need for linkage (patient, study, series, instance,
    image geometry), with empty type-2 patient/study attributes where the source lacks them."""
    from pydicom.dataset import Dataset

    header = image.header
    if header is None:
        raise ReportError(f"{image.name}: no DICOM header to link the report to")
    ref = Dataset()
    for keyword in _REFERENCE_KEYWORDS + _PATIENT_STUDY_DEFAULTS:
        if keyword in header:
            try:
                ref.add(header[keyword])
            except Exception:  # noqa: BLE001, S112 - a malformed optional element is dropped, not fatal
                continue
    for keyword in _PATIENT_STUDY_DEFAULTS:
        if keyword not in ref:
            setattr(ref, keyword, None)
    if not ref.get("PatientSex") or str(ref.PatientSex) not in ("M", "F", "O"):
        ref.PatientSex = None  # highdicom validates the enumerated value; empty is valid (type 2)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not ref.get(keyword):
            raise ReportError(f"{image.name}: source has no {keyword}, the report could not be linked to it")
    if not ref.get("SOPClassUID"):
        raise ReportError(f"{image.name}: source has no SOP Class UID, the report could not reference it")
    return ref


def _check_destination(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create output folder {path.parent}: {exc.strerror or exc}") from None


# -- SR -------------------------------------------------------------------------------------------------------
def task_measurement_codes(task: str | None = None) -> dict[str, tuple[str, str, str]]:
    """name -> (code value, code meaning, UCUM unit) of the measurements the task specs declare with a DICOM code
    (``MeasurementSpec.dicom_code``, unit from the spec); every registered task's when ``task`` is None. The two
    original tasks' codes are the same as ``MEASUREMENT_CODES``; a new task brings its own without touching this
    module."""
    from sonogate.core.registry import get_task, task_ids
    from sonogate.core.task import TaskSpecError

    try:
        specs = [get_task(task)] if task else [get_task(t) for t in task_ids()]
    except TaskSpecError:
        return {}
    out: dict[str, tuple[str, str, str]] = {}
    for spec in specs:
        for measurement in spec.measurements:
            if measurement.dicom_code and measurement.dicom_code[1] == SCHEME:
                out.setdefault(measurement.name, (str(measurement.dicom_code[0]), str(measurement.dicom_code[2]),
                                                  UCUM_OF_UNIT.get(measurement.unit, measurement.unit or "1")))
    return out


# a spec's unit -> its UCUM code where they differ
UCUM_OF_UNIT = {"": "1", "%": "%", "deg": "deg", "g/cm2": "g/cm2", "mm": "mm"}


def _measurement(name: str, values: dict, algorithm_id, delta: float | None, task: str | None = None):
    import highdicom as hd
    from highdicom.sr import NumContentItem, RelationshipTypeValues

    spec = BY_NAME.get(name)
    declared = task_measurement_codes(task).get(name) if spec is None else None
    if declared is not None:  # a task's own measurement: its spec's code, meaning and unit
        code_value, meaning, unit = declared
    else:
        code_value, meaning = MEASUREMENT_CODES.get(name, (name.upper()[:16], name))
        unit = spec.ucum if spec else "1"
    value = _finite(values.get("value"))
    if value is None:
        return None
    bound_items = []
    for key, (bound_code, bound_meaning) in (("lower_bound", LOWER_BOUND), ("upper_bound", UPPER_BOUND)):
        bound = _finite(values.get(key))
        if bound is not None:
            bound_items.append(NumContentItem(name=_code(bound_code, bound_meaning), value=bound, unit=_ucum(unit),
                                              relationship_type=RelationshipTypeValues.HAS_PROPERTIES))
    properties = None
    if bound_items:
        if delta is not None:
            bound_items.append(NumContentItem(name=_code(*DELTA), value=float(delta), unit=_ucum("1"),
                                              relationship_type=RelationshipTypeValues.HAS_PROPERTIES))
        properties = hd.sr.MeasurementProperties(
            measurement_statistical_properties=hd.sr.MeasurementStatisticalProperties(
                values=bound_items,
                description="one-sided split-conformal bound on the true value after affine correction; "
                            "P(true value beyond the bound) <= delta over the calibration population",
            ))
    return hd.sr.Measurement(name=_code(code_value, meaning), value=value, unit=_ucum(unit),
                             algorithm_id=algorithm_id, properties=properties)


def build_sr(image, groups: Sequence[ReportGroup], algorithm: AlgorithmInfo, *,
             series_instance_uid: str | None = None, sop_instance_uid: str | None = None):
    """A highdicom ComprehensiveSR (TID 1500) for ``groups`` measured on ``image`` (a DicomImage)."""
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from highdicom.sr import RelationshipTypeValues, TextContentItem
    from pydicom.sr.codedict import codes

    if not groups:
        raise ReportError(f"{image.name}: nothing to report")
    ref = reference_dataset(image)
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version,
                                                 parameters=algorithm.parameters(), manufacturer=MANUFACTURER)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_uid(algorithm.bundle_sha256), name=algorithm.name, manufacturer_name=MANUFACTURER,
        model_name=f"{algorithm.name} {algorithm.version}")
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.cid270.Device,
                                                      observer_identifying_attributes=device))
    source = hd.sr.SourceImageForMeasurementGroup.from_source_image(ref)
    measurement_groups = []
    for index, group in enumerate(groups, start=1):
        measurements = [m for m in (_measurement(name, values or {}, algorithm_id, group.delta, algorithm.task)
                                    for name, values in group.measurements.items()) if m is not None]
        evaluations = []
        if group.recommendation:
            value, meaning = RECOMMENDATION_CODES.get(group.recommendation,
                                                      (group.recommendation.upper()[:16], group.recommendation))
            evaluations.append(hd.sr.QualitativeEvaluation(name=codes.DCM.Recommendation,
                                                           value=_code(value, meaning)))
        if group.graf_type and group.graf_type != "?":
            evaluations.append(hd.sr.QualitativeEvaluation(name=_code(*GRAF_TYPE), value=_graf_code(group.graf_type)))
        laterality = _laterality_code(group.laterality)
        finding_site = hd.sr.FindingSite(anatomic_location=codes.SCT.HipJoint, laterality=laterality)
        source_images = [hd.sr.SourceImageForMeasurementGroup.from_source_image(
            ref, referenced_frame_numbers=group.frame_numbers)] if group.frame_numbers else [source]
        mg = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(), identifier=f"{group.label} {index}"),
            algorithm_id=algorithm_id,
            finding_sites=[finding_site],
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
            source_images=source_images,
        )
        if group.reason:
            mg[0].ContentSequence.append(TextContentItem(
                name=codes.DCM.Comment, value=str(group.reason)[:1024],
                relationship_type=RelationshipTypeValues.CONTAINS))
        measurement_groups.append(mg)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context,
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=measurement_groups,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[ref],
        content=report,
        series_instance_uid=series_instance_uid or _uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or _uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="sonogate measurements (preliminary, unverified)",
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        coding_schemes=[CodingSchemeIdentificationItem(designator=SCHEME, name=SCHEME_NAME)],
    )
    return sr


def _build_and_save(path, image, what: str, build):
    """Build a DICOM object with ``build()`` and save it; any failure is one ReportError line."""
    path = Path(path)
    _check_destination(path)
    try:
        with _quiet():
            dataset = build()
    except SonogateError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ReportError(f"{image.name}: cannot build the {what} ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:160]})") from None
    try:
        dataset.save_as(path, enforce_file_format=True)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
    return dataset


def write_sr(path: str | os.PathLike, image, groups: Sequence[ReportGroup], algorithm: AlgorithmInfo, **kwargs):
    """Build and save the SR; returns the dataset. Raises ReportError (one line)."""
    return _build_and_save(path, image, "structured report", lambda: build_sr(image, groups, algorithm, **kwargs))


# -- SC -------------------------------------------------------------------------------------------------------
def build_sc(image, annotated_bgr: np.ndarray, algorithm: AlgorithmInfo, *, series_instance_uid: str | None = None,
             sop_instance_uid: str | None = None, description: str = "sonogate annotated frame"):
    """A highdicom SCImage of the annotated frame (RGB, uncompressed) in the source's study."""
    import highdicom as hd

    if not isinstance(annotated_bgr, np.ndarray) or annotated_bgr.dtype != np.uint8 or annotated_bgr.ndim != 3 \
            or annotated_bgr.shape[2] != 3:
        raise ReportError(f"{image.name}: the annotated frame must be an (H, W, 3) uint8 BGR image")
    ref = reference_dataset(image)
    rgb = np.ascontiguousarray(annotated_bgr[:, :, ::-1])
    orientation = image.patient_orientation if image.patient_orientation and len(image.patient_orientation) == 2 \
        and all(image.patient_orientation) else None
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_instance_uid or _uid(),
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=sop_instance_uid or _uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            patient_orientation=orientation or ("L", "F"),
            series_description=description,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
        )
    except ValueError:
        orientation = None
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_instance_uid or _uid(),
            series_number=SC_SERIES_NUMBER, sop_instance_uid=sop_instance_uid or _uid(), instance_number=1,
            manufacturer=MANUFACTURER, patient_orientation=("L", "F"), series_description=description,
            manufacturer_model_name=algorithm.name, software_versions=algorithm.version)
    if orientation is None:
        # highdicom needs an orientation for the PATIENT coordinate system; the frame has none we know, and
        # Patient Orientation is type 2C (may be empty) for secondary captures: do not invent one.
        sc.PatientOrientation = None
    # General Series Laterality is type 2C (paired body part): the hip is paired, so send it, empty when unknown
    sc.Laterality = image.laterality if image.laterality in ("R", "L") else None
    sc.BurnedInAnnotation = "NO"  # the overlay shows measurements only, no patient-identifying text
    sc.DerivationDescription = (f"{algorithm.name} {algorithm.version} overlay of measurements and recommendation; "
                                f"bundle sha256 {algorithm.bundle_sha256[:16]}")[:1024]
    source_item = _source_image_item(ref)
    sc.SourceImageSequence = [source_item]
    sc.ImageComments = "Not for diagnosis without clinician review (algorithm output, unverified)"
    return sc


def _source_image_item(ref):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = ref.SOPClassUID
    item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
    return item


def write_sc(path: str | os.PathLike, image, annotated_bgr: np.ndarray, algorithm: AlgorithmInfo, **kwargs):
    """Build and save the Secondary Capture; returns the dataset. Raises ReportError (one line)."""
    return _build_and_save(path, image, "secondary capture",
                           lambda: build_sc(image, annotated_bgr, algorithm, **kwargs))


# -- reading our SR back --------------------------------------------------------------------------------------
def _concept(item) -> tuple[str, str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodingSchemeDesignator), str(code.CodeValue), str(code.CodeMeaning)


def _walk(items):
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def read_sr(path_or_dataset) -> dict[str, Any]:
    """Parse a sonogate SR back into a plain dict (no patient data):

    {"sop_class_uid", "study_instance_uid", "series_instance_uid", "sop_instance_uid", "template",
     "evidence": [{"study_instance_uid", "series_instance_uid", "sop_class_uid", "sop_instance_uid"}],
     "groups": [{"tracking_id", "laterality", "recommendation", "graf_type", "reason", "source_images": [...],
                 "algorithm": {"name", "version", "parameters": {...}},
                 "measurements": {name: {"value", "unit", "lower_bound", "upper_bound", "delta"}}}]}
    """
    import pydicom

    ds = path_or_dataset if isinstance(path_or_dataset, pydicom.Dataset) else pydicom.dcmread(path_or_dataset)
    names = {code: name for name, (code, _, _) in task_measurement_codes().items()}
    names.update({code: name for name, (code, _) in MEASUREMENT_CODES.items()})
    recommendations = {code: name for name, (code, _) in RECOMMENDATION_CODES.items()}
    groups = []
    for item in _walk(ds.get("ContentSequence")):
        if item.ValueType != "CONTAINER" or _concept(item)[:2] != ("DCM", "125007"):
            continue
        group: dict[str, Any] = {"tracking_id": None, "laterality": None, "recommendation": None,
                                 "graf_type": None, "reason": None, "source_images": [],
                                 "algorithm": {"name": None, "version": None, "parameters": {}},
                                 "measurements": {}}
        for child in item.ContentSequence:
            scheme, code, _meaning = _concept(child)
            kind = child.ValueType
            if kind == "TEXT" and (scheme, code) == ("DCM", "112039"):
                group["tracking_id"] = str(child.TextValue)
            elif kind == "TEXT" and (scheme, code) == ("DCM", "121106"):
                group["reason"] = str(child.TextValue)
            elif kind == "TEXT" and (scheme, code) == ("DCM", "111001"):
                group["algorithm"]["name"] = str(child.TextValue)
            elif kind == "TEXT" and (scheme, code) == ("DCM", "111003"):
                group["algorithm"]["version"] = str(child.TextValue)
            elif kind == "TEXT" and (scheme, code) == ("DCM", "111002"):
                key, _, value = str(child.TextValue).partition("=")
                group["algorithm"]["parameters"][key] = value
            elif kind == "CODE" and (scheme, code) == ("SCT", "363698007"):  # finding site
                for modifier in child.get("ContentSequence", []):
                    if modifier.ValueType == "CODE" and _concept(modifier)[:2] == ("SCT", "272741003"):
                        value = modifier.ConceptCodeSequence[0]
                        group["laterality"] = {"24028007": "R", "7771000": "L"}.get(str(value.CodeValue))
            elif kind == "CODE" and (scheme, code) == ("DCM", "121075"):
                value = child.ConceptCodeSequence[0]
                group["recommendation"] = recommendations.get(str(value.CodeValue), str(value.CodeMeaning))
            elif kind == "CODE" and (scheme, code) == (SCHEME, GRAF_TYPE[0]):
                group["graf_type"] = str(child.ConceptCodeSequence[0].CodeMeaning).removeprefix("Graf type ")
            elif kind == "IMAGE":
                reference = child.ReferencedSOPSequence[0]
                group["source_images"].append({
                    "sop_class_uid": str(reference.ReferencedSOPClassUID),
                    "sop_instance_uid": str(reference.ReferencedSOPInstanceUID),
                    "frames": [int(v) for v in reference.get("ReferencedFrameNumber") or []] or None})
            elif kind == "NUM" and scheme == SCHEME and code in names:
                group["measurements"][names[code]] = _read_num(child)
        groups.append(group)
    evidence = []
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []) or []:
        for series in study.ReferencedSeriesSequence:
            for instance in series.ReferencedSOPSequence:
                evidence.append({"study_instance_uid": str(study.StudyInstanceUID),
                                 "series_instance_uid": str(series.SeriesInstanceUID),
                                 "sop_class_uid": str(instance.ReferencedSOPClassUID),
                                 "sop_instance_uid": str(instance.ReferencedSOPInstanceUID)})
    templates = ds.get("ContentTemplateSequence") or []
    return {
        "sop_class_uid": str(ds.SOPClassUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "template": str(templates[0].TemplateIdentifier) if templates else None,
        "title": _concept(ds)[2] if "ConceptNameCodeSequence" in ds else None,
        "evidence": evidence,
        "groups": groups,
    }


def _read_num(item) -> dict[str, Any]:
    measured = item.MeasuredValueSequence[0]
    out: dict[str, Any] = {"value": float(measured.NumericValue),
                           "unit": str(measured.MeasurementUnitsCodeSequence[0].CodeValue),
                           "lower_bound": None, "upper_bound": None, "delta": None}
    for prop in item.get("ContentSequence", []) or []:
        if prop.ValueType != "NUM":
            continue
        scheme, code, _ = _concept(prop)
        if scheme != SCHEME:
            continue
        value = float(prop.MeasuredValueSequence[0].NumericValue)
        key = {LOWER_BOUND[0]: "lower_bound", UPPER_BOUND[0]: "upper_bound", DELTA[0]: "delta"}.get(code)
        if key:
            out[key] = value
            if key != "delta":
                out[f"{key}_unit"] = str(prop.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
    return out
