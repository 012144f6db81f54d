#!/usr/bin/env bash
# Regenerate the committed demo bundle (demo/bundle) from phantom data, seeded:
#   phantom (devices A, B, C + held-out device D) -> SimSiam + heads (sonogate train) -> ONNX / INT8 /
#   OpenVINO bundle (sonogate export) -> calibration on a separate phantom set (sonogate calibrate).
# About 15 minutes on 2 CPU cores. Needs the train extra (make demo-bundle installs it).
#   usage: scripts/make_demo_bundle.sh [--seed N] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=${WORK:-out/demo-bundle-work}
OUT=${OUT:-demo/bundle}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

"$PY" -m sonogate.export.demo --out "$OUT" --work "$WORK" "$@"

# Calibration on separate phantom sweeps (8 frames each, standard and off-plane mixed), so that the
# per-sweep aggregation calibrated here is exactly the one the runtime applies to its recent frames.
"$PY" -m sonogate.cli phantom us --n 2400 --frames-per-sweep 8 --seed 1013 --out "$WORK/calib_sweeps"
"$PY" -m sonogate.cli calibrate --bundle "$OUT" --data "$WORK/calib_sweeps" --delta 0.1 --rule and --mode joint
