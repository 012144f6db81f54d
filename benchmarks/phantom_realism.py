"""How close does the phantom look to real scans? Simple image statistics and a contact sheet.

Statistics (all on grey images resized to 256 x 256 so real and phantom are compared at the same scale):

* intensity: mean, standard deviation, 5th / 50th / 95th percentiles, share of near-black pixels (< 20);
* speckle size: full width at half maximum (pixels) of the autocorrelation of the high-passed image,
  laterally (x) and axially (y) -- for images shown in Graf's vertical convention x and y swap;
* edge density: share of Canny edge pixels after a light blur (how "busy" the picture is).

Objective closeness: the runtime's out-of-distribution image descriptor (``sonogate.runtime.image_stats``)
with a Ledoit-Wolf Mahalanobis fit (``sonogate.export.ood``) on the real standard planes resized to 160 x 160;
the median distance of phantom frames to the real fit (and of real frames to a fit on phantom frames) says how
far apart the two sets are in the statistics the runtime uses to refuse images (``ood_distances``).

``python benchmarks/phantom_realism.py --out docs/img`` writes the contact sheet, the histogram figure and a
JSON of the statistics (both phantom styles, ``"schematic"`` and ``"realistic"``), using the real images under
``../shared/data`` when present. The real Radiopaedia
frames are CC BY-NC-SA 3.0: they may appear in the docs with attribution, never in training data.

A benchmark, not part of the phantom: it compares phantom frames with real ones through the runtime's image
descriptor and the OOD fit, so it lives outside the package (the phantom imports no other stage).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sonogate.calibration.ood import fit_ood, ledoit_wolf, mahalanobis
from sonogate.data.folder import resize_gray
from sonogate.phantom.cine import sweep_frames
from sonogate.phantom.devices import DEVICES, TRAIN_DEVICES
from sonogate.phantom.hip_us import DEFECTS, render_us_frame, sample_hip_params
from sonogate.runtime.image_stats import describe_images
from sonogate.tasks.hip_xr.phantom import render_xr_frame, sample_xr_params

STAT_SIZE = 256
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 9]  # docs images: smallest files


def _gray256(image: np.ndarray) -> np.ndarray:
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if gray.shape != (STAT_SIZE, STAT_SIZE):
        gray = cv2.resize(gray, (STAT_SIZE, STAT_SIZE), interpolation=cv2.INTER_AREA)
    return gray


def _fwhm(profile: np.ndarray) -> float:
    """Full width at half maximum of a symmetric peak centred at index len//2 (linear interpolation)."""
    centre = len(profile) // 2
    peak = profile[centre]
    half = 0.5 * peak
    i = centre
    while i + 1 < len(profile) and profile[i + 1] > half:
        i += 1
    if i + 1 >= len(profile):
        return float(len(profile))
    # interpolate between i and i+1
    frac = (profile[i] - half) / max(1e-12, profile[i] - profile[i + 1])
    return 2.0 * (i - centre + frac)


def speckle_size(gray: np.ndarray) -> tuple[float, float]:
    """(lateral, axial) speckle size in pixels: FWHM of the autocorrelation of the high-passed image."""
    g = _gray256(gray).astype(np.float32)
    high = g - cv2.GaussianBlur(g, (0, 0), 4.0)
    high -= high.mean()
    spectrum = np.fft.rfft2(high)
    auto = np.fft.irfft2(np.abs(spectrum) ** 2, s=high.shape)
    auto = np.fft.fftshift(auto)
    cy, cx = auto.shape[0] // 2, auto.shape[1] // 2
    return _fwhm(auto[cy, :]), _fwhm(auto[:, cx])


def edge_density(gray: np.ndarray) -> float:
    """Share of pixels on Canny edges (thresholds 40 / 120 after a 1-pixel Gaussian blur)."""
    g = cv2.GaussianBlur(_gray256(gray), (0, 0), 1.0)
    return float(np.count_nonzero(cv2.Canny(g, 40, 120))) / g.size


def image_stats(gray: np.ndarray) -> dict[str, float]:
    """All statistics of one image (see module doc), as a flat dict of floats."""
    g = _gray256(gray)
    lat, ax = speckle_size(g)
    p5, p50, p95 = np.percentile(g, [5, 50, 95])
    return {
        "mean": float(g.mean()),
        "std": float(g.std()),
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
        "dark_share": float(np.mean(g < 20)),
        "speckle_lateral_px": lat,
        "speckle_axial_px": ax,
        "edge_density": edge_density(g),
    }


