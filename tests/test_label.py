"""Hip-ultrasound labels: COCO-keypoints import (CVAT / Label Studio) and the labelling page (its JSON API, resuming,
and a real headless Chromium clicking the seven Graf landmarks on a phantom frame)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonogate.cli import main as sonogate_main
from sonogate.data.folder import read_labelled_folder
from sonogate.errors import DataError, SonogateError
from sonogate.phantom.hip_us import measure_from_landmarks
from sonogate.tasks.hip_us.coco import (
    GRAF_LANDMARKS,
    LABEL_COLUMNS,
    import_coco,
    measure_graf,
    parse_name_map,
)
from sonogate.tasks.hip_us.label_cli import register
from sonogate.tasks.hip_us.label_server import LabelSession, make_server, server_url

pytestmark = pytest.mark.torchfree

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

# Two hand-placed hips (pixels, pixel centres at integers): a mature one (alpha about 65) and a shallow one.
HIP_A = {"baseline_top": (20.0, 60.0), "baseline_bottom": (90.0, 61.0), "bony_rim": (100.0, 61.0),
         "lower_limb": (130.0, 120.0), "labrum": (125.0, 40.0), "head_medial": (140.0, 110.0),
         "head_lateral": (138.0, 30.0)}
HIP_B = {"baseline_top": (15.0, 50.0), "baseline_bottom": (80.0, 55.0), "bony_rim": (95.0, 57.0),
         "lower_limb": (110.0, 80.0), "labrum": (130.0, 30.0), "head_medial": (150.0, 100.0),
         "head_lateral": (145.0, 20.0)}


def _parser() -> argparse.ArgumentParser:
    """The two subcommands as sonogate.cli will carry them (register() is the lead's hook)."""
    parser = argparse.ArgumentParser(prog="sonogate")
    register(parser.add_subparsers(dest="command"))
    return parser


def _write_images(folder: Path, names, size=(160, 200)) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), rng.integers(0, 255, size, dtype=np.uint8))


def _coco_keypoints(points: dict, order, visible=None) -> list[float]:
    """Flat COCO keypoints in continuous coordinates (our pixel centre + 0.5); v=0 for names not in ``visible``."""
    flat = []
    for name in order:
        ours = _TEST_NAMES[name]
        if visible is not None and ours not in visible:
            flat += [0, 0, 0]
        else:
            x, y = points[ours]
            flat += [x + 0.5, y + 0.5, 2]
    return flat


# Their names (a CVAT skeleton with one name that needs a user mapping) -> ours; plus a point we do not use.
_TEST_NAMES = {"Baseline Top": "baseline_top", "baseline-bottom": "baseline_bottom", "Rim": "bony_rim",
               "Lower Limb": "lower_limb", "Labrum": "labrum", "kopf_innen": "head_medial",
               "Head Lateral": "head_lateral"}
_THEIR_ORDER = ["Rim", "Baseline Top", "baseline-bottom", "Lower Limb", "Labrum", "kopf_innen", "Head Lateral"]


