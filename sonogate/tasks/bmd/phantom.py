"""Synthetic adult AP pelvis radiographs with exact femoral-neck BMD labels per hip (task ``bmd``, issue 21).

Numpy + OpenCV only (no torch, no scipy). One radiograph shows both hips; each hip gets one label row.

Population (``population_bmd``). Femoral-neck areal BMD (g/cm2) is drawn per patient from a normal distribution
whose mean and SD depend on age (20-90 y, uniform) and sex (60 % women), interpolated between decade values in line
with the NHANES III femoral-neck reference of non-Hispanic white adults (Looker et al. 1998): young women 0.858 +-
0.120, young men 0.934 +- 0.137, a slow decline to 50 y and a faster one after (women faster). The table below is
tuned so that about 18 % of women aged 65-90 are osteoporotic (T <= -2.5) and about 6 % of men. Each hip is the
patient's value plus its own N(0, 0.03) g/cm2, so right and left are correlated (r ~ 0.96) but not identical. The
pelvis is mineralised in proportion to (patient BMD)^0.4 x N(1, 0.08): bone density is systemic, but the pelvis only
loosely follows the femoral neck. T-score (``t_score``) = (BMD - 0.858) / 0.120 for both sexes: the NHANES III young
white female femoral-neck reference that DXA software uses for the femoral neck per ISCD. Constants:
``YOUNG_FEMALE_MEAN_G_CM2``, ``YOUNG_FEMALE_SD_G_CM2``, ``OSTEOPOROSIS_T_SCORE``.

Bone model (2.5D: exact X-ray path lengths through 3D quadrics, mm). Femur frame: origin at the femoral-head centre,
X lateral, Y cranial, Z anterior; the X-ray travels along Z. The proximal femur is a union (largest path length) of
a spherical head (thin subchondral shell), an elliptic-cylinder neck (in-plane semi-axis ``a``, depth semi-axis
``b``; inferior (calcar) cortex thicker than the superior one, so the medullary ellipse sits off centre) that flares
into the trochanteric region, a cylindrical shaft with a thick cortex and a medullary canal, and ellipsoidal greater
and lesser trochanters. Projected mineral (g/cm2) = (CORTICAL_DENSITY_G_CM3 x cortical path + trabecular density x
trabecular path x texture) / 10.

What the drawn BMD sets. A bone-quality score q = T-score + N(0, ``QUALITY_NOISE_SD`` = 0.5) (so morphology predicts
BMD well but not perfectly) sets the neck cortex (inferior, superior, anterior/posterior), the shaft cortex, the
head shell and a Singh-like trabecular grade 1..6: at high BMD the principal and secondary compressive and tensile
groups and the greater-trochanter group are all drawn, dense and continuous; at low BMD the secondary groups go
first, then the principal tensile group, and the remaining trabeculae are thin and broken. The trabecular mineral
density (g/cm3) is then solved so that the areal density of the neck box equals the drawn BMD exactly (and the
cortices are scaled if that density would leave ``TRABECULAR_RANGE_G_CM3``).

The label (``neck_bmd_g_cm2``, ``dxa_neck_bmd``). As DXA defines it: bone mineral content / projected bone area in
the femoral-neck box, a rectangle ``NECK_BOX_WIDTH_MM`` (15 mm) along the neck axis, starting ``NECK_BOX_GAP_MM``
lateral of the head, and reaching ``NECK_BOX_MARGIN_MM`` beyond both neck edges; bone pixels are those with bone in
the ray. It is computed in the DXA position (neck parallel to the detector, as the DXA protocol's internal rotation
intends), so the label is the patient's DXA value, whereas each radiograph is projected at its own hip rotation (a
confounder). In the box only the neck cylinder carries bone (trochanter and shaft are cut back where they would
reach into it), so BMD = (rho_c (pi a b - pi a' b') + rho_t pi a' b') / (2 a) with a', b' the medullary semi-axes;
the texture is normalised to a path-weighted mean of 1 inside the box.

Confounders, all drawn independently of BMD (``sample_acquisition``): AP soft-tissue thickness 170-310 mm and
subcutaneous fat 8-60 mm (body habitus: attenuation and scatter), kVp (device protocol +- jitter: changes bone vs
soft-tissue contrast through the energy dependence of hydroxyapatite and water attenuation), mAs 8-50 relative to
the automatic exposure control's nominal 20 (quantum noise, and brightness on fixed-window devices), scatter (grid
and thickness), dynamic-range compression, detector response (gamma, gain, offset jitter around the device's),
internal/external hip rotation per side (projected neck length, width and apparent density), leg abduction, pelvic
shift, tilt and field of view, bowel gas, quantum and electronic noise, and six devices ``"A"``..``"F"``
(``DEVICES``) that differ in kVp, grid (scatter), unsharpness, noise, windowing (percentile, anchored or fixed, see
``BmdDevice``), display curve and edge enhancement. ``HELD_OUT_DEVICES`` ("E", "F") are the external sites: train on
``TRAIN_DEVICES``.

Landmarks and box per hip are recorded in image pixels (x right, y down; the patient's right hip is on the image
left): ``box_cx``, ``box_cy`` (centre), ``box_w`` (along the neck axis), ``box_h`` (across the neck),
``box_angle_deg`` (direction of the neck axis from the head toward the shaft, atan2(dy, dx) in image axes), and
``lm_<name>_x/_y`` for ``LANDMARK_NAMES``. ``in_field`` is 0 when the head or the neck box is not entirely in the
image (``with_hip_out_of_field`` makes such cases for refusal tests).

Public API: ``sample_subject``, ``sample_acquisition``, ``follow_up``, ``with_hip_out_of_field``,
``render_radiograph``, ``dxa_neck_bmd``, ``neck_bmd_g_cm2``, ``population_bmd``, ``t_score``, ``write_bmd_phantom``,
``phantom_main``.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from sonogate.errors import DataError
from sonogate.phantom.writer import progress_bar

YOUNG_FEMALE_MEAN_G_CM2 = 0.858  # NHANES III femoral neck, white women 20-29 y
YOUNG_FEMALE_SD_G_CM2 = 0.120
OSTEOPOROSIS_T_SCORE = -2.5
CORTICAL_DENSITY_G_CM3 = 1.05  # hydroxyapatite-equivalent mineral density of cortical bone
TRABECULAR_RANGE_G_CM3 = (0.04, 0.55)
NECK_BOX_WIDTH_MM = 15.0
NECK_BOX_GAP_MM = 1.0
NECK_BOX_MARGIN_MM = 3.0
AGE_RANGE = (20.0, 90.0)
FEMALE_FRACTION = 0.6
SIDE_SD_G_CM2 = 0.03  # per-hip deviation from the patient's value
QUALITY_NOISE_SD = 0.5  # T-score units: how loosely cortex and trabecular grade follow the BMD
BMD_RANGE_G_CM2 = (0.30, 1.50)
SIDES = ("R", "L")
LANDMARK_NAMES = ("head_center", "neck_medial", "neck_lateral", "greater_trochanter", "lesser_trochanter",
                  "shaft_distal")

# (age in years, mean g/cm2), (age, SD): femoral neck, in line with NHANES III (see the module docstring).
_FEMALE_MEAN = ((20, 0.858), (30, 0.855), (40, 0.835), (50, 0.802), (60, 0.752), (70, 0.705), (80, 0.658),
                (90, 0.612))
_MALE_MEAN = ((20, 0.934), (30, 0.915), (40, 0.880), (50, 0.852), (60, 0.820), (70, 0.790), (80, 0.757),
              (90, 0.722))
_FEMALE_SD = ((20, 0.120), (90, 0.108))
_MALE_SD = ((20, 0.137), (90, 0.124))


@dataclass(frozen=True)
class BmdDevice:
    """One radiography site's acquisition chain.

    kind: "DR" or "CR". kvp, kvp_sd: protocol tube voltage and its jitter. scatter_factor: scatter-to-primary ratio
    per 20 cm of tissue (grid quality). blur_mm: detector and focal-spot unsharpness (Gaussian sigma at the object
    plane). quantum_efficiency: counts relative to the reference detector. electronic_noise: counts. window_mode:
    "percentile" (the window spans the ``window_pct`` percentiles of the anatomy, as a histogram-analysing
    workstation does: it follows the bone density too), "anchored" (from the anatomy's ``window_pct[0]`` percentile,
    ``window_width`` log units wide) or "fixed" (``window_width`` wide around the anatomy's median shifted with the
    exposure: mAs, habitus and kVp change brightness). gamma, sigmoid (S-curve steepness, 0 = none), gain, offset:
    display curve. edge_enhance: unsharp-mask amount (about 3 mm scale). equalize: fraction of the low-frequency log
    signal removed (dynamic-range compression).
    """

    name: str
    kind: str
    kvp: float
    kvp_sd: float
    scatter_factor: float
    blur_mm: float
    quantum_efficiency: float
    electronic_noise: float
    window_mode: str
    window_pct: tuple[float, float]
    gamma: float
    sigmoid: float
    gain: float
    offset: float
    edge_enhance: float
    equalize: float
    window_width: float


DEVICES: dict[str, BmdDevice] = {
    "A": BmdDevice("A", "DR", 75.0, 3.0, 0.35, 0.35, 1.0, 2.0, "anchored", (3.0, 0.0), 1.00, 0.0, 1.00, 0.00, 0.35,
                   0.85, 4.0),
    "B": BmdDevice("B", "DR", 81.0, 3.0, 0.30, 0.30, 1.2, 2.0, "anchored", (2.0, 0.0), 0.85, 3.5, 0.97, 0.02, 0.70,
                   0.90, 4.4),
    "C": BmdDevice("C", "CR", 70.0, 4.0, 0.45, 0.60, 0.6, 4.0, "fixed", (0.0, 0.0), 1.15, 0.0, 1.00, 0.00, 0.15,
                   0.80, 3.6),
    "D": BmdDevice("D", "DR", 85.0, 4.0, 1.50, 0.40, 0.9, 3.0, "anchored", (5.0, 0.0), 1.05, 0.0, 0.95, 0.03, 0.40,
                   0.82, 3.8),
    "E": BmdDevice("E", "CR", 73.0, 4.0, 0.55, 0.75, 0.5, 5.0, "fixed", (0.0, 0.0), 0.90, 4.5, 1.00, 0.04, 0.00,
                   0.78, 3.8),
    "F": BmdDevice("F", "DR", 90.0, 3.0, 0.35, 0.25, 1.4, 1.5, "percentile", (0.2, 99.0), 0.75, 0.0, 1.02, -0.02,
                   1.00, 0.92, 0.0),
}
HELD_OUT_DEVICES = ("E", "F")
TRAIN_DEVICES = tuple(name for name in DEVICES if name not in HELD_OUT_DEVICES)

LABEL_COLUMNS = (
    "image", "patient_id", "side", "bmd_g_cm2", "t_score", "age", "sex", "osteoporosis", "in_field", "visit",
    "interval_years", "device", "kvp", "mas", "soft_tissue_mm", "fat_mm", "fov_mm", "pixel_mm", "shift_x_mm",
    "shift_y_mm", "tilt_deg", "internal_rotation_deg", "neck_rotation_deg", "leg_abduction_deg", "detector_gamma",
    "detector_gain", "detector_offset", "neck_width_mm", "neck_depth_mm", "cortex_inferior_mm",
    "cortex_superior_mm", "shaft_cortex_mm", "trabecular_g_cm3", "singh_grade", "neck_shaft_angle_deg",
    "apparent_bmd_g_cm2", "box_cx", "box_cy", "box_w", "box_h", "box_angle_deg",
) + tuple(f"lm_{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy")


@dataclass
class HipBone:
    """One proximal femur: geometry (mm, degrees) and material, all fixed by ``bmd_g_cm2`` and the anatomy draw.

    neck_a_mm / neck_b_mm: in-plane / depth semi-axes of the neck. cortex_*_mm: neck cortex inferior,
    superior, anterior-posterior. trabecular_g_cm3: solved so that ``neck_bmd_g_cm2(hip) == bmd_g_cm2``.
    quality_noise: the draw that decouples morphology from BMD (kept so a follow-up re-derives the same way).
    """

    side: str
    bmd_g_cm2: float
    head_radius_mm: float
    neck_a_mm: float
    neck_b_mm: float
    neck_length_mm: float
    neck_shaft_deg: float
    anteversion_deg: float
    shaft_radius_mm: float
    quality_noise: float
    texture_seed: int
    cortex_inferior_mm: float = 0.0
    cortex_superior_mm: float = 0.0
    cortex_ap_mm: float = 0.0
    shaft_cortex_mm: float = 0.0
    head_shell_mm: float = 0.0
    trabecular_g_cm3: float = 0.0
    singh_grade: float = 0.0


@dataclass
class Acquisition:
    """How one radiograph was taken (all independent of BMD).

    device: key of ``DEVICES``. kvp, mas. soft_tissue_mm: AP body thickness at the hips. fat_mm:
    subcutaneous fat. fov_mm: side of the square field at the object plane. shift_x_mm / shift_y_mm: pelvis
    centre offset (image right / patient cranial). tilt_deg: in-plane obliquity. internal_rotation_deg,
    leg_abduction_deg: per side. detector_gamma / _gain / _offset: this exposure's display response.
    noise_scale: multiplies the quantum noise. gas_seed: bowel gas. out_of_field: "" or the side moved out.
    """

    device: str
    kvp: float
    mas: float
    soft_tissue_mm: float
    fat_mm: float
    fov_mm: float
    shift_x_mm: float
    shift_y_mm: float
    tilt_deg: float
    internal_rotation_deg: dict[str, float]
    leg_abduction_deg: dict[str, float]
    detector_gamma: float
    detector_gain: float
    detector_offset: float
    noise_scale: float
    gas_seed: int
    out_of_field: str = ""


@dataclass
class BmdSubject:
    """One patient at one visit: age (years), sex ("F"/"M"), hips (side -> ``HipBone``), inter_head_mm (distance
    of the head centres), pelvis_density (mineral scale of the pelvis), acquisition, visit (0 first image, 1
    second), interval_years since the first image, bmd_rate_g_cm2_yr (this patient's change per year)."""

    age: float
    sex: str
    hips: dict[str, HipBone]
    inter_head_mm: float
    pelvis_density: float
    acquisition: Acquisition
    visit: int = 0
    interval_years: float = 0.0
    bmd_rate_g_cm2_yr: float = 0.0


@dataclass
class BmdImage:
    """A rendered radiograph: image (size x size uint8, bone white), hips (one label dict per side, R first, keys
    as ``LABEL_COLUMNS`` minus image / patient_id), subject (what was drawn)."""

    image: np.ndarray
    hips: list[dict]
    subject: BmdSubject = field(repr=False)


# ----------------------------------------------------------------------------------------------------------
# Population


def _interp(table, x: float) -> float:
    xs, ys = zip(*table)
    return float(np.interp(x, xs, ys))


def population_bmd(age: float, sex: str) -> tuple[float, float]:
    """Femoral-neck BMD mean and SD (g/cm2) for ``age`` (years) and ``sex`` ("F" or "M")."""
    if sex not in ("F", "M"):
        raise DataError(f"sex must be 'F' or 'M', got {sex!r}")
    if sex == "F":
        return _interp(_FEMALE_MEAN, age), _interp(_FEMALE_SD, age)
    return _interp(_MALE_MEAN, age), _interp(_MALE_SD, age)


def t_score(bmd_g_cm2):
    """T-score against the NHANES III young white female femoral-neck reference (both sexes, per ISCD):
    (BMD - 0.858) / 0.120. Input: g/cm2 (number or array); output of the same kind."""
    if np.ndim(bmd_g_cm2):
        return (np.asarray(bmd_g_cm2, float) - YOUNG_FEMALE_MEAN_G_CM2) / YOUNG_FEMALE_SD_G_CM2
    return (float(bmd_g_cm2) - YOUNG_FEMALE_MEAN_G_CM2) / YOUNG_FEMALE_SD_G_CM2


# ----------------------------------------------------------------------------------------------------------
# Bone material from BMD


def _medullary_axes(hip: HipBone, scale: float = 1.0) -> tuple[float, float, float]:
    """Medullary (trabecular) ellipse of the neck: semi-axes a', b' and its superior offset (mm)."""
    inf, sup, ap = hip.cortex_inferior_mm * scale, hip.cortex_superior_mm * scale, hip.cortex_ap_mm * scale
    return hip.neck_a_mm - (inf + sup) / 2.0, hip.neck_b_mm - ap, (inf - sup) / 2.0


def _box_bmd(a_mm: float, b_mm: float, a_in: float, b_in: float, trabecular: float) -> float:
    """Areal density (g/cm2) of an elliptic neck of constant cross-section in the DXA position."""
    a, b, ai, bi = a_mm / 10.0, b_mm / 10.0, a_in / 10.0, b_in / 10.0
    cortical_area, medullary_area = math.pi * (a * b - ai * bi), math.pi * ai * bi
    return (CORTICAL_DENSITY_G_CM3 * cortical_area + trabecular * medullary_area) / (2.0 * a)


def neck_bmd_g_cm2(hip: HipBone) -> float:
    """Areal BMD (g/cm2) of the neck box in the DXA position, from the cross-section geometry and material."""
    a_in, b_in, _ = _medullary_axes(hip)
    return _box_bmd(hip.neck_a_mm, hip.neck_b_mm, a_in, b_in, hip.trabecular_g_cm3)


def _set_material(hip: HipBone) -> HipBone:
    """Derive cortices, Singh grade and trabecular density from ``hip.bmd_g_cm2`` (see the module docstring)."""
    q = (hip.bmd_g_cm2 - YOUNG_FEMALE_MEAN_G_CM2) / YOUNG_FEMALE_SD_G_CM2 + hip.quality_noise
    size = math.sqrt(hip.neck_a_mm / 16.0)
    hip.cortex_inferior_mm = float(np.clip(2.6 * (1 + 0.16 * q), 1.0, 4.8) * size)
    hip.cortex_superior_mm = float(np.clip(0.9 * (1 + 0.28 * q), 0.25, 2.2))
    hip.cortex_ap_mm = float(np.clip(1.3 * (1 + 0.20 * q), 0.4, 2.6))
    hip.shaft_cortex_mm = float(np.clip(5.5 * (1 + 0.13 * q), 2.5, 8.5) * hip.shaft_radius_mm / 13.5)
    hip.head_shell_mm = float(np.clip(1.2 * (1 + 0.15 * q), 0.5, 2.0))
    hip.singh_grade = float(np.clip(4.3 + 1.0 * q, 1.0, 6.0))

    def trabecular_for(scale: float) -> float:
        a_in, b_in, _ = _medullary_axes(hip, scale)
        cortical = _box_bmd(hip.neck_a_mm, hip.neck_b_mm, a_in, b_in, 0.0)
        per_trabecular = _box_bmd(hip.neck_a_mm, hip.neck_b_mm, a_in, b_in, 1.0) - cortical
        return (hip.bmd_g_cm2 - cortical) / per_trabecular

    lo, hi = TRABECULAR_RANGE_G_CM3
    scale = 1.0
    if not lo <= trabecular_for(1.0) <= hi:
        # Too much (or too little) cortex for this BMD and neck size: scale the cortices until the trabecular
        # density reaches the nearest bound (trabecular_for decreases as the cortex thickens).
        target = lo if trabecular_for(1.0) < lo else hi
        low, high = 0.05, 3.0
        for _ in range(60):
            mid = 0.5 * (low + high)
            if trabecular_for(mid) > target:
                low = mid
            else:
                high = mid
        scale = 0.5 * (low + high)
        hip.cortex_inferior_mm *= scale
        hip.cortex_superior_mm *= scale
        hip.cortex_ap_mm *= scale
    hip.trabecular_g_cm3 = float(trabecular_for(1.0))
    return hip


# ----------------------------------------------------------------------------------------------------------
# Sampling


def _check_device(device) -> str | None:
    if device is None:
        return None
    name = str(device).strip().upper()
    if name not in DEVICES:
        raise DataError(f"unknown BMD phantom device {device!r} (use one of {', '.join(DEVICES)})")
    return name


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise DataError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def sample_acquisition(rng: np.random.Generator, device: str | None = None) -> Acquisition:
    """Draw how a radiograph is taken, independently of the patient's bone. ``device``: pin one of ``DEVICES``
    (else uniform over all six). Output: ``Acquisition``."""
    rng = _check_rng(rng)
    name = _check_device(device) or str(rng.choice(list(DEVICES)))
    dev = DEVICES[name]
    return Acquisition(
        device=name,
        kvp=float(np.clip(rng.normal(dev.kvp, dev.kvp_sd), 60.0, 100.0)),
        mas=float(math.exp(rng.uniform(math.log(8.0), math.log(50.0)))),
        soft_tissue_mm=float(rng.uniform(170.0, 310.0)),
        fat_mm=float(rng.uniform(8.0, 60.0)),
        fov_mm=float(rng.uniform(330.0, 400.0)),
        shift_x_mm=float(rng.normal(0.0, 10.0)),
        shift_y_mm=float(rng.normal(0.0, 12.0)),
        tilt_deg=float(np.clip(rng.normal(0.0, 2.0), -6.0, 6.0)),
        internal_rotation_deg={s: float(np.clip(rng.normal(10.0, 10.0), -20.0, 30.0)) for s in SIDES},
        leg_abduction_deg={s: float(np.clip(rng.normal(0.0, 3.0), -8.0, 8.0)) for s in SIDES},
        detector_gamma=float(dev.gamma * rng.normal(1.0, 0.05)),
        detector_gain=float(dev.gain * rng.normal(1.0, 0.04)),
        detector_offset=float(dev.offset + rng.normal(0.0, 0.025)),
        noise_scale=float(rng.uniform(0.8, 1.25)),
        gas_seed=int(rng.integers(0, 2**31 - 1)),
    )


def sample_subject(rng: np.random.Generator, device: str | None = None) -> BmdSubject:
    """Draw one adult (age, sex, both femora with their BMD) and one acquisition. ``device``: pin one of
    ``DEVICES`` ("A".."F"), else uniform. Output: ``BmdSubject`` (first visit)."""
    rng = _check_rng(rng)
    device = _check_device(device)
    sex = "F" if rng.random() < FEMALE_FRACTION else "M"
    age = float(rng.uniform(*AGE_RANGE))
    mean, sd = population_bmd(age, sex)
    patient_bmd = mean + sd * float(rng.standard_normal())
    male = sex == "M"
    # Patient anatomy (both sides share it, with a little asymmetry).
    head = rng.normal(25.0 if male else 22.5, 1.2)
    neck_a = rng.normal(17.3 if male else 15.4, 1.0)
    neck_b = rng.normal(13.8 if male else 12.4, 0.9)
    neck_len = rng.normal(57.0 if male else 52.0, 3.5)
    nsa = float(np.clip(rng.normal(129.0, 5.0), 116.0, 142.0))
    shaft = rng.normal(14.3 if male else 13.0, 0.8)
    hips = {}
    for side in SIDES:
        h = float(np.clip(head + rng.normal(0, 0.3), 19.0, 29.0))
        bone = HipBone(
            side=side,
            bmd_g_cm2=float(np.clip(patient_bmd + rng.normal(0.0, SIDE_SD_G_CM2), *BMD_RANGE_G_CM2)),
            head_radius_mm=h,
            neck_a_mm=float(np.clip(neck_a + rng.normal(0, 0.3), 12.5, 21.0)),
            neck_b_mm=float(np.clip(neck_b + rng.normal(0, 0.3), 10.0, 17.0)),
            neck_length_mm=float(max(neck_len + rng.normal(0, 1.0), h + 27.0)),
            neck_shaft_deg=float(np.clip(nsa + rng.normal(0, 1.5), 114.0, 144.0)),
            anteversion_deg=float(np.clip(rng.normal(13.0, 7.0), -5.0, 35.0)),
            shaft_radius_mm=float(np.clip(shaft + rng.normal(0, 0.3), 10.5, 17.0)),
            quality_noise=float(rng.normal(0.0, QUALITY_NOISE_SD)),
            texture_seed=int(rng.integers(0, 2**31 - 1)),
        )
        hips[side] = _set_material(bone)
    return BmdSubject(
        age=age, sex=sex, hips=hips,
        inter_head_mm=float(rng.normal(186.0 if male else 178.0, 7.0)),
        pelvis_density=float(np.clip((patient_bmd / 0.86) ** 0.4 * rng.normal(1.0, 0.08), 0.5, 1.5)),
        acquisition=sample_acquisition(rng, device),
        bmd_rate_g_cm2_yr=float(rng.normal(-0.004 if age < 50 else -0.008, 0.007)),
    )


def follow_up(subject: BmdSubject, rng: np.random.Generator, interval_years: float,
              device: str | None = None) -> BmdSubject:
    """The same patient ``interval_years`` later (0 = a repeat exposure on the same day): same anatomy and
    trabecular layout, BMD changed by the patient's yearly rate (+- a little per side), a new acquisition.
    ``device``: pin one (else the first visit's device, or another one in 30 % of follow-ups)."""
    rng = _check_rng(rng)
    if not (isinstance(interval_years, (int, float)) and 0.0 <= float(interval_years) <= 20.0):
        raise DataError(f"interval_years must be within 0..20, got {interval_years!r}")
    device = _check_device(device)
    if device is None:
        device = subject.acquisition.device if (interval_years == 0 or rng.random() < 0.7) else None
    hips = {}
    for side, hip in subject.hips.items():
        change = (subject.bmd_rate_g_cm2_yr + rng.normal(0.0, 0.002)) * float(interval_years)
        bmd = float(np.clip(hip.bmd_g_cm2 + change, *BMD_RANGE_G_CM2))
        hips[side] = _set_material(replace(hip, bmd_g_cm2=bmd))
    return replace(subject, age=subject.age + float(interval_years), hips=hips,
                   acquisition=sample_acquisition(rng, device), visit=subject.visit + 1,
                   interval_years=float(interval_years))


def with_hip_out_of_field(subject: BmdSubject, side: str) -> BmdSubject:
    """A copy of ``subject`` positioned so that hip ``side`` ("R" or "L") lies outside the field of view (the
    other hip stays in it): a bad case for refusal tests. The labels then carry ``in_field`` 0 for that hip."""
    if side not in SIDES:
        raise DataError(f"side must be 'R' or 'L', got {side!r}")
    acq = subject.acquisition
    # Move the pelvis sideways until the named head, its medial edge included, lies beyond the image edge.
    head_x = -(0.5 * acq.fov_mm + max(h.head_radius_mm for h in subject.hips.values()) + 15.0)
    shift = head_x + subject.inter_head_mm / 2.0
    if side == "L":
        shift = -shift
    return replace(subject, acquisition=replace(acq, shift_x_mm=float(shift), out_of_field=side))


# ----------------------------------------------------------------------------------------------------------
# Femur model (femur frame: origin head centre, X lateral, Y cranial, Z anterior; mm)

_ANATOMIC_SHAFT_ADDUCTION_DEG = 7.0  # the femoral shaft leans medially toward the knee in an AP view
# Relative widening of the neck from the box to the shaft (in-plane, depth) and the shape of that widening.
_NECK_FLARE_A, _NECK_FLARE_B, _NECK_FLARE_POWER = 0.75, 0.35, 1.3
_TEXTURE_RES_MM = 0.4
_GT_OFFSET = np.array([12.0, 8.0, -4.0])  # greater-trochanter centre from the neck-shaft junction (13.5 mm shaft)
_GT_SEMI = np.array([10.0, 20.0, 15.0])
_SHAFT_TOP_MM = -12.0  # top of the shaft cylinder relative to the neck-shaft junction (the neck's end covers it)


def _neck_frame(hip: HipBone) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neck axis u (head -> shaft), superior transverse axis e1 and depth axis e2 in the DXA position."""
    nsa = math.radians(hip.neck_shaft_deg)
    u = np.array([math.sin(nsa), math.cos(nsa), 0.0])
    e1 = np.array([-math.cos(nsa), math.sin(nsa), 0.0])
    return u, e1, np.array([0.0, 0.0, 1.0])


def _box_extent(hip: HipBone) -> tuple[float, float, float]:
    """Neck box along the axis from s0 to s1 (mm from the head centre), half-height across the neck (mm)."""
    s0 = hip.head_radius_mm + NECK_BOX_GAP_MM
    return s0, s0 + NECK_BOX_WIDTH_MM, hip.neck_a_mm + NECK_BOX_MARGIN_MM


def _neck_ends(hip: HipBone) -> tuple[float, float, float]:
    """Axial coordinates (mm) where the neck starts to flare, where the flare is widest and where the rounded
    end of the neck cylinder closes (inside the shaft)."""
    _, s1, _ = _box_extent(hip)
    peak = hip.neck_length_mm - 0.2 * hip.shaft_radius_mm
    return s1 + 2.0, peak, peak + 0.9 * hip.shaft_radius_mm


def _neck_profile(hip: HipBone, s):
    """Scale of the neck cross-section (a, b) at axial coordinate ``s`` (mm): 1 up to the flare, widening toward
    the shaft, then a rounded cap."""
    s_flare, s_peak, s_end = _neck_ends(hip)
    s = np.asarray(s, float)
    frac = np.clip((s - s_flare) / (s_peak - s_flare), 0.0, 1.0) ** _NECK_FLARE_POWER
    cap = np.sqrt(np.clip(1.0 - (np.maximum(s - s_peak, 0.0) / (s_end - s_peak)) ** 2, 0.0, 1.0))
    return (1.0 + _NECK_FLARE_A * frac) * cap, (1.0 + _NECK_FLARE_B * frac) * cap


def _rot_y(phi_deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(phi_deg)), math.sin(math.radians(phi_deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _quadric_chord(X, Y, centre, axes, semi):
    """Path length (mm) of rays along Z at (X, Y) through the solid sum_i (p_i / semi_i)^2 <= 1, where p_i is the
    coordinate along row i of ``axes`` from ``centre``; ``semi`` may hold inf (a cylinder's axis). Also returns
    each ray's midpoint coordinate along every axis (for axial limits)."""
    inv = np.array([0.0 if math.isinf(s) else 1.0 / (s * s) for s in semi])
    k = axes[:, 2]
    p = [axes[i, 0] * (X - centre[0]) + axes[i, 1] * (Y - centre[1]) - axes[i, 2] * centre[2] for i in range(3)]
    quad_a = float(np.dot(inv, k * k))
    half_b = sum(inv[i] * k[i] * p[i] for i in range(3) if inv[i] > 0)
    c = sum(inv[i] * p[i] * p[i] for i in range(3) if inv[i] > 0) - 1.0
    disc = half_b * half_b - quad_a * c
    chord = 2.0 * np.sqrt(np.maximum(disc, 0.0)) / quad_a
    t_mid = -half_b / quad_a
    return chord.astype(np.float32), [p[i] + t_mid * k[i] for i in range(3)]


def _window(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, radius: float):
    """Index window of an affine point grid (X, Y) that holds every point within ``radius`` of (cx, cy), or None
    when no point does (a cheap bound, so that each solid is evaluated only near itself)."""
    if X.ndim != 2 or min(X.shape) < 2:
        return (slice(None), slice(None))
    jac = np.array([[X[0, 1] - X[0, 0], X[1, 0] - X[0, 0]], [Y[0, 1] - Y[0, 0], Y[1, 0] - Y[0, 0]]], float)
    det = abs(float(np.linalg.det(jac)))
    if det < 1e-12:
        return (slice(None), slice(None))
    col, row = np.linalg.solve(jac, [cx - X[0, 0], cy - Y[0, 0]])
    reach = radius / math.sqrt(det) * max(1.0, float(np.linalg.cond(jac))) + 2.0
    r0, r1 = max(0, math.floor(row - reach)), min(X.shape[0], math.ceil(row + reach) + 1)
    c0, c1 = max(0, math.floor(col - reach)), min(X.shape[1], math.ceil(col + reach) + 1)
    if r1 <= r0 or c1 <= c0:
        return None
    return (slice(r0, r1), slice(c0, c1))


def _windowed_chord(X, Y, centre, axes, semi) -> np.ndarray:
    """``_quadric_chord`` of a bounded solid, evaluated only in the window around it (zero elsewhere)."""
    out = np.zeros(X.shape, np.float32)
    win = _window(X, Y, float(centre[0]), float(centre[1]), float(max(semi)))
    if win is not None:
        out[win] = _quadric_chord(X[win], Y[win], centre, axes, semi)[0]
    return out


def _ellipse_chord(p1, p2, k1: float, k2: float, a, b):
    """Path length of rays through an elliptic cylinder: transverse coordinates p1, p2 (mm), the ray direction's
    components k1, k2 on the two transverse axes, semi-axes a, b (arrays allowed)."""
    ia, ib = 1.0 / (a * a), 1.0 / (b * b)
    quad_a = k1 * k1 * ia + k2 * k2 * ib
    cross = p1 * k2 - p2 * k1
    disc = quad_a - cross * cross * ia * ib
    return (2.0 * np.sqrt(np.maximum(disc, 0.0)) / quad_a).astype(np.float32)


def _shaft_paths(hip: HipBone, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outer and medullary path lengths (mm) through the shaft at offsets (dx, dy) from the neck-shaft junction."""
    # 0 at the diaphysis (60 mm below the junction), 1 at the junction: the metaphysis is wider, its cortex thinner.
    meta = np.clip((dy + 60.0) / 50.0, 0.0, 1.0)
    radius = hip.shaft_radius_mm * (1.0 + 0.12 * meta)
    cortex = hip.shaft_cortex_mm * (1.0 - 0.55 * meta)
    top, cap = _SHAFT_TOP_MM, 18.0
    rounding = np.sqrt(np.clip(1.0 - (np.maximum(dy - top, 0.0) / cap) ** 2, 0.0, 1.0))
    r_out = radius * rounding
    r_in = np.maximum(radius - cortex, 0.0) * rounding
    outer = 2.0 * np.sqrt(np.maximum(r_out * r_out - dx * dx, 0.0))
    inner = 2.0 * np.sqrt(np.maximum(r_in * r_in - dx * dx, 0.0))
    return outer.astype(np.float32), inner.astype(np.float32)


def _neck_paths(hip: HipBone, X, Y, u, e1, e2) -> tuple[np.ndarray, np.ndarray]:
    """Outer and medullary path lengths (mm) through the neck: an elliptic cylinder along ``u`` (rotated frame)
    that flares toward the shaft and ends in a rounded cap; its medullary ellipse sits superior of centre because
    the inferior (calcar) cortex is the thicker one."""
    a, b = hip.neck_a_mm, hip.neck_b_mm
    p1 = e1[0] * X + e1[1] * Y
    p2 = e2[0] * X + e2[1] * Y
    pu = u[0] * X + u[1] * Y
    k1, k2 = e1[2], e2[2]
    quad_a = k1 * k1 / (a * a) + k2 * k2 / (b * b)
    t_mid = -(p1 * k1 / (a * a) + p2 * k2 / (b * b)) / quad_a
    s_axial = pu + t_mid * u[2]
    _, _, s_end = _neck_ends(hip)
    scale_a, scale_b = _neck_profile(hip, s_axial)
    on_neck = (s_axial >= 0.3 * hip.head_radius_mm) & (s_axial < s_end)
    a_s, b_s = np.maximum(a * scale_a, 0.05), np.maximum(b * scale_b, 0.05)
    outer = np.where(on_neck, _ellipse_chord(p1, p2, k1, k2, a_s, b_s), 0.0)
    a_in0, b_in0, offset = _medullary_axes(hip)
    inner = np.where(on_neck, _ellipse_chord(p1 - offset * np.minimum(scale_a, 1.0), p2, k1, k2,
                                             np.maximum(a_s - (a - a_in0), 0.05),
                                             np.maximum(b_s - (b - b_in0), 0.05)), 0.0)
    return outer.astype(np.float32), inner.astype(np.float32)


def _femur_paths(hip: HipBone, X: np.ndarray, Y: np.ndarray, phi_deg: float, shaft_only: bool = False):
    """Outer (bone) and inner (medullary) path lengths (mm) at femur-frame points (X, Y) with the femur rotated
    by ``phi_deg`` about the vertical axis through the head centre (0 = DXA position, neck parallel to the
    detector; positive = the head turned anterior, i.e. external rotation), and the DXA-position X of each
    point (for the texture). ``shaft_only``: the points lie below the lesser trochanter (faster)."""
    rot = _rot_y(phi_deg)
    cos_phi = math.cos(math.radians(phi_deg))
    if shaft_only:
        junction = rot @ (hip.neck_length_mm * _neck_frame(hip)[0])
        outer, inner = _shaft_paths(hip, X - junction[0], Y - junction[1])
        return outer, inner, X / cos_phi
    u0, e10, e20 = _neck_frame(hip)
    u, e1, e2 = rot @ u0, rot @ e10, rot @ e20
    a = hip.neck_a_mm
    s0, s1, half = _box_extent(hip)
    _, _, s_end = _neck_ends(hip)
    junction = rot @ (hip.neck_length_mm * u0)
    # Head: sphere with a subchondral shell.
    sphere = np.eye(3)
    head_out = _windowed_chord(X, Y, np.zeros(3), sphere, [hip.head_radius_mm] * 3)
    head_in = _windowed_chord(X, Y, np.zeros(3), sphere, [hip.head_radius_mm - hip.head_shell_mm] * 3)
    # Neck (evaluated only in a window around it).
    neck_out = np.zeros(X.shape, np.float32)
    neck_in = np.zeros(X.shape, np.float32)
    middle = 0.5 * s_end * u
    win = _window(X, Y, float(middle[0]), float(middle[1]), 0.5 * s_end + 1.8 * a)
    if win is not None:
        neck_out[win], neck_in[win] = _neck_paths(hip, X[win], Y[win], u, e1, e2)
    # Shaft: vertical cylinder through the junction (a rotation about Y only moves its axis), widening and
    # thinning its cortex toward the metaphysis, closed by a rounded top that the neck's end covers.
    shaft_out, shaft_in = _shaft_paths(hip, X - junction[0], Y - junction[1])
    # Trochanters: ellipsoids fixed to the shaft, thin shells.
    axes = rot.T  # rows: the femur's X, Y, Z axes after rotation
    gt_c = rot @ (hip.neck_length_mm * u0 + _GT_OFFSET * hip.shaft_radius_mm / 13.5)
    gt_semi = _GT_SEMI * hip.shaft_radius_mm / 13.5
    gt_out = _windowed_chord(X, Y, gt_c, axes, gt_semi)
    gt_in = _windowed_chord(X, Y, gt_c, axes, gt_semi - 1.3)
    lt_c = rot @ (hip.neck_length_mm * u0 + np.array([-hip.shaft_radius_mm + 1.0, -30.0, -8.0]))
    lt_semi = np.array([9.0, 13.0, 9.0])
    lt_out = _windowed_chord(X, Y, lt_c, axes, lt_semi)
    lt_in = _windowed_chord(X, Y, lt_c, axes, lt_semi - 1.2)
    # Calcar: fills the medial angle between the neck's inferior border, the lesser trochanter and the shaft.
    calcar_c = rot @ (hip.neck_length_mm * u0 + np.array([-hip.shaft_radius_mm + 4.0, -20.0, 0.0]))
    calcar_semi = np.array([8.0, 17.0, 11.0])
    lt_out = np.maximum(lt_out, _windowed_chord(X, Y, calcar_c, axes, calcar_semi))
    lt_in = np.maximum(lt_in, _windowed_chord(X, Y, calcar_c, axes, calcar_semi - 2.0))
    # The DXA neck box holds neck bone only: cut the other parts back where they would reach into it (femur-local
    # coordinates of the DXA position; a point of the coronal plane moves to X cos(phi) under the rotation).
    xl = X / cos_phi
    sl = u0[0] * xl + u0[1] * Y
    wl = e10[0] * xl + e10[1] * Y
    keep = ~((sl >= s0) & (sl <= s1) & (np.abs(wl) <= half))
    outer = np.maximum(neck_out, keep * np.maximum.reduce([head_out, shaft_out, gt_out, lt_out]))
    inner = np.maximum(neck_in, keep * np.maximum.reduce([head_in, shaft_in, gt_in, lt_in]))
    return outer.astype(np.float32), np.minimum(inner, outer).astype(np.float32), xl


def _bezier(p0, p1, p2, n: int = 24) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t * t * np.asarray(p2)


def _trabecular_canvas(hip: HipBone) -> tuple[np.ndarray, float, float]:
    """Trabecular modulation (dimensionless, >= 0) in the femur frame of the DXA position, normalised to a
    path-weighted mean of 1 in the neck box. Output: canvas, x0 (mm of column 0), y1 (mm of row 0)."""
    tex = np.random.default_rng(hip.texture_seed)
    res = _TEXTURE_RES_MM
    u, e1, _ = _neck_frame(hip)
    L, a, rh, rs = hip.neck_length_mm, hip.neck_a_mm, hip.head_radius_mm, hip.shaft_radius_mm
    junction = L * u
    x0, x1 = -rh - 4.0, junction[0] + rs + 16.0
    y0, y1 = junction[1] - 120.0, rh + 4.0
    cols, rows = math.ceil((x1 - x0) / res), math.ceil((y1 - y0) / res)
    grade = hip.singh_grade

    def half_height(s: float) -> float:
        return a * float(_neck_profile(hip, s)[0])

    def neck(s: float, w: float) -> np.ndarray:
        return s * u[:2] + w * e1[:2]

    def head(theta_deg: float, r: float = 0.9) -> np.ndarray:
        t = math.radians(theta_deg)
        return rh * r * np.array([math.cos(t), math.sin(t)])

    lines = np.zeros((rows, cols), np.uint8)
    drop = float(np.clip(0.5 - 0.085 * grade, 0.0, 0.45))

    def draw(points: np.ndarray, weight: float, thick_mm: float) -> None:
        if weight <= 0.02:
            return
        jitter = tex.normal(0.0, 0.35, points.shape)
        pts = points + jitter
        px = np.stack([(pts[:, 0] - x0) / res, (y1 - pts[:, 1]) / res], axis=1)
        value = round(255 * min(weight, 1.0))
        thick = max(1, round(thick_mm / res))
        seg = 4  # points per drawn piece: broken trabeculae at low grade
        for i in range(0, len(px) - 1, seg):
            if tex.random() < drop:
                continue
            piece = np.round(px[i:i + seg + 1] * 16).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(lines, [piece], False, value, thick, cv2.LINE_AA, 4)

    thick = 0.35 + 0.07 * grade
    # Principal compressive group: calcar / inferior neck up into the weight-bearing dome of the head.
    n = round(8 + 1.2 * grade)
    for i in range(n):
        f = i / (n - 1)
        s = L * (0.42 + 0.55 * f)
        p0 = neck(s, -(half_height(s) - 1.2))
        p2 = head(128.0 - 80.0 * f + tex.normal(0, 3))
        draw(_bezier(p0, 0.5 * (p0 + p2) + np.array([-3.0, 0.0]), p2), 0.55 + 0.45 * min(grade - 1, 1.0), thick * 1.3)
    # Principal tensile group: lateral cortex below the greater trochanter, arching over the neck to the head.
    n = round(4 + grade)
    for i in range(n):
        f = i / max(n - 1, 1)
        p0 = np.array([junction[0] + rs - 1.0, junction[1] - 6.0 - 16.0 * f])
        p2 = head(232.0 + 26.0 * f + tex.normal(0, 3), 0.8)
        p1 = neck(0.55 * L, a * (1.7 + 0.5 * f))
        draw(_bezier(p0, p1, p2), float(np.clip(grade - 2.5, 0.0, 1.0)), thick)
    # Secondary compressive: medial cortex of the shaft up toward the greater trochanter.
    for i in range(6):
        f = i / 5
        p0 = np.array([junction[0] - rs + 1.5, junction[1] - 18.0 - 30.0 * f])
        p2 = np.array([junction[0] + rs * (0.2 + 0.4 * f), junction[1] + 14.0 + 6.0 * f])
        draw(_bezier(p0, 0.5 * (p0 + p2) + np.array([2.0, -4.0]), p2), float(np.clip(grade - 3.5, 0.0, 1.0)), thick)
    # Secondary tensile: lateral shaft cortex arching medially into the lower neck.
    for i in range(5):
        f = i / 4
        p0 = np.array([junction[0] + rs - 1.5, junction[1] - 26.0 - 26.0 * f])
        p2 = neck(L * (0.62 + 0.1 * f), -0.3 * a)
        draw(_bezier(p0, np.array([junction[0] - 0.3 * rs, junction[1] - 8.0]), p2),
             float(np.clip(grade - 4.5, 0.0, 1.0)), thick)
    # Greater-trochanter group.
    for i in range(6):
        f = i / 5
        p0 = np.array([junction[0] + rs * (0.1 + 0.6 * f), junction[1] + 2.0])
        p2 = np.array([junction[0] + rs * (0.3 + 0.55 * f), junction[1] + 30.0])
        draw(_bezier(p0, 0.5 * (p0 + p2) + np.array([-2.0, 0.0]), p2), float(np.clip(grade - 4.0, 0.0, 1.0)),
             thick)

    grain = cv2.GaussianBlur(tex.standard_normal((rows, cols)).astype(np.float32), (0, 0), 0.5 / res)
    grain *= 1.0 / max(float(grain.std()), 1e-6)
    base = 0.40 + 0.05 * grade
    canvas = base * np.maximum(1.0 + 0.25 * grain, 0.0) + 0.6 * lines.astype(np.float32) / 255.0
    # Denser head, fading trabeculae down the medullary canal below the lesser trochanter.
    yy = (y1 - (np.arange(rows, dtype=np.float32) + 0.5) * res)[:, None]
    xx = (x0 + (np.arange(cols, dtype=np.float32) + 0.5) * res)[None, :]
    canvas *= np.where(xx * xx + yy * yy < rh * rh, 1.15, 1.0).astype(np.float32)
    fade = np.clip((yy - (junction[1] - 95.0)) / 70.0, 0.0, 1.0)
    canvas *= (0.04 + 0.96 * fade * fade * (3 - 2 * fade)).astype(np.float32)
    canvas = canvas.astype(np.float32)
    # Normalise: medullary-path-weighted mean of the (bilinearly sampled) modulation in the neck box = 1.
    bx, by, _, _ = _box_grid(hip, 0.2)
    _, inner, xl = _femur_paths(hip, bx, by, 0.0)
    sampled = _sample_canvas(canvas, x0, y1, xl, by)
    norm = float((sampled * inner).sum() / max(float(inner.sum()), 1e-9))
    canvas *= np.float32(1.0 / norm)
    return canvas, x0, y1


def _sample_canvas(canvas: np.ndarray, x0: float, y1: float, xl: np.ndarray, yl: np.ndarray) -> np.ndarray:
    """Bilinear samples of a femur-frame canvas at (xl, yl) mm (0 outside)."""
    map_x = ((xl - x0) / _TEXTURE_RES_MM - 0.5).astype(np.float32)
    map_y = ((y1 - yl) / _TEXTURE_RES_MM - 0.5).astype(np.float32)
    return cv2.remap(canvas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def _box_grid(hip: HipBone, pixel_mm: float, phi_deg: float = 0.0):
    """Pixel centres (femur frame X, Y, mm) of a grid aligned with the neck box as projected at ``phi_deg``,
    with the box's projected width and height (mm)."""
    s0, s1, half = _box_extent(hip)
    u0, e10, _ = _neck_frame(hip)
    rot = _rot_y(phi_deg)
    u, e1 = (rot @ u0)[:2], (rot @ e10)[:2]
    width = (s1 - s0) * float(np.hypot(*u))
    height = 2.0 * half * float(np.hypot(*e1))
    ud, ed = u / np.hypot(*u), e1 / np.hypot(*e1)
    centre = 0.5 * (s0 + s1) * u
    n_s = max(1, round(width / pixel_mm))
    n_w = max(1, round(height / pixel_mm))
    ss = (np.arange(n_s) + 0.5) / n_s * width - width / 2
    ww = (np.arange(n_w) + 0.5) / n_w * height - height / 2
    S, W = np.meshgrid(ss, ww)
    X = centre[0] + S * ud[0] + W * ed[0]
    Y = centre[1] + S * ud[1] + W * ed[1]
    return X.astype(np.float32), Y.astype(np.float32), width, height


def _femur_mineral(hip: HipBone, X: np.ndarray, Y: np.ndarray, phi_deg: float, texture,
                   shaft_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Projected mineral (g/cm2) and the bone-path length (mm) at femur-frame points for rotation ``phi_deg``."""
    outer, inner, xl = _femur_paths(hip, X, Y, phi_deg, shaft_only)
    canvas, x0, y1 = texture
    modulation = _sample_canvas(canvas, x0, y1, xl, Y)
    mineral = (CORTICAL_DENSITY_G_CM3 * (outer - inner) + hip.trabecular_g_cm3 * inner * modulation) / 10.0
    return mineral.astype(np.float32), outer


def dxa_neck_bmd(hip: HipBone, pixel_mm: float = 0.1, phi_deg: float = 0.0) -> float:
    """Femoral-neck areal BMD (g/cm2) measured on the rendered bone model the way DXA does: projected mineral
    summed over the bone pixels of the neck box (pixel side ``pixel_mm``) divided by their area. ``phi_deg`` 0
    is the DXA position (equals ``hip.bmd_g_cm2``); other values give the apparent density of a rotated hip."""
    if not (isinstance(pixel_mm, (int, float)) and 0.01 <= float(pixel_mm) <= 2.0):
        raise DataError(f"pixel_mm must be within 0.01..2, got {pixel_mm!r}")
    X, Y, _, _ = _box_grid(hip, float(pixel_mm), phi_deg)
    mineral, outer = _femur_mineral(hip, X, Y, phi_deg, _trabecular_canvas(hip))
    bone = outer > 1e-6
    return float(mineral[bone].mean()) if bone.any() else 0.0


# ----------------------------------------------------------------------------------------------------------
# Radiograph

_SHIFT = 4
_ONE = 1 << _SHIFT
_N_REF = 3000.0  # detector counts under 22 cm of muscle at 20 mAs (reference detector)
_HEAD_LINE_Y = 0.55  # fraction of the field height where the head centres sit at zero shift
_EQUALIZE_SIGMA_MM = 60.0  # scale of the dynamic-range compression (body-scale gradients, not single bones)


def _effective_kev(kvp: float) -> float:
    return 0.42 * kvp + 2.0


def _mu(kev: float) -> tuple[float, float, float]:
    """Linear attenuation of muscle and fat (1/cm) and mass attenuation of hydroxyapatite (cm2/g)."""
    photo = (40.0 / kev) ** 3
    return 1.05 * (0.18 + 0.09 * photo), 0.92 * (0.17 + 0.06 * photo), 0.15 + 0.85 * photo


class _Layout:
    """Maps of one radiograph: patient frame (mm; origin midway between the head centres, x toward the image
    right, y cranial) and femur frames -> image pixels."""

    def __init__(self, subject: BmdSubject, size: int):
        acq = subject.acquisition
        self.size = size
        self.pixel_mm = acq.fov_mm / size
        t = math.radians(acq.tilt_deg)
        ox, oy = 0.5 * acq.fov_mm + acq.shift_x_mm, _HEAD_LINE_Y * acq.fov_mm - acq.shift_y_mm
        # patient (x, y, 1) -> image pixel (col, row, 1)
        rot = np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])
        flip = np.diag([1.0, -1.0, 1.0])
        to_mm = np.array([[1.0, 0.0, ox], [0.0, 1.0, oy], [0.0, 0.0, 1.0]])
        to_px = np.array([[1.0 / self.pixel_mm, 0.0, -0.5], [0.0, 1.0 / self.pixel_mm, -0.5], [0.0, 0.0, 1.0]])
        self.patient_to_image = to_px @ to_mm @ rot @ flip
        self.image_to_patient = np.linalg.inv(self.patient_to_image)
        self.femur_to_image = {}
        for side in SIDES:
            lat = -1.0 if side == "R" else 1.0
            beta = math.radians(acq.leg_abduction_deg[side] - _ANATOMIC_SHAFT_ADDUCTION_DEG)
            tilt = np.array([[math.cos(beta), -math.sin(beta), 0.0], [math.sin(beta), math.cos(beta), 0.0],
                             [0.0, 0.0, 1.0]])
            place = np.array([[lat, 0.0, lat * subject.inter_head_mm / 2.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            self.femur_to_image[side] = self.patient_to_image @ place @ tilt

    def patient_px(self, points) -> np.ndarray:
        pts = np.asarray(points, float).reshape(-1, 2)
        return (pts @ self.patient_to_image[:2, :2].T) + self.patient_to_image[:2, 2]

    def femur_px(self, side: str, points) -> np.ndarray:
        m = self.femur_to_image[side]
        pts = np.asarray(points, float).reshape(-1, 2)
        return (pts @ m[:2, :2].T) + m[:2, 2]


def _fx(points) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _smooth(points, iterations: int = 2, closed: bool = True) -> np.ndarray:
    """Chaikin corner cutting."""
    pts = np.asarray(points, float)
    for _ in range(iterations):
        nxt = np.roll(pts, -1, axis=0)
        cut = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], axis=1).reshape(-1, 2)
        pts = cut if closed else np.vstack([pts[:1], cut[:-2], pts[-1:]])
    return pts


def _draw_pelvis(mineral: np.ndarray, subject: BmdSubject, layout: _Layout) -> None:
    """Add the pelvis, sacrum, lowest lumbar vertebra and the acetabula (g/cm2 hydroxyapatite) to ``mineral``."""
    k = subject.inter_head_mm / 180.0
    dens = subject.pelvis_density
    px_mm = layout.pixel_mm
    scratch = np.zeros_like(mineral)

    def pts(side_sign: float, template) -> np.ndarray:
        arr = np.asarray(template, float) * k
        arr[:, 0] *= side_sign
        return layout.patient_px(arr)

    def shape(points, fill: float, rim: float = 0.0, rim_mm: float = 2.5, holes=()) -> None:
        scratch[:] = 0.0
        cv2.fillPoly(scratch, [_fx(points)], float(fill * dens), cv2.LINE_AA, _SHIFT)
        for hole in holes:
            cv2.fillPoly(scratch, [_fx(hole)], 0.0, cv2.LINE_AA, _SHIFT)
        if rim > 0:
            width = max(1, round(rim_mm / px_mm))
            cv2.polylines(scratch, [_fx(points)], True, float((fill + rim) * dens), width, cv2.LINE_AA, _SHIFT)
            for hole in holes:
                cv2.polylines(scratch, [_fx(hole)], True, float((fill + rim) * dens), width, cv2.LINE_AA, _SHIFT)
        mineral[:] += scratch

    def line(points, value: float, width_mm: float, closed: bool = False) -> None:
        width = max(1, round(width_mm / px_mm))
        scratch[:] = 0.0
        cv2.polylines(scratch, [_fx(points)], closed, float(value * dens), width, cv2.LINE_AA, _SHIFT)
        mineral[:] += scratch

    def ellipse_pts(cx, cy, ax, ay, angle_deg=0.0, start=0.0, stop=360.0, n=48) -> np.ndarray:
        t = np.radians(np.linspace(start, stop, n))
        c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
        x, y = ax * np.cos(t), ay * np.sin(t)
        return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)

    thick_bone = np.zeros_like(mineral)  # supra-acetabular bodies, blurred once below
    for side in SIDES:
        sgn = -1.0 if side == "R" else 1.0
        rh = subject.hips[side].head_radius_mm / k  # template units
        hx = 90.0
        # Iliac wing (thin plate with a cortical rim), thick supra-acetabular body.
        wing = [(100, 24), (112, 40), (117, 52), (126, 64), (137, 80), (141, 98), (135, 116), (119, 128), (96, 134),
                (74, 129), (56, 118), (46, 103), (40, 85), (38, 66), (45, 49), (56, 37), (64, 25), (76, 18)]
        shape(pts(sgn, _smooth(wing)), 0.28, 0.30, 2.5)
        cv2.fillPoly(thick_bone, [_fx(pts(sgn, ellipse_pts(hx - 6, rh + 13, 30, 17)))], float(0.45 * dens),
                     cv2.LINE_AA, _SHIFT)
        # Obturator ring (pubis + ischium) with the foramen, ischial tuberosity.
        ring = [(3, -50), (34, -42), (60, -24), (74, -34), (80, -66), (80, -98), (70, -113), (48, -114), (22, -108),
                (3, -102)]
        foramen = ellipse_pts(44, -76, 21, 16, -25)
        shape(pts(sgn, _smooth(ring)), 0.40, 0.0, holes=[pts(sgn, foramen)])
        line(pts(sgn, foramen), 0.30, 2.4, closed=True)
        line(pts(sgn, _smooth(ring)[:20]), 0.15, 2.0)
        shape(pts(sgn, ellipse_pts(72, -102, 10, 13)), 0.25, 0.2, 2.0)
        # Acetabulum: sourcil, posterior and anterior walls, teardrop; pelvic brim and ilio-ischial line.
        line(pts(sgn, ellipse_pts(hx, 0, rh + 2.6, rh + 2.6, 0, 52, 142, 24)), 0.85, 3.0)
        line(pts(sgn, ellipse_pts(hx + 0.15 * rh, -1.0, 0.95 * rh, 0.97 * rh, 0, -75, 52, 24)), 0.32, 1.6)
        line(pts(sgn, ellipse_pts(hx - 0.1 * rh, 0.35 * rh, 0.92 * rh, 0.95 * rh, 0, 200, 320, 24)), 0.28, 1.6)
        tear = [(hx - rh - 10, 12), (hx - rh - 10, -12), (hx - rh - 6, -19), (hx - rh - 2, -12), (hx - rh - 3, 4)]
        line(pts(sgn, _smooth(tear, 2, closed=False)), 0.6, 2.2)
        line(pts(sgn, _smooth([(40, 66), (50, 30), (57, 6), (58, -14), (49, -32), (30, -44), (6, -50)], 2, False)),
             0.55, 2.6)
        line(pts(sgn, _smooth([(52, 40), (61, 4), (66, -36), (74, -72)], 2, False)), 0.40, 2.0)
        # Sacral ala over the ilium and the lucent sacro-iliac joint line.
        line(pts(sgn, _smooth([(51, 114), (44, 92), (40, 72), (45, 52)], 2, False)), -0.12, 2.5)
    # Sacrum with foramina, coccyx, L5 with pedicles and transverse processes.
    sacrum = [(-54, 120), (54, 120), (48, 96), (40, 70), (28, 40), (14, 14), (5, -2), (-5, -2), (-14, 14), (-28, 40),
              (-40, 70), (-48, 96)]
    shape(pts(1.0, _smooth(sacrum)), 0.30, 0.22, 2.0)
    for y, x in ((100, 24), (78, 22), (56, 19), (36, 15)):
        for sgn in (-1.0, 1.0):
            shape(pts(sgn, ellipse_pts(x, y, 5.0, 4.2)), -0.16)
    shape(pts(1.0, _smooth([(-5, -4), (5, -4), (3, -24), (-3, -24)], 1)), 0.25)
    l5 = [(-27, 130), (27, 130), (29, 160), (-29, 160)]
    shape(pts(1.0, _smooth(l5, 1)), 0.50, 0.40, 2.5)
    for sgn in (-1.0, 1.0):
        shape(pts(sgn, ellipse_pts(16, 150, 5.0, 7.5)), 0.25, 0.2, 1.5)
        line(pts(sgn, [(26, 143), (40, 146), (54, 152)]), 0.35, 7.0)
    l4 = [(-28, 172), (28, 172), (29, 204), (-29, 204)]
    shape(pts(1.0, _smooth(l4, 1)), 0.50, 0.40, 2.5)
    mineral += _lowpass(thick_bone, 5.0 / px_mm, reduce=4)


def _soft_tissue(subject: BmdSubject, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Muscle and fat path lengths (cm) over the image: a trunk of flat-topped (super-elliptic) cross-section with
    a subcutaneous fat layer that splits into two thighs below the hips, minus bowel gas. Computed on a grid a
    third the size (soft tissue is smooth) and resized."""
    acq = subject.acquisition
    size = layout.size
    small = max(32, size // 3)
    step = size / small
    grid = (np.arange(small, dtype=np.float32) + 0.5) * np.float32(step) - 0.5
    cols, rows = np.meshgrid(grid, grid)
    inv = layout.image_to_patient
    x = inv[0, 0] * cols + inv[0, 1] * rows + inv[0, 2]
    y = inv[1, 0] * cols + inv[1, 1] * rows + inv[1, 2]
    half_depth, fat = acq.soft_tissue_mm / 2.0, acq.fat_mm
    width = subject.inter_head_mm / 2.0 + 85.0 + fat + 0.15 * (acq.soft_tissue_mm - 240.0)
    waist = 1.0 - 0.08 * np.clip((y - 60.0) / 100.0, 0.0, 1.0)

    def profile(ratio, flat: bool):
        """Chord fraction of a super-ellipse of exponent 4 (flat) or an ellipse at x / half-width ``ratio``."""
        r2 = ratio * ratio
        if flat:
            return np.sqrt(np.sqrt(np.maximum(1.0 - r2 * r2, 0.0)))
        return np.sqrt(np.maximum(1.0 - r2, 0.0))

    def chords(dx, half_w, half_d, flat: bool = True):
        total = 2.0 * half_d * profile(dx / half_w, flat)
        core_d = max(half_d - fat, 5.0)
        muscle = 2.0 * core_d * profile(dx / (half_w - fat), flat)
        return total, muscle

    trunk_total, trunk_muscle = chords(x, width * waist, half_depth)
    thigh_w = 92.0 + 0.7 * fat + 0.1 * (acq.soft_tissue_mm - 240.0)
    centre = subject.inter_head_mm / 2.0 - 2.0
    thigh_total, thigh_muscle = chords(np.abs(x) - centre, thigh_w, 0.75 * half_depth, flat=False)
    # The perineum joins the thighs up to the ischial tuberosities.
    join = np.clip((y + 190.0) / 60.0, 0.0, 1.0)
    peri_total, peri_muscle = chords(x, 60.0 + fat, 0.45 * half_depth, flat=False)
    thigh_total = np.maximum(thigh_total, join * peri_total)
    thigh_muscle = np.maximum(thigh_muscle, join * peri_muscle)
    blend = np.clip((-50.0 - y) / 110.0, 0.0, 1.0)
    blend = blend * blend * (3 - 2 * blend)
    total = (1 - blend) * trunk_total + blend * thigh_total
    muscle = (1 - blend) * trunk_muscle + blend * thigh_muscle
    # Bowel gas over the upper pelvis.
    gas_rng = np.random.default_rng(acq.gas_seed)
    gas = np.zeros((small, small), np.float32)
    scale = small / size
    for _ in range(int(gas_rng.integers(12, 40))):
        c = (layout.patient_px([gas_rng.uniform(-100, 100), gas_rng.uniform(25, 175)])[0] + 0.5) * scale - 0.5
        big = gas_rng.random() < 0.2
        axes_mm = gas_rng.uniform(5, 14, 2) * (2.2 if big else 1.0)
        axes = tuple(int(v / layout.pixel_mm * scale * _ONE) for v in axes_mm)
        cv2.ellipse(gas, tuple(int(v * _ONE) for v in c), axes, float(gas_rng.uniform(0, 180)), 0, 360,
                    float(gas_rng.uniform(8, 40)), -1, cv2.LINE_AA, _SHIFT)
    gas = cv2.GaussianBlur(gas, (0, 0), max(2.0 / layout.pixel_mm * scale, 0.5))
    muscle = np.maximum(muscle - gas * (muscle > 30.0), 0.0)
    fat_path = total - np.minimum(muscle, total)
    out = [cv2.resize((m / 10.0).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
           for m in (muscle, fat_path)]
    return out[0], out[1]


def _femur_region(subject: BmdSubject, layout: _Layout, side: str):
    """Image pixels covering one femur (row and column slices) and their femur-frame coordinates (mm)."""
    hip = subject.hips[side]
    u, _, _ = _neck_frame(hip)
    junction = hip.neck_length_mm * u
    rh, rs = hip.head_radius_mm, hip.shaft_radius_mm
    corners = [(-rh - 6, rh + 6), (junction[0] + rs + 30, rh + 6), (-rh - 6, -450), (junction[0] + rs + 30, -450)]
    px = layout.femur_px(side, corners)
    c0, c1 = int(max(0, math.floor(px[:, 0].min()))), int(min(layout.size, math.ceil(px[:, 0].max()) + 1))
    r0, r1 = int(max(0, math.floor(px[:, 1].min()))), int(min(layout.size, math.ceil(px[:, 1].max()) + 1))
    if c1 <= c0 or r1 <= r0:
        return None
    cols, rows = np.meshgrid(np.arange(c0, c1, dtype=np.float32), np.arange(r0, r1, dtype=np.float32))
    inv = np.linalg.inv(layout.femur_to_image[side])
    X = inv[0, 0] * cols + inv[0, 1] * rows + inv[0, 2]
    Y = inv[1, 0] * cols + inv[1, 1] * rows + inv[1, 2]
    return slice(r0, r1), slice(c0, c1), X.astype(np.float32), Y.astype(np.float32)


def _neck_rotation_deg(subject: BmdSubject, side: str) -> float:
    """Angle (deg) of the neck out of the detector plane on this radiograph: anteversion - internal rotation."""
    return subject.hips[side].anteversion_deg - subject.acquisition.internal_rotation_deg[side]


def _hip_labels(subject: BmdSubject, layout: _Layout, side: str, texture) -> dict:
    """Label row of one hip: truth, acquisition, bone parameters, neck box and landmarks in image pixels."""
    hip, acq = subject.hips[side], subject.acquisition
    phi = _neck_rotation_deg(subject, side)
    rot = _rot_y(phi)
    u0, e10, _ = _neck_frame(hip)
    s0, s1, half = _box_extent(hip)
    u, e1 = rot @ u0, rot @ e10
    junction0 = hip.neck_length_mm * u0
    gt_top = junction0 + (_GT_OFFSET + np.array([0.0, _GT_SEMI[1], 0.0])) * hip.shaft_radius_mm / 13.5
    lt_tip = junction0 + np.array([-hip.shaft_radius_mm + 1.0 - 9.0, -30.0, -8.0])
    shaft_distal = junction0 + np.array([0.0, -80.0, 0.0])
    points3d = {
        "head_center": np.zeros(3), "neck_medial": s0 * u0, "neck_lateral": junction0,
        "greater_trochanter": gt_top, "lesser_trochanter": lt_tip, "shaft_distal": shaft_distal,
    }
    lms = {name: layout.femur_px(side, (rot @ p)[:2])[0] for name, p in points3d.items()}
    centre = layout.femur_px(side, (0.5 * (s0 + s1) * u)[:2])[0]
    along = layout.femur_px(side, (0.5 * (s0 + s1) * u + u)[:2])[0] - centre  # image pixels per mm along u
    across = layout.femur_px(side, (0.5 * (s0 + s1) * u + e1)[:2])[0] - centre
    box_w = (s1 - s0) * float(np.hypot(*along))
    box_h = 2.0 * half * float(np.hypot(*across))
    angle = math.degrees(math.atan2(along[1], along[0]))
    ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    box_corners = [centre + np.array([ca, sa]) * dw * box_w / 2 + np.array([-sa, ca]) * dh * box_h / 2
                   for dw in (-1, 1) for dh in (-1, 1)]
    head_px = hip.head_radius_mm / layout.pixel_mm
    hc = lms["head_center"]
    inside = all(0.0 <= p[0] <= layout.size - 1 and 0.0 <= p[1] <= layout.size - 1 for p in box_corners)
    inside &= head_px <= hc[0] <= layout.size - 1 - head_px and head_px <= hc[1] <= layout.size - 1 - head_px
    X, Y, _, _ = _box_grid(hip, 0.25, phi)
    mineral, outer = _femur_mineral(hip, X, Y, phi, texture)
    apparent = float(mineral[outer > 1e-6].mean()) if (outer > 1e-6).any() else 0.0
    row = {
        "side": side, "bmd_g_cm2": hip.bmd_g_cm2, "t_score": t_score(hip.bmd_g_cm2), "age": subject.age,
        "sex": subject.sex, "osteoporosis": int(t_score(hip.bmd_g_cm2) <= OSTEOPOROSIS_T_SCORE),
        "in_field": int(inside), "visit": subject.visit, "interval_years": subject.interval_years,
        "device": acq.device, "kvp": acq.kvp, "mas": acq.mas, "soft_tissue_mm": acq.soft_tissue_mm,
        "fat_mm": acq.fat_mm, "fov_mm": acq.fov_mm, "pixel_mm": layout.pixel_mm, "shift_x_mm": acq.shift_x_mm,
        "shift_y_mm": acq.shift_y_mm, "tilt_deg": acq.tilt_deg,
        "internal_rotation_deg": acq.internal_rotation_deg[side], "neck_rotation_deg": phi,
        "leg_abduction_deg": acq.leg_abduction_deg[side], "detector_gamma": acq.detector_gamma,
        "detector_gain": acq.detector_gain, "detector_offset": acq.detector_offset,
        "neck_width_mm": 2.0 * hip.neck_a_mm, "neck_depth_mm": 2.0 * hip.neck_b_mm,
        "cortex_inferior_mm": hip.cortex_inferior_mm, "cortex_superior_mm": hip.cortex_superior_mm,
        "shaft_cortex_mm": hip.shaft_cortex_mm, "trabecular_g_cm3": hip.trabecular_g_cm3,
        "singh_grade": hip.singh_grade, "neck_shaft_angle_deg": hip.neck_shaft_deg, "apparent_bmd_g_cm2": apparent,
        "box_cx": float(centre[0]), "box_cy": float(centre[1]), "box_w": box_w, "box_h": box_h,
        "box_angle_deg": angle,
    }
    for name, (x, y) in lms.items():
        row[f"lm_{name}_x"], row[f"lm_{name}_y"] = float(x), float(y)
    return row


def _lowpass(image: np.ndarray, sigma_px: float, reduce: int = 8) -> np.ndarray:
    """Wide Gaussian blur (sigma in pixels) through a copy ``reduce`` times smaller."""
    size = image.shape[0]
    small = max(16, size // reduce)
    reduced = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
    reduced = cv2.GaussianBlur(reduced, (0, 0), max(sigma_px * small / size, 0.5))
    return cv2.resize(reduced, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def render_radiograph(subject: BmdSubject, rng: np.random.Generator, size: int = 512) -> BmdImage:
    """Render the AP pelvis radiograph of ``subject``. ``rng``: quantum and electronic noise only (everything
    else comes from the subject). ``size``: image side in pixels (>= 128). Output: ``BmdImage`` with a
    (size, size) uint8 image (bone white, patient's right on the image left) and one label dict per hip."""
    rng = _check_rng(rng)
    if not isinstance(subject, BmdSubject):
        raise DataError(f"subject must be a BmdSubject (sample_subject), got {type(subject).__name__}")
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 128 <= size <= 4096:
        raise DataError(f"image size must be a whole number within 128..4096, got {size!r}")
    size = int(size)
    acq = subject.acquisition
    dev = DEVICES[_check_device(acq.device)]
    layout = _Layout(subject, size)
    mineral = np.zeros((size, size), np.float32)
    _draw_pelvis(mineral, subject, layout)
    mineral = cv2.GaussianBlur(mineral, (0, 0), 0.6 / layout.pixel_mm)
    labels = []
    for side in SIDES:
        hip = subject.hips[side]
        texture = _trabecular_canvas(hip)
        region = _femur_region(subject, layout, side)
        if region is not None:
            rows, cols, X, Y = region
            phi = _neck_rotation_deg(subject, side)
            # Rows wholly below the lesser trochanter hold only the shaft.
            lowest = hip.neck_length_mm * _neck_frame(hip)[0][1] - 75.0
            upper = int(np.count_nonzero(Y.max(axis=1) >= lowest))
            femur = np.zeros_like(X)
            if upper > 0:
                femur[:upper] = _femur_mineral(hip, X[:upper], Y[:upper], phi, texture)[0]
            if upper < X.shape[0]:
                femur[upper:] = _femur_mineral(hip, X[upper:], Y[upper:], phi, texture, shaft_only=True)[0]
            mineral[rows, cols] += femur
        labels.append(_hip_labels(subject, layout, side, texture))
    # Lead side marker ("R" on the patient's right), as every AP radiograph carries.
    marker = np.zeros((size, size), np.uint8)
    scale = size / 512.0
    cv2.putText(marker, "R", (int(0.06 * size), int(0.11 * size)), cv2.FONT_HERSHEY_SIMPLEX, 1.3 * scale, 255,
                max(1, round(3 * scale)), cv2.LINE_AA)
    mineral += marker.astype(np.float32) * np.float32(4.0 / 255.0)

    muscle_cm, fat_cm = _soft_tissue(subject, layout)
    mu_muscle, mu_fat, mu_bone = _mu(_effective_kev(acq.kvp))
    attenuation = mu_muscle * muscle_cm + mu_fat * fat_cm + mu_bone * mineral
    primary = np.exp(-attenuation).astype(np.float32)
    thickness_cm = acq.soft_tissue_mm / 10.0
    spr = dev.scatter_factor * (thickness_cm / 20.0) ** 1.3
    signal = primary + np.float32(spr) * _lowpass(primary, 30.0 / layout.pixel_mm)
    # Automatic exposure control keeps the detector dose about constant behind the patient's soft tissue; the
    # drawn mAs is this exposure's dose relative to the AEC's (20 mAs = nominal).
    aec = math.exp(-mu_muscle * 0.8 * thickness_cm) * (1.0 + spr)
    counts = np.float32(_N_REF * dev.quantum_efficiency * acq.mas / 20.0 / aec) * signal
    counts = cv2.GaussianBlur(counts, (0, 0), max(dev.blur_mm / layout.pixel_mm, 0.3))
    noise = rng.standard_normal((size, size), dtype=np.float32)
    counts += noise * (np.sqrt(np.maximum(counts, 0.0)) * np.float32(acq.noise_scale)
                       + np.float32(dev.electronic_noise))
    counts = cv2.GaussianBlur(counts, (0, 0), 0.5)
    value = -np.log(np.maximum(counts, 0.5))
    # Dynamic-range compression (every DR/CR workstation does it): flatten the soft-tissue thickness gradient.
    # The background is averaged over the body only (normalised convolution): no wide halo at the skin line.
    body = (muscle_cm + fat_cm) > 2.0
    anatomy = value[::4, ::4][body[::4, ::4]]
    if anatomy.size < 16:
        anatomy = value[::4, ::4].ravel()
    weight = body.astype(np.float32)
    background = _lowpass(value * weight, _EQUALIZE_SIGMA_MM / layout.pixel_mm) / np.maximum(
        _lowpass(weight, _EQUALIZE_SIGMA_MM / layout.pixel_mm), np.float32(0.05))
    value -= np.float32(dev.equalize) * background
    anatomy = anatomy - np.float32(dev.equalize) * background[::4, ::4][body[::4, ::4]] if anatomy.size == int(
        body[::4, ::4].sum()) else value[::4, ::4].ravel()
    if dev.window_mode == "percentile":
        lo, hi = np.percentile(anatomy, dev.window_pct)
        hi += 0.3 * (hi - lo)  # headroom: dense bone keeps its inner structure
    elif dev.window_mode == "anchored":
        lo = float(np.percentile(anatomy, dev.window_pct[0]))
        hi = lo + dev.window_width
    else:
        # Fixed processing: the window sits at a fixed offset from the anatomy's median log signal, with a
        # fixed width, so exposure, habitus and kVp change brightness and contrast.
        centre = float(np.median(anatomy)) + 0.25 * math.log(acq.mas / 20.0)
        lo, hi = centre - 0.35 * dev.window_width, centre + 0.65 * dev.window_width
    display = (value - np.float32(lo)) / np.float32(max(hi - lo, 1e-3))
    if dev.edge_enhance > 0:
        display += np.float32(dev.edge_enhance) * (display - _lowpass(display, 3.0 / layout.pixel_mm, reduce=2))
    display = np.clip(display, 0.0, 1.0) ** np.float32(acq.detector_gamma)
    if dev.sigmoid > 0:
        s = dev.sigmoid
        lo_s, hi_s = 1.0 / (1.0 + math.exp(s / 2)), 1.0 / (1.0 + math.exp(-s / 2))
        display = (1.0 / (1.0 + np.exp(-s * (display - 0.5))) - lo_s) / (hi_s - lo_s)
    display = acq.detector_gain * display + acq.detector_offset
    image = np.clip(display * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return BmdImage(image=image, hips=labels, subject=subject)


# ----------------------------------------------------------------------------------------------------------
# Dataset writer and CLI entry


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(float(value)) else f"{float(value):.5f}"
    return str(value)


def _check_count(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise DataError(f"{name} must be within 0..1, got {value!r}")
    return float(value)


def write_bmd_phantom(out_dir: str | Path, n: int, seed: int, size: int = 512, device: str | None = None,
                      progress: bool = True, second_image_fraction: float = 0.15,
                      out_of_field_fraction: float = 0.0) -> Path:
    """Write ``n`` phantom AP pelvis radiographs to ``out_dir/images/<image>.png`` and ``out_dir/labels.csv``
    (one row per hip, ``LABEL_COLUMNS``). Output: ``out_dir``.

    Inputs: ``n`` radiographs; ``seed`` (same seed, same files); ``size`` image side in pixels; ``device`` one of
    ``DEVICES`` for every image (else drawn per patient over all six; ``HELD_OUT_DEVICES`` are marked in the
    ``device`` column); ``second_image_fraction``: share of patients with a second radiograph, half of them a
    same-day repeat (same BMD), half a follow-up 1-4 years later (BMD changed at the patient's rate); both
    images share ``patient_id``; ``out_of_field_fraction``: share of radiographs with one hip moved out of
    the field (``in_field`` 0 on that row; 0 by default, for refusal tests). ``patient_id`` is unique per seed,
    so datasets of different seeds can be pooled.
    """
    n = _check_count("number of radiographs", n, 1)
    size = _check_count("image size", size, 128)
    if size > 4096:
        raise DataError(f"image size must be <= 4096, got {size}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a whole number >= 0, got {seed!r}")
    device = _check_device(device)
    second = _check_fraction("second_image_fraction", second_image_fraction)
    out_of_field = _check_fraction("out_of_field_fraction", out_of_field_fraction)
    root = Path(out_dir)
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output folder {root}: {exc.strerror or exc}") from None
    if not os.access(root / "images", os.W_OK):
        raise DataError(f"output folder is not writable: {root}")
    rng = np.random.default_rng([int(seed), 21])

    def images() -> Iterable[tuple[str, str, BmdSubject, int]]:
        written, patient = 0, 0
        while written < n:
            patient_id = f"s{seed}-b{patient:05d}"
            subject = sample_subject(rng, device)
            visits = [subject]
            if written + 1 < n and rng.random() < second:
                interval = 0.0 if rng.random() < 0.5 else float(rng.uniform(1.0, 4.0))
                visits.append(follow_up(subject, rng, interval, device))
            for visit in visits:
                if rng.random() < out_of_field:
                    visit = with_hip_out_of_field(visit, str(rng.choice(SIDES)))
                yield patient_id, f"{patient_id}-v{visit.visit}.png", visit, int(rng.integers(0, 2**31 - 1))
                written += 1
            patient += 1

    try:
        with open(root / "labels.csv", "w", newline="") as handle:
            table = csv.writer(handle)
            table.writerow(LABEL_COLUMNS)
            for patient_id, name, subject, noise_seed in progress_bar(images(), n, "phantom BMD", progress):
                result = render_radiograph(subject, np.random.default_rng(noise_seed), size)
                if not cv2.imwrite(str(root / "images" / name), result.image):
                    raise DataError(f"cannot write image {root / 'images' / name}")
                for hip in result.hips:
                    row = {"image": f"images/{name}", "patient_id": patient_id, **hip}
                    table.writerow([_fmt(row.get(column, "")) for column in LABEL_COLUMNS])
    except OSError as exc:
        raise DataError(f"cannot write {root / 'labels.csv'}: {exc.strerror or exc}") from None
    return root


def phantom_main(out: str | Path, n: int, seed: int, size: int = 512, device: str | None = None) -> int:
    """``sonogate phantom bmd --n N --seed S --out DIR [--size PX] [--device NAME]``: write the dataset, print one
    summary line, return 0. Bad arguments raise ``DataError`` (one line)."""
    root = write_bmd_phantom(out, n, seed, size=size, device=device, progress=True)
    where = f"device {_check_device(device)}" if device else "devices A-F (held out: " + ", ".join(
        HELD_OUT_DEVICES) + ")"
    print(f"wrote {n} phantom AP pelvis radiographs ({2 * n} hip rows, {where}) to {root}")
    return 0
