"""The hip_us task's own commands (the spec's parts["cli"]): ``label``, ``label-import`` and ``adapt``."""

from __future__ import annotations


def register(subparsers) -> None:
    from sonogate.tasks.hip_us.adapt_cli import register as register_adapt
    from sonogate.tasks.hip_us.label_cli import register as register_label

    register_label(subparsers)
    register_adapt(subparsers)