def _coco(tmp_path: Path) -> Path:
    """A COCO export of five frames: two complete, one with a missing labrum (v=0), one without annotation,
    one complete frame with a CVAT standard_plane=false attribute and its points split over two annotations."""
    _write_images(tmp_path / "export" / "images", ["sweep1/f0.png", "sweep1/f1.png", "sweep1/f2.png",
                                                   "sweep2/f0.png", "sweep2/f1.png"])
    order = [*_THEIR_ORDER, "Femur Centre"]
    extra = [70.0, 90.0, 2]  # the head centre: theirs, not one of our seven

    def keypoints(points, visible=None):
        return _coco_keypoints(points, _THEIR_ORDER, visible) + extra

    first_half = set(GRAF_LANDMARKS[:3])
    coco = {
        "images": [{"id": k + 1, "file_name": name, "width": 200, "height": 160}
                   for k, name in enumerate(["sweep1/f0.png", "sweep1/f1.png", "sweep1/f2.png",
                                             "sweep2/f0.png", "sweep2/f1.png"])],
        "categories": [{"id": 1, "name": "hip", "keypoints": order, "skeleton": []},
                       {"id": 2, "name": "probe", "supercategory": ""}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "keypoints": keypoints(HIP_A), "num_keypoints": 8},
            {"id": 2, "image_id": 2, "category_id": 1, "keypoints": keypoints(HIP_B), "num_keypoints": 8},
            {"id": 3, "image_id": 3, "category_id": 1, "num_keypoints": 7,
             "keypoints": keypoints(HIP_A, visible=set(GRAF_LANDMARKS) - {"labrum"})},
            {"id": 4, "image_id": 5, "category_id": 1, "attributes": {"occluded": False, "standard_plane": "false"},
             "keypoints": keypoints(HIP_B, visible=first_half)},
            {"id": 5, "image_id": 5, "category_id": 1, "attributes": {"occluded": False},
             "keypoints": keypoints(HIP_B, visible=set(GRAF_LANDMARKS) - first_half)[:-3] + [0, 0, 0]},
            {"id": 6, "image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10]},
        ],
    }
    path = tmp_path / "export" / "annotations" / "person_keypoints_default.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(coco))
    return path


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_measure_graf_uses_the_project_geometry_and_shows_each_value_once_its_points_are_placed():
    truth = measure_from_landmarks(HIP_A)
    full = measure_graf(HIP_A)
    for name in ("alpha_deg", "beta_deg", "coverage_pct"):
        assert full[name] == pytest.approx(truth[name], abs=1e-12)
    assert 55.0 < full["alpha_deg"] < 75.0 and 0.0 < full["coverage_pct"] < 100.0
    placed = {}
    shown = []
    for name in GRAF_LANDMARKS:
        placed[name] = HIP_A[name]
        values = measure_graf(placed)
        shown.append(tuple(v is not None for v in values.values()))
        for key, value in values.items():
            if value is not None:
                assert value == pytest.approx(truth[key], abs=1e-12)  # stand-ins never leak into a shown value
    # alpha after the lower limb (4th point), beta after the labrum (5th), coverage after both head edges
    assert shown == [(False, False, False)] * 3 + [(True, False, False), (True, True, False),
                                                   (True, True, False), (True, True, True)]
    with pytest.raises(SonogateError, match="coincide"):
        measure_graf({**HIP_A, "baseline_bottom": HIP_A["baseline_top"]})


def test_name_mapping_parses_pairs_and_json_and_refuses_unknown_targets(tmp_path):
    assert parse_name_map("Kopf Innen=head_medial, p1=Baseline Top") == {"kopf_innen": "head_medial",
                                                                          "p1": "baseline_top"}
    mapping_file = tmp_path / "map.json"
    mapping_file.write_text(json.dumps({"Rand": "bony_rim"}))
    assert parse_name_map(str(mapping_file)) == {"rand": "bony_rim"}
    with pytest.raises(DataError, match="our landmarks are"):
        parse_name_map("rim=turning_point")
    with pytest.raises(DataError, match="not 'their=ours'"):
        parse_name_map("rim")
    with pytest.raises(DataError, match="cannot read"):
        parse_name_map(str(tmp_path / "absent.json"))


