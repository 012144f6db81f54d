"""``sonogate bmd recalibrate``: calibrate a bmd bundle for a new device (site) on the cart, torch-free.

Inputs: the base bundle; ``--data SITE_DIR``, a random sample of the site's AP hip radiographs with their DEXA
femoral-neck BMD (``labels.csv``: ``image``, ``patient_id``, ``side`` R/L, ``bmd_g_cm2``; a hip without a value is
not used); optionally ``--osteoporotic DIR`` (same layout), radiographs of patients with a DEXA-confirmed
osteoporosis (T <= -2.5), which the screening bound needs and a random sample rarely holds enough of.
Output: a new bundle folder (the base's files, the manifest's provenance naming the base, the site data's hash
and the fit; signed when given a key) whose calibration.json is the site's:

* the base bundle's runtime model (the same wrapper ``sonogate analyze`` runs) reads every radiograph; hips it
  refuses are not used (the runtime refuses them at the site as well);
* the site's patients are split in two halves: the first refits the correction (by default only its offset, the
  device's bias, keeping the bundle's slope; ``--refit affine`` both), the second gives the interval radius
  (``calibrate.fit_site_calibration``);
* the screening radius is fitted on the osteoporotic hips of the second half and of ``--osteoporotic``, under the
  site's affine correction. With fewer radiographs than the rank needs at delta (9 at 0.1) it is null: the
  bundle then gives values with intervals but refers every hip, and the command says how many are missing. The
  base bundle's screening radius is never kept: it carries no guarantee to another device.
* ``--device NAME`` (repeatable): the site's acquisition device as its DICOM headers state it ("Manufacturer
  ManufacturerModelName"); the new calibration holds for those devices only, and the runtime refers every hip of
  a DICOM radiograph from another one. Without it the site calibration is not bound to a device (said in the log).

Refuses (one line, non-zero exit) when the interval half has fewer usable radiographs than the rank needs.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonogate.core.bundle import load_bundle
from sonogate.core.derived import seal_derived_bundle
from sonogate.errors import DataError, SonogateError
from sonogate.tasks.bmd.calibrate import (
    calibration_file,
    fit_site_calibration,
    minimum_osteoporotic,
    osteoporotic_images,
)
from sonogate.tasks.bmd.data import read_label_rows
from sonogate.tasks.bmd.model import device_name

SIDE_NAMES = {"r": 0, "right": 0, "l": 1, "left": 1}
_COLUMNS = ("image", "patient_id", "side", "bmd_g_cm2")


@dataclass
class SiteRadiographs:
    """One row per radiograph of a site folder: raw (n, 2) the model's BMD per hip (right, left; nan when refused),
    true (n, 2) the DEXA BMD (nan: not labelled), usable (n, 2) labelled and read."""

    root: Path
    images: list[str]
    patients: np.ndarray
    raw: np.ndarray
    true: np.ndarray
    usable: np.ndarray
    refused: int


def read_site_labels(root: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``root/labels.csv`` -> (image names, patient ids, true BMD (n, 2) with nan where a hip has no value)."""
    path, rows = read_label_rows(root, _COLUMNS, f"columns {', '.join(_COLUMNS)}: one row per hip with a DEXA value")
    by_image: dict[str, dict] = {}
    for line, row in enumerate(rows, start=2):
        side = SIDE_NAMES.get(str(row["side"]).strip().lower())
        if side is None:
            raise DataError(f"{path} line {line}: side {row['side']!r} is not R / L")
        value = str(row["bmd_g_cm2"]).strip()
        try:
            bmd = float(value) if value else float("nan")
        except ValueError:
            raise DataError(f"{path} line {line}: bmd_g_cm2 {value!r} is not a number") from None
        if value and not 0.1 <= bmd <= 2.5:
            raise DataError(f"{path} line {line}: bmd_g_cm2 {bmd} is not a femoral-neck BMD in g/cm2")
        entry = by_image.setdefault(row["image"], {"patient": row["patient_id"], "bmd": [float("nan")] * 2})
        if entry["patient"] != row["patient_id"]:
            raise DataError(f"{path} line {line}: image {row['image']} listed under two patients")
        entry["bmd"][side] = bmd
    names = sorted(by_image)
    return (names, np.array([by_image[n]["patient"] for n in names]),
            np.array([by_image[n]["bmd"] for n in names], dtype=np.float64))


