"""Physical scale (mm per pixel) from the scanner's depth ruler beside the ultrasound image.

Scanners draw a depth ruler next to the B-mode image: a column of short horizontal tick marks, one per
centimetre of depth, often with shorter half-centimetre (or millimetre) ticks between, usually on a thin
vertical line and with the depth numbers beside it. ``estimate_ruler_scale(frame, roi)`` finds such a ruler
just left or right of the ROI and returns a ``RulerScale`` (mm per pixel along the vertical, i.e. depth,
axis), or None when no regular ruler is there: it never guesses.

How (numpy + OpenCV on two bands of columns; a few milliseconds on a 2-core CPU, so the runtime calls it when the
ROI changes and now and then, not every frame):

1. a band of columns just outside the ROI on each side (a fifth of the ROI width), over the ROI's rows and half
   as far again below (a detected ROI can stop short of a dark far field; the ruler goes on to full depth);
2. pixels that stand out from the band's background (brightest channel, so coloured rulers count); vertical
   structures (the ruler's line, a grey bar) are removed and horizontal runs of >= 3 px kept: tick marks;
3. thin, wider-than-tall connected components are tick candidates; the ticks of one ruler share one end (where
   they meet the line), so candidates are grouped by left end and by right end (ticks drawn across the image
   edge, as some scanners do, are cut by the ROI and join groups on their far end only);
4. per group, a lattice ``y = y0 + k * pitch`` is fitted by consensus (candidate pitches from neighbouring
   tick spacings, a missing tick allowed) and refined by least squares on sub-pixel tick centroids;
5. regularity: at least ``MIN_TICKS`` ticks on the lattice, few positions missing, small residuals, a span
   covering a good part of the image, no marks between the ticks (the group would be part of a denser ruler);
   otherwise None;
6. major / minor ticks: when the longest ticks recur every m-th lattice position (m = 2: half-cm ticks,
   5: 2 mm, 10: 1 mm) a centimetre is m pitches; ticks of one length are taken to be 1 cm apart. Longest ticks
   that do not recur regularly make the ruler ambiguous: None.

Assumptions: major ticks are 1 cm apart (the common convention; a ruler of uniform 5 mm ticks would read
twice too coarse) and pixels are square. Not handled: a ruler drawn inside the image area, a horizontal (width)
ruler, tick marks shorter than 3 px. Measurements (angles, coverage %) are ratios and need no scale: the scale
is for display and reports only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Roi = tuple[int, int, int, int]

MIN_TICKS = 4  # ticks on the lattice (3 intervals) before a pitch is believed
MIN_FILL = 0.75  # share of lattice positions between the first and last tick that hold a tick
MAX_RMS_PX = 0.6  # rms distance of ticks from the lattice (drawn at whole rows, ticks are off by up to 0.5 px) ...
MAX_RMS_FRACTION = 0.01  # ... or this share of the pitch, whichever is larger (a rescaled screen)
MIN_SPAN_FRACTION = 0.3  # the ticks cover at least this share of the ROI height (a ruler spans the depth)
MIN_CONTRAST = 40  # grey levels above (or below, on a light screen) the band's background
MAX_THICKNESS = 5  # px: a tick is a thin line
MIN_PITCH_PX = 4.0
MM_PER_PIXEL_RANGE = (0.01, 1.0)  # plausible for ultrasound (the DICOM reader uses 0.005-1.0)
MINOR_PATTERNS = (2, 5, 10)  # lattice steps per cm: half-cm, 2 mm, 1 mm minor ticks


@dataclass
class RulerScale:
    """A depth ruler found beside the image.

    mm_per_pixel: millimetres per pixel along the vertical (depth) axis. tick_pitch_px: pixels between
    centimetre (major) ticks. minor_per_cm: lattice steps per centimetre (1: no minor ticks, 2: half-cm ticks).
    n_ticks: ticks on the lattice (minor ones included). x: column of the ruler (the end its ticks share, in
    frame pixels). side: "left" or "right" of the ROI. y_first, y_last: rows of the first and last tick.
    rms_residual_px: rms distance of the ticks from the fitted lattice. confidence: 0..1, the share of lattice
    positions holding a tick times how far the residual is below its limit.
    """

    mm_per_pixel: float
    tick_pitch_px: float
    minor_per_cm: int
    n_ticks: int
    x: float
    side: str
    y_first: float
    y_last: float
    rms_residual_px: float
    confidence: float
    source: str = "depth_ruler"


@dataclass
class _Tick:
    y: float  # sub-pixel centroid row (band coordinates)
    left: int
    right: int  # inclusive
    length: int
    cut: bool = False  # touches the ROI edge: a tick drawn across the image edge, or image content


def _max_channel(patch: np.ndarray) -> np.ndarray:
    """uint8 (H, W): the brightest channel of a BGR(A) patch (coloured ticks stay bright), or the grey patch."""
    if patch.ndim == 2:
        return np.ascontiguousarray(patch)
    if patch.shape[2] == 1:
        return np.ascontiguousarray(patch[..., 0])
    b, g, r = (np.ascontiguousarray(patch[..., i]) for i in range(3))
    return cv2.max(cv2.max(b, g), r)


def _tick_candidates(band: np.ndarray, inner_left: bool) -> list[_Tick]:
    """Thin horizontal marks in ``band`` (uint8); ``inner_left``: the band's left edge touches the ROI."""
    background = float(np.median(band))
    contrast = band.astype(np.int16) - int(background)
    if background > 160:  # a light screen: dark marks
        contrast = -contrast
    contrast = np.clip(contrast, 0, 255).astype(np.uint8)
    mask = (contrast >= MIN_CONTRAST).astype(np.uint8)
    # remove the ruler's line and solid bars (vertical runs taller than any tick), keep horizontal runs
    vertical = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (1, 2 * MAX_THICKNESS)))
    mask &= 1 - vertical
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (3, 1)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
    if count <= 1:
        return []
    # sub-pixel rows: contrast-weighted centroids (a blurred tick's centre, not its rounded row)
    rows, cols = np.nonzero(mask)
    weights = contrast[rows, cols].astype(np.float64)
    sum_w = np.bincount(labels[rows, cols], weights=weights, minlength=count)
    sum_wy = np.bincount(labels[rows, cols], weights=weights * rows, minlength=count)
    width = band.shape[1]
    edge = 0 if inner_left else width - 1
    ticks = []
    for label in range(1, count):
        x, _, w, h, _ = (int(v) for v in stats[label])
        cut = x <= edge <= x + w - 1
        # wider than tall; a tick cut by the ROI edge shows only its outer part, so square is enough there
        if h > MAX_THICKNESS or w < max(3, (1.0 if cut else 1.5) * h) or w > 0.6 * width or sum_w[label] <= 0:
            continue
        ticks.append(_Tick(float(sum_wy[label] / sum_w[label]), x, x + w - 1, w, cut))
    return ticks


