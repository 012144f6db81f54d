"""Compare two runs of the same inputs by two versions of the code: the proof that a refactor changed no behaviour.

Usage: python scripts/parity_compare.py OLD_DIR NEW_DIR [--atol 1e-4] [--ignore FIELD ...]

Each DIR may hold ``demo/events.jsonl`` (``sonogate demo --out DIR/demo``) and any ``*/analysis.csv``
(``sonogate analyze ... --out DIR/<name>``). Events are compared frame by frame: every field must be equal, numbers
to within ``--atol``, except the timing fields (``t_s``, ``latency_ms``, ``stages_ms``, ``fps``), which measure the
machine, not the code, and any ``--ignore`` field (``bundle_sha256`` when the same model comes in an upgraded
manifest). analysis.csv files are compared cell by cell the same way (numbers to ``--atol``).
Prints one line per difference (at most 20 per file) and a summary; exit code 0 when nothing differs, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

TIMING_FIELDS = {"t_s", "latency_ms", "stages_ms", "fps"}


def _close(a, b, atol: float) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], atol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, atol) for x, y in zip(a, b))
    for value in (a, b):
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return a == b
    if isinstance(a, (int, float, str)) and isinstance(b, (int, float, str)) and not isinstance(a, bool):
        try:
            x, y = float(a), float(b)
        except (TypeError, ValueError):
            return a == b
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return abs(x - y) <= atol
    return a == b


def compare_events(old: Path, new: Path, atol: float, ignore: frozenset[str] = frozenset()) -> list[str]:
    old_events = [json.loads(line) for line in old.read_text().splitlines() if line.strip()]
    new_events = [json.loads(line) for line in new.read_text().splitlines() if line.strip()]
    problems = []
    if len(old_events) != len(new_events):
        problems.append(f"{new}: {len(new_events)} events, {len(old_events)} before")
    for a, b in zip(old_events, new_events):
        for key in sorted((a.keys() | b.keys()) - TIMING_FIELDS - ignore):
            if not _close(a.get(key), b.get(key), atol):
                problems.append(f"{new} frame {a.get('frame')}: {key} {a.get(key)!r} -> {b.get(key)!r}")
    return problems


def compare_csv(old: Path, new: Path, atol: float, ignore: frozenset[str] = frozenset()) -> list[str]:
    with old.open(newline="") as handle:
        old_rows = list(csv.DictReader(handle))
    with new.open(newline="") as handle:
        new_rows = list(csv.DictReader(handle))
    problems = []
    if old_rows and new_rows and list(old_rows[0]) != list(new_rows[0]):
        problems.append(f"{new}: columns differ: {list(old_rows[0])} -> {list(new_rows[0])}")
    if len(old_rows) != len(new_rows):
        problems.append(f"{new}: {len(new_rows)} rows, {len(old_rows)} before")
    for index, (a, b) in enumerate(zip(old_rows, new_rows)):
        for key in (a.keys() | b.keys()) - ignore:
            if not _close(a.get(key), b.get(key), atol):
                problems.append(f"{new} row {index} ({a.get('input')}): {key} {a.get(key)!r} -> {b.get(key)!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--ignore", nargs="*", default=[], help="fields left out of the comparison")
    args = parser.parse_args(argv)
    pairs = []
    if (args.old / "demo" / "events.jsonl").is_file():
        pairs.append(("events", args.old / "demo" / "events.jsonl", args.new / "demo" / "events.jsonl"))
    for path in sorted(args.old.glob("*/analysis.csv")):
        pairs.append(("csv", path, args.new / path.relative_to(args.old)))
    if not pairs:
        print(f"nothing to compare in {args.old}", file=sys.stderr)
        return 2
    failed = 0
    for kind, old, new in pairs:
        if not new.is_file():
            print(f"MISSING {new}")
            failed += 1
            continue
        problems = (compare_events if kind == "events" else compare_csv)(old, new, args.atol, frozenset(args.ignore))
        print(f"{'SAME' if not problems else 'DIFFERENT'} {new.relative_to(args.new)} ({len(problems)} differences)")
        for line in problems[:20]:
            print(f"  {line}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
