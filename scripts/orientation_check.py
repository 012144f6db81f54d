"""How much the display orientation alone costs the base bundle, and what the input transform gives back.

    python scripts/orientation_check.py --bundle demo/bundle --graf DIR_GRAF --horizontal DIR_HORIZONTAL

Both folders are phantom sets from the same seed and devices, one shown in Graf's orientation, one as acquired
(``sonogate phantom us --n 300 --seed 77 --devices A,B --frames-per-sweep 3 --standard-fraction 1.0
--orientations graf|horizontal``). Prints the base model's raw per-frame alpha MAE on: the acquired frames, the
Graf-displayed frames as they are, and the Graf-displayed frames turned back by the "transpose" transform
(what ``sonogate adapt --orientation graf`` writes into the adapted bundle).
"""

from __future__ import annotations

import argparse

import numpy as np

from sonogate.runtime.adapt import read_site_frames


def alpha_mae(frames) -> float:
    j = list(frames.names).index("alpha_deg")
    return float(np.nanmean(np.abs(frames.graph[:, j] - frames.true[:, j])))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="demo/bundle")
    parser.add_argument("--graf", required=True)
    parser.add_argument("--horizontal", required=True)
    args = parser.parse_args()
    acquired, _ = read_site_frames(args.bundle, args.horizontal, progress=False)
    shown, _ = read_site_frames(args.bundle, args.graf, progress=False)
    turned, _ = read_site_frames(args.bundle, args.graf, progress=False, transform="transpose")
    for label, frames in (("as acquired (horizontal)", acquired), ("Graf display, as shown", shown),
                          ("Graf display, turned back (transpose)", turned)):
        print(f"{label:<40} raw alpha MAE {alpha_mae(frames):6.2f} deg over {len(frames)} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
