// sonogate label: click the seven Graf landmarks on each frame; the server measures (one geometry) and saves.
// Points are kept in pixels of the stored image with pixel centres at integers (x = 0 is the middle of the
// first pixel column), the project's landmark convention.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#4fc3f7", "#29b6f6", "#ffd54f", "#ff8a65", "#ba68c8", "#81c784", "#aed581"];
const state = {
  landmarks: [],          // [{name, title}]
  frames: [],             // [{index, image, saved}]
  index: -1,
  frame: null,            // the server's frame record
  points: {},             // name -> [x, y]
  standardPlane: 0,
  active: null,           // the landmark the next click places
  history: [],            // [{name, previous}] for undo
  dirty: false,
  measureSeq: 0,
  busy: false,
};

const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  const payload = await response.json();
  if (!response.ok) throw new Error(payload.error || response.statusText);
  return payload;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function firstMissing() {
  const missing = state.landmarks.find((lm) => !(lm.name in state.points));
  return missing ? missing.name : null;
}

function fmt(value, unit) {
  return value === null || value === undefined ? "—" : `${value.toFixed(1)}${unit}`;
}

function showMeasures(measures, grafType) {
  $("alpha").textContent = fmt(measures.alpha_deg, "°");
  $("beta").textContent = fmt(measures.beta_deg, "°");
  $("coverage").textContent = fmt(measures.coverage_pct, " %");
  $("graf-type").textContent = grafType || "—";
  for (const [id, key] of [["alpha", "alpha_deg"], ["beta", "beta_deg"], ["coverage", "coverage_pct"]]) {
    $(id).dataset.value = measures[key] === null || measures[key] === undefined ? "" : String(measures[key]);
  }
}

function showStandard() {
  const cell = $("standard");
  const yes = state.standardPlane === 1;
  cell.textContent = yes ? "yes" : "no";
  cell.className = yes ? "yes" : "no";
}

function showLandmarkList() {
  const list = $("landmarks");
  list.replaceChildren();
  state.landmarks.forEach((lm, k) => {
    const item = document.createElement("li");
    item.textContent = lm.title;
    item.dataset.name = lm.name;
    item.style.borderLeft = `4px solid ${COLOURS[k]}`;
    if (lm.name in state.points) item.classList.add("placed");
    if (lm.name === state.active) item.classList.add("active");
    item.addEventListener("click", () => pick(k));
    list.appendChild(item);
  });
  const next = state.landmarks.find((lm) => lm.name === state.active);
  $("next-landmark").textContent = next
    ? `Click: ${next.title} [${state.landmarks.indexOf(next) + 1}]`
    : "All 7 landmarks placed: s marks the standard plane, Enter saves (1–7 moves a point).";
}

function line(svg, a, b, colour, dash, width) {
  const element = document.createElementNS(SVG_NS, "line");
  element.setAttribute("x1", a[0] + 0.5); element.setAttribute("y1", a[1] + 0.5);
  element.setAttribute("x2", b[0] + 0.5); element.setAttribute("y2", b[1] + 0.5);
  element.setAttribute("stroke", colour);
  element.setAttribute("stroke-width", width);
  element.setAttribute("vector-effect", "non-scaling-stroke");
  if (dash) element.setAttribute("stroke-dasharray", dash);
  svg.appendChild(element);
}

function drawOverlay() {
  const svg = $("overlay");
  svg.replaceChildren();
  const p = state.points;
  const frame = state.frame;
  if (!frame) return;
  if (p.baseline_top && p.baseline_bottom) {
    // the baseline drawn across the whole image, its clicked part solid
    const dx = p.baseline_bottom[0] - p.baseline_top[0], dy = p.baseline_bottom[1] - p.baseline_top[1];
    const reach = 2 * Math.max(frame.width, frame.height) / Math.max(Math.hypot(dx, dy), 1e-9);
    line(svg, [p.baseline_top[0] - reach * dx, p.baseline_top[1] - reach * dy],
         [p.baseline_top[0] + reach * dx, p.baseline_top[1] + reach * dy], "#4fc3f7", "6 4", 1);
    line(svg, p.baseline_top, p.baseline_bottom, "#4fc3f7", null, 2);
  }
  if (p.bony_rim && p.lower_limb) line(svg, p.bony_rim, p.lower_limb, "#ff8a65", null, 2);   // bony roof
  if (p.bony_rim && p.labrum) line(svg, p.bony_rim, p.labrum, "#ba68c8", null, 2);          // cartilage roof
  if (p.head_medial && p.head_lateral) line(svg, p.head_medial, p.head_lateral, "#81c784", "2 3", 1.5);
  const radius = Math.max(frame.width, frame.height) / 120;
  state.landmarks.forEach((lm, k) => {
    const point = p[lm.name];
    if (!point) return;
    const dot = document.createElementNS(SVG_NS, "circle");
    dot.setAttribute("cx", point[0] + 0.5); dot.setAttribute("cy", point[1] + 0.5);
    dot.setAttribute("r", radius);
    dot.setAttribute("fill", COLOURS[k]);
    dot.setAttribute("stroke", "#000");
    dot.setAttribute("vector-effect", "non-scaling-stroke");
    dot.dataset.name = lm.name;
    svg.appendChild(dot);
    const label = document.createElementNS(SVG_NS, "text");
    label.setAttribute("x", point[0] + 0.5 + 1.5 * radius); label.setAttribute("y", point[1] + 0.5 - radius);
    label.setAttribute("fill", COLOURS[k]);
    label.setAttribute("font-size", 3 * radius);
    label.textContent = String(k + 1);
    svg.appendChild(label);
  });
}

