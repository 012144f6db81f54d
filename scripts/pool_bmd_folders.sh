#!/bin/bash
# scripts/pool_bmd_folders.sh OUT DIR1 DIR2 ...: one `sonogate phantom bmd` folder from several (patient ids are
# unique per seed, so folders of different seeds pool without clashes); images are linked, labels.csv concatenated.
set -e
OUT=$1; shift
mkdir -p $OUT/images
head -1 $1/labels.csv > $OUT/labels.csv
for d in "$@"; do
  for f in $d/images/*.png; do ln -sf $(readlink -f $f) $OUT/images/; done
  tail -n +2 $d/labels.csv >> $OUT/labels.csv
done
wc -l $OUT/labels.csv; ls $OUT/images | wc -l
