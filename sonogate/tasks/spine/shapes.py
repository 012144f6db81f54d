"""Vertebra source shapes (mm) from ``../shared/data/vertebra-meshes/`` and smooth random deformations of them.

Sources (read ``ORIGIN.md`` in each folder; attribution kept here as the licences ask):

* ``verse-sample/``: the T9-L5 vertebra instance mask of VerSe subject sub-verse004 (NIfTI, 1 x 1 x 2 mm,
  labels 16-24), from https://github.com/anjany/verse. Surfaces by marching cubes per label (scikit-image)
  after resampling to 1 mm and light Gaussian smoothing. Data: CC BY-SA 4.0, VerSe (Sekuboyina et al., Medical
  Image Analysis 2021; Loeffler et al., Radiology: AI 2020; Liebl et al., Scientific Data 2021).
* ``miruna20+DataGeneration_VertShapeCompletion/vertebrae/``: L1 and L2 meshes of VerSe subject verse521
  (Open3D OBJ, scaled by 1/100 by that pipeline; multiplied back by 100 here: their L1/L2 sizes then match
  the L1/L2 of sub-verse004 to within a few mm). Repository MIT (c) 2024 miruna20; anatomy derived from
  VerSe 2020: CC BY-SA 4.0, attribute VerSe as above; share-alike applies to redistributed derivatives.
* ``miruna20+.../synthetic_templates/``: L1-L5 template point clouds (binary PCD). They are *partial*
  (posterior, ultrasound-like) clouds, not closed surfaces, so they cannot be deformed into complete truths:
  ``template_clouds()`` returns them for comparison with our simulated ultrasound, not as source shapes.
  Same licence as the meshes above.
* ``aclouthier+morphable-lumbar-model/SSM/``: the mean L2-L5 surface mesh of a statistical shape model of
  87 patients (Clouthier et al., J Biomech 2023;146:111421), split into its four connected components.
  MIT (c) 2022 Allison Clouthier.

Every shape is in one frame (mm): x lateral (patient left where the source says so), y anterior (-) to
posterior (+), z inferior (-) to superior (+); origin at the area-weighted surface centroid. With this frame
the body lies at y < 0 and the posterior arch at y > 0, as in the US-X Complete metric split (by the centroid's y).

Deformation (``deform``): the US-X Complete data generation deforms VerSe vertebrae with smooth displacement
fields before ray casting; here a sum of Gaussian radial basis functions (centres on the surface, Gaussian
control displacements) plus an anisotropic scaling about the centroid. The field is smooth and fold-free
(its gradient stays well below 1), so the mesh stays a valid closed surface.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from sonogate.errors import DataError
from sonogate.tasks.spine.raster import rasterize

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "vertebra-meshes"
VERSE_LEVELS = {16: "T9", 17: "T10", 18: "T11", 19: "T12", 20: "L1", 21: "L2", 22: "L3", 23: "L4", 24: "L5"}
LUMBAR_LEVELS = ("L1", "L2", "L3", "L4", "L5")
# Held out by default: one VerSe vertebra and one shape-model vertebra, so that both kinds of source are tested
# and training still has every lumbar level (its only clean L1 is verse521's: sub-verse004's L1 is fractured).
# verse521's L1 is in training while its L2 is tested: the same spine, not the same vertebra.
DEFAULT_TEST_SOURCES = ("verse521_L2", "ssm_mean_L4")
# sub-verse004's L1 mask has a crushed, cleft body (a wedge fracture: 38 cm^3 against 41 for T12 and 54 for L2);
# a training truth with a fractured body would teach completion of a pathology, so it is left out by default
PATHOLOGICAL_SOURCES = {"verse004_L1": "wedge-compressed, cleft body (fracture) in the VerSe mask"}
_OBJ_SCALE_MM = 100.0  # the DataGeneration pipeline's "scaled" meshes and templates are mm / 100
_MIRUNA = "miruna20+DataGeneration_VertShapeCompletion"
_SSM = "aclouthier+morphable-lumbar-model"


@dataclass
class SourceShape:
    """A closed vertebra surface in mm (frame: see the module docstring).

    vertices (V, 3) float64 mm, faces (F, 3) int64 (counter-clockwise seen from outside), normals (V, 3) unit
    outward vertex normals, level ("L1".."L5", "T9".."T12"), source_id (the undeformed source it comes from),
    dataset (where the source came from), licence (its licence line), deformation (None for a source shape;
    else the parameters that were drawn).
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    level: str
    source_id: str
    dataset: str
    licence: str
    deformation: dict | None = field(default=None)

    @property
    def is_source(self) -> bool:
        return self.deformation is None