def test_coco_import_measures_with_the_project_geometry(tmp_path):
    coco_json = _coco(tmp_path)
    out = tmp_path / "export" / "labels.csv"
    result = import_coco(coco_json, out, mapping=parse_name_map("kopf_innen=head_medial"), patient_id="infant7")
    assert (result.frames, result.measured) == (5, 3)
    rows = {row["image"]: row for row in _read_rows(out)}
    assert list(_read_rows(out)[0]) == list(LABEL_COLUMNS)
    for image, points, plane in (("images/sweep1/f0.png", HIP_A, "1"), ("images/sweep1/f1.png", HIP_B, "1"),
                                 ("images/sweep2/f1.png", HIP_B, "0")):
        row = rows[image]
        truth = measure_from_landmarks(points)
        for name in ("alpha_deg", "beta_deg", "coverage_pct"):
            assert float(row[name]) == pytest.approx(truth[name], abs=1e-4), (image, name)
        for name in GRAF_LANDMARKS:  # COCO's continuous coordinates back on pixel centres
            assert (float(row[f"lm_{name}_x"]), float(row[f"lm_{name}_y"])) == pytest.approx(points[name], abs=1e-4)
        assert row["standard_plane"] == plane and row["note"] == "" and row["patient_id"] == "infant7"
    assert rows["images/sweep1/f0.png"]["sweep_id"] == "sweep1" and rows["images/sweep2/f1.png"]["sweep_id"] == "sweep2"
    missing = rows["images/sweep1/f2.png"]
    assert missing["alpha_deg"] == missing["beta_deg"] == missing["coverage_pct"] == ""
    assert missing["note"] == "missing landmarks: labrum (no measurements)"
    assert missing["lm_labrum_x"] == "" and float(missing["lm_bony_rim_x"]) == pytest.approx(HIP_A["bony_rim"][0])
    unannotated = rows["images/sweep2/f0.png"]
    assert unannotated["note"].startswith("no keypoint annotation") and unannotated["standard_plane"] == ""
    assert any("sweep1/f2.png: missing landmarks: labrum" in note for note in result.notes)
    # the project's reader takes the file as a labelled folder
    folder = read_labelled_folder(out.parent)
    assert len(folder) == 5
    alpha = folder.targets(["alpha_deg"])[:, 0]
    assert np.isnan(alpha).sum() == 2 and np.nanmax(alpha) == pytest.approx(measure_from_landmarks(HIP_A)["alpha_deg"],
                                                                           abs=1e-4)
    assert folder.landmark_names() == list(GRAF_LANDMARKS)


def test_coco_import_refuses_unmapped_points_and_nonsense_landmarks_naming_the_image(tmp_path):
    coco_json = _coco(tmp_path)
    out = tmp_path / "labels.csv"
    with pytest.raises(DataError, match=r"no point for head_medial .*--map"):
        import_coco(coco_json, out)  # 'kopf_innen' is not a name we know without a mapping
    data = json.loads(coco_json.read_text())
    flat = data["annotations"][1]["keypoints"]
    flat[3:6] = flat[6:9]  # baseline_top (2nd of theirs) on baseline_bottom: a baseline of zero length
    coco_json.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"^sweep1/f1\.png: baseline_top and baseline_bottom coincide"):
        import_coco(coco_json, out, mapping={"kopf_innen": "head_medial"})
    assert not out.exists()  # nothing half-written
    data["images"][1]["file_name"] = "sweep1/absent.png"
    coco_json.write_text(json.dumps(data))
    with pytest.raises(DataError, match="image sweep1/absent.png of .* not found"):
        import_coco(coco_json, out, mapping={"kopf_innen": "head_medial"})


def test_label_import_command(tmp_path, capsys):
    coco_json = _coco(tmp_path)
    out = tmp_path / "site" / "labels.csv"
    args = _parser().parse_args(["label-import", str(coco_json), "--out", str(out), "--map", "kopf_innen=head_medial",
                                 "--images", str(tmp_path / "export"), "--sweep-id", "S1", "--standard-plane", "no"])
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert f"wrote {out}: 5 frames, 3 with alpha/beta/coverage" in captured.out
    assert "sweep1/f2.png: missing landmarks: labrum" in captured.err
    rows = _read_rows(out)
    assert rows[0]["image"] == "../export/images/sweep1/f0.png" and {r["sweep_id"] for r in rows} == {"S1"}
    assert [r["standard_plane"] for r in rows] == ["0", "0", "0", "", "0"]
    assert len(read_labelled_folder(out.parent)) == 5


