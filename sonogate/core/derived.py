"""Finish a bundle derived from another on the cart (a site's adaptation or recalibration).

``seal_derived_bundle(out, manifest, calibration, key)``: the caller has written every model file into ``out``;
this writes ``manifest.json`` (sha256 of every file), binds the calibration to the new manifest's hash and saves
it, signs when given a key, and verifies the result. On any failure it removes the manifest, calibration and
signature, so that a half-written bundle is never mistaken for a finished one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from sonogate.core.bundle import CALIBRATION, MANIFEST, SIGNATURE, load_bundle, write_manifest


class BoundCalibration(Protocol):
    """What a calibration file offers here (``sonogate.calibration.calfile.CalibrationFile``)."""

    bundle_sha256: str | None

    def save(self, path: str | os.PathLike) -> Any: ...


def seal_derived_bundle(out: str | os.PathLike, manifest: dict[str, Any], calibration: BoundCalibration | None = None,
                        key: str | os.PathLike | None = None) -> str:
    """Write ``out``'s manifest, its calibration bound to it and the signature; returns the new bundle hash."""
    out = Path(out)
    try:
        new_hash = write_manifest(out, manifest)
        if calibration is not None:
            calibration.bundle_sha256 = new_hash
            calibration.save(out / CALIBRATION)
        if key is not None:
            from sonogate.core.signing import sign_bundle

            sign_bundle(out, key)
    except BaseException:
        for name in (MANIFEST, CALIBRATION, SIGNATURE):
            (out / name).unlink(missing_ok=True)
        raise
    load_bundle(out)  # every file matches its sha256
    return new_hash