def summarize(images: Iterable[np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of every statistic over a set of images, plus the count."""
    rows = [image_stats(im) for im in images]
    if not rows:
        return {}
    out = {}
    for key in rows[0]:
        vals = np.array([r[key] for r in rows])
        out[key] = {"mean": float(vals.mean()), "sd": float(vals.std())}
    out["count"] = {"mean": float(len(rows)), "sd": 0.0}
    return out


def histogram(images: Sequence[np.ndarray], bins: int = 32) -> np.ndarray:
    """Pooled normalised intensity histogram (bins,) of a set of images."""
    hist = np.zeros(bins)
    for im in images:
        h, _ = np.histogram(_gray256(im), bins=bins, range=(0, 256))
        hist += h
    return hist / max(1.0, hist.sum())


# ----------------------------------------------------------------------------------------------------------
# Real images


def real_standard_planes(shared: Path) -> list[np.ndarray]:
    """Grey 256 x 256 standard-plane images of the SPJ set (Apache-2.0); empty when absent."""
    folder = shared / "data" / "hip-us-standard-plane" / "SPJ_dataset" / "standard_ultrasound"
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(folder.glob("*.png"))]


def real_substandard_planes(shared: Path) -> list[tuple[str, np.ndarray]]:
    """(reason, grey image) of the SPJ substandard set; empty when absent."""
    folder = shared / "data" / "hip-us-standard-plane" / "SPJ_dataset" / "substandard_ultrasound"
    return [(p.parent.name, cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in sorted(folder.glob("*/*.png"))]


def _ultrasound_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x, y, w, h) of the ultrasound sector in a screen capture: the largest bright-ish blob
    after closing, which ignores text and rulers on the black chrome."""
    mask = (cv2.GaussianBlur(gray, (0, 0), 3) > 12).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((15, 15), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    if count <= 1:
        return 0, 0, gray.shape[1], gray.shape[0]
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = stats[best, :4]
    return int(x), int(y), int(w), int(h)


def real_radiopaedia_frames(shared: Path, limit: int = 12) -> list[tuple[str, np.ndarray]]:
    """(case id, grey square crop of the ultrasound area) from the Radiopaedia cines (CC BY-NC-SA 3.0,
    docs only); empty when the folder or a JPEG 2000 decoder is missing."""
    folder = shared / "data" / "hip-radiopaedia-ddh" / "dicoms" / "ultrasound"
    try:
        import pydicom
    except ImportError:
        return []
    out = []
    for path in sorted(folder.glob("*.dcm"))[:limit]:
        try:
            frames = pydicom.dcmread(str(path)).pixel_array
        except (OSError, ValueError, RuntimeError, NotImplementedError, AttributeError):
            continue  # missing decoder or odd file: skip it, this is only for the docs
        frame = frames[len(frames) // 2] if frames.ndim == 4 else frames
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        x, y, w, h = _ultrasound_box(gray)
        side = min(w, h)
        # a centred square of the sector, trimmed a little so rulers at its border are left out
        x0, y0 = x + (w - side) // 2, y
        crop = gray[y0 + 4 : y0 + side - 4, x0 + 4 : x0 + side - 4]
        out.append((path.stem, cv2.resize(crop, (STAT_SIZE, STAT_SIZE), interpolation=cv2.INTER_AREA)))
    return out


# ----------------------------------------------------------------------------------------------------------
# Phantom images and the sheet


def phantom_images(count: int, seed: int, devices: Sequence[str], standard: bool = True,
                   style: str = "schematic") -> list[np.ndarray]:
    """``count`` phantom frames (256 x 256, as shown by each device), standard planes or a defect mix, in
    ``style`` (the same seed gives the same hips in both styles)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        params = sample_hip_params(rng)
        defect = "" if standard else DEFECTS[i % len(DEFECTS)]
        out.append(render_us_frame(params, rng, devices[i % len(devices)], 256, defect, style=style).image)
    return out


OOD_SIZE = 160  # the bundle's input side: the descriptor is computed on what the model would see


def _descriptors(images: Sequence[np.ndarray]) -> np.ndarray:
    """The runtime's image-statistics descriptors (n, DESCRIPTOR_DIM) of grey images resized to the bundle input."""
    return describe_images(np.stack([resize_gray(_gray256(im), OOD_SIZE, OOD_SIZE) for im in images]))


def ood_distances(real: Sequence[np.ndarray], sets: dict[str, Sequence[np.ndarray]]) -> dict[str, dict[str, float]]:
    """Mahalanobis distances on the runtime's image-statistics descriptor, every image resized to 160 x 160.

    ``real``: the reference real frames. Per named set of phantom frames: ``to_real_median`` / ``to_real_p90``
    (distance of its frames to a fit on ``real``; smaller = closer), ``real_to_it_median`` (distance of the
    real frames to a fit on the set: the reverse direction). ``"real (leave-one-out)"``: each real frame to a
    fit on the others, the scale of an in-distribution distance.
    """
    describe = _descriptors

    def fit(feats):
        return fit_ood(feats, np.empty((0, feats.shape[1])))

    ref = describe(real)
    real_fit = fit(ref)
    loo = [mahalanobis(ref[i : i + 1], **_mp(fit(np.delete(ref, i, 0))))[0] for i in range(len(ref))]
    out = {"real (leave-one-out)": {"to_real_median": float(np.median(loo)), "to_real_p90": float(np.percentile(loo, 90)),
                                    "real_to_it_median": float(np.median(loo)), "count": len(ref)}}
    for name, images in sets.items():
        feats = describe(images)
        to_real = mahalanobis(feats, **_mp(real_fit))
        back = mahalanobis(ref, **_mp(fit(feats)))
        out[name] = {"to_real_median": float(np.median(to_real)), "to_real_p90": float(np.percentile(to_real, 90)),
                     "real_to_it_median": float(np.median(back)), "count": len(feats)}
    return out


def separability_auc(real: Sequence[np.ndarray], phantom: Sequence[np.ndarray], folds: int = 5,
                     seed: int = 0) -> float:
    """How well a classifier tells ``real`` from ``phantom`` frames on the runtime's image-statistics
    descriptor (160 x 160, as in ``ood_distances``): out-of-fold ROC AUC of a shrinkage linear discriminant
    (Ledoit-Wolf pooled covariance, stratified ``folds``-fold cross-validation, features standardised on the
    training folds). 0.5 = indistinguishable by these statistics, 1.0 = perfectly separable. A statistical
    stand-in for "a reader could mistake one for the other at a glance", not a reader study."""
    x = np.concatenate([_descriptors(real), _descriptors(phantom)]).astype(np.float64)
    y = np.concatenate([np.ones(len(real)), np.zeros(len(phantom))])
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for label in (0, 1):  # stratified: each fold gets its share of both classes
        idx = rng.permutation(np.flatnonzero(y == label))
        fold[idx] = np.arange(len(idx)) % folds
    scores = np.empty(len(y))
    for f in range(folds):
        train, test = fold != f, fold == f
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
        z = (x - mu) / sd
        m1, m0 = z[train & (y == 1)].mean(0), z[train & (y == 0)].mean(0)
        centred = np.concatenate([z[train & (y == 1)] - m1, z[train & (y == 0)] - m0])
        cov, _ = ledoit_wolf(centred)
        w = np.linalg.solve(cov + 1e-9 * np.eye(len(cov)), m1 - m0)
        scores[test] = z[test] @ w
    return _auc(scores[y == 1], scores[y == 0])


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def blind_sheet(real: Sequence[np.ndarray], phantom: Sequence[np.ndarray], count: int = 12, seed: int = 0,
                tile: int = 160) -> tuple[np.ndarray, list[str]]:
    """A reader test: ``count`` tiles, about half real and half phantom, shuffled and numbered without saying
    which is which. Returns (sheet BGR uint8, key: "real" / "phantom" per tile number, left to right, top
    to bottom)."""
    rng = np.random.default_rng(seed)
    n_real = min(len(real), count // 2)
    n_ph = min(len(phantom), count - n_real)
    picks = [("real", real[i]) for i in rng.choice(len(real), n_real, replace=False)]
    picks += [("phantom", phantom[i]) for i in rng.choice(len(phantom), n_ph, replace=False)]
    order = rng.permutation(len(picks))
    tiles = [(str(j + 1), picks[i][1]) for j, i in enumerate(order)]
    key = [picks[i][0] for i in order]
    half = (len(tiles) + 1) // 2
    return contact_sheet([("", tiles[:half]), ("", tiles[half:])], tile=tile), key


def _mp(fitted: dict) -> dict:
    return {"mean": fitted["mean"], "precision": fitted["precision"]}


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    tile = cv2.cvtColor(tile, cv2.COLOR_GRAY2BGR) if tile.ndim == 2 else tile.copy()
    cv2.rectangle(tile, (0, 0), (tile.shape[1], 14), (0, 0, 0), -1)
    cv2.putText(tile, text, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (80, 220, 255), 1, cv2.LINE_AA)
    return tile


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], tile: int = 160) -> np.ndarray:
    """BGR sheet: one row per (row title, [(tile caption, grey image), ...]); tiles resized to ``tile``."""
    width = max(len(items) for _, items in rows)
    lines = []
    for title, items in rows:
        tiles = [_label(cv2.resize(_gray256(im), (tile, tile), interpolation=cv2.INTER_AREA), cap) for cap, im in items]
        tiles += [np.zeros((tile, tile, 3), np.uint8)] * (width - len(tiles))
        band = np.zeros((18, tile * width, 3), np.uint8)
        cv2.putText(band, title, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        lines += [band, np.hstack(tiles)]
    return np.vstack(lines)


def _histogram_figure(sets: dict[str, Sequence[np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=110)
    centres = np.arange(32) * 8 + 4
    for name, images in sets.items():
        if images:
            ax.plot(centres, histogram(images), label=f"{name} (n={len(images)})")
    ax.set_xlabel("grey level")
    ax.set_ylabel("share of pixels")
    ax.set_title("Intensity histograms, real vs phantom (256 x 256)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_report(out_dir: Path, shared: Path, seed: int = 3) -> dict:
    """Write ``phantom_contact_sheet.png``, ``phantom_xray_sheet.png``, ``phantom_cine_frame.png``,
    ``phantom_histograms.png`` and ``realism_stats.json`` under ``out_dir``; returns the statistics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    real_std = real_standard_planes(shared)
    real_sub = real_substandard_planes(shared)
    real_rp = real_radiopaedia_frames(shared)

    rng = np.random.default_rng(seed)
    sheet_rows = []
    if real_std:
        sheet_rows.append(("REAL standard planes (SPJ set, Apache-2.0)", [(f"SPJ std {i}", im) for i, im in enumerate(real_std[:6])]))
    if real_rp:
        sheet_rows.append(("REAL Radiopaedia cine frames (CC BY-NC-SA 3.0, see attribution)", [(f"rID {cid}", im) for cid, im in real_rp[:6]]))
    phantom_std, phantom_real = [], []
    for dev in ("A", "B", "C", "D", "A", "B"):
        params = sample_hip_params(rng)
        twin = copy.deepcopy(rng)  # the realistic style consumes the generator identically: same hip, same plane
        frame = render_us_frame(params, rng, dev, 256)
        phantom_std.append((f"phantom {dev} a{frame.alpha_deg:.0f} c{frame.coverage_pct:.0f}", frame.image))
        look = render_us_frame(params, twin, dev, 256, style="realistic")
        phantom_real.append((f"realistic {dev} a{look.alpha_deg:.0f} c{look.coverage_pct:.0f}", look.image))
    sheet_rows.append(("PHANTOM standard planes (devices A B C D A B)", phantom_std))
    sheet_rows.append(("PHANTOM realistic style (same hips and planes)", phantom_real))
    if real_sub:
        picks = real_sub[::5][:6]
        sheet_rows.append(("REAL substandard (SPJ set)", [(reason[:26], im) for reason, im in picks]))
    phantom_sub = []
    for defect in ("tilt", "no_labrum", "no_lower_limb", "anterior", "posterior", "no_chondro_osseous"):
        params = sample_hip_params(rng)
        phantom_sub.append((f"realistic {defect}", render_us_frame(params, rng, "A", 256, defect, style="realistic").image))
    sheet_rows.append(("PHANTOM substandard (defects, realistic style)", phantom_sub))
    ood = render_us_frame(sample_hip_params(rng), rng, "X_extreme_gain", 256).image
    sheet = contact_sheet(sheet_rows + [("PHANTOM OOD device X_extreme_gain", [("X_extreme_gain", ood)])])
    cv2.imwrite(str(out_dir / "phantom_contact_sheet.png"), sheet, _PNG)

    # X-ray: real pelvic radiographs (Fraiwan et al. 2022, CC BY 4.0) beside phantom ones.
    xr_real = sorted((shared / "data" / "hip-radiopaedia-ddh" / "other" / "xray").glob("331_DDH_1[0-9]*.jpg"))
    xr_real = [p for p in xr_real if "processed" not in p.name][:4]
    xr_rows = []
    if xr_real:
        xr_rows.append(("REAL pelvic AP radiographs (Fraiwan et al. 2022, CC BY 4.0)",
                        [(p.stem, cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in xr_real]))
    xr_ph = []
    for _ in range(4):
        frame = render_xr_frame(sample_xr_params(rng), rng, 256)
        caption = (f"R ai{frame.ai_deg_right:.0f} ce{frame.ce_deg_right:.0f} g{frame.ihdi_right} "
                   f"L ai{frame.ai_deg_left:.0f} ce{frame.ce_deg_left:.0f} g{frame.ihdi_left}")
        xr_ph.append((caption, frame.image))
    xr_rows.append(("PHANTOM pelvic AP radiographs (AI / CE / IHDI per hip)", xr_ph))
    cv2.imwrite(str(out_dir / "phantom_xray_sheet.png"), contact_sheet(xr_rows), _PNG)
    # What a capture card sees: one cine frame with scanner chrome.
    for index, (screen, _) in enumerate(sweep_frames(7, 3.0, 5.0, size=256, chrome=True)):
        if index == 6:
            cv2.imwrite(str(out_dir / "phantom_cine_frame.png"), screen, _PNG)
            break

    # Statistics on the same device mix the model trains on, plus the held-out device alone.
    horizontal = [d for d in TRAIN_DEVICES if DEVICES[d].orientation == "horizontal"]
    train_imgs = phantom_images(48, seed + 1, horizontal)
    held_imgs = phantom_images(24, seed + 2, ["D"])
    real_imgs = phantom_images(48, seed + 1, horizontal, style="realistic")
    sets = {"real SPJ standard": real_std, "real Radiopaedia": [im for _, im in real_rp],
            "phantom A+B": train_imgs, "phantom D (held out)": held_imgs, "phantom A+B realistic": real_imgs}
    _histogram_figure(sets, out_dir / "phantom_histograms.png")
    stats = {name: summarize(images) for name, images in sets.items() if images}
    if real_std:
        stats["_ood"] = ood_distances(real_std, {"phantom A+B": train_imgs, "phantom A+B realistic": real_imgs,
                                                 "phantom D (held out)": held_imgs,
                                                 "real Radiopaedia": [im for _, im in real_rp]})
        stats["_separability_auc"] = {
            name: separability_auc(real_std, images)
            for name, images in (("phantom A+B", train_imgs), ("phantom A+B realistic", real_imgs),
                                 ("phantom D (held out)", held_imgs), ("real Radiopaedia", [im for _, im in real_rp]),
                                 ("real SPJ substandard", [im for _, im in real_sub]))
            if len(images) >= 10
        }
        sheet, key = blind_sheet(real_std, phantom_images(12, seed + 5, horizontal, style="realistic"), seed=seed)
        cv2.imwrite(str(out_dir / "phantom_blind_sheet.png"), sheet, _PNG)
        stats["_blind_sheet_key"] = key
    (out_dir / "realism_stats.json").write_text(json.dumps(stats, indent=2))
    return stats


def stats_markdown(stats: dict) -> str:
    """A markdown table of the summary statistics (mean +- sd per set)."""
    keys = ["mean", "std", "p5", "p50", "p95", "dark_share", "speckle_lateral_px", "speckle_axial_px", "edge_density"]
    names = [n for n in stats if not n.startswith("_")]
    lines = ["| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = []
        for name in names:
            v = stats[name][key]
            fmt = "{:.3f}" if key in ("dark_share", "edge_density") else "{:.1f}"
            cells.append(f"{fmt.format(v['mean'])} +- {fmt.format(v['sd'])}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("| images | " + " | ".join(str(int(stats[n]["count"]["mean"])) for n in names) + " |")
    if "_ood" in stats:
        lines += ["", "| set | median distance to real SPJ fit | p90 | median distance of real SPJ to its fit | images |",
                  "|---|---:|---:|---:|---:|"]
        for name, row in stats["_ood"].items():
            lines.append(f"| {name} | {row['to_real_median']:.1f} | {row['to_real_p90']:.1f} | "
                         f"{row['real_to_it_median']:.1f} | {row['count']} |")
    if "_separability_auc" in stats:
        lines += ["", "| set vs real SPJ standard planes | cross-validated AUC (0.5 = indistinguishable) |", "|---|---:|"]
        lines += [f"| {name} | {auc:.2f} |" for name, auc in stats["_separability_auc"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="phantom realism report: contact sheet and image statistics")
    parser.add_argument("--out", default="docs/img", help="output folder (default docs/img)")
    parser.add_argument("--shared", default="../shared", help="shared data folder (default ../shared)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    stats = build_report(Path(args.out), Path(args.shared), args.seed)
    print(stats_markdown(stats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