# ----------------------------------------------------------------------------------------------------------
# The page's server


def _post(url: str, payload: dict, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class _Served:
    def __init__(self, session: LabelSession):
        self.server = make_server(session)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = server_url(self.server)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def frames(tmp_path) -> Path:
    folder = tmp_path / "frames"
    _write_images(folder, ["a.png", "b.png", "c.jpg"])
    return folder


def test_server_listens_on_localhost_only(frames, tmp_path):
    session = LabelSession(frames, tmp_path / "labels.csv")
    with pytest.raises(SonogateError, match="127.0.0.1 only"):
        make_server(session, host="0.0.0.0")
    served = _Served(session)
    try:
        assert served.server.server_address[0] == "127.0.0.1" and served.url.startswith("http://127.0.0.1:")
        # a page of another site that points its own name at 127.0.0.1 still sends its Host: refused
        status, _ = _get(served.url + "api/state", headers={"Host": "evil.example:80"})
        assert status == 403
        # a form post from another origin cannot send JSON: anything else is refused
        status, _ = _post(served.url + "api/save/0", {"points": {}}, content_type="text/plain")
        assert status == 415 and not (tmp_path / "labels.csv").exists()
        status, page = _get(served.url)
        assert status == 200 and b"/label.js" in page
        assert _get(served.url + "label.js")[0] == 200 and _get(served.url + "label.css")[0] == 200
        assert _get(served.url + "../labels.csv")[0] == 404
    finally:
        served.close()


def test_api_round_trip_and_resume(frames, tmp_path):
    out = tmp_path / "labels.csv"
    served = _Served(LabelSession(frames, out, patient_id="p9", sweep_id="right"))
    try:
        state = json.loads(_get(served.url + "api/state")[1])
        assert [f["image"] for f in state["frames"]] == ["frames/a.png", "frames/b.png", "frames/c.jpg"]
        assert state["resume_index"] == 0 and [lm["name"] for lm in state["landmarks"]] == list(GRAF_LANDMARKS)
        frame = json.loads(_get(served.url + "api/frame/2")[1])
        assert (frame["width"], frame["height"], frame["saved"]) == (200, 160, False)
        status, image = _get(served.url + "frames/2")
        assert status == 200 and cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (160, 200)
        partial = {k: HIP_A[k] for k in GRAF_LANDMARKS[:4]}
        status, answer = _post(served.url + "api/measure", {"points": partial})
        truth = measure_from_landmarks(HIP_A)
        assert status == 200 and answer["measures"]["alpha_deg"] == pytest.approx(truth["alpha_deg"], abs=1e-9)
        assert answer["measures"]["beta_deg"] is None and answer["graf_type"].startswith("I")
        status, answer = _post(served.url + "api/save/0", {"points": HIP_A, "standard_plane": 1})
        assert status == 200 and answer["measures"]["coverage_pct"] == pytest.approx(truth["coverage_pct"], abs=1e-4)
        status, answer = _post(served.url + "api/save/1", {"points": partial, "standard_plane": 0})
        assert status == 200 and answer["note"].startswith("missing landmarks: labrum, head_medial")
        status, answer = _post(served.url + "api/save/2", {"points": {**HIP_B, "baseline_top": HIP_B["baseline_bottom"]},
                                                          "standard_plane": 1})
        assert status == 400 and answer["error"].startswith("frames/c.jpg: baseline_top and baseline_bottom coincide")
        assert _post(served.url + "api/save/7", {"points": {}})[0] == 400
    finally:
        served.close()
    rows = _read_rows(out)
    assert [r["image"] for r in rows] == ["frames/a.png", "frames/b.png"]
    assert float(rows[0]["alpha_deg"]) == pytest.approx(truth["alpha_deg"], abs=1e-4)
    assert (rows[0]["patient_id"], rows[0]["sweep_id"], rows[0]["standard_plane"]) == ("p9", "right", "1")
    assert rows[1]["alpha_deg"] == "" and rows[1]["standard_plane"] == "0"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temporaries

    # a new session on the same CSV resumes at the first frame without a row and shows what was saved
    session = LabelSession(frames, out, patient_id="p9", sweep_id="right")
    assert session.resume_index() == 2
    saved = session.frame(0)
    assert saved["saved"] and saved["standard_plane"] == 1
    assert saved["points"]["labrum"] == pytest.approx(list(HIP_A["labrum"]), abs=1e-4)
    assert saved["measures"]["beta_deg"] == pytest.approx(truth["beta_deg"], abs=1e-4)
    # re-saving frame 1 replaces its row, keeps columns the page does not own, and order
    with open(out, newline="") as handle:
        table = list(csv.DictReader(handle))
    for row in table:
        row["device"] = "site-scanner"
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*table[0]])
        writer.writeheader()
        writer.writerows(table)
    session = LabelSession(frames, out, patient_id="p9", sweep_id="right")
    session.save(1, HIP_B, 1)
    rows = _read_rows(out)
    assert [r["image"] for r in rows] == ["frames/a.png", "frames/b.png"] and {r["device"] for r in rows} == {
        "site-scanner"}
    assert float(rows[1]["alpha_deg"]) == pytest.approx(measure_from_landmarks(HIP_B)["alpha_deg"], abs=1e-4)
    assert os.stat(out).st_mode & 0o777 == 0o644


