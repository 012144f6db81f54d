"""The shape of the code (docs/architecture.md), kept by tests: import-linter contracts (tasks -> stages -> core,
no torch on the runtime side, no cycles), no module importing another's private names, every task spec valid, and
bundle manifest v2 (self-describing; v1 bundles still load and upgrade to v2 with the same outputs)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sonogate.cli import main
from sonogate.core.bundle import FORMAT_VERSION, MANIFEST, load_bundle
from sonogate.core.registry import get_task, task_ids
from sonogate.core.task import InputSpec, OutputSpec, TaskSpec, TaskSpecError
from sonogate.errors import BundleError
from tests.tiny_bundle import speckled_frame, write_tiny_bundle

pytestmark = pytest.mark.torchfree

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sonogate"


def test_import_contracts_hold():
    """pyproject.toml [tool.importlinter]: the layers, no torch in runtime/device/calibration/core, no cycles between
    the modules of a package. import-linter reads every import, those inside functions included."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint_imports), "--no-cache"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in run.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_another_modules_private_names():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("sonogate"):
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and node.module != module:
                    offences.append(f"{module} imports {node.module}.{alias.name} (line {node.lineno})")
    assert not offences, "\n".join(offences)


def test_every_task_has_a_valid_spec_with_a_stable_hash():
    ids = task_ids()
    assert {"hip_us", "hip_xr"} <= set(ids)
    for task_id in ids:
        spec = get_task(task_id)
        assert spec.id == task_id and spec.inputs and spec.outputs
        assert spec.decision is None or spec.decision.safe_default not in spec.decision.reassuring
        assert spec.spec_sha256 == get_task(task_id).spec_sha256 and len(spec.spec_sha256) == 64
        json.dumps(spec.to_manifest())  # JSON-ready
    with pytest.raises(TaskSpecError, match="unknown task 'nope' .*hip_us"):
        get_task("nope")


def test_a_spec_that_contradicts_itself_is_refused():
    image = InputSpec(name="image")
    with pytest.raises(TaskSpecError, match="kind 'video'"):
        TaskSpec(id="t", version=1, title="", modality="DX", model_type="m", inputs=(InputSpec("a", kind="video"),),
                 outputs=())
    with pytest.raises(TaskSpecError, match="input names repeat"):
        TaskSpec(id="t", version=1, title="", modality="DX", model_type="m", inputs=(image, image), outputs=())
    with pytest.raises(TaskSpecError, match="kind 'score'"):
        TaskSpec(id="t", version=1, title="", modality="DX", model_type="m", inputs=(image,),
                 outputs=(OutputSpec("y", kind="score"),))


def _as_v1(folder: Path) -> None:
    """Rewrite a (v2) bundle's manifest the way v1 exporters wrote it, keeping its calibration bound to it."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["format_version"] = 1
    manifest["task"] = manifest["task"]["id"]
    for key in ("inputs", "measurements", "decision", "calibration", "analyze_columns", "min_runtime"):
        manifest.pop(key)
    data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    (folder / MANIFEST).write_bytes(data)
    calibration = json.loads((folder / "calibration.json").read_text())
    import hashlib

    calibration["bundle_sha256"] = hashlib.sha256(data).hexdigest()
    (folder / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")


def _decisions(folder: Path) -> list[tuple[str, str]]:
    """(recommendation, the frame's and the window's measurements as JSON) per frame of a fixed sequence."""
    from sonogate.runtime.session import Session

    rng = np.random.default_rng(3)
    out = []
    with Session(folder, device="ort-cpu") as session:
        for level in (200,) * 8 + (90,) * 8:
            event = session.process(speckled_frame(level, rng))
            measured = json.dumps([event["frame_measurements"], event["measurements"]], sort_keys=True)
            out.append((event["recommendation"], measured))
    return out


def test_manifest_v2_describes_the_task_and_v1_bundles_load_and_upgrade_unchanged(tmp_path, capsys):
    v2 = write_tiny_bundle(tmp_path / "v2")
    bundle = load_bundle(v2)
    manifest = bundle.manifest
    assert bundle.format_version == FORMAT_VERSION == 2 and bundle.task == "hip_us"
    assert manifest["task"]["model_type"] == "hip_us_frame"
    assert manifest["task"]["spec_sha256"] == get_task("hip_us").spec_sha256
    assert manifest["inputs"][0]["name"] == "image" and manifest["inputs"][0]["height"] == 32  # the bundle's size
    assert manifest["outputs"]["measurements"]["kind"] == "measurement"
    assert manifest["outputs"]["plane_logit"]["kind"] == "quality"
    assert {m["name"]: m["safe_side"] for m in manifest["measurements"]}["alpha_deg"] == "above"
    assert manifest["decision"]["safe_default"] == "no_recommendation"
    assert manifest["calibration"]["exchangeable_unit"] == "sweep"

    v1 = write_tiny_bundle(tmp_path / "v1")
    _as_v1(v1)
    assert load_bundle(v1).format_version == 1 and load_bundle(v1).task == "hip_us"
    before = _decisions(v1)
    assert main(["bundle", "upgrade", "--bundle", str(v1), "--out", str(tmp_path / "upgraded")]) == 0
    assert "calibration.json re-bound" in capsys.readouterr().out
    upgraded = load_bundle(tmp_path / "upgraded")
    assert upgraded.format_version == 2 and upgraded.manifest["provenance"]["upgraded_from"]["format_version"] == 1
    after = _decisions(tmp_path / "upgraded")
    assert after == before and {"us_sufficient", "xray_recommended"} <= {r for r, _ in after}
    # upgrading twice is refused with one line
    assert main(["bundle", "upgrade", "--bundle", str(tmp_path / "upgraded")]) == 2
    assert "already at manifest version 2" in capsys.readouterr().err


def test_a_bundle_for_a_newer_runtime_or_an_unknown_format_is_refused(tmp_path):
    folder = write_tiny_bundle(tmp_path / "b")
    manifest = json.loads((folder / MANIFEST).read_text())
    for key, value, message in (("min_runtime", "99.0", "needs sonogate >= 99.0"),
                                ("format_version", 3, "format_version 3 is not one this runtime reads")):
        changed = dict(manifest, **{key: value})
        (folder / MANIFEST).write_text(json.dumps(changed))
        with pytest.raises(BundleError, match=message):
            load_bundle(folder)