@dataclass
class TemplateCloud:
    """A partial (posterior, ultrasound-like) L1-L5 template point cloud in mm (same frame, not centred)."""

    points: np.ndarray
    level: str
    source_id: str


# --------------------------------------------------------------------------------------------------- geometry

def face_normals_and_areas(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit face normals (F, 3) and face areas (F,) in mm^2 of a triangle mesh (vertices mm, faces (F, 3))."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    double_area = np.linalg.norm(cross, axis=1)
    normals = cross / np.maximum(double_area, 1e-12)[:, None]
    return normals, 0.5 * double_area


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) of a triangle mesh."""
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 * area: area weighting
    acc = np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(acc, faces[:, corner], cross)
    return acc / np.maximum(np.linalg.norm(acc, axis=1), 1e-12)[:, None]


def surface_centroid(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted centroid (3,) mm of a triangle surface."""
    _, areas = face_normals_and_areas(vertices, faces)
    return (vertices[faces].mean(axis=1) * areas[:, None]).sum(axis=0) / areas.sum()


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Enclosed volume (mm^3) of a closed mesh; negative when its faces wind inwards."""
    tri = vertices[faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def sample_surface(shape: SourceShape, n_points: int, rng: np.random.Generator) -> np.ndarray:
    """``n_points`` points (n, 3) mm drawn uniformly over the surface (area-weighted faces, uniform barycentric)."""
    _, areas = face_normals_and_areas(shape.vertices, shape.faces)
    face_ids = rng.choice(len(areas), size=n_points, p=areas / areas.sum())
    r1, r2 = rng.random(n_points), rng.random(n_points)
    s = np.sqrt(r1)
    tri = shape.vertices[shape.faces[face_ids]]
    return (1 - s)[:, None] * tri[:, 0] + (s * (1 - r2))[:, None] * tri[:, 1] + (s * r2)[:, None] * tri[:, 2]


def _finish(vertices: np.ndarray, faces: np.ndarray, **fields) -> SourceShape:
    """Orient faces outwards, centre on the surface centroid, compute vertex normals."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if signed_volume(vertices, faces) < 0:
        faces = faces[:, ::-1].copy()
    vertices = vertices - surface_centroid(vertices, faces)
    return SourceShape(vertices=vertices, faces=faces, normals=vertex_normals(vertices, faces), **fields)


