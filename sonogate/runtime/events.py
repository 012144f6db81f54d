"""JSON events: one object per processed frame, then a summary line. See docs/events.md.

Input: event dicts from ``Session.process`` / the live pipeline. Output: a JSONL file (line-buffered, so a
reader tailing the file sees each frame as it is decided) and a summary dict.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sonogate.errors import SonogateError


class EventLog:
    """Collects per-frame figures for the summary and, when given a path, writes JSONL."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self._handle = None
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # open for the stream's whole life (line-buffered, one event per line); close() ends it
                self._handle = open(self.path, "w", buffering=1)  # noqa: SIM115
            except OSError as exc:
                raise SonogateError(f"cannot write events file {self.path}: {exc.strerror or exc}") from None
        self.latencies_ms: list[float] = []
        self.recommendations: Counter[str] = Counter()
        self.timeline: list[dict[str, Any]] = []
        self.faults: Counter[str] = Counter()
        self.last: dict[str, Any] | None = None
        self.first_decision_s: float | None = None

    def write_other(self, event: dict[str, Any]) -> None:
        """A line that is not a frame decision (e.g. an X-ray event): written, not counted in the summary."""
        if self._handle is not None:
            self._handle.write(json.dumps(event, separators=(",", ":")) + "\n")

    def write(self, event: dict[str, Any]) -> None:
        if self._handle is not None:
            self._handle.write(json.dumps(event, separators=(",", ":")) + "\n")
        if event.get("latency_ms") is not None:
            self.latencies_ms.append(float(event["latency_ms"]))
        recommendation = event["recommendation"]
        self.recommendations[recommendation] += 1
        if not self.timeline or self.timeline[-1]["recommendation"] != recommendation:
            self.timeline.append({"frame": event["frame"], "t_s": event.get("t_s"),
                                  "recommendation": recommendation, "reason": event.get("reason")})
        if event.get("fault"):
            self.faults[str(event["fault"]).split(":")[0]] += 1
        if self.first_decision_s is None and event.get("fault") is None and event.get("t_s") is not None:
            self.first_decision_s = event["t_s"]
        self.last = event

    def summary(self, **extra: Any) -> dict[str, Any]:
        latencies = np.asarray(self.latencies_ms, dtype=np.float64)
        percentiles = {}
        if latencies.size:
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
                percentiles[name] = round(float(np.percentile(latencies, q)), 3)
            percentiles["max"] = round(float(latencies.max()), 3)
        summary = {
            "summary": True,
            "frames": int(sum(self.recommendations.values())),
            "latency_ms": percentiles,
            "recommendations": dict(self.recommendations),
            "final_recommendation": self.last["recommendation"] if self.last else "no_recommendation",
            "final_reason": self.last.get("reason") if self.last else "no frame processed",
            "timeline": self.timeline,
            "faults": dict(self.faults),
        }
        summary.update(extra)
        return summary

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if self._handle is not None:
            if summary is not None:
                self._handle.write(json.dumps(summary, separators=(",", ":")) + "\n")
            self._handle.close()
            self._handle = None