function render() {
  showLandmarkList();
  drawOverlay();
  showStandard();
  const saved = state.frames.filter((f) => f.saved).length;
  $("progress").textContent = `${saved} / ${state.frames.length} saved`;
}

async function remeasure() {
  const seq = ++state.measureSeq;
  try {
    const answer = await api("/api/measure", {points: state.points});
    if (seq !== state.measureSeq) return;   // a newer click already asked
    showMeasures(answer.measures, answer.graf_type);
    if (!state.dirty) return;
    setStatus("unsaved changes", false);
  } catch (error) {
    if (seq === state.measureSeq) setStatus(error.message, true);
  }
}

function fitImage() {
  const frame = state.frame;
  if (!frame) return;
  const maxWidth = Math.max(200, window.innerWidth - 380);
  const maxHeight = Math.max(200, window.innerHeight - 70);
  const scale = Math.min(maxWidth / frame.width, maxHeight / frame.height);
  const width = Math.round(frame.width * scale), height = Math.round(frame.height * scale);
  const image = $("frame"), svg = $("overlay");
  image.style.width = `${width}px`; image.style.height = `${height}px`;
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${frame.width} ${frame.height}`);
  svg.setAttribute("preserveAspectRatio", "none");
}

async function loadFrame(index) {
  const frame = await api(`/api/frame/${index}`);
  state.index = index;
  state.frame = frame;
  state.points = {...frame.points};
  state.standardPlane = frame.standard_plane === null ? 0 : frame.standard_plane;
  state.history = [];
  state.dirty = false;
  state.active = firstMissing();
  $("frame-name").textContent = frame.image;
  $("frame-counter").textContent = `frame ${index + 1} of ${frame.count}`;
  $("note").textContent = frame.note || "";
  await new Promise((resolve) => {
    const image = $("frame");
    image.onload = resolve;
    image.onerror = resolve;
    image.src = `${frame.url}?v=${Date.now()}`;
  });
  fitImage();
  render();
  setStatus(frame.saved ? "saved earlier (resumed)" : "not saved yet", false);
  document.body.dataset.frame = String(index);
  await remeasure();
}

function pick(k) {
  if (k < 0 || k >= state.landmarks.length) return;
  state.active = state.landmarks[k].name;
  render();
}

function placePoint(event) {
  if (!state.frame || state.busy) return;
  const name = state.active || firstMissing();
  if (!name) { setStatus("all landmarks placed: press 1–7 to move one", false); return; }
  const box = $("frame").getBoundingClientRect();
  const x = (event.clientX - box.left) * state.frame.width / box.width - 0.5;
  const y = (event.clientY - box.top) * state.frame.height / box.height - 0.5;
  state.history.push({name, previous: state.points[name] || null});
  state.points[name] = [x, y];
  state.dirty = true;
  state.active = firstMissing();
  render();
  remeasure();
}

function undo() {
  const last = state.history.pop();
  if (!last) { setStatus("nothing to undo", false); return; }
  if (last.previous) state.points[last.name] = last.previous; else delete state.points[last.name];
  state.active = last.previous ? firstMissing() : last.name;   // a removed point is the one to click next
  state.dirty = true;
  render();
  remeasure();
}

async function save() {
  const answer = await api(`/api/save/${state.index}`, {points: state.points, standard_plane: state.standardPlane});
  state.dirty = false;
  state.frames[state.index].saved = true;
  $("note").textContent = answer.note || "";
  setStatus(`saved frame ${state.index + 1} to ${answer.out_csv}`, false);
  render();
  return answer;
}

async function go(step, saveFirst) {
  if (state.busy) return;
  state.busy = true;
  try {
    if (saveFirst || state.dirty) await save();
    const target = state.index + step;
    if (target < 0 || target >= state.frames.length) {
      if (saveFirst && state.frames.every((f) => f.saved)) setStatus("every frame is saved", false);
      else if (!saveFirst) setStatus(step > 0 ? "this is the last frame" : "this is the first frame", false);
      return;
    }
    await loadFrame(target);
    if (saveFirst) setStatus(`saved frame ${state.index} and moved on`, false);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    state.busy = false;
  }
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || state.busy) return;
  const key = event.key;
  if (key >= "1" && key <= "7") { pick(Number(key) - 1); }
  else if (key === "n") { go(+1, false); }
  else if (key === "p") { go(-1, false); }
  else if (key === "s") {
    state.standardPlane = state.standardPlane === 1 ? 0 : 1;
    state.dirty = true;
    showStandard();
    setStatus("unsaved changes", false);
  }
  else if (key === "u") { undo(); }
  else if (key === "Enter") { go(+1, true); }
  else return;
  event.preventDefault();
}

async function start() {
  try {
    const info = await api("/api/state");
    state.landmarks = info.landmarks;
    state.frames = info.frames;
    $("overlay").addEventListener("click", placePoint);
    document.addEventListener("keydown", onKey);
    window.addEventListener("resize", () => { fitImage(); drawOverlay(); });
    await loadFrame(info.resume_index);
    document.body.dataset.ready = "1";
  } catch (error) {
    setStatus(error.message, true);
  }
}

start();