def _largest_component(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """Labels (V,) of the connected components of a mesh, by face edges (scipy)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_vertices, n_vertices))
    return connected_components(graph, directed=False)[1]


def _submesh(vertices: np.ndarray, faces: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The faces whose vertices all have ``keep`` True, with vertices re-indexed."""
    face_keep = keep[faces].all(axis=1)
    new_index = np.cumsum(keep) - 1
    return vertices[keep], new_index[faces[face_keep]]


def decimate_to(shape: SourceShape, max_faces: int) -> SourceShape:
    """The same surface re-meshed through a voxel grid when it has more than ``max_faces`` faces.

    Rasterising 60k-face meshes per case would cost more than the per-case budget. Grid from 1 mm up (x 1.15)
    until the face count fits. Measured on the 14 sources at 24,000 faces: the re-meshed surface lies within
    0.42-0.72 mm of the original at the 95th percentile (at most 1.74 mm, verse521 L1) and the enclosed volume
    changes by under 2 %.
    """
    if len(shape.faces) <= max_faces:
        return shape
    voxel = 1.0
    while True:
        vertices, faces = _remesh(shape, voxel)
        if len(faces) <= max_faces or voxel > 3.0:
            break
        voxel *= 1.15
    return _finish(vertices, faces, level=shape.level, source_id=shape.source_id, dataset=shape.dataset,
                   licence=shape.licence, deformation=shape.deformation)


def _remesh(shape: SourceShape, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the solid bounded by ``shape``, filled on a grid of ``voxel`` mm."""
    occupancy, origin = voxelize(shape, voxel)
    return marching_cubes_mm(occupancy.astype(np.float32), origin, voxel, smooth_sigma_vox=0.6)


def voxelize(shape: SourceShape, voxel: float, pad: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Solid occupancy grid (bool (I, J, K)) of a closed surface and the mm position of voxel (0, 0, 0).

    Parity of ray crossings along x at every (y, z) voxel centre: exact for a closed mesh, no flood fill needed.
    """
    lo = shape.vertices.min(axis=0) - pad * voxel
    hi = shape.vertices.max(axis=0) + pad * voxel
    dims = np.ceil((hi - lo) / voxel).astype(int) + 1
    # rays along +x, one per (y, z) voxel centre: project on (y, z), depth = x
    uv = shape.vertices[:, [1, 2]]
    hits = rasterize(uv, shape.vertices[:, 0], shape.faces, origin=lo[[1, 2]], pixel_mm=voxel,
                     shape=(int(dims[1]), int(dims[2])))
    occupancy = np.zeros(dims, dtype=bool)
    if len(hits.pixel):
        order = np.lexsort((hits.depth, hits.pixel))
        pixel, depth = hits.pixel[order], hits.depth[order]
        # crossings per ray sorted by depth; inside between crossing 2k and 2k+1
        start = np.r_[0, np.flatnonzero(np.diff(pixel)) + 1]
        counts = np.diff(np.r_[start, len(pixel)])
        rank = np.arange(len(pixel)) - np.repeat(start, counts)
        even = (rank % 2 == 0) & (rank + 1 < np.repeat(counts, counts))
        first = np.flatnonzero(even)
        rays = pixel[first]
        i_in = np.clip(np.ceil((depth[first] - lo[0]) / voxel), 0, dims[0]).astype(np.int64)
        i_out = np.clip(np.ceil((depth[first + 1] - lo[0]) / voxel), 0, dims[0]).astype(np.int64)
        iy, iz = np.divmod(rays, int(dims[2]))
        # +1 where a ray enters, -1 where it leaves; the running sum along x is 1 inside
        steps = np.zeros((dims[0] + 1, dims[1], dims[2]), dtype=np.int32)
        np.add.at(steps, (i_in, iy, iz), 1)
        np.add.at(steps, (i_out, iy, iz), -1)
        occupancy = np.cumsum(steps, axis=0)[:-1] > 0
    return occupancy, lo


def marching_cubes_mm(volume: np.ndarray, origin: np.ndarray, voxel_mm, smooth_sigma_vox: float = 0.0,
                      level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Surface (vertices mm, faces) of ``volume`` at ``level`` with scikit-image (needed: a one-line error if not).

    ``volume`` is indexed (x, y, z) in the shape frame; ``origin`` the mm position of voxel (0, 0, 0).
    """
    try:
        from skimage.measure import marching_cubes
    except ImportError:
        raise DataError("building vertebra surfaces needs scikit-image (pip install scikit-image)") from None
    from scipy.ndimage import gaussian_filter

    vol = np.pad(volume.astype(np.float32), 2)
    if smooth_sigma_vox > 0:
        vol = gaussian_filter(vol, smooth_sigma_vox)
    spacing = np.broadcast_to(np.asarray(voxel_mm, dtype=np.float64), (3,))
    verts, faces, _, _ = marching_cubes(vol, level=level, spacing=tuple(spacing))
    return verts + np.asarray(origin) - 2 * spacing, faces.astype(np.int64)


# ------------------------------------------------------------------------------------------------ the sources

def _check_dir(data_dir) -> Path:
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if not root.is_dir():
        raise DataError(f"vertebra mesh folder not found: {root} (expected ../shared/data/vertebra-meshes)")
    return root


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"cannot read mesh {path}: {exc.strerror or exc}") from None
    lines = text.splitlines()
    v_text = " ".join(line[2:] for line in lines if line.startswith("v "))
    f_text = re.sub(r"/[^ ]*", "", " ".join(line[2:] for line in lines if line.startswith("f ")))
    try:
        vertices = np.array(v_text.split(), dtype=np.float64).reshape(-1, 3)
        faces = np.array(f_text.split(), dtype=np.int64).reshape(-1, 3) - 1
    except ValueError:
        raise DataError(f"malformed OBJ mesh (only triangles with 'v x y z' vertices are read): {path}") from None
    if len(faces) == 0 or faces.min() < 0 or faces.max() >= len(vertices):
        raise DataError(f"OBJ mesh has no faces or faces pointing past its vertices: {path}")
    return vertices, faces


def read_pcd_xyz(path: Path) -> np.ndarray:
    """x, y, z (N, 3) float64 of a PCD v0.7 file (ascii or binary, float x y z fields)."""
    raw = Path(path).read_bytes()
    marker = raw.find(b"DATA ")
    if marker < 0:
        raise DataError(f"not a PCD file (no DATA line): {path}")
    line_end = raw.find(b"\n", marker)
    header = raw[:marker].decode("ascii", errors="replace").splitlines()
    fields = {line.split()[0]: line.split()[1:] for line in header if line and not line.startswith("#")}
    names, sizes, types = fields.get("FIELDS", []), fields.get("SIZE", []), fields.get("TYPE", [])
    n_points = int(fields.get("POINTS", ["0"])[0])
    if names[:3] != ["x", "y", "z"] or any(t != "F" for t in types[:3]):
        raise DataError(f"PCD file must start with float x y z fields: {path}")
    kind = raw[marker + 5:line_end].decode("ascii").strip()
    body = raw[line_end + 1:]
    if kind == "ascii":
        table = np.array(body.decode("ascii").split(), dtype=np.float64).reshape(n_points, -1)
        return table[:, :3]
    if kind != "binary":
        raise DataError(f"PCD DATA {kind!r} is not supported (ascii or binary only): {path}")
    dtype = np.dtype([(n, f"<{t.lower()}{s}") for n, s, t in zip(names, sizes, types)])
    record = np.frombuffer(body, dtype=dtype, count=n_points)
    return np.stack([record[a].astype(np.float64) for a in "xyz"], axis=1)


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Data array (indexed i, j, k) and voxel sizes (3,) mm of a NIfTI-1 file (.nii or .nii.gz), numpy only."""
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path) as handle:
                raw = handle.read()
        else:
            raw = Path(path).read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read NIfTI file {path}: {exc}") from None
    if len(raw) < 352:
        raise DataError(f"NIfTI file too short: {path}")
    order = "<" if np.frombuffer(raw[:4], "<i4")[0] == 348 else ">"
    if np.frombuffer(raw[:4], order + "i4")[0] != 348:
        raise DataError(f"not a NIfTI-1 file (header size is not 348): {path}")
    dim = np.frombuffer(raw[40:56], order + "i2")
    datatype = int(np.frombuffer(raw[70:72], order + "i2")[0])
    pixdim = np.frombuffer(raw[76:108], order + "f4")
    offset = int(np.frombuffer(raw[108:112], order + "f4")[0])
    codes = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}
    if datatype not in codes or dim[0] < 3:
        raise DataError(f"unsupported NIfTI datatype {datatype} or dimensions {dim[0]}: {path}")
    shape = tuple(int(d) for d in dim[1:4])
    count = int(np.prod(shape))
    data = np.frombuffer(raw, order + codes[datatype], count=count, offset=offset).reshape(shape, order="F")
    return data, pixdim[1:4].astype(np.float64)


def _verse_sample_shapes(root: Path) -> list[SourceShape]:
    from scipy.ndimage import binary_fill_holes, zoom
    from scipy.ndimage import label as connected

    folder = root / "verse-sample"
    mask_path = folder / "sub-verse004_seg-vert_msk.nii.gz"
    if not mask_path.is_file():
        raise DataError(f"VerSe sample mask not found: {mask_path}")
    data, spacing = read_nifti(mask_path)
    # axes (P, I, R) per the centroid file's "direction"; the frame wants (L, P, S): flip R and I
    ctd = json.loads((folder / "sub-verse004_seg-subreg_ctd.json").read_text())
    if ctd and ctd[0].get("direction") != ["P", "I", "R"]:
        raise DataError(f"unexpected VerSe axis direction {ctd[0].get('direction')} in {folder}")
    labels = np.rint(data).astype(np.int16)
    shapes = []
    for label_value, level in VERSE_LEVELS.items():
        where = np.argwhere(labels == label_value)
        if len(where) == 0:
            continue
        lo = np.maximum(where.min(axis=0) - 2, 0)
        hi = where.max(axis=0) + 3
        crop = labels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == label_value
        comps, n_comp = connected(crop)
        if n_comp > 1:  # stray voxels of a neighbour's label: keep the vertebra itself
            sizes = np.bincount(comps.ravel())[1:]
            crop = comps == (1 + int(np.argmax(sizes)))
        crop = binary_fill_holes(crop)  # cavities in a mask would become inner surfaces
        # to 1 mm isotropic before marching cubes (the k axis is 2 mm)
        factors = spacing / spacing.min()
        volume = zoom(crop.astype(np.float32), factors, order=1)
        verts, faces = marching_cubes_mm(volume, np.zeros(3), spacing.min(), smooth_sigma_vox=0.8)
        verts = verts + lo * spacing
        # (P, I, R) voxel frame -> (L, P, S): x = -R, y = P, z = -I
        frame = np.stack([-verts[:, 2], verts[:, 0], -verts[:, 1]], axis=1)
        faces = faces[:, ::-1]  # one axis flip in (x, y, z) order changes the winding; _finish re-checks anyway
        shapes.append(_finish(frame, faces, level=level, source_id=f"verse004_{level}",
                              dataset="VerSe sub-verse004 mask (anjany/verse), marching cubes",
                              licence="CC BY-SA 4.0, VerSe (Sekuboyina 2021; Loeffler 2020; Liebl 2021)"))
    return shapes


def _verse521_shapes(root: Path) -> list[SourceShape]:
    shapes = []
    for number, level in ((20, "L1"), (21, "L2")):
        matches = sorted((root / _MIRUNA / "vertebrae").glob(f"verse521_verLev{number}_*.obj"))
        if not matches:
            raise DataError(f"verse521 {level} mesh not found in {root / _MIRUNA / 'vertebrae'}")
        vertices, faces = _read_obj(matches[0])
        # the OBJ axes are already (lateral, posterior, superior): spinous process at +y, pointing to -z
        shapes.append(_finish(vertices * _OBJ_SCALE_MM, faces, level=level, source_id=f"verse521_{level}",
                              dataset="VerSe verse521 mesh (miruna20/DataGeneration_VertShapeCompletion)",
                              licence="CC BY-SA 4.0 (VerSe-derived); repository MIT (c) 2024 miruna20"))
    return shapes


def _ssm_shapes(root: Path) -> list[SourceShape]:
    folder = root / _SSM / "SSM"
    try:
        vertices = np.loadtxt(folder / "meanMesh_vertices.csv", delimiter=",")
        faces = np.loadtxt(folder / "meanMesh_faces.csv", delimiter=",", dtype=np.int64) - 1  # 1-based MATLAB
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the lumbar shape-model mean mesh in {folder}: {exc}") from None
    labels = _largest_component(faces, len(vertices))
    components = [c for c in np.unique(labels) if (labels == c).sum() > 1000]
    if len(components) != 4:
        raise DataError(f"expected 4 vertebrae (L2-L5) in the shape-model mean mesh, found {len(components)}")
    # SSM axes: x anterior, y lateral, z superior -> (lateral, posterior, superior) is a proper rotation
    frame = np.stack([vertices[:, 1], -vertices[:, 0], vertices[:, 2]], axis=1)
    by_height = sorted(components, key=lambda c: -frame[labels == c, 2].mean())
    shapes = []
    for level, comp in zip(("L2", "L3", "L4", "L5"), by_height):
        sub_vertices, sub_faces = _submesh(frame, faces, labels == comp)
        shapes.append(_finish(sub_vertices, sub_faces, level=level, source_id=f"ssm_mean_{level}",
                              dataset="lumbar SSM mean mesh (aclouthier/morphable-lumbar-model)",
                              licence="MIT (c) 2022 Allison Clouthier"))
    return shapes


@lru_cache(maxsize=4)
def _load_sources(root: Path, max_faces: int) -> tuple[SourceShape, ...]:
    shapes = _verse_sample_shapes(root) + _verse521_shapes(root) + _ssm_shapes(root)
    return tuple(decimate_to(s, max_faces) for s in shapes)


def source_shapes(data_dir=None, levels=None, max_faces: int = 24000,
                  include_pathological: bool = False) -> list[SourceShape]:
    """Every closed source vertebra (mm; frame in the module docstring) with its level and source id.

    data_dir: the ``vertebra-meshes`` folder (default ``../shared/data/vertebra-meshes``); levels: keep only
    these ("L1".."L5", "T9".."T12"; default all); max_faces: meshes above this are re-meshed on a voxel grid
    (keeps one case under a second); include_pathological: also return ``PATHOLOGICAL_SOURCES`` (default no).
    Cached per process. Raises ``DataError`` when a file is missing or broken.
    """
    root = _check_dir(data_dir).resolve()
    shapes = list(_load_sources(root, int(max_faces)))
    if not include_pathological:
        shapes = [s for s in shapes if s.source_id not in PATHOLOGICAL_SOURCES]
    if levels is not None:
        wanted = set(levels)
        unknown = wanted - set(VERSE_LEVELS.values())
        if unknown:
            raise DataError(f"unknown vertebra level(s) {sorted(unknown)}; known: T9-T12, L1-L5")
        shapes = [s for s in shapes if s.level in wanted]
    return shapes


def template_clouds(data_dir=None) -> list[TemplateCloud]:
    """The L1-L5 partial template clouds (mm, not centred) of the DataGeneration pipeline, with their levels."""
    folder = _check_dir(data_dir) / _MIRUNA / "synthetic_templates"
    clouds = []
    for number in range(20, 25):
        path = folder / f"synthTempl_verLev{number}.pcd"
        if not path.is_file():
            raise DataError(f"template cloud not found: {path}")
        clouds.append(TemplateCloud(points=read_pcd_xyz(path) * _OBJ_SCALE_MM, level=VERSE_LEVELS[number],
                                    source_id=f"template_{VERSE_LEVELS[number]}"))
    return clouds


# ------------------------------------------------------------------------------------------------ deformation

def deform(shape: SourceShape, rng: np.random.Generator, strength: float = 1.0, n_centres: int = 10,
           width_mm: float = 18.0, displacement_sd_mm: float = 2.0, scale_sd: float = 0.06) -> SourceShape:
    """A new vertebra: ``shape`` moved by a smooth random displacement field, then scaled anisotropically.

    Field u(p) = sum_k a_k exp(-|p - c_k|^2 / (2 width^2)) with ``n_centres`` centres c_k drawn on the
    surface and a_k ~ N(0, (strength * displacement_sd_mm)^2 I); then per-axis scale factors
    exp(N(0, (strength * scale_sd)^2)) about the centroid; re-centred. ``rng`` is a numpy Generator;
    ``strength`` >= 0 (0 gives the same shape back, scaled by 1). Level and source id are kept; the drawn
    parameters are in ``deformation``.
    """
    if not isinstance(rng, np.random.Generator):
        raise DataError(f"deform needs a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    if not np.isfinite(strength) or strength < 0:
        raise DataError(f"deformation strength must be a number >= 0, got {strength!r}")
    vertices = shape.vertices
    centres = vertices[rng.choice(len(vertices), size=n_centres, replace=False)]
    amplitudes = rng.normal(0.0, strength * displacement_sd_mm, size=(n_centres, 3))
    scales = np.exp(rng.normal(0.0, strength * scale_sd, size=3))
    sq = ((vertices[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    moved = vertices + np.exp(-sq / (2 * width_mm ** 2)) @ amplitudes
    moved = (moved - moved.mean(axis=0)) * scales
    params = {"parent": shape.source_id if shape.is_source else f"{shape.source_id} (deformed)",
              "strength": float(strength), "n_centres": int(n_centres), "width_mm": float(width_mm),
              "displacement_sd_mm": float(displacement_sd_mm), "scales": [round(float(s), 5) for s in scales]}
    return _finish(moved, shape.faces, level=shape.level, source_id=shape.source_id, dataset=shape.dataset,
                   licence=shape.licence, deformation=params)


def split_by_source(shapes, test_sources=DEFAULT_TEST_SOURCES) -> tuple[list, list]:
    """(train, test): shapes (source or deformed) whose ``source_id`` is in ``test_sources`` go to test.

    A test shape then never shares a source with a training shape. Raises ``DataError`` for a test source id
    no given shape has, or when either side would be empty.
    """
    shapes = list(shapes)
    test_ids = set(test_sources)
    known = {s.source_id for s in shapes}
    missing = test_ids - known
    if missing:
        raise DataError(f"test source(s) {sorted(missing)} not among the shapes' sources {sorted(known)}")
    train = [s for s in shapes if s.source_id not in test_ids]
    test = [s for s in shapes if s.source_id in test_ids]
    if not train or not test:
        raise DataError("split by source leaves no training or no test shapes")
    return train, test


def canal_landmarks(shape: SourceShape, slab_mm: float = 3.0, wall_reach_mm: float = 12.0) -> dict:
    """Where the body ends and the arch begins on the midline (mm, shape frame).

    Rays along +y (anterior to posterior) at |x| <= ``slab_mm``, 1 mm apart, over the middle 60 % of the body's
    height: each one that crosses the solid at least twice (the body, then the arch) leaves the body at its
    2nd crossing and enters the arch at its 3rd. Medians over those rays: body_posterior_y (the posterior wall
    of the body) and arch_anterior_y (the front of the laminae / spinous process); body_posterior_max_y: the
    95th percentile of the first exit from the solid over rays out to |x| <= ``wall_reach_mm`` that cross it
    twice (the concave wall's posterolateral rim and, near 12 mm, the pedicle roots: a few mm to 10 mm behind
    body_posterior_y). body_half_width_mm: half the
    body's lateral extent over the front 60 % of its depth (clear of the transverse processes and L5's alae).
    """
    vertices = shape.vertices
    front_y = float(vertices[:, 1].min())
    front = vertices[vertices[:, 1] < front_y + 20.0]  # the front 20 mm are body only
    z_low, z_high = np.percentile(front[:, 2], [20, 80])
    reach_mm = max(slab_mm, wall_reach_mm)
    n_x, n_z = int(2 * reach_mm) + 1, int(np.ceil(z_high - z_low)) + 1
    # (u, v, depth) = (z, x, y) is right-handed; only the crossing order matters here
    hits = rasterize(vertices[:, [2, 0]], vertices[:, 1], shape.faces, origin=(z_low, -reach_mm), pixel_mm=1.0,
                     shape=(n_z, n_x))
    order = np.lexsort((hits.depth, hits.pixel))
    pixel, depth = hits.pixel[order], hits.depth[order]
    starts = np.r_[0, np.flatnonzero(np.diff(pixel)) + 1] if len(pixel) else np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[starts, len(pixel)])
    ray_x = np.abs(pixel[starts] % n_x - (n_x - 1) / 2)  # |x| mm of each ray
    enough = counts >= 4
    midline = enough & (ray_x <= slab_mm)
    if not midline.any():
        raise DataError(f"no spinal canal found on the midline of {shape.source_id} ({shape.level})")
    body_posterior_y = float(np.median(depth[starts[midline] + 1]))
    arch_anterior_y = float(np.median(depth[starts[midline] + 2]))
    # the wall is concave: beside the midline (towards the pedicles) it reaches further back
    body_posterior_max_y = float(np.percentile(depth[starts[enough] + 1], 95))
    body = vertices[vertices[:, 1] < front_y + 0.6 * (body_posterior_y - front_y)]
    half_width = float(np.percentile(np.abs(body[:, 0]), 98)) if len(body) else 0.0
    return {"body_posterior_y": body_posterior_y, "arch_anterior_y": arch_anterior_y,
            "body_posterior_max_y": max(body_posterior_max_y, body_posterior_y), "body_half_width_mm": half_width}


def with_vertices(shape: SourceShape, vertices: np.ndarray) -> SourceShape:
    """The same shape with moved vertices (normals recomputed, not re-centred): for rigid placements."""
    return replace(shape, vertices=vertices, normals=vertex_normals(vertices, shape.faces))
