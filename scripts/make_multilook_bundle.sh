#!/usr/bin/env bash
# A hip_us base bundle trained on both phantom looks (schematic, realistic) and two display orientations
# (horizontal, Graf's), calibrated on sweeps of the same mix: the base for scanners that do not look like the
# schematic phantom (docs/site.md, "Site A"). Graf's mirrored display and device D stay out of training.
#   usage: scripts/make_multilook_bundle.sh OUT WORK [RECIPE]     RECIPE: cpu_multilook (22 min on 2 cores) or
#                                                                  cpu_multilook_long (default)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:?bundle folder}
WORK=${2:?work folder}
RECIPE=${3:-cpu_multilook_long}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$PY" -m sonogate.export.demo --recipe "$RECIPE" --out "$OUT" --work "$WORK"
[ -e "$WORK/calib_sweeps/labels.csv" ] || "$PY" -m sonogate.cli phantom us --n 2400 --frames-per-sweep 8 --seed 1013 \
    --out "$WORK/calib_sweeps" --style schematic,realistic --orientations horizontal,graf
"$PY" -m sonogate.cli calibrate --bundle "$OUT" --data "$WORK/calib_sweeps" --delta 0.1 --rule and --mode joint
