"""Score ``sonogate bmd train`` runs on one data folder's split, so runs trained on different folders are compared
on the same radiographs (the choice between them uses ``--split val`` only).

The phantom folders are prefix-consistent (``sonogate phantom bmd --n 6000 --seed 0`` starts with the 1,491
radiographs of ``--n 1491 --seed 0``) and the patient split is a seeded hash of the patient id, so a patient is in
the same split in every folder of one seed: no run has trained on another folder's validation patients.

    python scripts/bmd_compare_runs.py --data DIR --run NAME=RUN_DIR [--run ...] [--split val] [--json OUT]

A run may be ``RUN_DIR@PHASE`` (the weights it saved after that phase) or several such specs joined by ``+`` (their
ensemble, as ``sonogate bmd ensemble`` would build it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder from sonogate phantom bmd")
    parser.add_argument("--run", action="append", required=True,
                        help="NAME=RUN_DIR[@PHASE][+RUN_DIR[@PHASE]...] (run folders hold checkpoint.pt)")
    parser.add_argument("--split", default="val", choices=("val", "cal", "test", "external"))
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)

    import torch

    from sonogate.tasks.bmd.data import load_sources, read_bmd_folder, split_patients
    from sonogate.tasks.bmd.ensemble import combine
    from sonogate.tasks.bmd.train import build_bmd_model, evaluate

    torch.set_num_threads(1)
    folder = read_bmd_folder(args.data)
    sources = load_sources(folder, Path(args.data) / f"inputs512_{len(folder)}.npy")
    idx = split_patients(folder, 0)[args.split]
    result = {"data": str(Path(args.data).resolve()), "split": args.split, "n_images": len(idx), "runs": {}}
    for item in args.run:
        name, _, run = item.partition("=")
        ckpt, _ = combine(run.split("+"))
        net = build_bmd_model(ckpt)
        block = evaluate(net.regressor, net.locator, sources, folder, idx)
        result["runs"][name] = {"run": run, **block}
        print(f"{name:>12}: {args.split} ({len(idx)} radiographs, {block['n_hips']} hips) r {block['r']:.3f}, "
              f"RMSE {block['rmse']:.4f}, MAE {block['mae']:.4f}, osteoporosis AUC {block['osteoporosis_auc']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