def _groups(ticks: list[_Tick], inner: str) -> list[tuple[str, int, list[_Tick]]]:
    """Ticks sharing a left end or a right end (within 1 px), largest groups first, every distinct one.

    ``inner``: the end facing the ROI. Marks cut by the ROI edge only join groups on the far end: some scanners
    draw the ruler across the image edge (their far ends align), while image content cut by an ROI that is a
    little too small would otherwise line up on the edge.
    """
    found = []
    for end in ("left", "right"):
        pool = [t for t in ticks if not (t.cut and end == inner)]
        values = np.array([getattr(t, end) for t in pool])
        for value in np.unique(values):
            members = [t for t, v in zip(pool, values) if abs(int(v) - int(value)) <= 1]
            if len(members) >= MIN_TICKS:
                found.append((end, int(value), members))
    found.sort(key=lambda g: -len(g[2]))
    # neighbouring end values give near-identical groups: keep the distinct ones. All of them, not the few largest:
    # the strokes of the depth labels beside a ruler also share ends, and how many marks a digit breaks into
    # depends on the font rasteriser (OpenCV 5.1 draws Hershey digits in more pieces than 5.0), so label groups
    # can outnumber a ruler's ticks. The caller skips groups too small to beat the best fit, so this stays cheap.
    distinct: list[tuple[str, int, list[_Tick]]] = []
    for group in found:
        if not any(g[0] == group[0] and abs(g[1] - group[1]) <= 2 for g in distinct):
            distinct.append(group)
    return distinct


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (slope, intercept) of y on x (x not all equal)."""
    xm, ym = float(x.mean()), float(y.mean())
    dx = x - xm
    slope = float(np.dot(dx, y - ym) / np.dot(dx, dx))
    return slope, ym - slope * xm


def _tolerance(pitch: float) -> float:
    """How far (px) a tick may sit from its lattice position and still count: whole-pixel drawing, rescaling and
    blur move a tick by up to about a pixel."""
    return max(1.0, 0.1 * pitch)


def _refine(ys: np.ndarray, anchor: float, pitch: float) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """Grow a lattice outward from ``anchor``: fit the ticks within a few positions of it, then within three
    times as many, and so on (a coarse pitch is only right near the anchor: far away it would pick ticks at the wrong
    index). Returns (anchor, pitch, k, on): ``on`` marks the ticks on the lattice, ``k`` their index, or None."""
    on = np.zeros(ys.shape, bool)
    window = 3.0
    reach = float(np.max(np.abs(ys - anchor)))
    for _ in range(16):
        tol = _tolerance(pitch)
        k = np.round((ys - anchor) / pitch)
        error = np.abs(ys - anchor - k * pitch)
        near = np.flatnonzero((error <= tol) & (np.abs(k) <= window))
        near = near[np.lexsort((error[near], k[near]))]  # by position, the closest first
        chosen = near[np.r_[True, k[near][1:] != k[near][:-1]]] if near.size else near  # one tick per position
        if chosen.size < 2:
            return None
        new_on = np.zeros(ys.shape, bool)
        new_on[chosen] = True
        # k = 0 stays at the anchor tick, so the fitted intercept moves the anchor only by the fit's correction
        pitch, anchor = _line_fit(k[new_on], ys[new_on])
        if pitch < MIN_PITCH_PX:
            return None
        covered = window * pitch >= reach
        if covered and np.array_equal(new_on, on):
            break
        on = new_on
        window *= 3.0
    k = np.round((ys - anchor) / pitch)
    return anchor, pitch, k, on


def _lattice(ys: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """(y0, pitch, k, on) of the best lattice through the rows ``ys`` (sorted): ``on`` marks the ticks on it and
    ``k`` (>= 0 there) their lattice index, so that ``ys[on] ~ y0 + k[on] * pitch``.

    Consensus: each spacing between neighbouring ticks is a coarse pitch; from the tick with the most ticks on
    the coarse lattice through it (then, if that fit is poor, from the first and the last tick) a fit grows by
    least squares. The
    lattice with the most ticks wins, among those with few missing positions (which rules out half the pitch),
    then the one that fits best.
    """
    candidates: list[float] = []  # spacings within 3 % of each other are one candidate: the refit does the rest
    for spacing in np.sort(np.diff(ys)):
        if spacing >= MIN_PITCH_PX and (not candidates or spacing > 1.03 * candidates[-1]):
            candidates.append(float(spacing))
    offsets = ys[None, :] - ys[:, None]  # row: anchor tick, column: every tick
    best, best_key = None, None
    for coarse in candidates:
        k = np.round(offsets / coarse)
        on = np.abs(offsets - k * coarse) <= _tolerance(coarse)
        for anchor in (int(np.argmax(on.sum(axis=1))), 0, ys.size - 1):
            fit = _refine(ys, float(ys[anchor]), float(coarse))
            rms = np.inf
            if fit is not None:
                y0, pitch, k, on = fit
                n = int(on.sum())
                rms = float(np.sqrt(np.mean((ys[on] - y0 - k[on] * pitch) ** 2)))
                key = (n, -rms)  # the most ticks, then the best fit
                fill_ok = n >= MIN_TICKS and n >= MIN_FILL * (k[on].max() - k[on].min() + 1)
                if fill_ok and (best_key is None or key > best_key):
                    best_key, best = key, fit
            if rms <= MAX_RMS_PX:
                break  # a clean fit from the best-supported anchor; else a stray mark may have misled it
        if best_key is not None and best_key[0] == ys.size:
            break  # every mark is on this lattice: nothing can beat it
    if best is None:
        return None
    anchor, pitch, k, on = best
    start = k[on].min()  # index from the first tick on the lattice
    return anchor + start * pitch, pitch, k - start, on


def _longest_class(lengths: np.ndarray) -> np.ndarray:
    """Mask of the longest ticks: the lengths are split in two where the classes are best separated (Otsu)
    while the longer class is clearly longer (>= 1.3 times the mean, a gap of >= 1 px); the longer class is
    split again (a 1 mm / 5 mm / 1 cm ruler has three lengths)."""
    is_long = np.ones(lengths.shape, bool)
    while True:
        values = np.sort(lengths[is_long])
        if values.size < 2 or values[0] == values[-1]:
            return is_long
        best, best_score = None, -1.0
        for i in range(1, values.size):  # split between values[i - 1] and values[i]
            if values[i] == values[i - 1]:
                continue
            low, high = values[:i], values[i:]
            score = low.size * high.size * (high.mean() - low.mean()) ** 2
            if score > best_score:
                best, best_score = i, score
        low, high = values[:best], values[best:]
        if high.mean() < 1.3 * low.mean() or high[0] - low[-1] < 1:
            return is_long
        is_long &= lengths >= high[0]


def _minor_per_cm(lengths: np.ndarray, k: np.ndarray) -> int | None:
    """Lattice steps per centimetre from the tick lengths: 1 for ticks of one length, m when the longest ticks
    recur every m-th lattice position, None when they follow no such pattern (an ambiguous ruler)."""
    is_long = _longest_class(lengths)
    if np.count_nonzero(is_long) == 1 and lengths.size > MIN_TICKS and k[is_long][0] in (k.min(), k.max()):
        keep = ~is_long  # the first or last tick merged with the end of the ruler's line: judge without it
        return _minor_per_cm(lengths[keep], k[keep])
    if is_long.all():
        return 1
    long_k = k[is_long].astype(int)
    short_k = k[~is_long].astype(int)
    for m in MINOR_PATTERNS:
        phase = np.bincount(long_k % m, minlength=m).argmax()
        if long_k.size >= 2 and np.mean(long_k % m == phase) >= 0.9 and np.mean(short_k % m != phase) >= 0.9:
            return m
    return None


def _fit_group(
    members: list[_Tick], roi_h: int, marks: list[_Tick]
) -> tuple[float, float, int, int, float, float, float, float] | None:
    """(y0, pitch, minor_per_cm, n, y_first, y_last, rms, confidence) of one tick group, or None.

    ``marks``: every tick candidate in the band, to tell a ruler from part of one: a lattice position that looks
    empty in the group but holds a mark (the group is, say, the short ticks sharing their far end), or marks
    between the group's ticks (the group is every other tick of a denser ruler).
    """
    all_ys = np.array([m.y for m in marks])
    x_lo, x_hi = min(t.left for t in members), max(t.right for t in members)
    members = sorted(members, key=lambda t: t.y)
    ys = np.array([t.y for t in members], np.float64)
    lengths = np.array([t.length for t in members], np.float64)
    fit = _lattice(ys)
    if fit is None:
        return None
    y0, pitch, k, on = fit
    # the lattice tolerance is loose (it has to find the lattice); a mark it took in that sits clearly off the
    # line through the other ticks is a label or a cursor near a tick position: drop the worst, one at a time
    # (leave-one-out residuals: an end mark pulls a fit that includes it towards itself)
    while on.sum() > MIN_TICKS:
        worst, worst_residual = -1, 2.5 * max(MAX_RMS_PX, MAX_RMS_FRACTION * pitch)
        for i in np.flatnonzero(on):
            others = on.copy()
            others[i] = False
            slope, intercept = _line_fit(k[others], ys[others])
            residual = abs(ys[i] - intercept - k[i] * slope)
            if residual > worst_residual:
                worst, worst_residual = int(i), residual
        if worst < 0:
            break
        on[worst] = False
        pitch, y0 = _line_fit(k[on], ys[on])
    k = k - k[on].min()
    y0 = float(np.mean(ys[on] - k[on] * pitch))
    n = int(on.sum())
    span = float(k[on].max()) * pitch
    if n < MIN_TICKS or span < MIN_SPAN_FRACTION * roi_h:
        return None
    y_lo, y_hi = float(ys[on].min()) - 1.0, float(ys[on].max()) + 1.0  # from the first to the last tick
    inside = np.count_nonzero((ys >= y_lo) & (ys <= y_hi))
    if n < MIN_FILL * inside:
        return None  # most marks in the span are off the lattice: a sub-lattice of a denser ruler, or clutter
    residual = ys[on] - (y0 + k[on] * pitch)
    rms = float(np.sqrt(np.mean(residual**2)))
    rms_limit = max(MAX_RMS_PX, MAX_RMS_FRACTION * pitch)
    if rms > rms_limit or np.abs(residual).max() > 3.0 * rms_limit:
        return None
    fill = n / (float(k[on].max()) + 1.0)
    # marks in the group's columns between its ticks but off its lattice: the group is a subset of a denser
    # ruler (every other or every third tick that happened to keep the same end), not a ruler
    off = [
        m
        for m in marks
        if y_lo <= m.y <= y_hi
        and m.left <= x_hi
        and m.right >= x_lo
        and abs((m.y - y0) / pitch - round((m.y - y0) / pitch)) * pitch > _tolerance(pitch)
    ]
    if len(off) > max(1, 0.2 * n):
        return None
    missing = np.setdiff1d(np.arange(int(k[on].max()) + 1), k[on].astype(int))
    if missing.size:
        expected = y0 + missing * pitch
        occupied = np.min(np.abs(all_ys[None, :] - expected[:, None]), axis=1) <= _tolerance(pitch)
        if occupied.mean() >= 0.5:
            return None  # the "missing" ticks are there, in another group: this group is part of a ruler
    minor = _minor_per_cm(lengths[on], k[on])
    if minor is None:
        return None
    confidence = fill * (1.0 - 0.5 * rms / rms_limit)
    return y0, pitch, minor, n, float(ys[on].min()), float(ys[on].max()), rms, confidence


def estimate_ruler_scale(frame: np.ndarray, roi: Roi, margin: int | None = None) -> RulerScale | None:
    """Find a depth ruler left or right of ``roi`` in ``frame`` and measure its scale.

    Inputs: ``frame`` grey (H, W) or BGR(A) (H, W, 3|4) uint8, the captured screen; ``roi`` (x, y, w, h) of the
    ultrasound image in it; ``margin`` columns searched on each side (default: a fifth of the ROI width, at
    least 24 px). Output: ``RulerScale`` (mm per pixel along the depth axis), or None when no regular ruler is
    found there (too few ticks, irregular spacing, an ambiguous tick pattern, an implausible scale).
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim not in (2, 3) or frame.size == 0:
        return None
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        return None
    height, width = frame.shape[:2]
    x, y, w, h = (int(v) for v in roi)
    if w < 8 or h < 8:
        return None
    margin = int(margin) if margin is not None else max(24, round(0.2 * w))
    # tick 0 sits on the image's top row; below, look further than the ROI: a detected ROI can stop short of a
    # dark far field while the ruler goes on to the full depth
    r0, r1 = max(0, y - max(4, round(0.04 * h))), min(height, y + h + max(4, round(0.5 * h)))
    best: RulerScale | None = None
    for side, c0, c1 in (("right", x + w, x + w + margin), ("left", x - margin, x)):
        c0, c1 = max(0, c0), min(width, c1)
        if c1 - c0 < 6 or r1 - r0 < 8:
            continue
        band = _max_channel(frame[r0:r1, c0:c1])  # only the band is converted: cheap on a 1080p frame
        ticks = _tick_candidates(band, inner_left=side == "right")
        if len(ticks) < MIN_TICKS:
            continue
        for _, column, members in _groups(ticks, inner="left" if side == "right" else "right"):
            if best is not None and len(members) <= best.n_ticks * best.confidence:
                continue  # cannot beat the best: n_ticks <= members and confidence <= 1
            fit = _fit_group(members, h, ticks)
            if fit is None:
                continue
            _, pitch, minor, n, y_first, y_last, rms, confidence = fit
            cm_px = pitch * minor
            mm_per_pixel = 10.0 / cm_px
            if not (MM_PER_PIXEL_RANGE[0] <= mm_per_pixel <= MM_PER_PIXEL_RANGE[1]):
                continue
            found = RulerScale(
                mm_per_pixel=mm_per_pixel,
                tick_pitch_px=cm_px,
                minor_per_cm=minor,
                n_ticks=n,
                x=float(c0 + column),
                side=side,
                y_first=r0 + y_first,
                y_last=r0 + y_last,
                rms_residual_px=rms,
                confidence=confidence,
            )
            if best is None or (found.n_ticks * found.confidence > best.n_ticks * best.confidence):
                best = found
    return best
