"""The task registry: task id -> ``TaskSpec``, found without a stage importing a task package.

Tasks are discovered the way plug-ins are: each package under ``sonogate/tasks/`` that has a ``spec`` module with a
``TASK`` attribute is one task, and an installed distribution can add more through the ``sonogate.tasks`` entry-point
group (``name = "package.module:TASK"``). Discovery imports them by name at run time (importlib), so the import
graph keeps its direction: tasks -> stages -> core.

Inputs: a task id. Output: its ``TaskSpec``; ``task_ids()`` lists every known id. An unknown id is a one-line
``TaskSpecError`` naming the known ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import metadata

from sonogate.core.task import TaskSpec, TaskSpecError

TASKS_PACKAGE = "sonogate.tasks"
ENTRY_POINT_GROUP = "sonogate.tasks"

_registered: dict[str, TaskSpec] = {}
_discovered = False


def register(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` (a second spec with the same id and another hash is an error: two tasks cannot share an id)."""
    known = _registered.get(spec.id)
    if known is not None and known.spec_sha256 != spec.spec_sha256:
        raise TaskSpecError(f"two different specs register task id {spec.id!r}")
    _registered[spec.id] = spec
    return spec


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(TASKS_PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"{TASKS_PACKAGE}.{info.name}.spec")
        except ModuleNotFoundError as exc:
            if exc.name == f"{TASKS_PACKAGE}.{info.name}.spec":
                continue  # a task package still without a spec (work in progress) is not a task yet
            raise
        spec = getattr(module, "TASK", None)
        if isinstance(spec, TaskSpec):
            register(spec)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        spec = entry.load()
        if isinstance(spec, TaskSpec):
            register(spec)


def get_task(task_id: str) -> TaskSpec:
    """The spec of ``task_id`` (or of a task whose ``cli_names`` hold it); ``TaskSpecError`` (one line, naming the
    known tasks) when there is none."""
    _discover()
    spec = _registered.get(task_id)
    if spec is None:  # a short name the command line accepts (the spec's cli_names, e.g. "xr")
        spec = next((s for s in _registered.values() if task_id in s.cli_names), None)
    if spec is None:
        raise TaskSpecError(f"unknown task {task_id!r} (known: {', '.join(task_ids()) or 'none'})")
    return spec


def task_ids() -> list[str]:
    _discover()
    return sorted(_registered)