def read_site(model, root: str | Path, progress: bool = True) -> SiteRadiographs:
    """Run the bundle's per-image model over every labelled radiograph of ``root``."""
    from tqdm import tqdm

    from sonogate.data.folder import load_gray_image

    root = Path(root)
    names, patients, true = read_site_labels(root)
    raw = np.full((len(names), 2), np.nan)
    refused = 0
    for i, name in enumerate(tqdm(names, desc=f"reading {root.name}", disable=not progress, unit="image")):
        gray = load_gray_image(root / name)
        try:
            result = model.analyze(gray, None, [])
        except DataError:
            refused += 1  # the runtime refuses this radiograph at the site too
            continue
        for s, side in enumerate(("right", "left")):
            hip = result["hips"][side]
            if not hip.get("refused"):
                raw[i, s] = float(hip["raw_bmd_g_cm2"])
    usable = np.isfinite(raw) & np.isfinite(true)
    return SiteRadiographs(root, names, patients, raw, np.nan_to_num(true), usable, refused)


def folder_sha256(root: Path, names: list[str]) -> str:
    """sha256 over labels.csv and every listed image (name and bytes)."""
    digest = hashlib.sha256((root / "labels.csv").read_bytes())
    for name in names:
        digest.update(name.encode())
        digest.update((root / name).read_bytes())
    return digest.hexdigest()


