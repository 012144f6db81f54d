"""User-facing errors: one line on stderr, exit code 2, never a traceback."""


class SonogateError(Exception):
    """An error the user can act on (bad input, missing file, tampered bundle).

    The CLI prints ``str(err)`` as one line and exits with code 2.
    """


class BundleError(SonogateError):
    """The model bundle is missing, unreadable, or its hashes do not match."""


class CalibrationError(SonogateError):
    """The calibration file is missing, malformed, or bound to another bundle."""


class SourceError(SonogateError):
    """A capture source cannot be opened or read."""


class DataError(SonogateError):
    """A data folder, CSV or DICOM file is missing or malformed."""
