"""Synthetic tibial-shaft radiograph pairs (AP + lateral) with exact RUST labels (numpy + OpenCV only).

RUST (Whelan et al. 2010) scores each of four cortices of a healing tibial shaft fracture: on the AP view the
medial and the lateral cortex, on the lateral view the anterior and the posterior cortex; 1 = fracture line
visible, no callus; 2 = callus present, line still visible; 3 = bridging callus, line no longer visible. The
total runs 4-12.

Model (all lengths in mm). One 3D leg per patient: ``x`` points lateral, ``y`` anterior, ``z`` distal along the
tibia (``z = 0`` at the tibial plateau). The tibia is an elliptic tube (cortex around a fatty medullary canal,
anterior wall thicker, metaphyseal flare with thin cortex and cancellous bone toward the ends), the fibula a
thinner tube posterolateral to it, the soft tissue an elliptic envelope (muscle inside a fat layer) with the
tibia anteromedial, as in a real leg. One fracture plane cuts the tibia at level ``z0`` with obliquity
``theta`` (from transverse) and azimuth ``phi``; the fracture gap is a slab of width ``gap_mm`` about that
plane, and the distal fragment may be translated and angulated. Each view is a projection radiograph: the
attenuation ``A = sum(mu * path length)`` along the beam (``y`` for the AP view, ``x`` for the lateral view) is
computed in closed form per pixel (ellipse chords intersected with the half-spaces on either side of the
fracture plane), so the fracture line seen in each view is the projection of the same 3D plane.

Healing: a per-patient stage rises with the weeks since injury (stalling in non-unions); each cortex adds a
fixed offset, and its grade is the band its stage falls in, so grades never decrease over a patient's
follow-ups and vary between cortices in a correlated way. The grade drives the drawing of that cortex: grade 2
adds a periosteal callus cloud (many small 3D Gaussian blobs bulging from that quarter of the circumference,
with a lucent cleft left at the fracture level); grade 3 lets the cloud bridge the cleft and fills the gap
within that quarter of the cortex with bone, so the line vanishes there. Quarters blend smoothly (weights
``cos^2``), so the AP view's profile cortices carry the medial / lateral grades and the lateral view's carry
the anterior / posterior grades, while the other two quarters are seen en face, as on real films.

Hardware: none (often with a plaster or fibreglass cast), an intramedullary nail (with proximal and distal
locking screws), or a plate with screws on the anteromedial or anterolateral face; metal hides the cortices it
covers in a view, as on real films (labelled per film in ``hidden``). Devices ``A``-``E`` vary exposure
(quantum noise), electronic noise, kVp-like bone contrast, scatter, blur, image processing (equalisation, edge
enhancement, gamma) and field size; each film
adds small rotations, leg position, collimation edges and an L/R marker. Side ``L`` / ``R``: AP views are shown
in radiological convention (the patient's right on the image left); lateral views with anterior to the image
left for a right leg and to the right for a left leg.

Labels (``RUST_COLUMNS``): the four grades and their total; the generation parameters (device, visit, weeks,
side, hardware, cast, the cortices metal hides, fracture geometry, healing stage, exposure and processing,
field, rotation); and for each cortex the pixel where the fracture plane crosses the middle of that cortical
wall in its view (``<cortex>_x``, ``<cortex>_y``), so a line window can be cut out of the image.

API: ``sample_patient`` -> ``RustPatient``; ``render_case(patient, visit, rng, size)`` -> ``RustCase``;
``write_rust_phantom`` writes ``DIR/<case>/ap.png``, ``DIR/<case>/lat.png`` and ``DIR/labels.csv``;
``phantom_main`` is what ``sonogate phantom rust`` runs. About 60 ms CPU per case at 384 px, one core.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sonogate.errors import DataError
from sonogate.phantom.writer import progress_bar

CORTICES = ("ap_medial", "ap_lateral", "lat_anterior", "lat_posterior")
HARDWARE = ("none", "nail", "plate")
# Cortex quarter -> its direction in the cross-section (x lateral, y anterior).
_CORTEX_ANGLE = {"ap_medial": math.pi, "ap_lateral": 0.0, "lat_anterior": math.pi / 2, "lat_posterior": -math.pi / 2}
# Stage bands of the grades: stage < 0.35 -> 1, < 0.70 -> 2, else 3.
_GRADE_EDGES = (0.35, 0.70)

# Linear attenuation at a ~40 keV effective energy (extremity technique, 55-65 kVp), 1/mm.
_MU_MUSCLE = 0.027
_MU_FAT = 0.022
_MU_MARROW = 0.024
_MU_CORTEX = 0.115
_MU_CANCELLOUS = 0.050
_MU_TITANIUM = 0.90
_MU_STEEL = 2.5
_MU_MARKER = 3.0
_BIG = 1.0e6

RUST_COLUMNS = (
    "case", "patient_id", "ap_medial", "ap_lateral", "lat_anterior", "lat_posterior", "rust_total",
    "device", "visit", "n_visits", "week", "side", "hardware", "plate_side", "cast", "hidden",
    "fracture_level_mm", "fracture_angle_deg", "fracture_azimuth_deg", "ap_line_deg", "lat_line_deg", "gap_mm",
    "displacement_ml_mm", "displacement_ap_mm", "angulation_ml_deg", "angulation_ap_deg", "fibula_fracture",
    "healing_stage", "nonunion", "exposure", "electronic_noise", "kvp_contrast", "blur_mm", "scatter",
    "fov_ap_mm", "fov_lat_mm", "mm_per_pixel_ap", "mm_per_pixel_lat", "rotation_ap_deg", "rotation_lat_deg",
    "marker", "size",
) + tuple(f"{c}_{axis}" for c in CORTICES for axis in "xy")


# --------------------------------------------------------------------------------------------------------
# Devices


@dataclass(frozen=True)
class RustDevice:
    """One radiography room / detector preset.

    name: preset key. description: one line. fov_mm: (low, high) side of the square field, mm. photons: mean
    quanta in air per 0.78 mm pixel (scaled with the pixel area), sets quantum noise. electronic_noise:
    additive detector noise, as a share of the air signal. blur_mm: focal spot + detector blur (Gaussian
    sigma). kvp_contrast: bone / soft-tissue contrast factor (> 1 = lower kVp, more contrast). scatter:
    scatter-to-primary ratio behind the leg (no grid = more). equalization: share of the low-frequency
    attenuation (above soft-tissue edges) taken out by the processing (0 = none). edge_amount, edge_sigma_mm:
    unsharp-mask edge enhancement. gamma: display gamma (> 1 darker mid-greys). window_high: white level as a
    share of the brightest bone's processed value (> 1 greyer bone). shutter: ``"white"`` (unexposed edges
    shown bright, as raw CR / DR) or ``"black"`` (electronic shutter). flat_field: detector gain correction removes
    the heel effect (DR) or not (CR).
    """

    name: str
    description: str
    fov_mm: tuple[float, float]
    photons: float
    electronic_noise: float
    blur_mm: float
    kvp_contrast: float
    scatter: float
    equalization: float
    edge_amount: float
    edge_sigma_mm: float
    gamma: float
    window_high: float
    shutter: str
    flat_field: bool


DEVICES: dict[str, RustDevice] = {
    "A": RustDevice("A", "flat-panel DR, standard processing", (230.0, 280.0), 40000.0, 0.0002, 0.22, 1.0, 0.12,
                    0.45, 0.6, 1.6, 1.4, 1.0, "white", True),
    "B": RustDevice("B", "flat-panel DR, hard edge enhancement, black shutters", (220.0, 260.0), 25000.0, 0.0003,
                    0.20, 1.15, 0.10, 0.55, 1.1, 1.0, 1.6, 0.97, "black", True),
    "C": RustDevice("C", "computed radiography cassette, soft and grainy", (240.0, 300.0), 12000.0, 0.0006, 0.42,
                    0.92, 0.22, 0.30, 0.25, 2.2, 1.25, 1.04, "white", False),
    "D": RustDevice("D", "portable DR, low dose, no grid", (220.0, 270.0), 7000.0, 0.0008, 0.32, 0.95, 0.30, 0.50,
                    0.5, 1.4, 1.45, 1.0, "black", True),
    "E": RustDevice("E", "wide-field DR, high kVp, low contrast", (280.0, 330.0), 30000.0, 0.0003, 0.25, 0.82, 0.16,
                    0.35, 0.45, 2.0, 1.2, 1.06, "white", True),
}
DEVICE_NAMES = tuple(DEVICES)


def get_device(name: str) -> RustDevice:
    """The preset called ``name`` (``A``..``E``); ``DataError`` for an unknown name."""
    try:
        return DEVICES[str(name).strip()]
    except KeyError:
        raise DataError(f"unknown rust phantom device {name!r} (use {', '.join(DEVICE_NAMES)})") from None


def parse_devices(devices: str | Sequence[str] | None) -> tuple[str, ...]:
    """Device names from ``"A,B"``, a sequence of names or ``None`` (all presets); ``DataError`` on bad names."""
    if devices is None:
        return DEVICE_NAMES
    names = [d for d in devices.split(",")] if isinstance(devices, str) else list(devices)
    names = [str(d).strip() for d in names if str(d).strip()]
    if not names:
        raise DataError("no rust phantom device given")
    return tuple(get_device(d).name for d in names)


# --------------------------------------------------------------------------------------------------------
# Patients


@dataclass(frozen=True)
class RustAnatomy:
    """The leg, fixed per patient (mm).

    tibia_length: plateau to plafond. shaft_half_ml, shaft_half_ap: outer semi-axes of the mid-shaft
    (medial-lateral, anterior-posterior). cortex: mid-shaft cortical thickness. bow_ml, bow_ap: shaft bowing at
    mid-length. fibula_radius, fibula_gap: fibula outer radius and its mid-shaft distance from the tibia.
    fibula_ap: fibula centre, posterior of the tibial axis. leg_half_calf, leg_half_ankle: soft-tissue
    semi-axis at the calf and above the ankle. leg_ap_ratio: AP / ML semi-axis of the envelope. fat: subcutaneous
    fat thickness. skin_anterior, skin_medial: soft tissue over the anterior crest and the medial face.
    """

    tibia_length: float
    shaft_half_ml: float
    shaft_half_ap: float
    cortex: float
    bow_ml: float
    bow_ap: float
    fibula_radius: float
    fibula_gap: float
    fibula_ap: float
    leg_half_calf: float
    leg_half_ankle: float
    leg_ap_ratio: float
    fat: float
    skin_anterior: float
    skin_medial: float

    def tibia(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Per level ``z`` (mm, array): centre ``cx, cy``, outer semi-axes ``ax, ay``, canal centre ``icx, icy``
        and semi-axes ``iax, iay``, canal attenuation ``mu_canal``, and ``flare`` (0 shaft .. 1 metaphysis)."""
        tau = np.clip(z / self.tibia_length, -0.2, 1.2)
        prox = np.clip((0.2 - tau) / 0.2, 0.0, None) ** 2
        dist = np.clip((tau - 0.8) / 0.2, 0.0, None) ** 2
        flare = np.clip(np.maximum(prox, dist), 0.0, 1.0)
        bow = np.sin(np.pi * np.clip(tau, 0.0, 1.0))
        ax = self.shaft_half_ml * (1.0 + 1.7 * prox + 0.8 * dist)
        ay = self.shaft_half_ap * (1.0 + 1.1 * prox + 0.45 * dist)
        thick = self.cortex * (0.82 + 0.18 * bow) * (1.0 - 0.72 * flare)
        cx, cy = self.bow_ml * bow, self.bow_ap * bow
        # The anterior crest is the thickest wall: the canal sits a little posterior.
        return {"cx": cx, "cy": cy, "ax": ax, "ay": ay, "icx": cx, "icy": cy - 0.22 * thick,
                "iax": ax - thick, "iay": ay - 1.05 * thick,
                "mu_canal": _MU_MARROW + (_MU_CANCELLOUS - _MU_MARROW) * flare, "flare": flare}

    def fibula(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Fibula centre and radii per level ``z`` (same keys as ``tibia``; the cross-section is round)."""
        tau = np.clip(z / self.tibia_length, -0.2, 1.2)
        tib = self.tibia(z)
        prox = np.clip((0.12 - tau) / 0.12, 0.0, None) ** 2
        dist = np.clip((tau - 0.85) / 0.15, 0.0, None) ** 2
        radius = self.fibula_radius * (1.0 + 0.9 * prox + 0.5 * dist)
        gap = 2.0 + self.fibula_gap * np.sin(np.pi * np.clip(tau, 0.02, 0.98)) ** 0.8
        cx = tib["cx"] + tib["ax"] + gap + radius
        cy = tib["cy"] - self.fibula_ap - 3.0 * prox
        thick = 0.36 * self.fibula_radius * (1.0 - 0.6 * np.maximum(prox, dist))
        return {"cx": cx, "cy": cy, "ax": radius, "ay": radius * 0.92, "icx": cx, "icy": cy,
                "iax": radius - thick, "iay": radius * 0.92 - thick,
                "mu_canal": _MU_MARROW + (_MU_CANCELLOUS - _MU_MARROW) * np.maximum(prox, dist)}

    def leg(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Soft-tissue envelope per level: centre ``cx, cy``, outer semi-axes ``ax, ay``, fat thickness ``fat``."""
        tau = np.clip(z / self.tibia_length, -0.2, 1.2)
        calf = np.where(tau < 0.32, 0.9 + 0.1 * np.clip(tau / 0.32, 0, 1),
                        np.maximum(np.cos(0.5 * np.pi * np.clip((tau - 0.32) / 0.62, 0.0, 1.0)), 0.0) ** 1.5)
        half_ml = self.leg_half_ankle + (self.leg_half_calf - self.leg_half_ankle) * calf
        half_ap = half_ml * (self.leg_ap_ratio + 0.12 * calf)
        tib = self.tibia(z)
        cx = tib["cx"] - tib["ax"] - self.skin_medial + half_ml
        cy = tib["cy"] + tib["ay"] + self.skin_anterior - half_ap
        fat = self.fat * (0.6 + 0.4 * calf)
        return {"cx": cx, "cy": cy, "ax": half_ml, "ay": half_ap, "fat": fat}


@dataclass(frozen=True)
class RustFracture:
    """The tibial fracture (and the fibula's, if any), mm and degrees.

    level: ``z0`` of the plane on the tibial axis. angle_deg: obliquity from transverse. azimuth_deg: direction
    of the plane's tilt in the cross-section: the plane is ``z = z0 + tx x + ty y`` (relative to the tibial axis
    at ``z0``) with ``tx = tan(angle) cos(azimuth)``, ``ty = tan(angle) sin(azimuth)``; 0 = the line descends
    toward lateral on the AP view and is seen edge-on there, 90 = the same on the lateral view toward
    anterior. gap_mm: width of the fracture gap. roughness_mm, rough_seed: irregularity of the fracture
    surface. shift_ml, shift_ap: translation of the distal fragment. angulation_ml_deg, angulation_ap_deg: tilt of
    the distal fragment (varus/valgus, procurvatum/recurvatum). fibula_level: ``z`` of a fibular fracture, or
    NaN for an intact fibula. fibula_gap_mm: its gap.
    """

    level: float
    angle_deg: float
    azimuth_deg: float
    gap_mm: float
    shift_ml: float
    shift_ap: float
    angulation_ml_deg: float
    angulation_ap_deg: float
    fibula_level: float
    fibula_gap_mm: float
    roughness_mm: float = 0.0
    rough_seed: int = 0

    def roughness(self, u_rel: np.ndarray, view: str) -> np.ndarray:
        """Irregularity of the fracture surface (mm along z) at lateral positions ``u_rel`` of a view (drawn
        per view from a fixed seed: a serrated line rather than a ruled one)."""
        if self.roughness_mm <= 0:
            return np.zeros_like(u_rel)
        rng = np.random.default_rng([self.rough_seed, 0 if view == "ap" else 1])
        freq = rng.uniform(0.35, 1.6, 4)
        phase = rng.uniform(0, 2 * np.pi, 4)
        weight = rng.uniform(0.4, 1.0, 4)
        wave = sum(w * np.sin(f * u_rel + p) for w, f, p in zip(weight, freq, phase))
        return (self.roughness_mm / float(weight.sum())) * wave

    @property
    def slopes(self) -> tuple[float, float]:
        """(tx, ty): dz/dx and dz/dy of the fracture plane."""
        t = math.tan(math.radians(self.angle_deg))
        a = math.radians(self.azimuth_deg)
        return t * math.cos(a), t * math.sin(a)

    def distal_offset(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Displacement (dx, dy) of the distal fragment's axis at level ``z``."""
        dz = z - self.level
        return (self.shift_ml + math.tan(math.radians(self.angulation_ml_deg)) * dz,
                self.shift_ap + math.tan(math.radians(self.angulation_ap_deg)) * dz)


@dataclass(frozen=True)
class RustScrew:
    """A screw (mm, degrees): level ``z``; head at (``x0``, ``y0``); the shaft runs ``length`` mm in the cross-section
    direction ``angle_deg`` (0 = toward lateral +x, 90 = toward anterior +y); ``radius`` outer thread radius;
    ``material`` ``"steel"`` or ``"titanium"``."""

    z: float
    x0: float
    y0: float
    angle_deg: float
    length: float
    radius: float
    material: str


@dataclass(frozen=True)
class RustHardware:
    """Fixation (mm). kind: one of HARDWARE. cast: a cast around the leg (``"plaster"``, ``"fibreglass"`` or
    ``""``). cast_thickness, cast_gap: shell thickness and padding. nail_radius, nail_cannula: nail outer and
    bore radius; nail_tip: ``z`` of its distal tip. plate_side: ``"medial"`` / ``"lateral"`` / ``""``;
    plate_angle_deg: direction of the bone surface the plate lies on (180 = medial, 90 = anterior: tibial plates
    sit anteromedially or anterolaterally); plate_top, plate_bottom: its ``z`` extent; plate_width,
    plate_thickness; screws: all screws (locking screws of a nail or the plate's screws, perpendicular to it).
    material: ``"steel"`` / ``"titanium"``. Which cortices the metal hides is measured per film (``hidden``).
    """

    kind: str = "none"
    cast: str = ""
    cast_thickness: float = 0.0
    cast_gap: float = 0.0
    nail_radius: float = 0.0
    nail_cannula: float = 0.0
    nail_tip: float = 0.0
    plate_side: str = ""
    plate_angle_deg: float = 0.0
    plate_top: float = 0.0
    plate_bottom: float = 0.0
    plate_width: float = 0.0
    plate_thickness: float = 0.0
    screws: tuple[RustScrew, ...] = ()
    material: str = "steel"


@dataclass(frozen=True)
class RustVisit:
    """One follow-up film. number: 1-based visit. week: weeks since injury. stages: per cortex (CORTICES
    order), the continuous healing stage. grades: per cortex RUST grade 1-3 (from the stages)."""

    number: int
    week: float
    stages: tuple[float, float, float, float]
    grades: tuple[int, int, int, int]

    @property
    def total(self) -> int:
        return int(sum(self.grades))


@dataclass(frozen=True)
class RustPatient:
    """Everything fixed per patient: anatomy, fracture, hardware, healing trajectory (``visits``), device,
    side (``"L"`` / ``"R"``), seeds of the bone texture and the callus pattern, and ``nonunion``."""

    patient_id: str
    side: str
    device: str
    anatomy: RustAnatomy
    fracture: RustFracture
    hardware: RustHardware
    visits: tuple[RustVisit, ...]
    nonunion: bool
    texture_seed: int
    callus_seed: int
    callus_scale: float = 1.0


@dataclass
class RustCase:
    """One rendered film pair: ``ap`` and ``lat`` (size x size uint8 grey) and ``labels`` (column -> value)."""

    ap: np.ndarray
    lat: np.ndarray
    labels: dict = field(default_factory=dict)


def grade_from_stage(stage: float) -> int:
    """RUST grade 1-3 of a cortex's continuous healing stage."""
    return 1 + int(stage >= _GRADE_EDGES[0]) + int(stage >= _GRADE_EDGES[1])


def _sample_hardware(rng: np.random.Generator, anatomy: RustAnatomy, fracture: RustFracture,
                     kind: str) -> RustHardware:
    material = "titanium" if rng.random() < 0.4 else "steel"
    length = anatomy.tibia_length
    if kind == "none":
        cast = "" if rng.random() < 0.3 else ("plaster" if rng.random() < 0.5 else "fibreglass")
        return RustHardware(kind=kind, cast=cast, cast_thickness=float(rng.uniform(4.0, 7.0)) if cast else 0.0,
                            cast_gap=float(rng.uniform(2.0, 6.0)) if cast else 0.0, material=material)
    screws: list[RustScrew] = []

    def surface(z: float, angle: float) -> tuple[float, float, float]:
        """Bone centre (x, y) and radius toward ``angle`` (rad) at level z."""
        tib = anatomy.tibia(np.array([z]))
        ax, ay = float(tib["ax"][0]), float(tib["ay"][0])
        radius = ax * ay / math.hypot(ay * math.cos(angle), ax * math.sin(angle))
        return float(tib["cx"][0]), float(tib["cy"][0]), radius

    def locking(z: float, angle: float, r: float) -> RustScrew:
        # bicortical, through the nail: the head 2 mm outside the near cortex, the tip 2 mm past the far one
        cx, cy, near = surface(z, angle + math.pi)
        far = surface(z, angle)[2]
        x0, y0 = cx - (near + 3.5) * math.cos(angle), cy - (near + 3.5) * math.sin(angle)
        return RustScrew(float(z), x0, y0, math.degrees(angle), near + far + 5.5, r, material)

    if kind == "nail":
        tib = anatomy.tibia(np.array([0.5 * length]))
        canal = float(min(tib["iax"][0], tib["iay"][0]))
        radius = float(np.clip(canal - rng.uniform(0.8, 2.2), 3.6, 6.0))
        tip = float(length * rng.uniform(0.88, 0.93))
        for z in (0.055 * length, 0.095 * length):
            screws.append(locking(z + rng.normal(0, 2), 0.0 if rng.random() < 0.5 else math.pi, 2.4))
        for dz in (14.0, 28.0):
            angle = 0.0 if rng.random() < 0.65 else -math.pi / 2
            screws.append(locking(tip - dz + rng.normal(0, 1.5), angle, 2.3))
        return RustHardware(kind=kind, nail_radius=radius, nail_cannula=float(rng.uniform(1.3, 2.0)),
                            nail_tip=tip, screws=tuple(screws), material=material)
    side = "medial" if rng.random() < 0.7 else "lateral"
    # tibial plates lie on the anteromedial (or anterolateral) face
    tilt = float(rng.uniform(0.5, 0.95))
    plate_angle = math.pi - tilt if side == "medial" else tilt
    plate_len = float(rng.uniform(110.0, 190.0))
    top = float(np.clip(fracture.level - plate_len * rng.uniform(0.35, 0.65), 0.08 * length, 0.7 * length))
    bottom = float(min(top + plate_len, 0.95 * length))
    thickness = float(rng.uniform(3.2, 4.5))
    pitch = float(rng.uniform(14.0, 18.0))
    tx, ty = fracture.slopes
    for z in np.arange(top + 7.0, bottom - 5.0, pitch):
        # screws sit away from the fracture line; some holes stay empty
        cx, cy, near = surface(float(z), plate_angle)
        z_line = fracture.level + (near * math.cos(plate_angle)) * tx + (near * math.sin(plate_angle)) * ty
        if abs(z - z_line) < 9.0 + fracture.gap_mm or rng.random() < 0.2:
            continue
        far = surface(float(z), plate_angle + math.pi)[2]
        head = near + 0.6 + thickness
        x0, y0 = cx + head * math.cos(plate_angle), cy + head * math.sin(plate_angle)
        screws.append(RustScrew(float(z), x0, y0, math.degrees(plate_angle + math.pi),
                                head + far + float(rng.uniform(0.5, 3.0)), 2.2, material))
    return RustHardware(kind=kind, plate_side=side, plate_angle_deg=math.degrees(plate_angle), plate_top=top,
                        plate_bottom=bottom, plate_width=float(rng.uniform(11.0, 14.0)), plate_thickness=thickness,
                        screws=tuple(screws), material=material)


def _sample_visits(rng: np.random.Generator, n_visits: int, nonunion: bool,
                   offsets: np.ndarray) -> tuple[RustVisit, ...]:
    weeks = [float(rng.uniform(3.0, 10.0))]
    for _ in range(n_visits - 1):
        weeks.append(weeks[-1] + float(rng.uniform(4.0, 10.0)))
    lag = float(rng.uniform(0.5, 4.0))
    tau = float(rng.uniform(6.0, 22.0))
    ceiling = float(rng.uniform(0.2, 0.6)) if nonunion else 1.1
    visits = []
    for number, week in enumerate(weeks, start=1):
        base = ceiling * (1.0 - math.exp(-max(week - lag, 0.0) / tau))
        stages = tuple(float(base + o) for o in offsets)
        grades = tuple(grade_from_stage(s) for s in stages)
        visits.append(RustVisit(number, week, stages, grades))  # type: ignore[arg-type]
    return tuple(visits)


def sample_patient(rng: np.random.Generator, device: str | None = None, patient_id: str = "p0",
                   n_visits: int | None = None) -> RustPatient:
    """Draw one patient: anatomy, fracture, hardware, healing trajectory over ``n_visits`` follow-ups (drawn
    1-4 when None), side, and the device (drawn from ``A``..``E`` when None). Output: ``RustPatient``."""
    device_name = get_device(device).name if device is not None else str(rng.choice(DEVICE_NAMES))
    if n_visits is None:
        n_visits = int(rng.integers(1, 5))
    if not isinstance(n_visits, (int, np.integer)) or n_visits < 1:
        raise DataError(f"n_visits must be a whole number >= 1, got {n_visits!r}")
    length = float(rng.uniform(330.0, 400.0))
    size = length / 365.0
    half_ml = float(rng.uniform(10.5, 13.5) * size)
    anatomy = RustAnatomy(
        tibia_length=length, shaft_half_ml=half_ml, shaft_half_ap=float(half_ml * rng.uniform(1.08, 1.3)),
        cortex=float(rng.uniform(3.8, 5.8) * size), bow_ml=float(rng.normal(0, 1.5)),
        bow_ap=float(rng.normal(1.0, 1.2)), fibula_radius=float(rng.uniform(5.0, 6.5) * size),
        fibula_gap=float(rng.uniform(8.0, 15.0)), fibula_ap=float(rng.uniform(4.0, 10.0)),
        leg_half_calf=float(rng.uniform(50.0, 64.0)), leg_half_ankle=float(rng.uniform(30.0, 36.0)),
        leg_ap_ratio=float(rng.uniform(0.85, 0.98)), fat=float(rng.uniform(3.0, 13.0)),
        skin_anterior=float(rng.uniform(3.5, 8.0)), skin_medial=float(rng.uniform(6.0, 13.0)),
    )
    kind = str(rng.choice(HARDWARE, p=[0.3, 0.45, 0.25]))
    # a nail or a plate reduces the fracture; a cast leaves some shift and angulation
    shift, angulation = (4.0, 5.0) if kind == "none" else (0.8 if kind == "nail" else 0.3, 0.0)
    fibula_fracture = rng.random() < 0.6 or kind == "none"
    fracture = RustFracture(
        level=float(length * rng.uniform(0.32, 0.72)), angle_deg=float(min(abs(rng.normal(0.0, 20.0)), 50.0)),
        azimuth_deg=float(rng.uniform(-180.0, 180.0)), gap_mm=float(rng.uniform(1.2, 4.0)),
        shift_ml=float(rng.normal(0, shift / 2)), shift_ap=float(rng.normal(0, shift / 2)),
        angulation_ml_deg=float(np.clip(rng.normal(0, angulation / 2), -angulation, angulation)),
        angulation_ap_deg=float(np.clip(rng.normal(0, angulation / 2), -angulation, angulation)),
        fibula_level=float(length * rng.uniform(0.3, 0.8)) if fibula_fracture else float("nan"),
        fibula_gap_mm=float(rng.uniform(0.8, 2.0)), roughness_mm=float(rng.uniform(0.3, 1.4)),
        rough_seed=int(rng.integers(0, 2**31 - 1)),
    )
    hardware = _sample_hardware(np.random.default_rng(int(rng.integers(0, 2**31 - 1))), anatomy, fracture, kind)
    nonunion = bool(rng.random() < 0.15)
    offsets = rng.normal(0.0, 0.11, size=4)
    visits = _sample_visits(rng, n_visits, nonunion, offsets)
    return RustPatient(
        patient_id=str(patient_id), side="L" if rng.random() < 0.5 else "R", device=device_name,
        anatomy=anatomy, fracture=fracture, hardware=hardware, visits=visits, nonunion=nonunion,
        texture_seed=int(rng.integers(0, 2**31 - 1)), callus_seed=int(rng.integers(0, 2**31 - 1)),
        callus_scale=float(rng.uniform(0.35, 0.6) if hardware.kind == "plate" else rng.uniform(0.8, 1.2)),
    )


# --------------------------------------------------------------------------------------------------------
# Projection geometry (closed form)


def _overlap(lo1, hi1, lo2, hi2):
    return np.maximum(np.minimum(hi1, hi2) - np.maximum(lo1, lo2), 0.0)


def _chord(u, cu, cv, su, sv):
    """Interval (lo, hi) along the beam of an ellipse (centre ``cu, cv``, semi-axes ``su, sv``) at lateral
    position ``u``; an empty ray gives ``lo == hi``."""
    q = 1.0 - ((u - cu) / su) ** 2
    h = sv * np.sqrt(np.maximum(q, 0.0))
    return cv - h, cv + h


def _side_interval(u, z, plane, offset_u, offset_v, level_shift: float, below: bool):
    """Beam interval where the plane function ``s = (z - z0 - r(u)) - tu (u - ou) - tv (v - ov)`` is below (or
    above) ``level_shift``. ``plane`` = (z0, tu, tv, r) with ``r`` the surface roughness per column (array
    broadcastable to ``u``, or 0); tv is never 0 (the caller nudges it)."""
    z0, tu, tv, rough = plane
    k = (z - z0 - rough) - tu * (u - offset_u) - level_shift
    edge = offset_v + k / tv
    if (tv > 0) == below:
        return edge, np.full_like(edge, _BIG)
    return np.full_like(edge, -_BIG), edge


def _quarter_weights(dx, dy, weights: dict[str, float]):
    """Smooth partition of the circumference into the four cortex quarters (cos^2 blend)."""
    r = np.sqrt(dx * dx + dy * dy) + 1e-6
    c, s = dx / r, dy / r
    return (weights["ap_medial"] * np.maximum(-c, 0) ** 2 + weights["ap_lateral"] * np.maximum(c, 0) ** 2
            + weights["lat_anterior"] * np.maximum(s, 0) ** 2 + weights["lat_posterior"] * np.maximum(-s, 0) ** 2)


def _view_axes(view: str):
    """(u key, v key) of the cross-section dicts: AP beam along y shows x; lateral beam along x shows y."""
    return ("cx", "cy", "ax", "ay", "icx", "icy", "iax", "iay") if view == "ap" else \
        ("cy", "cx", "ay", "ax", "icy", "icx", "iay", "iax")


def _bone_attenuation(view: str, u: np.ndarray, z: np.ndarray, bone: dict, distal_bone: dict | None,
                      plane: tuple[float, float, float] | None, gap: float, distal_offset_uv: tuple[float, float],
                      mu_cortex: float, fill: dict[str, float] | None, mu_fill: float) -> np.ndarray:
    """Excess attenuation (over muscle) of a tube bone, optionally cut by a fracture plane.

    u: (1, W) lateral positions; z: (H, 1) levels. bone / distal_bone: cross-section dicts per level of the
    proximal and the distal fragment (already displaced). plane: (z0, tu, tv) in this view's axes, or None
    for an intact bone. distal_offset_uv: the distal fragment's displacement at the fracture level. fill:
    per-cortex fill share of the gap (0 = open line, 1 = bridged), mu_fill its attenuation.
    """
    cu, cv, su, sv, icu, icv, isu, isv = _view_axes(view)
    excess_cortex = mu_cortex - _MU_MUSCLE

    def lengths(b, half):
        olo, ohi = _chord(u, b[cu], b[cv], b[su], b[sv])
        ilo, ihi = _chord(u, b[icu], b[icv], b[isu], b[isv])
        if half is None:
            total, canal = ohi - olo, ihi - ilo
        else:
            total, canal = _overlap(olo, ohi, *half), _overlap(ilo, ihi, *half)
        return excess_cortex * (total - canal) + (b["mu_canal"] - _MU_MUSCLE) * canal, (olo, ohi, ilo, ihi)

    if plane is None:
        return lengths(bone, None)[0]
    # Only rows the plane can reach need the cut; above it the proximal fragment is whole, below the distal.
    z0, tu, tv, rough = plane
    reach = gap / 2 + 2.0 + float(np.max(np.abs(rough))) + abs(tu) * abs(distal_offset_uv[0]) + abs(tv) * abs(distal_offset_uv[1])
    reach += max(abs(tu) * float(np.max(np.abs(b[cu]) + b[su])) + abs(tv) * float(np.max(np.abs(b[cv]) + b[sv]))
                 for b in (bone, distal_bone))
    levels = z[:, 0]
    band = np.flatnonzero(np.abs(levels - z0) <= reach)
    out = np.empty(np.broadcast_shapes(u.shape, z.shape), np.float32)
    first, last = (int(band[0]), int(band[-1]) + 1) if band.size else (int(np.searchsorted(levels, z0)),) * 2
    if first > 0:
        out[:first] = lengths(_row_slice(bone, slice(0, first)), None)[0]
    if last < len(levels):
        out[last:] = lengths(_row_slice(distal_bone, slice(last, None)), None)[0]
    if last > first:
        rows = slice(first, last)
        out[rows] = _fracture_band(view, u, z[rows], _row_slice(bone, rows), _row_slice(distal_bone, rows), plane,
                                   gap, distal_offset_uv, lengths, fill, mu_fill)
    return out


def _row_slice(bone: dict, rows: slice) -> dict:
    return {k: (v[rows] if isinstance(v, np.ndarray) and v.ndim == 2 else v) for k, v in bone.items()}


def _fracture_band(view, u, z, bone, distal_bone, plane, gap, distal_offset_uv, lengths, fill, mu_fill):
    """The rows the fracture plane crosses: both fragments clipped by their half-spaces, plus the gap's fill."""
    cu, cv = _view_axes(view)[:2]
    prox_half = _side_interval(u, z, plane, 0.0, 0.0, -gap / 2, below=True)
    dist_half = _side_interval(u, z, plane, distal_offset_uv[0], distal_offset_uv[1], gap / 2, below=False)
    att_p, (olo, ohi, ilo, ihi) = lengths(bone, prox_half)
    att_d, _ = lengths(distal_bone, dist_half)
    att = att_p + att_d
    if fill is not None and max(fill.values()) > 0:
        lo_a, hi_a = _side_interval(u, z, plane, 0.0, 0.0, gap / 2, below=True)
        lo_b, hi_b = _side_interval(u, z, plane, 0.0, 0.0, -gap / 2, below=False)
        glo, ghi = np.maximum(lo_a, lo_b), np.minimum(hi_a, hi_b)
        inner_hi = np.clip(ihi, olo, ohi)
        inner_lo = np.clip(ilo, olo, ohi)
        for plo, phi in ((inner_hi, ohi), (olo, inner_lo)):
            length = _overlap(plo, phi, glo, ghi)
            mid = 0.5 * (np.maximum(plo, glo) + np.minimum(phi, ghi))
            du, dv = u - bone[cu], mid - bone[cv]
            dx, dy = (du, dv) if view == "ap" else (dv, du)
            att = att + (mu_fill - _MU_MUSCLE) * length * _quarter_weights(dx, dy, fill)
    return att


# --------------------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class _Film:
    """Per-film acquisition: field, pose and exposure of one view."""

    fov: float
    centre_u: float
    centre_z: float
    rotation_deg: float
    photons: float
    kvp: float
    window_high: float
    collimation: tuple[float, float, float, float]  # left, right, top, bottom margins as image fractions
    marker_corner: int


@functools.lru_cache(maxsize=4)
def _callus_template(seed: int, per_cortex: int = 320) -> dict[str, np.ndarray]:
    """Fixed per patient: normalised blob parameters for each cortex quarter (angle offset, axial position,
    radial share, size class, density, appearance order)."""
    rng = np.random.default_rng(seed)
    out = {}
    for cortex in CORTICES:
        out[cortex] = np.stack([
            np.clip(rng.normal(0.0, 0.5, per_cortex), -1.05, 1.05),
            rng.uniform(-1.0, 1.0, per_cortex) * rng.uniform(0.55, 1.0, per_cortex),
            rng.uniform(0.0, 1.0, per_cortex) ** 1.2 - 0.1,
            rng.choice(3, per_cortex, p=[0.62, 0.3, 0.08]).astype(float),
            rng.uniform(0.35, 1.0, per_cortex),
            rng.permutation(per_cortex) / per_cortex,
            np.full(per_cortex, rng.uniform(0, 2 * np.pi)),
        ], axis=1)
    return out


_CALLUS_SIGMA_MM = (0.7, 1.4, 2.6)


def _callus_amount(grade: int, stage: float) -> float:
    """0 (no callus) .. 1 (mature bridging callus) from a cortex's grade and its stage within the grade."""
    if grade <= 1:
        return 0.0
    lo, hi = (_GRADE_EDGES[0], _GRADE_EDGES[1]) if grade == 2 else (_GRADE_EDGES[1], _GRADE_EDGES[1] + 0.4)
    progress = float(np.clip((stage - lo) / (hi - lo), 0.0, 1.0))
    return 0.3 + 0.35 * progress if grade == 2 else 0.72 + 0.28 * progress


def _callus_blobs(patient: RustPatient, visit: RustVisit, template: dict[str, np.ndarray]):
    """3D callus blobs of this visit: arrays x, y, z (mm), sigma class, peak excess attenuation (1/mm)."""
    fr = patient.fracture
    tx, ty = fr.slopes
    tib = patient.anatomy.tibia(np.array([fr.level]))
    cx0, cy0, ax, ay = (float(tib[k][0]) for k in ("cx", "cy", "ax", "ay"))
    xs, ys, zs, cls, amp = [], [], [], [], []
    for cortex, grade, stage in zip(CORTICES, visit.grades, visit.stages):
        amount = _callus_amount(grade, stage)
        if amount <= 0:
            continue
        t = template[cortex]
        keep = t[:, 5] < min(1.0, 0.25 + amount)
        t = t[keep]
        theta = _CORTEX_ANGLE[cortex] + t[:, 0]
        radius = ax * ay / np.sqrt((ay * np.cos(theta)) ** 2 + (ax * np.sin(theta)) ** 2)
        half_len = (6.0 + 18.0 * amount) * patient.callus_scale + fr.gap_mm
        thick_max = (1.5 + 8.0 * amount) * patient.callus_scale
        zeta = t[:, 1]
        along = half_len * zeta
        # lumpy around the circumference, fusiform along the shaft
        thick = thick_max * (1.0 - zeta ** 2) ** 0.8 * (0.55 + 0.45 * (1 + np.sin(3 * theta + t[:, 6])))
        rho = radius + t[:, 2] * thick
        x = cx0 + rho * np.cos(theta)
        y = cy0 + rho * np.sin(theta)
        z = fr.level + tx * (x - cx0) + ty * (y - cy0) + along
        if grade == 2:
            # non-bridging: a lucent cleft stays open at the fracture level
            open_cleft = np.abs(along) > fr.gap_mm / 2 + 1.0 + 0.8 * t[:, 3]
            x, y, z, t, along = x[open_cleft], y[open_cleft], z[open_cleft], t[open_cleft], along[open_cleft]
        dx, dy = fr.distal_offset(z)
        distal = along > 0
        x = np.where(distal, x + dx, x)
        y = np.where(distal, y + dy, y)
        maturity = 0.45 + 0.55 * amount
        xs.append(x)
        ys.append(y)
        zs.append(z)
        cls.append(t[:, 3].astype(int))
        amp.append(t[:, 4] * maturity * 0.45 * (_MU_CORTEX - _MU_MUSCLE))
    if not xs:
        empty = np.zeros(0)
        return empty, empty, empty, np.zeros(0, int), empty
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(zs), np.concatenate(cls), np.concatenate(amp)


def _splat(canvas: np.ndarray, j: np.ndarray, i: np.ndarray, value: np.ndarray) -> None:
    """Bilinear splat of point values at fractional pixel positions (j column, i row)."""
    h, w = canvas.shape
    j0, i0 = np.floor(j).astype(int), np.floor(i).astype(int)
    fj, fi = j - j0, i - i0
    for dj, di, wt in ((0, 0, (1 - fj) * (1 - fi)), (1, 0, fj * (1 - fi)), (0, 1, (1 - fj) * fi), (1, 1, fj * fi)):
        jj, ii = j0 + dj, i0 + di
        ok = (jj >= 0) & (jj < w) & (ii >= 0) & (ii < h)
        np.add.at(canvas, (ii[ok], jj[ok]), (value * wt)[ok])


def _screw(att, view: str, u, z, screw: RustScrew, px: float) -> None:
    """Add a screw: a threaded cylinder (with a head) lying in the cross-section plane at level ``screw.z``. Its
    projection is a bar across the image whose path length grows as 1 / |cos| of its slant to the image
    plane; a screw along the beam shows end-on as a disc."""
    angle = math.radians(screw.angle_deg)
    d_u = math.cos(angle) if view == "ap" else math.sin(angle)
    head_u = screw.x0 if view == "ap" else screw.y0
    mu = _MU_TITANIUM if screw.material == "titanium" else _MU_STEEL
    r = screw.radius
    rows = np.abs(z[:, 0] - screw.z) <= 1.8 * r + 1.5
    if abs(d_u) < 0.25:
        centre = head_u + 0.5 * screw.length * d_u
        cols = np.abs(u[0] - centre) <= 1.8 * r + 2
        if not cols.any() or not rows.any():
            return
        dist = np.sqrt((u[:, cols] - centre) ** 2 + (z[rows] - screw.z) ** 2)
        shaft = np.clip((r - dist) / px + 0.5, 0.0, 1.0) * screw.length
        head = np.clip((1.75 * r - dist) / px + 0.5, 0.0, 1.0) * 3.0
        att[np.ix_(rows, cols)] += mu * (shaft + head)
        return
    tip_u = head_u + screw.length * d_u
    lo, hi = min(head_u, tip_u), max(head_u, tip_u)
    cols = (u[0] >= lo - 2 * r) & (u[0] <= hi + 2 * r)
    if not cols.any() or not rows.any():
        return
    uu, zz = u[:, cols], z[rows]
    along = (uu - head_u) / d_u  # mm along the screw from its head
    # threads: a saw-tooth radius along the shaft (core ~80 %), a wider head for the first 3 mm
    phase = np.mod(along / 1.75, 1.0)
    radius = np.where(along < 3.0, 1.75 * r, r * (0.8 + 0.2 * np.abs(2 * phase - 1)))
    inside = np.clip((np.minimum(along, screw.length - along) * abs(d_u)) / px + 0.5, 0.0, 1.0)
    path = 2.0 * np.sqrt(np.maximum(radius ** 2 - (zz - screw.z) ** 2, 0.0)) / abs(d_u) * inside
    att[np.ix_(rows, cols)] += mu * path


def _slab_chord(u, view: str, centre_x, centre_y, angle: float, half_width: float, half_thickness: float):
    """Beam path length through a plate whose cross-section is a rectangle (centre per level, normal
    ``angle`` rad, width along the surface, thickness along the normal)."""
    nx, ny = math.cos(angle), math.sin(angle)
    wx, wy = -ny, nx
    if view == "ap":  # point = (u, v): offsets along width and normal are linear in v
        a0, a1, b0, b1 = (u - centre_x) * wx - centre_y * wy, wy, (u - centre_x) * nx - centre_y * ny, ny
    else:  # point = (v, u)
        a0, a1, b0, b1 = (u - centre_y) * wy - centre_x * wx, wx, (u - centre_y) * ny - centre_x * nx, nx

    def interval(c0, c1, half):
        if abs(c1) < 1e-6:
            full = np.where(np.abs(c0) <= half, _BIG, -_BIG)
            return -full, full
        e1, e2 = (-half - c0) / c1, (half - c0) / c1
        return np.minimum(e1, e2), np.maximum(e1, e2)

    alo, ahi = interval(a0, a1, half_width)
    blo, bhi = interval(b0, b1, half_thickness)
    return np.maximum(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0.0)


def _hardware_attenuation(view: str, u, z, patient: RustPatient, px: float) -> np.ndarray:
    hw = patient.hardware
    att = np.zeros(np.broadcast_shapes(u.shape, z.shape), np.float32)
    if hw.kind == "none":
        return att
    mu = _MU_TITANIUM if hw.material == "titanium" else _MU_STEEL
    zc = z[:, 0]
    tib = patient.anatomy.tibia(zc)
    if hw.kind == "nail":
        centre = tib["icx"] if view == "ap" else tib["icy"] + 1.0
        cu = centre[:, None]
        tip_shape = np.clip((hw.nail_tip - zc) / hw.nail_radius, 0.0, 1.0)[:, None]
        r = hw.nail_radius * np.sqrt(tip_shape * (2 - tip_shape))
        outer = 2.0 * np.sqrt(np.maximum(r ** 2 - (u - cu) ** 2, 0.0))
        bore = 2.0 * np.sqrt(np.maximum(hw.nail_cannula ** 2 - (u - cu) ** 2, 0.0)) * (tip_shape > 0.99)
        att += mu * (outer - bore)
    if hw.kind == "plate":
        angle = math.radians(hw.plate_angle_deg)
        ax, ay = tib["ax"], tib["ay"]
        surface = ax * ay / np.hypot(ay * math.cos(angle), ax * math.sin(angle))
        offset = surface + 0.6 + hw.plate_thickness / 2
        centre_x = (tib["cx"] + offset * math.cos(angle))[:, None]
        centre_y = (tib["cy"] + offset * math.sin(angle))[:, None]
        rows = (zc >= hw.plate_top) & (zc <= hw.plate_bottom)
        if rows.any():
            ends = np.clip(np.minimum(zc - hw.plate_top, hw.plate_bottom - zc) / 4.0, 0.0, 1.0)[rows, None]
            chord = _slab_chord(u, view, centre_x[rows], centre_y[rows], angle, hw.plate_width / 2,
                                hw.plate_thickness / 2)
            att[rows] += mu * chord * ends
    for screw in hw.screws:
        _screw(att, view, u, z, screw, px)
    return att


@functools.lru_cache(maxsize=4)
def _texture_grid(seed: int, length_mm: float, step: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid_w, grid_h = int(160 / step), int((length_mm + 40) / step)
    noise = rng.standard_normal((grid_h, grid_w), dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=1.0, sigmaY=4.0)
    noise /= float(noise.std()) + 1e-6
    noise.setflags(write=False)
    return noise


def _texture(patient: RustPatient, u: np.ndarray, z: np.ndarray, px: float) -> np.ndarray:
    """Bone texture fixed to the anatomy (the same across a patient's films): streaky filtered noise on a
    0.5 mm grid of the leg, resampled to this film's pixels."""
    step = 0.5
    noise = _texture_grid(patient.texture_seed, patient.anatomy.tibia_length, step)
    # film pixel (j, i) -> grid column (u + 80) / step, grid row (z + 20) / step
    scale = px / step
    matrix = np.array([[scale, 0, (float(u[0, 0]) + 80.0) / step], [0, scale, (float(z[0, 0]) + 20.0) / step]],
                      np.float32)
    return cv2.warpAffine(noise, matrix, (u.shape[1], z.shape[0]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


_TONE_STEPS = 4096


@functools.lru_cache(maxsize=16)
def _tone_curve(gamma: float) -> np.ndarray:
    """Display curve on [0, 1] sampled at _TONE_STEPS points: gamma, then a mild S (film-like shoulder)."""
    value = np.linspace(0.0, 1.0, _TONE_STEPS, dtype=np.float32) ** gamma
    curve = 0.8 * value + 0.2 * (value * value * (3 - 2 * value))
    curve.setflags(write=False)
    return curve


def _as_rows(section: dict) -> dict:
    """Per-level arrays of a cross-section dict as float32 (H, 1) columns."""
    return {k: np.asarray(v, np.float32)[:, None] for k, v in section.items()}


def _shifted(section: dict, view: str, axis_u: float, axis_v: float) -> dict:
    """A cross-section dict in coordinates relative to (axis_u, axis_v) of this view."""
    cu, cv = _view_axes(view)[:2]
    out = dict(section)
    for key, shift in ((cu, axis_u), ("i" + cu, axis_u), (cv, axis_v), ("i" + cv, axis_v)):
        out[key] = section[key] - np.float32(shift)
    return out


def _render_view(patient: RustPatient, visit: RustVisit, view: str, film: _Film, device: RustDevice,
                 rng: np.random.Generator, size: int) -> tuple[np.ndarray, dict[str, tuple[float, float]], list[str]]:
    """One view: uint8 (size, size) image, the fracture-line landmarks of its two profile cortices (pixels) and
    the cortices among them that metal hides."""
    anatomy, fr = patient.anatomy, patient.fracture
    px = film.fov / size
    half = (size - 1) / 2.0
    u = (film.centre_u + (np.arange(size, dtype=np.float32) - half) * px)[None, :]
    z = (film.centre_z + (np.arange(size, dtype=np.float32) - half) * px)[:, None]
    zc = z[:, 0]
    cu, cv, su, sv = _view_axes(view)[:4]
    kvp = film.kvp

    # soft tissue: fat shell around muscle
    leg = _as_rows(anatomy.leg(zc))
    lcu, lcv, lsu, lsv = (leg[k] for k in (cu, cv, su, sv))
    fat = leg["fat"]
    olo, ohi = _chord(u, lcu, lcv, lsu, lsv)
    ilo, ihi = _chord(u, lcu, lcv, lsu - fat, lsv - fat)
    soft = _MU_FAT * (ohi - olo) + (_MU_MUSCLE - _MU_FAT) * (ihi - ilo)
    att = soft.astype(np.float32)
    hw = patient.hardware
    if hw.cast:
        mu_cast = 0.070 if hw.cast == "plaster" else 0.035
        a_lo, a_hi = _chord(u, lcu, lcv, lsu + hw.cast_gap + hw.cast_thickness, lsv + hw.cast_gap + hw.cast_thickness)
        b_lo, b_hi = _chord(u, lcu, lcv, lsu + hw.cast_gap, lsv + hw.cast_gap)
        shell = (a_hi - a_lo) - (b_hi - b_lo)
        pad = (b_hi - b_lo) - (ohi - olo)
        if hw.cast == "fibreglass":
            weave = 1.0 + 0.35 * np.sin(z * 2.2) * np.sin(u * 2.2 + 0.7)
            shell = shell * weave
        att += mu_cast * shell + 0.005 * pad

    # bones (excess over muscle), scaled by the kVp contrast
    tx, ty = fr.slopes
    tu, tv = (tx, ty) if view == "ap" else (ty, tx)
    tv = tv if abs(tv) > 1e-4 else 1e-4
    tib = _as_rows(anatomy.tibia(zc))
    dx, dy = fr.distal_offset(zc)
    dist = dict(tib)
    for key, d in (("cx", dx), ("icx", dx), ("cy", dy), ("icy", dy)):
        dist[key] = tib[key] + d[:, None].astype(np.float32)
    fib = _as_rows(anatomy.fibula(zc))
    fib_d = dict(fib)
    for key, d in (("cx", dx), ("icx", dx), ("cy", dy), ("icy", dy)):
        fib_d[key] = fib[key] + 0.8 * d[:, None].astype(np.float32)
    # only the columns the bones cover are computed
    lo_u = min(float(np.min(b[cu] - b[su])) for b in (tib, dist, fib, fib_d)) - 2.0
    hi_u = max(float(np.max(b[cu] + b[su])) for b in (tib, dist, fib, fib_d)) + 2.0
    j0 = int(np.clip(math.floor((lo_u - float(u[0, 0])) / px), 0, size))
    j1 = int(np.clip(math.ceil((hi_u - float(u[0, 0])) / px) + 1, 0, size))
    bones = np.zeros((size, size), np.float32)
    if j1 > j0:
        uw = u[:, j0:j1]
        off = fr.distal_offset(np.array([fr.level]))
        off_uv = (float(off[0][0]), float(off[1][0])) if view == "ap" else (float(off[1][0]), float(off[0][0]))
        axis = anatomy.tibia(np.array([fr.level]))
        axis_u, axis_v = float(axis[cu][0]), float(axis[cv][0])
        # the plane in this view's coordinates, relative to the tibial axis at the fracture level
        fill = {c: (1.0 if g >= 3 else 0.12 if g == 2 else 0.0) for c, g in zip(CORTICES, visit.grades)}
        bone = _bone_attenuation(view, uw - axis_u, z, _shifted(tib, view, axis_u, axis_v),
                                 _shifted(dist, view, axis_u, axis_v),
                                 (fr.level, tu, tv, fr.roughness(uw - axis_u, view).astype(np.float32)), fr.gap_mm, off_uv,
                                 _MU_CORTEX, fill, _MU_CORTEX)
        if math.isnan(fr.fibula_level):
            bone += _bone_attenuation(view, uw, z, fib, None, None, 0.0, (0.0, 0.0), _MU_CORTEX * 0.97, None, 0.0)
        else:
            fib_fill = float(np.clip((float(np.mean(visit.stages)) - 0.4) / 0.4, 0.0, 1.0))
            ftv = 0.08 if view == "ap" else 0.05
            f_off = fr.distal_offset(np.array([fr.fibula_level]))
            f_off_uv = (0.8 * float(f_off[0][0]), 0.8 * float(f_off[1][0]))
            f_off_uv = f_off_uv if view == "ap" else f_off_uv[::-1]
            f_axis = anatomy.fibula(np.array([fr.fibula_level]))
            fu, fv = float(f_axis[cu][0]), float(f_axis[cv][0])
            bone += _bone_attenuation(view, uw - fu, z, _shifted(fib, view, fu, fv), _shifted(fib_d, view, fu, fv),
                                      (fr.fibula_level, 0.06, ftv, 0.0), fr.fibula_gap_mm, f_off_uv, _MU_CORTEX * 0.97,
                                      dict.fromkeys(CORTICES, fib_fill), _MU_CORTEX)
        bones[:, j0:j1] = bone
        axis_uv = (axis_u, axis_v)
    else:
        axis = anatomy.tibia(np.array([fr.level]))
        axis_uv = (float(axis[cu][0]), float(axis[cv][0]))

    bones *= 1.0 + 0.07 * _texture(patient, u, z, px)

    # callus: 3D Gaussian blobs projected to 2D Gaussians (splat per size class, then blur)
    template = _callus_template(patient.callus_seed)
    bx, by, bz, bcls, bamp = _callus_blobs(patient, visit, template)
    if bx.size:
        bu = bx if view == "ap" else by
        j = (bu - film.centre_u) / px + half
        i = (bz - film.centre_z) / px + half
        for k, sigma_mm in enumerate(_CALLUS_SIGMA_MM):
            sel = bcls == k
            if not sel.any():
                continue
            sigma_px = sigma_mm / px
            canvas = np.zeros((size, size), np.float32)
            # peak of the projected blob = amp * sqrt(2 pi) sigma; GaussianBlur keeps the sum
            _splat(canvas, j[sel], i[sel], bamp[sel] * math.sqrt(2 * math.pi) * sigma_mm * 2 * math.pi * sigma_px ** 2)
            bones += cv2.GaussianBlur(canvas, (0, 0), sigma_px)
    att += kvp * bones
    metal = _hardware_attenuation(view, u, z, patient, px)
    att += metal

    # landmarks (aligned grid) where the plane crosses the middle of each profile cortical wall
    tib0 = anatomy.tibia(np.array([fr.level]))
    wall = float((tib0[su] - tib0["i" + su])[0])
    landmarks = {}
    names = ("ap_medial", "ap_lateral") if view == "ap" else ("lat_posterior", "lat_anterior")
    for name, sign in zip(names, (-1.0, 1.0)):
        rel_u = sign * (float(tib0[su][0]) - wall / 2)
        lz = fr.level + tu * rel_u
        landmarks[name] = ((axis_uv[0] + rel_u - film.centre_u) / px + half, (lz - film.centre_z) / px + half)
    # a cortex is hidden where metal on the beam path covers its fracture-line landmark
    hidden = []
    for name, (lj, li) in landmarks.items():
        col, row = round(lj), round(li)
        if 0 <= row < size and 0 <= col < size and metal[row, max(col - 1, 0):col + 2].min() > 0.6:
            hidden.append(name)

    # pose: rotation about the image centre, then display mirroring
    rot = cv2.getRotationMatrix2D((half, half), film.rotation_deg, 1.0)
    att = cv2.warpAffine(att, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if metal.any():
        metal = cv2.warpAffine(metal, rot, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # AP: lateral (+x) to the image left for a right leg; lateral view: anterior (+y) to the left for a right leg
    mirror = patient.side == "R"
    for name, (lj, li) in landmarks.items():
        pj, pi = rot @ np.array([lj, li, 1.0])
        landmarks[name] = ((size - 1 - pj) if mirror else pj, pi)
    if mirror:
        att = att[:, ::-1].copy()
        metal = metal[:, ::-1].copy()

    # marker letter (lead: very attenuating)
    if film.marker_corner >= 0:
        letter = np.zeros((size, size), np.uint8)
        scale = size / 300.0
        (tw, th), _ = cv2.getTextSize(patient.side, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, int(2 * scale)))
        left, right_m, top, _bottom = film.collimation
        x0 = int(size * left) + int(0.04 * size) if film.marker_corner == 0 else \
            size - int(size * right_m) - int(0.04 * size) - tw
        y0 = int(size * top) + int(0.05 * size) + th
        cv2.putText(letter, patient.side, (x0, y0), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, max(1, int(2 * scale)),
                    cv2.LINE_AA)
        lead = _MU_MARKER * 2.0 * letter.astype(np.float32) / 255.0
        att += lead
        metal += lead

    # detector: blur, scatter, quantum and electronic noise, log
    att = cv2.GaussianBlur(att, (0, 0), max(device.blur_mm / px, 0.3))
    photons = film.photons * (px / (300.0 / 384)) ** 2
    rows = (np.arange(size, dtype=np.float32) - half) / size
    heel = (1.0 + 0.12 * rows)[:, None] * np.ones((1, size), np.float32)
    primary = photons * heel * np.exp(-att)
    # scatter arises where the beam is attenuated (tissue), spread broadly; the share is the scatter-to-primary
    # ratio behind the leg
    small = cv2.resize(primary * (1.0 - np.exp(-att)), (max(8, size // 8), max(8, size // 8)),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), max(1.0, 25.0 / (px * 8)))
    scatter = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    signal = primary + device.scatter * scatter
    white_noise = rng.standard_normal((size, size), dtype=np.float32)
    # quantum noise is correlated over ~1 pixel by the scintillator; the electronic noise is the same draw
    # shifted by a third of the image (independent enough, half the cost)
    quantum = cv2.GaussianBlur(white_noise, (0, 0), 0.6) * 1.6
    electronic = np.roll(white_noise, (size // 3, size // 3), axis=(0, 1))
    noisy = signal + np.sqrt(signal) * quantum + device.electronic_noise * photons * electronic
    reference = photons * (heel if device.flat_field else 1.0)
    log_att = -np.log(np.maximum(noisy, 0.5) / reference)

    # collimated field
    left, right_m, top, bottom = film.collimation
    jj = np.arange(size, dtype=np.float32)[None, :]
    ii = np.arange(size, dtype=np.float32)[:, None]
    pen = 1.5
    inside = (np.clip((jj - left * size) / pen, 0, 1) * np.clip(((size - 1 - right_m * size) - jj) / pen, 0, 1)
              * np.clip((ii - top * size) / pen, 0, 1) * np.clip(((size - 1 - bottom * size) - ii) / pen, 0, 1))

    # processing: low-frequency equalisation, edge enhancement, then a window set on the anatomy (as DR
    # auto-processing does): black at air, white at the brightest bone outside metal
    small_side = max(8, size // 8)
    low_small = cv2.resize(log_att, (small_side, small_side), interpolation=cv2.INTER_AREA)
    low_small = cv2.GaussianBlur(low_small, (0, 0), max(1.0, 16.0 / (px * size / small_side)))
    low = cv2.resize(low_small, (size, size), interpolation=cv2.INTER_LINEAR)
    processed = log_att - device.equalization * np.maximum(low - 0.8, 0.0)
    edge = cv2.GaussianBlur(processed, (0, 0), device.edge_sigma_mm / px)
    processed = processed + device.edge_amount * (processed - edge)
    metal_mask = cv2.dilate((metal > 0.05).astype(np.uint8), np.ones((5, 5), np.uint8))
    valid = (inside > 0.99) & (metal_mask == 0)
    sample = processed[::2, ::2][valid[::2, ::2]]
    white = float(np.partition(sample, int(0.997 * (sample.size - 1)))[int(0.997 * (sample.size - 1))]) \
        if sample.size > 100 else float(processed.max())
    white *= film.window_high
    value = np.clip((processed - 0.03) / max(white - 0.03, 1e-3), 0.0, 1.0)
    value = _tone_curve(device.gamma)[(value * (_TONE_STEPS - 1)).astype(np.int32)]

    # outside the collimated field the detector is unexposed (white) or electronically shuttered (black)
    if device.shutter == "white":
        outside = 0.93 + 0.01 * electronic
    else:
        outside = np.zeros_like(value)
    value = inside * value + (1.0 - inside) * outside
    image = np.clip(value * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, landmarks, hidden


def _draw_film(rng: np.random.Generator, patient: RustPatient, device: RustDevice, view: str) -> _Film:
    anatomy, fr = patient.anatomy, patient.fracture
    length = anatomy.tibia_length
    fov = float(rng.uniform(*device.fov_mm))
    fov = min(fov, 0.86 * length)
    centre_z = fr.level + float(rng.uniform(-0.18, 0.18)) * fov
    centre_z = float(np.clip(centre_z, 0.07 * length + fov / 2, 0.95 * length - fov / 2))
    leg = anatomy.leg(np.array([fr.level]))
    key = "cx" if view == "ap" else "cy"
    centre_u = float(leg[key][0]) + float(rng.uniform(-0.1, 0.1)) * fov
    leg_half = float(leg["ax" if view == "ap" else "ay"][0])
    # collimate to the leg with a margin; top and bottom often open
    side_margin = max(0.0, 0.5 - (leg_half + float(rng.uniform(12, 45))) / fov)
    left = float(np.clip(side_margin + rng.uniform(-0.1, 0.05), 0.0, 0.35)) if rng.random() < 0.85 else 0.0
    right = float(np.clip(side_margin + rng.uniform(-0.1, 0.05), 0.0, 0.35)) if rng.random() < 0.85 else 0.0
    top = float(rng.uniform(0.0, 0.06)) if rng.random() < 0.5 else 0.0
    bottom = float(rng.uniform(0.0, 0.06)) if rng.random() < 0.5 else 0.0
    return _Film(
        fov=fov, centre_u=centre_u, centre_z=centre_z, rotation_deg=float(np.clip(rng.normal(0, 2.0), -5, 5)),
        photons=float(device.photons * rng.uniform(0.6, 1.5)), kvp=float(device.kvp_contrast * rng.uniform(0.94, 1.06)),
        window_high=float(device.window_high * rng.uniform(0.94, 1.06)), collimation=(left, right, top, bottom),
        marker_corner=int(rng.integers(0, 2)) if rng.random() < 0.8 else -1,
    )


def render_case(patient: RustPatient, visit: int, rng: np.random.Generator, size: int = 384) -> RustCase:
    """Render follow-up ``visit`` (1-based) of ``patient`` as an AP and a lateral film, ``size`` x ``size``
    uint8 each, with labels (grades, total, generation parameters, landmark pixels)."""
    if not isinstance(size, (int, np.integer)) or size < 64:
        raise DataError(f"image size must be a whole number >= 64, got {size!r}")
    if not isinstance(visit, (int, np.integer)) or not 1 <= visit <= len(patient.visits):
        raise DataError(f"visit must be 1..{len(patient.visits)} for patient {patient.patient_id}, got {visit!r}")
    state = patient.visits[int(visit) - 1]
    device = get_device(patient.device)
    film_ap = _draw_film(rng, patient, device, "ap")
    film_lat = _draw_film(rng, patient, device, "lat")
    ap, marks_ap, hidden_ap = _render_view(patient, state, "ap", film_ap, device, rng, int(size))
    lat, marks_lat, hidden_lat = _render_view(patient, state, "lat", film_lat, device, rng, int(size))
    fr, hw = patient.fracture, patient.hardware
    tx, ty = fr.slopes
    labels: dict = {
        "patient_id": patient.patient_id, **dict(zip(CORTICES, state.grades)), "rust_total": state.total,
        "device": device.name, "visit": state.number, "n_visits": len(patient.visits), "week": state.week,
        "side": patient.side, "hardware": hw.kind, "plate_side": hw.plate_side, "cast": hw.cast,
        "hidden": "|".join(c for c in CORTICES if c in hidden_ap + hidden_lat), "fracture_level_mm": fr.level, "fracture_angle_deg": fr.angle_deg,
        "fracture_azimuth_deg": fr.azimuth_deg, "ap_line_deg": math.degrees(math.atan(tx)),
        "lat_line_deg": math.degrees(math.atan(ty)), "gap_mm": fr.gap_mm, "displacement_ml_mm": fr.shift_ml,
        "displacement_ap_mm": fr.shift_ap, "angulation_ml_deg": fr.angulation_ml_deg,
        "angulation_ap_deg": fr.angulation_ap_deg, "fibula_fracture": int(not math.isnan(fr.fibula_level)),
        "healing_stage": float(np.mean(state.stages)), "nonunion": int(patient.nonunion),
        "exposure": film_ap.photons, "electronic_noise": device.electronic_noise, "kvp_contrast": film_ap.kvp,
        "blur_mm": device.blur_mm, "scatter": device.scatter, "fov_ap_mm": film_ap.fov, "fov_lat_mm": film_lat.fov,
        "mm_per_pixel_ap": film_ap.fov / size, "mm_per_pixel_lat": film_lat.fov / size,
        "rotation_ap_deg": film_ap.rotation_deg, "rotation_lat_deg": film_lat.rotation_deg,
        "marker": int(film_ap.marker_corner >= 0), "size": int(size),
    }
    for name, (x, y) in {**marks_ap, **marks_lat}.items():
        labels[f"{name}_x"], labels[f"{name}_y"] = float(x), float(y)
    return RustCase(ap=ap, lat=lat, labels=labels)


# --------------------------------------------------------------------------------------------------------
# Dataset writer


def _format(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{float(value):.4f}"
    return str(value)


def write_rust_phantom(out_dir: str | Path, n: int, seed: int, size: int = 384,
                       devices: str | Sequence[str] | None = None, progress: bool = True) -> Path:
    """Write ``n`` film pairs: ``out_dir/<case>/ap.png``, ``out_dir/<case>/lat.png`` and ``out_dir/labels.csv``
    (columns ``RUST_COLUMNS``, one row per case). Patients (1-4 follow-ups each, sharing ``patient_id``) are
    drawn until ``n`` cases are written (the last patient may keep fewer visits). ``devices``: presets to
    draw from per patient (default all, ``A``..``E``). Same seed, same bytes. ``out_dir`` must not exist or be
    empty. Output: ``out_dir``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"number of cases must be a whole number >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a whole number >= 0, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 64:
        raise DataError(f"image size must be a whole number >= 64, got {size!r}")
    names = parse_devices(devices)
    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f"output folder {root} exists and is not an empty folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output folder {root}: {exc.strerror or exc}") from None

    def cases() -> Iterable[dict]:
        written = 0
        index = 0
        while written < n:
            patient_rng = np.random.default_rng([int(seed), index, 0])
            device = names[int(patient_rng.integers(len(names)))]
            patient = sample_patient(patient_rng, device=device, patient_id=f"s{seed}-r{index:05d}")
            for state in patient.visits:
                if written >= n:
                    return
                case = render_case(patient, state.number, np.random.default_rng([int(seed), index, state.number]),
                                   size=int(size))
                name = f"{patient.patient_id}-v{state.number}"
                folder = root / name
                folder.mkdir(exist_ok=True)
                for view, image in (("ap", case.ap), ("lat", case.lat)):
                    if not cv2.imwrite(str(folder / f"{view}.png"), image):
                        raise DataError(f"cannot write image {folder / f'{view}.png'}")
                written += 1
                yield {"case": name, **case.labels}
            index += 1

    path = root / "labels.csv"
    try:
        with open(path, "w", newline="") as handle:
            table = csv.writer(handle)
            table.writerow(RUST_COLUMNS)
            for row in progress_bar(cases(), int(n), "phantom RUST", progress, unit="case"):
                table.writerow([_format(row.get(c, "")) for c in RUST_COLUMNS])
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    return root


def phantom_main(out: str | Path, n: int, seed: int, size: int = 384, devices: str | Sequence[str] | None = None) -> int:
    """What ``sonogate phantom rust`` runs: write the dataset, print one line, return the exit code 0.
    Bad arguments raise ``DataError`` (the CLI prints it as one line, exit code 2)."""
    root = write_rust_phantom(out, n, seed, size=size, devices=devices, progress=True)
    print(f"wrote {n} phantom RUST cases (AP + lateral, {size} px, devices {','.join(parse_devices(devices))}) "
          f"to {root}")
    return 0
