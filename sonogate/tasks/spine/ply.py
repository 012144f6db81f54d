"""Point clouds in PLY files, numpy only (the runtime reads these clouds without torch).

``write_ply(path, points, properties=None, binary=True)`` writes one ``vertex`` element with float32 ``x y z``
(mm in this task) and optional extra per-point scalar properties (``path_mm``, ``pose`` ...), binary
little-endian by default or ASCII.

``read_ply(path) -> PlyCloud`` reads the ``vertex`` element of an ASCII or binary (little- or big-endian) PLY:
``points`` (N, 3) float64 and every other vertex property by name. Elements before ``vertex`` are skipped
(fixed-size ones in binary files; any in ASCII files); elements after it are ignored, so a mesh file's faces
do not matter. A malformed file raises ``DataError`` with one line naming it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sonogate.errors import DataError

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_NUMPY_TO_PLY = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                 "f4": "float", "f8": "double"}


@dataclass
class PlyCloud:
    """The vertex element of a PLY file: ``points`` (N, 3) float64 and the other vertex properties by name."""

    points: np.ndarray
    properties: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Element:
    name: str
    count: int
    properties: list[tuple[str, str]]  # (name, numpy dtype code); list properties are marked "list"


def write_ply(path, points, properties: dict | None = None, binary: bool = True) -> Path:
    """Write ``points`` (N, 3; mm) and optional per-point scalar ``properties`` (name -> (N,) array) to ``path``.

    Coordinates are stored as float32; a property keeps its numpy dtype when PLY has it (int64 is stored as
    int32, bool as uchar). Returns the path written.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise DataError(f"a point cloud must be an (N, 3) array, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise DataError("a point cloud to write contains NaN or infinite coordinates")
    columns: list[tuple[str, np.ndarray]] = [("x", pts[:, 0].astype("f4")), ("y", pts[:, 1].astype("f4")),
                                             ("z", pts[:, 2].astype("f4"))]
    for name, values in (properties or {}).items():
        arr = np.asarray(values)
        if arr.shape != (len(pts),):
            raise DataError(f"PLY property {name!r} must have one value per point ({len(pts)}), got {arr.shape}")
        if arr.dtype == bool:
            arr = arr.astype("u1")
        elif arr.dtype.kind in "iu" and arr.dtype.itemsize == 8:
            arr = arr.astype("i4" if arr.dtype.kind == "i" else "u4")
        elif arr.dtype.kind == "f" and arr.dtype.itemsize not in (4, 8):
            arr = arr.astype("f4")
        if arr.dtype.str[1:] not in _NUMPY_TO_PLY:
            raise DataError(f"PLY property {name!r} has an unsupported dtype {arr.dtype}")
        columns.append((name, arr))
    fmt = "binary_little_endian" if binary else "ascii"
    header = ["ply", f"format {fmt} 1.0", "comment sonogate spine point cloud, units mm",
              f"element vertex {len(pts)}"]
    header += [f"property {_NUMPY_TO_PLY[arr.dtype.str[1:]]} {name}" for name, arr in columns]
    header.append("end_header")
    out = Path(path)
    with open(out, "wb") as handle:
        handle.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            record = np.empty(len(pts), dtype=[(name, "<" + arr.dtype.str[1:]) for name, arr in columns])
            for name, arr in columns:
                record[name] = arr
            handle.write(record.tobytes())
        else:
            formats = ["%.6g" if arr.dtype.kind == "f" else "%d" for _, arr in columns]
            table = np.empty((len(pts), len(columns)), dtype=object)
            for j, (_, arr) in enumerate(columns):
                table[:, j] = arr
            lines = [" ".join(f % v for f, v in zip(formats, row)) for row in table]
            handle.write(("\n".join(lines) + ("\n" if lines else "")).encode("ascii"))
    return out


def _parse_header(raw: bytes, path: Path) -> tuple[str, list[_Element], int]:
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise DataError(f"not a PLY file (no 'ply' magic or no end_header): {path}")
    newline = raw.find(b"\n", end)
    body_start = len(raw) if newline < 0 else newline + 1
    fmt = ""
    elements: list[_Element] = []
    for line in raw[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append(_Element(words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if len(words) == 5 and words[1] == "list":
                elements[-1].properties.append((words[4], "list"))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].properties.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise DataError(f"unsupported PLY property line {line.strip()!r} in {path}")
        else:
            raise DataError(f"malformed PLY header line {line.strip()!r} in {path}")
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise DataError(f"unsupported PLY format {fmt!r} in {path}")
    return fmt, elements, body_start


def read_ply(path) -> PlyCloud:
    """Read the ``vertex`` element of the PLY file at ``path`` (see the module docstring)."""
    src = Path(path)
    try:
        raw = src.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read PLY file {src}: {exc.strerror or exc}") from None
    fmt, elements, offset = _parse_header(raw, src)
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise DataError(f"PLY file has no vertex element: {src}")
    vertex = elements[names.index("vertex")]
    prop_names = [n for n, _ in vertex.properties]
    if not {"x", "y", "z"} <= set(prop_names) or any(t == "list" for _, t in vertex.properties):
        raise DataError(f"PLY vertex element needs scalar x, y, z properties: {src}")
    if fmt == "ascii":
        lines = raw[offset:].decode("ascii", errors="replace").splitlines()
        skip = sum(e.count for e in elements[:names.index("vertex")])  # one line per item of earlier elements
        rows = lines[skip:skip + vertex.count]
        if len(rows) < vertex.count:
            raise DataError(f"PLY file is truncated: {vertex.count} vertices declared, {len(rows)} found: {src}")
        try:
            table = np.array([r.split()[:len(prop_names)] for r in rows], dtype=np.float64)
        except ValueError:
            raise DataError(f"PLY file has a malformed vertex row: {src}") from None
        if table.shape != (vertex.count, len(prop_names)):
            raise DataError(f"PLY file has vertex rows with too few values: {src}")
        columns = {name: table[:, j].astype(dtype) for j, (name, dtype) in enumerate(vertex.properties)}
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        for element in elements[:names.index("vertex")]:
            if any(t == "list" for _, t in element.properties):
                raise DataError(f"binary PLY with a list element before the vertices is not supported: {src}")
            offset += element.count * np.dtype([(n, order + t) for n, t in element.properties]).itemsize
        dtype = np.dtype([(n, order + t) for n, t in vertex.properties])
        if offset + vertex.count * dtype.itemsize > len(raw):
            raise DataError(f"PLY file is truncated: {vertex.count} vertices declared: {src}")
        record = np.frombuffer(raw, dtype=dtype, count=vertex.count, offset=offset)
        columns = {name: record[name].astype(record[name].dtype.newbyteorder("=")) for name in prop_names}
    points = np.stack([columns.pop(axis).astype(np.float64) for axis in "xyz"], axis=1)
    return PlyCloud(points=points, properties=columns)


if __name__ == "__main__":  # pragma: no cover - a small inspection aid: python -m sonogate.tasks.spine.ply FILE
    cloud = read_ply(sys.argv[1])
    print(cloud.points.shape, cloud.points.min(0), cloud.points.max(0), sorted(cloud.properties))
