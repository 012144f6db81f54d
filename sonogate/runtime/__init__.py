"""Torch-free runtime: one model API for every task's bundle (``create_model``), recommendation, overlay,
events, live pipeline, batch analysis.

The vendor API is ``Session`` (frames in, event dicts out); see README.md. ``create_model(bundle)`` builds any
task's model (``sonogate.runtime.model_api``).
"""

from sonogate.core.bundle import Bundle, load_bundle  # noqa: F401


def __getattr__(name):  # lazy: importing the package must not load ONNX Runtime / OpenVINO
    if name == "Session":
        from sonogate.runtime.session import Session

        return Session
    if name == "create_model":
        from sonogate.runtime.model_api import create_model

        return create_model
    raise AttributeError(name)
