"""Bad input for the bmd bundle: how often each kind of input is refused (per hip), never given a made-up BMD.

    .venv/bin/python benchmarks/bmd_refusal.py --bundle bundles/bmd --out benchmarks/results [--knee DIR]

Inputs, each through ``BmdModel.analyze`` (what ``sonogate analyze`` runs), ``--n`` of each kind:
* adult AP pelvis phantoms of the training devices A-D (seed 7, unseen): should be read, both hips;
* the same with one hip moved out of the field (``phantom.with_hip_out_of_field``): that hip refused;
* infant pelvis radiograph phantoms (task hip_xr), tibia radiograph phantoms (task rust), hip ultrasound frames
  (the ultrasound phantom), real knee radiographs (``--knee``: the CC BY 4.0 knee set, Chen 2018, OAI), blank
  and saturated images: every hip refused (a DataError for the whole image, or a per-hip refusal).
Writes ``bmd_refusal.json`` and ``bmd_refusal.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pelvis_images(n: int, seed: int, out_of_field: bool):
    from sonogate.tasks.bmd import phantom

    rng = np.random.default_rng(seed)
    for _ in range(n):
        subject = phantom.sample_subject(rng, str(rng.choice(["A", "B", "C", "D"])))
        side = str(rng.choice(["R", "L"]))
        if out_of_field:
            subject = phantom.with_hip_out_of_field(subject, side)
        image = phantom.render_radiograph(subject, rng, 512).image
        yield image, ("right" if side == "R" else "left") if out_of_field else None


def other_images(kind: str, n: int, seed: int, knee: Path | None):
    import cv2

    rng = np.random.default_rng(seed)
    if kind == "infant pelvis radiograph (hip_xr phantom)":
        from sonogate.tasks.hip_xr import phantom as xr

        for _ in range(n):
            yield xr.render_xr_frame(xr.sample_xr_params(rng), rng, 384).image
    elif kind == "tibia radiograph (rust phantom)":
        from sonogate.tasks.rust import phantom as rust

        for i in range(n):
            patient = rust.sample_patient(rng, None, f"p{i}")
            yield rust.render_case(patient, 1, rng, 384).ap
    elif kind == "hip ultrasound frame (phantom)":
        from sonogate.phantom import hip_us

        for _ in range(n):
            yield hip_us.render_us_frame(hip_us.sample_hip_params(rng), rng, "A", 384).image
    elif kind == "knee radiograph (real, CC BY 4.0)":
        paths = sorted((knee / "val").rglob("*.jpg"))[:n] if knee else []
        for path in paths:
            yield cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    elif kind == "blank":
        for i in range(n):
            yield np.full((512, 512), 40 + 20 * i, np.uint8)
    elif kind == "saturated":
        for _ in range(n):
            image = rng.integers(0, 256, (512, 512)).astype(np.uint8)
            image[:, :320] = 255
            yield image


def main(argv: list[str] | None = None) -> int:
    from sonogate.errors import DataError
    from sonogate.runtime.model_api import create_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="bundles/bmd")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--knee", default="../shared/data/knee-oa-kl-xray")
    args = parser.parse_args(argv)
    model = create_model(args.bundle, device="ort-cpu", threads=1)
    knee = Path(args.knee) if args.knee and Path(args.knee).is_dir() else None
    kinds = {"adult AP pelvis (phantom, devices A-D)": ("read", pelvis_images(args.n, 7, False)),
             "adult AP pelvis, one hip out of the field": ("that hip refused", pelvis_images(args.n, 8, True))}
    for kind in ("infant pelvis radiograph (hip_xr phantom)", "tibia radiograph (rust phantom)",
                 "hip ultrasound frame (phantom)", "knee radiograph (real, CC BY 4.0)", "blank", "saturated"):
        kinds[kind] = ("refused", other_images(kind, args.n if kind not in ("blank", "saturated") else 5, 9, knee))
    table = {}
    for kind, (expected, images) in kinds.items():
        counts = {"images": 0, "hips_read": 0, "hips_refused": 0, "whole_image_refused": 0, "expected_hip_refused": 0,
                  "expected_hip_read": 0, "no_referral": 0, "reasons": {}}
        for item in images:
            image, out_side = item if isinstance(item, tuple) else (item, None)
            counts["images"] += 1
            try:
                result = model.analyze(image, None, [])
            except DataError as exc:
                counts["whole_image_refused"] += 1
                counts["hips_refused"] += 2
                counts["expected_hip_refused"] += out_side is not None
                reason = str(exc).split("(")[0].split(":")[0].strip()
                counts["reasons"][reason] = counts["reasons"].get(reason, 0) + 1
                continue
            for row in result["rows"]:
                refused = row.get("status") == "error"
                counts["hips_refused" if refused else "hips_read"] += 1
                counts["no_referral"] += row["referral"] == "no referral"
                if out_side is not None and row["side"] == out_side:
                    counts["expected_hip_refused"] += refused
                if out_side is not None and row["side"] != out_side:
                    counts["expected_hip_read"] += not refused
                if refused:
                    reason = row["error"].split("(")[0].split(":", 1)[-1].strip()
                    counts["reasons"][reason] = counts["reasons"].get(reason, 0) + 1
        table[kind] = {"expected": expected, **counts}
        print(f"{kind}: {counts['hips_refused']}/{2 * counts['images']} hips refused")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"bundle": args.bundle, "bundle_sha256": model.bundle.bundle_hash, "n": args.n, "kinds": table}
    (out / "bmd_refusal.json").write_text(json.dumps(result, indent=2) + "\n")
    command = f"`python benchmarks/bmd_refusal.py --bundle {args.bundle} --out {args.out} --knee {args.knee}`"
    lines = ["# bmd: refusals of bad input", "", command, "",
             f"Bundle `{args.bundle}` (sha256 {model.bundle.bundle_hash[:12]}...). Per hip: read or refused (no BMD).",
             "", "| input | images | expected | hips read | hips refused | whole image refused | main reasons |",
             "|---|---|---|---|---|---|---|"]
    for kind, c in table.items():
        reasons = "; ".join(f"{k} ({v})" for k, v in sorted(c["reasons"].items(), key=lambda kv: -kv[1])[:2])
        expected = c["expected"]
        if kind.endswith("out of the field"):
            expected += f" ({c['expected_hip_refused']}/{c['images']}; other hip read {c['expected_hip_read']}/{c['images']})"
        lines.append(f"| {kind} | {c['images']} | {expected} | {c['hips_read']} | {c['hips_refused']} | "
                     f"{c['whole_image_refused']} | {reasons} |")
    (out / "bmd_refusal.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