def test_label_command_prints_the_url_and_serves(frames, tmp_path):
    script = ("import argparse, sys; from sonogate.tasks.hip_us.label_cli import register; "
              "p = argparse.ArgumentParser(); register(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); "
              "sys.exit(a.func(a))")
    out = tmp_path / "labels.csv"
    process = subprocess.Popen([sys.executable, "-c", script, "label", str(frames), "--out", str(out), "--no-browser",
                                "--patient-id", "p1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[0].startswith(f"labelling 3 frames of {frames} into {out} (0 saved already; resuming at frame 1)")
        assert lines[1].startswith("open http://127.0.0.1:")
        url = lines[1].split()[1]
        state = json.loads(_get(url + "api/state")[1])
        assert len(state["frames"]) == 3
    finally:
        process.terminate()
        process.communicate(timeout=10)
    args = _parser().parse_args(["label", str(frames), "--out", str(out), "--no-browser", "--host", "0.0.0.0"])
    with pytest.raises(SonogateError, match="127.0.0.1 only"):
        args.func(args)


# ----------------------------------------------------------------------------------------------------------
# A real browser


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; dev extra)")
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


def _phantom_frame(tmp_path: Path) -> tuple[Path, dict, int]:
    """Phantom frames via the CLI; (folder, the truth row of a standard-plane frame whose seven landmarks all lie
    inside the image, its index in the frames folder's sorted listing)."""
    folder = tmp_path / "phantom"
    assert sonogate_main(["phantom", "us", "--n", "4", "--seed", "5", "--out", str(folder), "--devices", "A",
                          "--standard-fraction", "1"]) == 0
    rows = _read_rows(folder / "labels.csv")
    listing = sorted(r["image"] for r in rows)
    for row in rows:
        inside = all(3 <= float(row[f"lm_{n}_{a}"]) <= 252 for n in GRAF_LANDMARKS for a in "xy")
        if row["standard_plane"] == "1" and inside:
            return folder, row, listing.index(row["image"])
    pytest.fail("no phantom frame with every landmark inside the image")


def _number(text: str) -> float:
    return float(text.replace("°", "").replace("%", "").strip())


def test_a_sonographer_labels_a_phantom_frame_in_headless_chromium(tmp_path):
    sync_playwright = _browser_or_skip()
    folder, truth, index = _phantom_frame(tmp_path)
    out = folder / "sonographer.csv"
    session = LabelSession(folder / "images", out, patient_id="p1")
    served = _Served(session)
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900})
            try:
                page = context.new_page()
                page.goto(served.url)
                page.wait_for_selector("body[data-ready='1']")

                def go_to(target: int) -> None:
                    # n / p, one frame at a time, as a sonographer would
                    while (current := int(page.evaluate("document.body.dataset.frame"))) != target:
                        page.keyboard.press("n" if current < target else "p")
                        page.wait_for_function(f"document.body.dataset.frame !== '{current}'")

                go_to(index)
                assert page.inner_text("#frame-name") == truth["image"]
                box = page.locator("#frame").bounding_box()
                assert box["width"] > 600  # shown larger than its 256 pixels

                def click(x: float, y: float) -> None:
                    page.mouse.click(box["x"] + (x + 0.5) * box["width"] / 256, box["y"] + (y + 0.5) * box["height"] / 256)

                point = {n: (float(truth[f"lm_{n}_x"]), float(truth[f"lm_{n}_y"])) for n in GRAF_LANDMARKS}
                for k, name in enumerate(GRAF_LANDMARKS):
                    assert f"[{k + 1}]" in page.inner_text("#next-landmark")  # the page names the next landmark
                    click(*point[name])
                page.wait_for_function("document.getElementById('coverage').textContent !== '—'")
                assert page.locator("#overlay circle").count() == 7 and page.locator("#overlay line").count() == 5
                shown = {key: _number(page.inner_text(f"#{key}")) for key in ("alpha", "beta", "coverage")}
                # 1 moves the baseline's top to a wrong place, u puts it back
                alpha_text = page.inner_text("#alpha")
                page.keyboard.press("1")
                click(point["baseline_top"][0] + 40, point["baseline_top"][1] + 30)
                page.wait_for_function(f"document.getElementById('alpha').textContent !== '{alpha_text}'")
                page.keyboard.press("u")
                page.wait_for_function(f"document.getElementById('alpha').textContent === '{shown['alpha']:.1f}°'")
                assert page.inner_text("#next-landmark").startswith("All 7 landmarks placed")
                assert page.inner_text("#standard") == "no"
                page.keyboard.press("s")
                assert page.inner_text("#standard") == "yes"
                page.keyboard.press("Enter")  # save, then on to the next frame
                page.wait_for_function(f"document.body.dataset.frame === '{index + 1}'")

                # a reload resumes at the first frame not yet saved; p goes back to the saved one
                page.reload()
                page.wait_for_selector("body[data-ready='1']")
                assert page.evaluate("document.body.dataset.frame") == ("0" if index else "1")
                go_to(index)
                page.wait_for_function("document.getElementById('coverage').textContent !== '—'")
                assert page.locator("#overlay circle").count() == 7 and page.inner_text("#standard") == "yes"
                reloaded = {key: _number(page.inner_text(f"#{key}")) for key in ("alpha", "beta", "coverage")}
            finally:
                context.close()
    finally:
        served.close()
    rows = [r for r in _read_rows(out) if r["image"] == truth["image"]]
    assert len(rows) == 1 and rows[0]["standard_plane"] == "1" and rows[0]["note"] == ""
    for key, column, tolerance in (("alpha", "alpha_deg", 1.0), ("beta", "beta_deg", 1.0),
                                   ("coverage", "coverage_pct", 1.0)):
        saved = float(rows[0][column])
        assert saved == pytest.approx(float(truth[column]), abs=tolerance), column
        assert shown[key] == pytest.approx(saved, abs=0.051) and reloaded[key] == pytest.approx(saved, abs=0.051)
    for name in GRAF_LANDMARKS:
        clicked = (float(rows[0][f"lm_{name}_x"]), float(rows[0][f"lm_{name}_y"]))
        assert math.dist(clicked, (float(truth[f"lm_{name}_x"]), float(truth[f"lm_{name}_y"]))) < 0.6, name
