"""``python -m sonogate.export.demo_xr``: the hip_xr demo bundle (an alias of ``python -m sonogate.export.demo
--task hip_xr``; the recipe is ``sonogate/tasks/hip_xr/recipe.py``)."""

from __future__ import annotations

import sys

from sonogate.export.demo import main

if __name__ == "__main__":
    sys.exit(main(task="hip_xr"))
