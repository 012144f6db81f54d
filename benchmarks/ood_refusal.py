"""Out-of-distribution refusal on a real bundle: what the runtime does with inputs it must never reassure on.

Each category is replayed through a fresh ``Session`` (the same code a cart runs) as a short still or cine
sequence. Per category we report: frames, share refused by the OOD check, share refused by the quality gate,
share accepted into the aggregate, and how many frames ended "us_sufficient" (must be 0 for every unsafe
category). The real standard planes show the price: how many are still accepted.

    .venv/bin/python benchmarks/ood_refusal.py --bundle demo/bundle --out benchmarks/results

Writes ``ood_refusal.json`` and ``ood_refusal.md``. Real data comes from ../shared/data (categories whose data
is absent are reported as skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
REPEAT_STILL = 8  # a still image is replayed like a frozen probe: enough frames to pass min_frames + confirm


def _stills(paths, repeat=REPEAT_STILL):
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            yield [image] * repeat


def _synthetic(kind: str, n: int, rng):
    for _ in range(n):
        if kind == "noise":
            frames = [rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8) for _ in range(REPEAT_STILL)]
        elif kind == "black":
            frames = [np.zeros((480, 640, 3), np.uint8)] * REPEAT_STILL
        elif kind == "flat_grey":
            frames = [np.full((480, 640, 3), int(rng.integers(60, 200)), np.uint8)] * REPEAT_STILL
        elif kind == "ui_text":
            screen = np.zeros((480, 640, 3), np.uint8)
            for row in range(12):
                text = "".join(chr(int(c)) for c in rng.integers(65, 90, size=30))
                cv2.putText(screen, text, (10, 30 + row * 36), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (230, 230, 230), 2)
            frames = [screen] * REPEAT_STILL
        else:
            raise ValueError(kind)
        yield frames


def _phantom(device: str, n: int, seed: int, standard: bool = True):
    from sonogate.phantom.hip_us import render_us_frame, sample_hip_params

    rng = np.random.default_rng(seed)
    for _ in range(n):
        params = sample_hip_params(rng)
        frames = []
        for _ in range(REPEAT_STILL):
            frame = render_us_frame(params, rng, device=device, defect="" if standard else "tilt")
            frames.append(cv2.cvtColor(frame.image, cv2.COLOR_GRAY2BGR))
        yield frames


def _dicom(path: Path):
    from sonogate.data.dicom import read_dicom_frames

    frames = read_dicom_frames(path)
    yield [f for f in frames]


def categories(seed: int):
    rng = np.random.default_rng(seed)
    spj = SHARED / "hip-us-standard-plane" / "SPJ_dataset"
    generic = SHARED / "us-dicom-generic"
    return [
        # name, unsafe (must never reassure), sequences factory, what it is
        ("non-hip cine (cardiac, SonoSite)", True, lambda: _dicom(generic / "examples_ybr_color.dcm"),
         "../shared/data/us-dicom-generic/examples_ybr_color.dcm, 30 frames", generic.is_dir()),
        ("non-hip ultrasound (palette, RGB stills)", True,
         lambda: (list(seq) for p in ("examples_palette.dcm", "examples_rgb_color.dcm")
                  for seq in _dicom(generic / p)), "2 pydicom ultrasound stills", generic.is_dir()),
        ("uniform noise", True, lambda: _synthetic("noise", 10, rng), "10 x 640x480 random", True),
        ("black", True, lambda: _synthetic("black", 3, rng), "3 x black", True),
        ("flat grey", True, lambda: _synthetic("flat_grey", 10, rng), "10 x uniform grey", True),
        ("UI text only", True, lambda: _synthetic("ui_text", 10, rng), "10 x screens of text", True),
        ("real substandard planes (SPJ)", True,
         lambda: _stills(sorted((spj / "substandard_ultrasound").rglob("*.png"))), "25 real PNGs, 5 reasons",
         spj.is_dir()),
        ("phantom, unseen device, extreme gain", True, lambda: _phantom("X_extreme_gain", 20, seed),
         "20 hips, device X_extreme_gain", True),
        ("phantom off-plane (tilt), training devices", True, lambda: _phantom("A", 20, seed + 1, standard=False),
         "20 hips, device A, tilted probe", True),
        ("real standard planes (SPJ)", False,
         lambda: _stills(sorted((spj / "standard_ultrasound").glob("*.png"))), "26 real PNGs", spj.is_dir()),
        ("phantom standard planes, held-out device D", False, lambda: _phantom("D", 20, seed + 2),
         "20 hips, device D", True),
        ("phantom standard planes, training device A", False, lambda: _phantom("A", 20, seed + 3),
         "20 hips, device A", True),
    ]


def evaluate(bundle: str, seed: int = 0, device: str = "auto") -> dict:
    from sonogate.runtime.session import Session

    rows = []
    for name, unsafe, factory, what, available in categories(seed):
        if not available:
            rows.append({"category": name, "unsafe": unsafe, "skipped": "data not found", "what": what})
            continue
        counts = {"frames": 0, "gate": 0, "ood": 0, "quality": 0, "accepted": 0, "fault": 0, "us_sufficient": 0,
                  "sequences": 0, "sequences_reassured": 0}
        with Session(bundle, device=device) as session:
            for frames in factory():
                session.reset()
                reassured = False
                counts["sequences"] += 1
                for frame in frames:
                    event = session.process(frame)
                    counts["frames"] += 1
                    if event["fault"]:
                        counts["fault"] += 1
                    elif event.get("refusal"):
                        counts["gate"] += 1
                    elif event["out_of_distribution"]:
                        counts["ood"] += 1
                    elif (event["plane_probability"] or 0.0) < session.recommender.aggregation.quality_threshold:
                        counts["quality"] += 1
                    else:
                        counts["accepted"] += 1
                    if event["recommendation"] == "us_sufficient":
                        counts["us_sufficient"] += 1
                        reassured = True
                counts["sequences_reassured"] += int(reassured)
        frames = max(counts["frames"], 1)
        rows.append({
            "category": name, "unsafe": unsafe, "what": what, **counts,
            "refused_gate": round(counts["gate"] / frames, 3),
            "refused_ood": round(counts["ood"] / frames, 3),
            "refused_quality": round(counts["quality"] / frames, 3),
            "refused_total": round((counts["gate"] + counts["ood"] + counts["quality"] + counts["fault"]) / frames, 3),
            "accepted_rate": round(counts["accepted"] / frames, 3),
        })
    unsafe_reassured = sum(r.get("us_sufficient", 0) for r in rows if r["unsafe"])
    return {"bundle": bundle, "seed": seed, "rows": rows, "unsafe_us_sufficient_frames": unsafe_reassured}


def to_markdown(result: dict) -> str:
    lines = [
        ("| input | must refuse | frames | refused (image gates) | refused (OOD features) | refused (plane head) "
        "| accepted | us_sufficient frames |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['category']} | {'yes' if r['unsafe'] else 'no'} | skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['category']} ({r['what']}) | {'yes' if r['unsafe'] else 'no'} | {r['frames']} | "
                     f"{r['refused_gate']:.0%} | {r['refused_ood']:.0%} | {r['refused_quality']:.0%} | {r['accepted_rate']:.0%} | "
                     f"{r['us_sufficient']} |")
    lines.append("")
    lines.append(f"us_sufficient frames on inputs that must be refused: **{result['unsafe_us_sufficient_frames']}**")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(ROOT / "demo" / "bundle"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    result = evaluate(args.bundle, args.seed, args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ood_refusal.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (out / "ood_refusal.md").write_text(markdown)
    print(markdown)
    return 0 if result["unsafe_us_sufficient_frames"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
