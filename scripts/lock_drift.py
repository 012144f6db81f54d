"""List the installed packages whose version differs from a lock file (what `make test-latest` runs first).

Usage: python scripts/lock_drift.py requirements/dev.lock

Prints one line per package that is newer (or older, or missing) in this environment than in the lock, so that a
failure of the suite in the newest-releases venv can be traced to the release that moved. Exit code 0 always: the
list is information; the test run after it is the check.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """{normalised package name: version} of the ``name==version`` lines of a pip / uv lock file."""
    pinned = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pinned[_normalise(match.group(1))] = match.group(2)
    return pinned


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("usage: lock_drift.py LOCK_FILE (an existing pip / uv lock)", file=sys.stderr)
        return 2
    pinned = read_lock(Path(argv[0]))
    installed = {_normalise(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    drift = []
    for name, locked in sorted(pinned.items()):
        now = installed.get(name)
        if now != locked:
            drift.append(f"  {name}: locked {locked}, here {now or 'not installed'}")
    print(f"{len(drift)} of {len(pinned)} locked packages differ from {argv[0]} in this environment:")
    print("\n".join(drift) if drift else "  none")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
