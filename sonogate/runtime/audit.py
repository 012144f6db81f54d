"""Tamper-evident audit log: one hash-chained JSONL line per recommendation change, fault, session start / end.

The events file (docs/events.md) has one line per frame and is for engineers. The audit log is for the
clinical record: which recommendation was shown, from when, why, on which model and calibration. Each line::

    {"seq": 3, "time_utc": "2026-11-23T03:18:28.123Z", "event": "recommendation",
     "recommendation": "us_sufficient", "candidate": "us_sufficient", "reason": "alpha_deg bound 63.2 >= 60, ...",
     "hip": "R", "graf_type": "Ia", "measurements": {"alpha_deg": {"value": 68.1, "lower_bound": 63.2,
     "upper_bound": null}, ...}, "accepted_frames": 9, "frame": 112, "t_s": 7.52, "fault": null,
     "bundle_sha256": "...", "calibration_sha256": "...", "thresholds": {...}, "delta": 0.1, "rule": "and",
     "device": "onnxruntime:CPUExecutionProvider", "session_id": "...",
     "prev_sha256": "<sha256 of the previous line>", "sha256": "<sha256 of this line without 'sha256'>"}

``sha256`` is the sha256 of the canonical JSON (sorted keys, no spaces, ASCII, no NaN) of the line without its
own ``sha256`` key; ``prev_sha256`` of the first line is 64 zeros. Editing a value breaks that line's hash;
deleting, inserting or reordering lines breaks the next line's ``prev_sha256`` (and ``seq``); cutting a line
leaves invalid JSON. Cutting whole lines off the end is only detectable against an anchor kept elsewhere: the
``sha256`` of the last line (``AuditLog.head_sha256``, e.g. in the events summary), checked with
``verify_audit_log(path, expected_head=...)``. Someone able to rewrite the whole file and recompute every hash
defeats a plain chain too; the anchor catches that as well.

What is kept out on purpose: patient identifiers. Lines are built from a fixed list of event keys (never the
whole event); a fault is kept as its kind only ("source lost", "model error: RuntimeError"), never its detail
(an exception message can quote file contents: a corrupt DICOM's error can carry the patient name); other free
text has non-printable characters, quoted strings, paths and URLs replaced; identifiers the caller knows can be
given in ``redact``.

This module never imports torch, ONNX Runtime or OpenCV.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sonogate.errors import SonogateError

AUDIT_FORMAT_VERSION = 1
GENESIS = "0" * 64
EVENT_KINDS = ("session_start", "recommendation", "fault", "session_end", "bundle_adapted")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# keys copied from a Session event into a "recommendation" / "fault" line (never the whole event)
_EVENT_KEYS = ("recommendation", "candidate", "hip", "graf_type", "accepted_frames", "frame", "t_s")


# --------------------------------------------------------------------------- canonical form and hashing
def canonical_json(obj: dict[str, Any]) -> str:
    """The one serialisation that is hashed: sorted keys, no spaces, ASCII, NaN / inf refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def line_sha256(line: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``line`` without its ``sha256`` key."""
    body = {k: v for k, v in line.items() if k != "sha256"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def _utc_now() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_PATH = re.compile(r"(?:[A-Za-z]:)?[\w.~-]*[/\\][^\s,;)]*")


def scrub_text(text: Any, limit: int = 300) -> str | None:
    """Free text for the audit: quoted strings, URLs and file paths become ``<redacted>`` (they can name a
    patient: a source path, a DICOM file name, an exception quoting a value). Also bounded in length."""
    if text is None:
        return None
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))  # raw bytes, newlines, escapes
    text = _QUOTED.sub("<redacted>", text)
    text = _URL.sub("<redacted>", text)
    text = _PATH.sub("<redacted>", text)
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fault_kind(text: Any) -> str | None:
    """What the audit keeps of a fault: its kind ("source lost", "unreadable frame", "model output not finite",
    "model error: RuntimeError"), never the detail after it, which can quote file contents or paths (a corrupt
    DICOM's error message can carry the patient name)."""
    if text is None:
        return None
    parts = [part.strip() for part in str(text).split(":")]
    kind = parts[0]
    if kind == "model error" and len(parts) > 1 and parts[1].isidentifier():
        kind = f"{kind}: {parts[1]}"
    return scrub_text(kind, limit=80)


def _json_number(value: Any) -> float | int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if isinstance(value, int) else number


def _clean_measurements(measurements: Any) -> dict[str, dict[str, float | None]] | None:
    """Keep only ``{name: {value, lower_bound, upper_bound}}`` with finite numbers (None otherwise)."""
    if not isinstance(measurements, dict):
        return None
    clean: dict[str, dict[str, float | None]] = {}
    for name, item in measurements.items():
        if not isinstance(item, dict):
            continue
        clean[str(name)[:64]] = {key: _json_number(item.get(key)) for key in ("value", "lower_bound", "upper_bound")}
    return clean


def _clean_scalar(value: Any) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return _json_number(value)
    return scrub_text(value, limit=64)


# --------------------------------------------------------------------------- writer
class AuditLog:
    """Append-only, hash-chained audit of one session's recommendation changes.

    Inputs: the log file (appended to; an existing log is verified first and its chain continued), the
    bundle and calibration hashes, the rule's thresholds, delta and rule name, and the compute device.
    ``record(event)`` takes every ``Session.process`` event and writes a line only when the displayed
    recommendation changed or a fault started; ``close()`` writes ``session_end``. Each line is flushed and
    (``fsync=True``) synced to disk before ``record`` returns.

    ``redact``: identifiers known to the caller (a DICOM source's PatientName / PatientID, its file name) that
    are replaced by ``<redacted>`` wherever they occur in free text, on top of the generic scrubbing.

    Writing never raises out of ``record`` / ``close`` (the cart keeps running): an OSError is kept in
    ``error`` and ``healthy`` turns False, for the caller to show. The constructor does raise
    ``SonogateError`` (one line) when the file cannot be opened or an existing file fails verification.
    """

    def __init__(self, path: str | os.PathLike, *, bundle_sha256: str | None, calibration_sha256: str | None,
                 thresholds: dict[str, float] | None, delta: float | None, rule: str | None, device: str | None,
                 fsync: bool = True, clock: Callable[[], str] = _utc_now, session_id: str | None = None,
                 software_version: str | None = None, redact: tuple[str, ...] | list[str] = ()):
        self.path = Path(path)
        # known identifiers (e.g. a DICOM source's PatientName / PatientID) removed from any free text
        self._redact = tuple(sorted({str(r) for r in redact if r and len(str(r)) >= 3}, key=len, reverse=True))
        self.fsync = fsync
        self._clock = clock
        self._lock = threading.Lock()
        self.session_id = session_id or uuid.uuid4().hex
        self.context = {
            "bundle_sha256": bundle_sha256,
            "calibration_sha256": calibration_sha256,
            "thresholds": None if thresholds is None else {str(k): _json_number(v) for k, v in thresholds.items()},
            "delta": _json_number(delta),
            "rule": None if rule is None else str(rule),
            "device": None if device is None else scrub_text(device, limit=120),
            "session_id": self.session_id,
        }
        self.error: str | None = None
        self.lines_written = 0
        self.changes = 0
        self.faults = 0
        self._last_recommendation: str | None = None
        self._in_fault = False
        self._last_event: dict[str, Any] | None = None
        self._closed = False

        self._seq, self.head_sha256 = 0, GENESIS
        if self.path.exists() and self.path.stat().st_size > 0:
            check = verify_audit_log(self.path)
            if not check.ok:
                raise SonogateError(f"audit log {self.path} fails verification (line {check.first_bad_line}: "
                                    f"{check.reason}); keep it as evidence and start a new file")
            self._seq, self.head_sha256 = check.last_seq, check.head_sha256
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self.path, "a", encoding="ascii", newline="\n")  # noqa: SIM115 - kept open
        except OSError as exc:
            raise SonogateError(f"cannot write audit log {self.path}: {exc.strerror or exc}") from None
        from sonogate import __version__

        self._append({"event": "session_start", "recommendation": None, "reason": "session started",
                      "format_version": AUDIT_FORMAT_VERSION,
                      "software_version": software_version or __version__})

    @classmethod
    def for_session(cls, path: str | os.PathLike, session: Any, **kwargs) -> AuditLog:
        """An audit log carrying a ``Session``'s bundle / calibration hashes, rule, thresholds and device."""
        calibration = getattr(session, "calibration", None)
        return cls(path, bundle_sha256=session.bundle.bundle_hash,
                   calibration_sha256=getattr(session, "calibration_sha256", None),
                   thresholds=None if calibration is None else dict(calibration.thresholds),
                   delta=None if calibration is None else calibration.delta,
                   rule=None if calibration is None else calibration.rule,
                   device=getattr(session, "device_name", None), **kwargs)

    @property
    def healthy(self) -> bool:
        return self.error is None

    # -- writing -----------------------------------------------------------------------------------------
    def _append(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            if self._closed or self.error is not None:
                return None
            line = {"seq": self._seq + 1, "time_utc": self._clock()}
            line.update(fields)
            line.update(self.context)
            line["prev_sha256"] = self.head_sha256
            line["sha256"] = line_sha256(line)
            try:
                text = canonical_json(line)
                self._handle.write(text + "\n")
                self._handle.flush()
                if self.fsync:
                    os.fsync(self._handle.fileno())
            except (OSError, ValueError) as exc:  # disk full, file closed, unserialisable value
                self.error = f"audit log write failed: {getattr(exc, 'strerror', None) or exc}"
                return None
            self._seq += 1
            self.head_sha256 = line["sha256"]
            self.lines_written += 1
            return line

    def _text(self, text: Any) -> str | None:
        if text is None:
            return None
        text = str(text)
        for identifier in self._redact:
            text = re.sub(re.escape(identifier), "<redacted>", text, flags=re.IGNORECASE)
        return scrub_text(text)

    def record(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Write a line when ``event``'s displayed recommendation changed or a fault started; returns it."""
        if not isinstance(event, dict):
            return None
        self._last_event = event
        recommendation = event.get("recommendation")
        recommendation = None if recommendation is None else str(recommendation)[:32]
        fault = event.get("fault")
        fault_started = bool(fault) and not self._in_fault
        changed = recommendation != self._last_recommendation
        self._in_fault = bool(fault)
        if not (changed or fault_started):
            return None
        fields: dict[str, Any] = {"event": "fault" if fault_started else "recommendation"}
        for key in _EVENT_KEYS:
            fields[key] = _clean_scalar(event.get(key))
        fields["recommendation"] = recommendation
        if fault:  # the displayed reason of a fault is the fault text: keep its kind only
            fields["reason"] = fields["fault"] = self._text(fault_kind(fault))
        else:
            fields["reason"] = self._text(event.get("reason"))
            fields["fault"] = None
        fields["measurements"] = _clean_measurements(event.get("measurements"))
        line = self._append(fields)
        if line is not None:
            self._last_recommendation = recommendation
            self.changes += int(changed)
            self.faults += int(fault_started)
        return line

    def record_adaptation(self, *, base_sha256: str, data_sha256: str, n_sweeps: int, n_infants: int,
                          radii: dict[str, float | None] | None, held_out: dict[str, Any] | None) -> dict[str, Any] | None:
        """Write a ``bundle_adapted`` line (``sonogate adapt``): the base bundle and site data hashes, the numbers of
        sweeps and infants, the radii and the held-out check's figures. The line's ``bundle_sha256`` (context) is
        the adapted bundle's."""
        return self._append({
            "event": "bundle_adapted", "recommendation": None, "reason": "bundle adapted to a site",
            "base_bundle_sha256": str(base_sha256), "data_sha256": str(data_sha256), "n_sweeps": int(n_sweeps),
            "n_infants": int(n_infants),
            "radii": None if radii is None else {str(k): _json_number(v) for k, v in radii.items()},
            "held_out": None if held_out is None else {str(k): _json_number(v) for k, v in held_out.items()},
        })

    def close(self, reason: str = "session ended") -> dict[str, Any] | None:
        """Write ``session_end`` (with the final recommendation) and close the file. Idempotent."""
        if self._closed:
            return None
        last = self._last_event or {}
        line = self._append({"event": "session_end", "recommendation": self._last_recommendation,
                             "reason": self._text(reason), "changes": self.changes, "faults": self.faults,
                             "frame": _clean_scalar(last.get("frame")), "t_s": _clean_scalar(last.get("t_s"))})
        with self._lock:
            self._closed = True
            try:
                self._handle.close()
            except OSError as exc:
                self.error = self.error or f"audit log close failed: {exc.strerror or exc}"
        return line

    def __enter__(self) -> AuditLog:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def session_log_path(directory: str | os.PathLike, prefix: str = "audit") -> Path:
    """A new, unused file name ``DIR/audit-YYYYmmddTHHMMSSZ[-N].jsonl`` for one session's log."""
    directory = Path(directory)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    candidate = directory / f"{prefix}-{stamp}.jsonl"
    n = 1
    while candidate.exists():
        candidate = directory / f"{prefix}-{stamp}-{n}.jsonl"
        n += 1
    return candidate


# --------------------------------------------------------------------------- verification
@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    lines: int  # complete lines read (all of them when ok, else up to and including the first bad one)
    first_bad_line: int | None  # 1-based
    reason: str
    head_sha256: str = GENESIS  # sha256 of the last good line
    last_seq: int = 0
    sessions: int = 0  # session_start lines seen
    open_sessions: int = 0  # session_start without session_end (a crash, or lines cut off the end)


def verify_audit_log(path: str | os.PathLike, *, expected_head: str | None = None) -> AuditVerification:
    """Check every line's hash, the chain of ``prev_sha256`` and the ``seq`` numbering.

    Input: the log file, optionally the expected ``sha256`` of its last line (an anchor kept elsewhere).
    Output: ``AuditVerification``; ``ok`` False with the first bad line (1-based) and the reason on any
    edit, deletion, insertion, reorder, cut line or (with ``expected_head``) missing tail.
    Raises ``SonogateError`` (one line) when the file is missing or unreadable.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SonogateError(f"audit log not found: {path}") from None
    except IsADirectoryError:
        raise SonogateError(f"audit log is a folder, not a file: {path}") from None
    except OSError as exc:
        raise SonogateError(f"cannot read audit log {path}: {exc.strerror or exc}") from None

    def bad(line_no: int, reason: str, **kw) -> AuditVerification:
        return AuditVerification(False, line_no, line_no, reason, head, seq, sessions, open_sessions)

    head, seq, sessions, open_sessions = GENESIS, 0, 0, 0
    if not data:
        return bad(1, "empty audit log (no session_start line)")
    raw_lines = data.split(b"\n")
    complete = raw_lines[:-1]  # the text after the last newline is an incomplete line (b"" when none)
    tail = raw_lines[-1]
    in_session = False
    for index, raw in enumerate(complete + ([tail] if tail else []), start=1):
        if index > len(complete):
            return bad(index, "incomplete last line (cut off: truncated file or power loss while writing)")
        try:
            text = raw.decode("ascii")
            line = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return bad(index, "not a valid JSON line (edited or cut)")
        if not isinstance(line, dict):
            return bad(index, "line is not a JSON object")
        digest = line.get("sha256")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            return bad(index, "missing or malformed sha256")
        try:
            actual = line_sha256(line)
            recanonical = canonical_json(line)
        except (TypeError, ValueError):
            return bad(index, "line holds values that cannot be hashed (NaN or infinity)")
        if actual != digest:
            return bad(index, "content does not match its sha256 (line edited)")
        if recanonical != text:
            return bad(index, "line is not in canonical form (reformatted or edited)")
        if line.get("prev_sha256") != head:
            where = "the start of the log" if index == 1 else f"line {index - 1}"
            return bad(index, f"prev_sha256 does not match {where} (a line was deleted, inserted or reordered)")
        line_seq = line.get("seq")
        if not isinstance(line_seq, int) or isinstance(line_seq, bool) or line_seq != seq + 1:
            return bad(index, f"seq {line_seq!r} does not follow {seq} (a line was deleted, inserted or reordered)")
        kind = line.get("event")
        if kind not in EVENT_KINDS:
            return bad(index, f"unknown event {kind!r}")
        if index == 1 and kind != "session_start":
            return bad(index, "the log does not begin with session_start (lines cut off the start)")
        if kind == "session_start":
            sessions += 1
            open_sessions += int(in_session)  # the previous session never closed (crash)
            in_session = True
        elif kind == "session_end":
            if not in_session:
                return bad(index, "session_end without session_start")
            in_session = False
        elif not in_session:
            return bad(index, f"{kind} line outside a session")
        head, seq = digest, line_seq
    open_sessions += int(in_session)
    n = len(complete)
    if expected_head is not None and expected_head.lower() != head:
        return AuditVerification(False, n, n + 1 if n else 1,
                                 "last line is not the expected head sha256 (lines cut off the end, or replaced)",
                                 head, seq, sessions, open_sessions)
    reason = "chain intact"
    if open_sessions:
        reason += f"; {open_sessions} session(s) without session_end (crash, still running, or end cut off)"
    return AuditVerification(True, n, None, reason, head, seq, sessions, open_sessions)
