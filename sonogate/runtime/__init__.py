"""Torch-free runtime: bundle loader, inference engine, recommendation, overlay, events, live pipeline.

The vendor API is ``Session`` (frames in, event dicts out); see README.md.
"""

from sonogate.core.bundle import Bundle, load_bundle  # noqa: F401


def __getattr__(name):  # lazy: importing the package must not load ONNX Runtime / OpenVINO
    if name == "Session":
        from sonogate.runtime.session import Session

        return Session
    raise AttributeError(name)
