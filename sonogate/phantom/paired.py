"""Paired phantom hips: one ultrasound hip and the acetabular index (AI) its pelvic X-ray would show.

The ultrasound phantom (``hip_us``) and the X-ray phantom (``xray``) are sampled independently elsewhere. Here
each hip is sampled once, as ``sample_hip_params`` does for the ultrasound phantom, and its X-ray AI is derived
from the same acetabular roof (the Graf alpha angle) by an explicit model:

    AI = clip(intercept + slope * alpha_true + N(0, noise_sd), ai_min, ai_max)
       = clip(65 - 0.67 * alpha_true + N(0, 3.5), 5, 50)           (defaults, degrees)

so alpha 60 -> AI about 25 and alpha 45 -> about 35. The sign and rough size follow the negative alpha / AI
relation reported in the literature (correlations around r = -0.6), but **the line, its noise and the clip are
our assumption, not a clinical fact**. On the default Graf mix of ``sample_hip_params`` the relation is stronger
than the literature's (r about -0.88, see docs/xray.md). A surrogate that predicts AI from ultrasound on these
pairs therefore measures how well the ultrasound model recovers the bony roof, not whether ultrasound can stand
in for a radiograph in the clinic.

Layout: patients with two hips (``R`` and ``L``, drawn independently: the phantom has no bilateral correlation),
one scanner preset per patient (drawn from ``devices``, default the training presets A / B / C), and
``frames_per_hip`` standard-plane frames per hip (plane offset within +-0.3, sub-millimetre probe jitter, as
``writer.write_us_dataset`` draws them). Each patient has its own random stream (``SeedSequence(seed).spawn``),
and a hip's truth is drawn before its frames, so the truth of patient i does not depend on ``frames_per_hip``
or on how many patients are generated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from sonogate.errors import SonogateError
from sonogate.phantom.devices import TRAIN_DEVICES, get_device
from sonogate.phantom.hip_us import HipParams, UsFrame, render_us_frame, sample_hip_params

SIDES = ("R", "L")


@dataclass(frozen=True)
class AiModel:
    """The assumed map from the hip's true Graf alpha to its radiographic acetabular index (degrees).

    ``ai = clip(intercept + slope * alpha + N(0, noise_sd), ai_min, ai_max)``. Defaults: 65, -0.67, 3.5, [5, 50].
    This is a modelling assumption of the phantom, not a clinical relation.
    """

    intercept: float = 65.0
    slope: float = -0.67
    noise_sd: float = 3.5
    ai_min: float = 5.0
    ai_max: float = 50.0

    def __post_init__(self) -> None:
        values = (self.intercept, self.slope, self.noise_sd, self.ai_min, self.ai_max)
        if not all(math.isfinite(v) for v in values):
            raise SonogateError(f"AI model parameters must be finite, got {values}")
        if self.noise_sd < 0 or self.ai_min >= self.ai_max:
            raise SonogateError(f"AI model needs noise_sd >= 0 and ai_min < ai_max, got {self}")

    def mean_ai(self, alpha_deg) -> np.ndarray | float:
        """Noise-free, unclipped AI for a given alpha (the oracle's best guess)."""
        return self.intercept + self.slope * np.asarray(alpha_deg, dtype=np.float64)

    def sample(self, alpha_deg: float, rng: np.random.Generator) -> float:
        """One hip's AI: the line plus one normal draw, clipped."""
        noise = float(rng.normal(0.0, self.noise_sd)) if self.noise_sd > 0 else 0.0
        return float(np.clip(float(self.mean_ai(alpha_deg)) + noise, self.ai_min, self.ai_max))

    def oracle_mae(self) -> float:
        """Expected |AI - mean_ai(alpha)| with the true alpha known: noise_sd * sqrt(2 / pi) (clip ignored)."""
        return self.noise_sd * math.sqrt(2.0 / math.pi)

    def to_dict(self) -> dict:
        return {
            "formula": "clip(intercept + slope * alpha_true + N(0, noise_sd), ai_min, ai_max)",
            "intercept": self.intercept,
            "slope": self.slope,
            "noise_sd": self.noise_sd,
            "ai_min": self.ai_min,
            "ai_max": self.ai_max,
            "status": "assumption of the phantom, not a clinical relation",
        }


DEFAULT_AI_MODEL = AiModel()


@dataclass
class PairedHip:
    """One hip with its ultrasound frames and the AI of its (virtual) radiograph.

    patient_id, side ("R" / "L"), hip_id = f"{patient_id}-{side}"; device: scanner preset of the frames.
    params: the ``HipParams`` (alpha_deg, beta_deg, coverage_pct are the standard-plane truth).
    ai_deg: the X-ray AI truth; ai_mean_deg: its noise-free, unclipped part ``AiModel.mean_ai(alpha)``.
    frames: ``UsFrame`` standard planes of this hip (empty when ``frames_per_hip`` is 0).
    """

    patient_id: str
    side: str
    device: str
    params: HipParams
    ai_deg: float
    ai_mean_deg: float
    frames: list[UsFrame] = field(default_factory=list)

    @property
    def hip_id(self) -> str:
        return f"{self.patient_id}-{self.side}"

    @property
    def alpha_deg(self) -> float:
        return self.params.alpha_deg

    @property
    def beta_deg(self) -> float:
        return self.params.beta_deg

    @property
    def coverage_pct(self) -> float:
        return self.params.coverage_pct

    def truth(self) -> dict:
        """The hip's labels (no images)."""
        return {
            "patient_id": self.patient_id,
            "side": self.side,
            "hip_id": self.hip_id,
            "device": self.device,
            "alpha_deg": self.alpha_deg,
            "beta_deg": self.beta_deg,
            "coverage_pct": self.coverage_pct,
            "ai_deg": self.ai_deg,
            "ai_mean_deg": self.ai_mean_deg,
            "graf_type": self.params.graf_type(),
        }


def iter_paired_patients(
    n_patients: int,
    seed: int,
    frames_per_hip: int = 4,
    devices: Sequence[str] = TRAIN_DEVICES,
    size: int = 256,
    ai_model: AiModel = DEFAULT_AI_MODEL,
    id_prefix: str = "pair",
) -> Iterator[list[PairedHip]]:
    """Yield ``n_patients`` patients, each a list of two ``PairedHip`` (R, L), lazily (images are large).

    Same arguments, same hips and frames. ``frames_per_hip`` 0 draws the truth only (fast). Patient ids are
    ``f"{id_prefix}{seed}-p{i:05d}"``.
    """
    if isinstance(n_patients, bool) or int(n_patients) != n_patients or n_patients < 0:
        raise SonogateError(f"number of patients must be a whole number >= 0, got {n_patients!r}")
    if isinstance(frames_per_hip, bool) or int(frames_per_hip) != frames_per_hip or frames_per_hip < 0:
        raise SonogateError(f"frames per hip must be a whole number >= 0, got {frames_per_hip!r}")
    device_names = [get_device(d).name for d in devices]
    if not device_names:
        raise SonogateError("no device given")
    for i, child in enumerate(np.random.SeedSequence(int(seed)).spawn(int(n_patients))):
        truth_rng, image_rng = (np.random.default_rng(s) for s in child.spawn(2))
        device = device_names[int(truth_rng.integers(len(device_names)))]
        patient_id = f"{id_prefix}{seed}-p{i:05d}"
        hips = []
        for side in SIDES:
            params = sample_hip_params(truth_rng)
            ai = ai_model.sample(params.alpha_deg, truth_rng)
            hips.append(
                PairedHip(
                    patient_id=patient_id,
                    side=side,
                    device=device,
                    params=params,
                    ai_deg=ai,
                    ai_mean_deg=float(ai_model.mean_ai(params.alpha_deg)),
                )
            )
        for hip in hips:
            for _ in range(int(frames_per_hip)):
                offset = float(image_rng.uniform(-0.3, 0.3))
                shift = (float(image_rng.normal(0.0, 0.6)), float(image_rng.normal(0.0, 0.4)))
                hip.frames.append(
                    render_us_frame(
                        hip.params,
                        image_rng,
                        device,
                        size,
                        "",
                        offset,
                        probe_shift_mm=shift,
                        probe_rot_deg=float(image_rng.normal(0.0, 1.0)),
                    )
                )
        yield hips


def paired_hips(n_patients: int, seed: int, **kwargs) -> list[PairedHip]:
    """All hips of ``iter_paired_patients(n_patients, seed, **kwargs)`` in one list (2 per patient)."""
    return [hip for patient in iter_paired_patients(n_patients, seed, **kwargs) for hip in patient]
