"""Deterministic replay of a cine through ``Session`` with two source trees: identical events, and the ratio of
their per-frame latency measured in one run (the proof a refactor changed no behaviour and cost no speed).

Usage:
    python scripts/refactor_proof.py --old OLD_TREE --new NEW_TREE --bundle demo/bundle --cine CINE.mp4 \\
        --out DIR [--device openvino-cpu] [--rounds 3]

OLD_TREE / NEW_TREE are checkouts of sonogate (``git worktree add /tmp/old <commit>``). Each tree runs in its own
subprocess with that tree's package first on the path (the editable install's finder is bypassed), frames get fixed
capture times (frame / 15 s), so events do not depend on the machine's speed. Writes DIR/old.jsonl, DIR/new.jsonl
(events without timing fields) and DIR/proof.json: frames compared, differing frames, max measurement difference,
median per-frame ``Session.process`` time of each tree per round (rounds alternate old / new) and their ratio.
Exit code 0 when the events are identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TIMING_FIELDS = ("latency_ms", "stages_ms", "t_s", "fps")

WORKER = r'''
import json, os, sys, time
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, os.environ["SONOGATE_SRC"])
import cv2, numpy as np
import sonogate
assert sonogate.__file__.startswith(os.environ["SONOGATE_SRC"]), sonogate.__file__
from sonogate.runtime import Session
bundle, cine, device, events_path = sys.argv[1:5]
TIMING_FIELDS = tuple(sys.argv[5].split(","))
capture = cv2.VideoCapture(cine)
frames = []
while True:
    ok, frame = capture.read()
    if not ok:
        break
    frames.append(frame)
times = []
with Session(bundle, device=device) as session, open(events_path, "w") as out:
    for index, frame in enumerate(frames):
        start = time.perf_counter()
        event = session.process(frame, t_capture=1000.0 + index / 15.0)
        times.append(time.perf_counter() - start)
        event = {k: v for k, v in event.items() if k not in TIMING_FIELDS}
        out.write(json.dumps(event, sort_keys=True) + "\n")
print(json.dumps({"frames": len(frames), "median_ms": float(np.median(times[20:]) * 1e3)}))
'''


def _run(tree: Path, bundle: Path, cine: Path, device: str, events: Path) -> dict:
    run = subprocess.run([sys.executable, "-c", WORKER, str(bundle), str(cine), device, str(events),
                          ",".join(TIMING_FIELDS)], check=False,
                         env={"SONOGATE_SRC": str(tree), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, cwd=tree)
    if run.returncode != 0:
        raise SystemExit(f"{tree}: {run.stderr.strip().splitlines()[-1] if run.stderr.strip() else run.returncode}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _max_difference(a, b) -> float:
    if isinstance(a, dict) and isinstance(b, dict):
        return max((_max_difference(a[k], b[k]) for k in a if k in b), default=0.0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b))
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cine", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="openvino-cpu")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for name, tree in (("old", args.old), ("new", args.new)):
            result = _run(tree.resolve(), args.bundle.resolve(), args.cine.resolve(), args.device,
                          args.out / f"{name}.jsonl")
            timings[name].append(round(result["median_ms"], 3))
    old_events = (args.out / "old.jsonl").read_text().splitlines()
    new_events = (args.out / "new.jsonl").read_text().splitlines()
    differing = [i for i, (a, b) in enumerate(zip(old_events, new_events)) if a != b]
    max_diff = max((_max_difference(json.loads(old_events[i]), json.loads(new_events[i])) for i in differing),
                   default=0.0)
    old_median = sorted(timings["old"])[len(timings["old"]) // 2]
    new_median = sorted(timings["new"])[len(timings["new"]) // 2]
    proof = {"frames": len(old_events), "frames_new": len(new_events), "differing_frames": len(differing),
             "first_differing": differing[:10], "max_numeric_difference": max_diff, "device": args.device,
             "median_ms_per_round": timings, "new_over_old_p50": round(new_median / old_median, 3),
             "recommendations_same": [json.loads(a)["recommendation"] for a in old_events]
             == [json.loads(b)["recommendation"] for b in new_events]}
    (args.out / "proof.json").write_text(json.dumps(proof, indent=2) + "\n")
    print(json.dumps({k: v for k, v in proof.items() if k != "first_differing"}))
    return 0 if not differing and len(old_events) == len(new_events) else 1


if __name__ == "__main__":
    sys.exit(main())