def recalibrate_site(bundle_dir: str | Path, data: str | Path, out: str | Path, delta: float = 0.1,
                     osteoporotic: str | Path | None = None, seed: int = 0, key: str | Path | None = None,
                     refit: str = "offset", command: str = "", progress: bool = True,
                     log: Callable[[str], None] = print, devices: list[str] | None = None) -> dict:
    """The whole ``sonogate bmd recalibrate`` (module docstring). Returns a summary dict."""
    from sonogate.runtime.model_api import described_manifest, load_image_model

    start = time.perf_counter()
    if not 0 < delta < 1:
        raise SonogateError(f"--delta must be in (0, 1), got {delta}")
    devices = [device_name(d) for d in devices] if devices else None
    if devices is not None and not all(devices):
        raise SonogateError("--device needs a name (Manufacturer ManufacturerModelName as the DICOM header says)")
    base = load_bundle(bundle_dir)
    if base.task != "bmd":
        raise SonogateError(f"bundle {bundle_dir} is task {base.task}, not bmd")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SonogateError(f"--out {out} exists and is not empty: choose a new folder for the site's bundle")
    if refit not in ("offset", "affine"):
        raise SonogateError(f"--refit must be offset or affine, got {refit!r}")
    slope = None
    if refit == "offset":
        from sonogate.calibration.calfile import load_calibration

        if not base.calibration_path.is_file():
            raise SonogateError(f"bundle {bundle_dir} has no calibration.json: its slope cannot be kept (--refit affine)")
        slope = load_calibration(base.calibration_path, bundle_hash=base.bundle_hash).measurements["bmd_g_cm2"].a
    model = load_image_model(bundle_dir, device="ort-cpu", threads=1)
    site = read_site(model, data, progress)
    need = minimum_osteoporotic(delta)
    rng = np.random.default_rng(seed)
    patients = np.unique(site.patients)
    rng.shuffle(patients)
    fit_patients = set(patients[: len(patients) // 2])
    in_fit = np.array([p in fit_patients for p in site.patients])
    has_hip = site.usable.any(axis=1)
    fit_idx, conformal_idx = np.flatnonzero(in_fit & has_hip), np.flatnonzero(~in_fit & has_hip)
    if conformal_idx.size < need or site.usable[fit_idx].sum() < 4:
        raise DataError(f"{data}: {int(has_hip.sum())} radiographs with a labelled hip the bundle reads "
                        f"({site.refused} refused whole); site recalibration at delta {delta} needs at least "
                        f"{2 * need} (half refit the correction, half the interval radius)")
    raw, true, usable = site.raw, site.true, site.usable
    osteo_idx = np.array([], dtype=np.int64)
    extra = None
    if osteoporotic is not None:
        extra = read_site(model, osteoporotic, progress)
        overlap = set(extra.patients) & fit_patients
        if overlap:
            raise DataError(f"--osteoporotic {osteoporotic}: patients {', '.join(sorted(overlap)[:3])} are also in "
                            f"the half of {data} that fits the correction (use other patients)")
        offset = len(raw)
        raw = np.concatenate([raw, extra.raw])
        true = np.concatenate([true, extra.true])
        usable = np.concatenate([usable, extra.usable])
        osteo_idx = offset + np.arange(len(extra.raw))
    cal = fit_site_calibration(np.nan_to_num(raw), true, usable, fit_idx, conformal_idx, osteo_idx, delta, slope)
    n_osteo = int(np.intersect1d(osteoporotic_images(true, usable), np.union1d(conformal_idx, osteo_idx)).size)
    data_hash = folder_sha256(site.root, site.images)
    if extra is not None:
        data_hash = hashlib.sha256((data_hash + folder_sha256(extra.root, extra.images)).encode()).hexdigest()
    summary = {
        "base_bundle": str(base.path), "base_manifest_sha256": base.bundle_hash, "command": command,
        "data": str(Path(data).resolve()), "osteoporotic_data": None if extra is None else str(extra.root.resolve()),
        "data_sha256": data_hash, "n_radiographs": len(site.images), "n_refused": site.refused,
        "n_patients": len(patients), "n_fit_radiographs": int(fit_idx.size),
        "n_interval_radiographs": int(conformal_idx.size), "n_osteoporotic_radiographs": n_osteo,
        "delta": delta, "seed": seed, "refit": refit, "affine": {"a": cal["a"], "b": cal["b"]},
        "devices": devices,
        "interval_radius_g_cm2": cal["radius"], "screening_radius_g_cm2": cal["decision_radius"],
        "screening": "calibrated on the site's osteoporotic hips" if cal["decision_radius"] is not None else
                     f"not calibrated: {n_osteo} radiographs with an osteoporotic hip, {need} needed: every hip "
                     "referred",
    }
    _write_site_bundle(base, out, cal, summary, key, described_manifest(base))
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    summary["out"] = str(out)
    log(f"site calibration: a {cal['a']:.3f}, b {cal['b']:+.3f}; interval radius {cal['radius']:.3f} g/cm2 "
        f"(n {cal['n']}); screening radius "
        + (f"{cal['decision_radius']:.3f} (n {cal['decision_n']})" if cal["decision_radius"] is not None else
           f"none: {n_osteo} radiographs with an osteoporotic hip, {need} needed (add them with --osteoporotic DIR); "
           "until then every hip is referred")
        + f" -> {out}")
    if not summary["devices"]:
        log("the site calibration is not bound to a device: radiographs of any device get its bounds (name the "
            "site's device with --device)")
    return summary


def _write_site_bundle(base, out: Path, cal: dict, summary: dict, key, manifest: dict) -> None:
    manifest = dict(manifest)
    out.mkdir(parents=True, exist_ok=True)
    for rel in base.manifest["files"]:
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base.path / rel, target)
    provenance = dict(manifest.get("provenance") or {})
    provenance["site_recalibration"] = dict(summary)
    manifest["provenance"] = provenance
    manifest.pop("files", None)
    calibration = calibration_file(
        cal, summary["delta"], None,  # bound to the new manifest when sealed
        data={"site": summary["data"], "osteoporotic": summary["osteoporotic_data"],
              "data_sha256": summary["data_sha256"],
              "affine_fit": f"{summary['n_fit_radiographs']} radiographs of half the site's patients",
              "conformal": f"{summary['n_interval_radiographs']} radiographs of the other half",
              "screening": f"{summary['n_osteoporotic_radiographs']} radiographs with an osteoporotic hip",
              "model_variant": "the runtime's (INT8 when the bundle has one)"},
        holds_for="radiographs of this site's device, exchangeable with the site radiographs it was calibrated on",
        devices=summary["devices"])
    seal_derived_bundle(out, manifest, calibration, key)
