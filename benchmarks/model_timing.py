"""Timing shared by the per-task latency scripts (radiograph_latency.py): the model graph alone and
the wrapper's whole ``analyze`` step, each after a warm-up, as p50 / p99 / mean milliseconds."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def percentiles(times_s: list[float]) -> dict:
    ms = np.asarray(times_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "runs": int(ms.size)}


def time_graph_and_analyze(model, inputs: Sequence[Any], runs: int, warmup: int) -> dict:
    """``model`` (a runtime wrapper) over ``inputs`` (what its ``analyze`` takes), cycled: {"graph", "analyze"}
    percentiles. The graph is timed on the feeds ``preprocess`` made beforehand, so it is the inference alone."""
    feeds = [model.preprocess(item)[0] for item in inputs]
    graph, analyze = [], []
    for i in range(warmup):
        model.adapter.infer_sync(feeds[i % len(feeds)])
    for i in range(runs):
        t = time.perf_counter()
        model.adapter.infer_sync(feeds[i % len(feeds)])
        graph.append(time.perf_counter() - t)
    for i in range(runs):
        t = time.perf_counter()
        model.analyze(inputs[i % len(inputs)], None, [])
        analyze.append(time.perf_counter() - t)
    return {"graph": percentiles(graph), "analyze": percentiles(analyze)}
