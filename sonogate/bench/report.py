"""The bench's report: percentiles, speed-ups and peak shares, goal verdicts, and what it writes:
``latest.json``, ``results.md``, ``latency_vs_size.png``, ``latency_hist_<size>.png``, the results block of
``DIR/../README.md`` when it holds the markers, and the summary printed on stdout."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

README_START = "<!-- bench-results:start -->"
README_END = "<!-- bench-results:end -->"
GOALS = {
    "speedup": 5.0,  # INT8 (ORT or OpenVINO) at the default size vs PyTorch eager float, best thread count
    "bound": 1.5,  # INT8 latency within 1.5x of FLOPs / measured INT8 peak
    "int8_alpha_mae_delta": 0.5,  # deg
    "e2e_fps": 30.0,
    "e2e_p99_ms": 50.0,
    "rss_mb": 400.0,
    "startup_s": 3.0,
}


def row_label(row: dict) -> str:
    """"backend precision Nt" of a latency row."""
    return f"{row['backend']} {row['precision']} {row['threads']}t"


def latency_stats(times_ms: list[float]) -> dict[str, Any]:
    """Per-frame times (ms) -> p50 / p90 / p99 / max / mean / min (ms, 3 decimals) and n."""
    a = np.asarray(times_ms, dtype=np.float64)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p90_ms": round(float(np.percentile(a, 90)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3),
            "mean_ms": round(float(a.mean()), 3), "min_ms": round(float(a.min()), 3), "n": int(a.size)}


def derive(rows: list[dict], report: dict) -> None:
    """Speed-up vs the best PyTorch eager row at the same size, achieved GFLOP/s and share of the peak."""
    torch_best: dict[int, dict] = {}
    for row in rows:
        if row["backend"] == "pytorch-eager":
            best = torch_best.get(row["input_size"])
            if best is None or row["p50_ms"] < best["p50_ms"]:
                torch_best[row["input_size"]] = row
    peaks = report.get("peak_gflops", {})
    for row in rows:
        base = torch_best.get(row["input_size"])
        if base is not None:
            row["speedup_vs_torch_p50"] = round(base["p50_ms"] / row["p50_ms"], 3)
            row["speedup_vs_torch_p99"] = round(base["p99_ms"] / row["p99_ms"], 3)
            row["torch_best_threads"] = base["threads"]
        flops = report.get("flops", {}).get(str(row["input_size"]), {}).get("flops")
        if flops:
            achieved = flops / (row["p50_ms"] / 1e3) / 1e9
            row["gflops_achieved"] = round(achieved, 2)
            kind = "int8" if row["precision"].startswith("int8") else "fp32"
            peak = peaks.get(kind, {}).get(str(row["threads"]))
            if peak and not row["backend"].endswith(("cuda", "tensorrt")):
                row["peak_gflops"] = peak
                row["ratio_to_peak"] = round(achieved / peak, 3)
                row["bound_ms"] = round(flops / (peak * 1e9) * 1e3, 3)


def goal_verdicts(report: dict, options: dict) -> list[dict]:
    """One {goal, status ("pass", "fail", "not measured"), detail} per goal of ``GOALS``, from the report's
    latency rows at ``options["default_size"]``, accuracy rows and end-to-end runs."""
    goals = []
    size = options["default_size"]
    rows = [r for r in report.get("rows", []) if r["input_size"] == size]
    torch_rows = [r for r in rows if r["backend"] == "pytorch-eager"]
    int8_rows = [r for r in rows if r["precision"] == "int8" and r["backend"] in ("onnxruntime", "openvino",
                                                                                  "openvino-nncf")]
    best_torch = min(torch_rows, key=lambda r: r["p50_ms"]) if torch_rows else None
    best_int8 = min(int8_rows, key=lambda r: r["p50_ms"]) if int8_rows else None

    def add(name: str, status: str, detail: str) -> None:
        goals.append({"goal": name, "status": status, "detail": detail})

    name = f"INT8 (ORT/OpenVINO) at {size}px >= {GOALS['speedup']:g}x faster than PyTorch eager float (best threads)"
    if best_torch and best_int8:
        ratio = best_torch["p50_ms"] / best_int8["p50_ms"]
        add(name, "pass" if ratio >= GOALS["speedup"] else "fail",
            f"{ratio:.2f}x: {row_label(best_int8)} p50 {best_int8['p50_ms']:.2f} ms vs pytorch-eager "
            f"{best_torch['threads']}t p50 {best_torch['p50_ms']:.2f} ms")
    else:
        add(name, "not measured", "needs an INT8 row and a PyTorch eager row at this size"
            + ("" if torch_rows else " (torch not installed or not run)"))
    name = f"INT8 at {size}px within {GOALS['bound']:g}x of the INT8 compute bound"
    if best_int8 and best_int8.get("bound_ms"):
        factor = best_int8["p50_ms"] / best_int8["bound_ms"]
        add(name, "pass" if factor <= GOALS["bound"] else "fail",
            f"{factor:.2f}x the bound: {row_label(best_int8)} p50 {best_int8['p50_ms']:.2f} ms, bound "
            f"{best_int8['bound_ms']:.2f} ms ({best_int8['gflops_achieved']:.1f} of {best_int8['peak_gflops']:.1f} "
            f"GOP/s measured INT8 peak at {best_int8['threads']} thread(s))")
    else:
        add(name, "not measured", "needs an INT8 row, the FLOPs of the graph and the INT8 peak")
    name = f"INT8 alpha MAE within {GOALS['int8_alpha_mae_delta']:g} deg of float"
    acc_rows = report.get("accuracy", {}).get("rows", [])
    ref = next((r for r in acc_rows if r["variant"] == "float" and r["engine"] == "ort-cpu"), None)
    int8_acc = [r for r in acc_rows if r["precision"].startswith("int8")]
    alpha = next((k for k in (ref or {}).get("mae", {}) if k.startswith("alpha")), None)
    if ref and int8_acc and alpha and ref["mae"][alpha] is not None:
        worst = max(int8_acc, key=lambda r: abs((r["mae"].get(alpha) or math.inf) - ref["mae"][alpha]))
        delta = (worst["mae"].get(alpha) or math.inf) - ref["mae"][alpha]
        add(name, "pass" if abs(delta) <= GOALS["int8_alpha_mae_delta"] else "fail",
            f"worst INT8 {worst['engine']} alpha MAE {worst['mae'].get(alpha)} vs float {ref['mae'][alpha]} deg "
            f"({delta:+.3f}) on {ref['n']} held-out frames")
    else:
        add(name, "not measured", report.get("accuracy", {}).get("note") or "no INT8 and float accuracy rows")
    runs = report.get("end_to_end", {}).get("runs", [])
    run30 = next((r for r in runs if r.get("pace_fps") == 30.0 and "error" not in r), None)
    why = report.get("end_to_end", {}).get("note") or next((r.get("error") for r in runs if r.get("error")), None) \
        or "no end-to-end run"
    name = (f"runtime sustains a {GOALS['e2e_fps']:g} FPS source with 0 frames dropped and p99 "
            f"capture-to-decision <= {GOALS['e2e_p99_ms']:g} ms")
    if run30 and run30.get("latency_ms"):
        p99, dropped = run30["latency_ms"].get("p99"), run30.get("dropped_frames")
        ok = dropped == 0 and p99 is not None and p99 <= GOALS["e2e_p99_ms"]
        add(name, "pass" if ok else "fail", f"{run30.get('fps')} FPS processed, {dropped} dropped, p99 {p99} ms")
    else:
        add(name, "not measured", why)
    name = f"runtime peak RSS <= {GOALS['rss_mb']:g} MB"
    rss = [r["rss_peak_mb"] for r in runs if r.get("rss_peak_mb") and "error" not in r]
    if rss:
        add(name, "pass" if max(rss) <= GOALS["rss_mb"] else "fail", f"max {max(rss):.0f} MB over {len(rss)} runs")
    else:
        add(name, "not measured", why)
    name = f"start (process spawn) to first decision <= {GOALS['startup_s']:g} s"
    starts = [r["start_to_first_decision_s"] for r in runs if r.get("start_to_first_decision_s") is not None
              and "error" not in r]
    if starts:
        add(name, "pass" if max(starts) <= GOALS["startup_s"] else "fail",
            f"max {max(starts):.2f} s over {len(starts)} runs (includes interpreter start and model load)")
    else:
        add(name, "not measured", why)
    return goals


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# sonogate bench ({report['mode']} mode)", "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        (f"- machine: {m.get('cpu_model')} ({m.get('arch')}), {m.get('usable_cores')} usable / "
         f"{m.get('logical_cores')} logical cores, flags {' '.join(m.get('cpu_flags', [])) or '-'}, "
         f"load average {m.get('load_average_start')} -> {m.get('load_average_end')}"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
        "", "## Goals", "",
    ]
    if report["mode"] == "short":
        lines[2:2] = [("> Short mode: one size, 1 thread, 30 frames, a harness check. These numbers are not "
                       "results; the full run (`make bench`) on a quiet machine is."), ""]
    for g in report["goals"]:
        lines.append(f"- **{g['status'].upper()}** {g['goal']}: {g['detail']}")
    lines += ["", "## Encoder + heads latency (batch 1, ms)", "",
              ("Speed-up = p50 of the best PyTorch eager row at the same size / p50 of the row (the headline: "
               "absolute times on a shared machine drift). Peak share = achieved GFLOP/s (graph FLOPs / p50) / "
               "measured peak of that precision at that thread count."), "",
              ("| backend | precision | size | threads | p50 | p90 | p99 | max | n | speed-up vs torch | GFLOP/s | "
               "peak share | CPU ms/frame |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(report["rows"], key=lambda r: (r["input_size"], r["threads"], r["backend"], r["precision"])):
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['input_size']} | {r['threads']} | {_fmt(r['p50_ms'])} | "
            f"{_fmt(r['p90_ms'])} | {_fmt(r['p99_ms'])} | {_fmt(r['max_ms'])} | {r['n']} | "
            f"{_fmt(r.get('speedup_vs_torch_p50'))}x | {_fmt(r.get('gflops_achieved'), 1)} | "
            f"{_fmt(r.get('ratio_to_peak'))} | {_fmt(r.get('cpu_ms_per_frame'), 1)} |")
    if report.get("skipped"):
        lines += ["", "Skipped:", ""]
        lines += [f"- {s['backend']} {s['precision']} {s['input_size']}px {s['threads']}t: {s['reason']}"
                  for s in report["skipped"]]
    lines += ["", "## FLOPs and measured peak", "", "| size | GFLOP (2 x MACs of Conv/Gemm/MatMul) |", "|---|---|"]
    for size, f in report.get("flops", {}).items():
        lines.append(f"| {size} | {f['gflops']:.3f} |")
    peak = report.get("peak_gflops", {})
    lines += ["", "| threads | fp32 peak GFLOP/s | int8 peak GOP/s | best kernels |", "|---|---|---|---|"]
    for t, kernels in peak.get("kernels", {}).items():
        best = {}
        for k in kernels:
            if k["gflops"] > best.get(k["precision"], {}).get("gflops", 0):
                best[k["precision"]] = k
        kinds = "; ".join(f"{p}: {k['engine']} {k['kernel']}" for p, k in best.items())
        lines.append(f"| {t} | {_fmt(peak['fp32'].get(t), 1)} | {_fmt(peak['int8'].get(t), 1)} | {kinds} |")
    lines += ["", "## End to end (`sonogate run`, 1 thread)", ""]
    e2e = report.get("end_to_end", {})
    if e2e.get("runs"):
        lines += [("| source pace | frames | FPS | dropped | p50 ms | p99 ms | CPU % of a core | peak RSS MB | "
                   "spawn to first decision s | note |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for r in e2e["runs"]:
            lat = r.get("latency_ms") or {}
            lines.append(
                f"| {_fmt(r.get('pace_fps'), 0) if r.get('pace_fps') else 'unpaced'} | {_fmt(r.get('frames'))} | "
                f"{_fmt(r.get('fps'), 1)} | {_fmt(r.get('dropped_frames'))} | {_fmt(lat.get('p50'), 1)} | "
                f"{_fmt(lat.get('p99'), 1)} | {_fmt(r.get('cpu_percent_of_one_core'), 0)} | "
                f"{_fmt(r.get('rss_peak_mb'), 0)} | {_fmt(r.get('start_to_first_decision_s'))} | "
                f"{r.get('error') or r.get('source_kind', '')} |")
    else:
        lines.append(e2e.get("note", "not measured"))
    lines += ["", "## Accuracy of each precision", ""]
    acc = report.get("accuracy", {})
    if acc.get("rows"):
        names = list(acc["rows"][0]["mae"])
        lines += ["| model | engine | n | " + " | ".join(f"{n} MAE" for n in names) + " | alpha mean abs diff to ORT float |",
                  "|---|---|---|" + "---|" * len(names) + "---|"]
        for r in acc["rows"]:
            diff = (r.get("mean_abs_diff_vs_ort_float") or {})
            alpha = next((k for k in names if k.startswith("alpha")), names[0])
            lines.append(f"| {r['variant']} ({r['file']}) | {r['engine']} | {r['n']} | "
                         + " | ".join(_fmt(r["mae"][n], 3) for n in names) + f" | {_fmt(diff.get(alpha), 3)} |")
    else:
        lines.append(acc.get("note", "not measured"))
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _plots(report: dict, samples: dict[str, list[float]], out: Path, default_size: int) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report["notes"].append("matplotlib not installed: no plots")
        return []
    written = []
    rows = report["rows"]
    if rows:
        threads = sorted({r["threads"] for r in rows})
        fig, axes = plt.subplots(1, len(threads), figsize=(5.5 * len(threads), 4.2), squeeze=False, sharey=True)
        for ax, t in zip(axes[0], threads):
            series: dict[str, list[tuple[int, float, float]]] = {}
            for r in rows:
                if r["threads"] == t:
                    series.setdefault(f"{r['backend']} {r['precision']}", []).append(
                        (r["input_size"], r["p50_ms"], r["p99_ms"]))
            for name, pts in sorted(series.items()):
                pts.sort()
                xs = [p[0] for p in pts]
                line, = ax.plot(xs, [p[1] for p in pts], marker="o", label=name)
                ax.fill_between(xs, [p[1] for p in pts], [p[2] for p in pts], alpha=0.15, color=line.get_color())
            ax.set_title(f"{t} thread{'s' if t > 1 else ''} (line p50, band to p99)")
            ax.set_xlabel("input size (px)")
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("latency per frame (ms)")
        axes[0][-1].legend(fontsize=8)
        fig.suptitle(f"sonogate encoder+heads latency, batch 1 ({report['mode']} mode)")
        fig.tight_layout()
        fig.savefig(out / "latency_vs_size.png", dpi=110)
        plt.close(fig)
        written.append("latency_vs_size.png")
    if samples:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        all_values = np.concatenate([np.asarray(v) for v in samples.values()])
        bins = np.logspace(np.log10(max(all_values.min() * 0.9, 1e-3)), np.log10(all_values.max() * 1.1), 60)
        for name, values in sorted(samples.items()):
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("latency per frame (ms)")
        ax.set_ylabel("frames")
        ax.set_title(f"latency histogram at {default_size}px")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        name = f"latency_hist_{default_size}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def write_outputs(report: dict, samples: dict, options: dict) -> None:
    """Plots, ``latest.json`` and ``results.md`` into ``options["out"]``; the results block of
    ``out/../README.md`` refreshed when it holds the markers. ``samples``: label -> per-frame ms at the
    default size (the histogram)."""
    out = options["out"]
    report["plots"] = _plots(report, samples, out, options["default_size"])
    report["latency_samples_ms"] = {"input_size": options["default_size"], "by_config": samples}
    (out / "latest.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    markdown = _markdown(report)
    (out / "results.md").write_text(markdown)
    readme = out.resolve().parent / "README.md"
    if readme.is_file():
        text = readme.read_text()
        if README_START in text and README_END in text:
            head, rest = text.split(README_START, 1)
            _, tail = rest.split(README_END, 1)
            body = markdown.replace("\n## ", "\n#### ").replace("# sonogate bench", "### Last run:", 1)
            readme.write_text(f"{head}{README_START}\n{body}\n{README_END}{tail}")


def print_report(report: dict) -> None:
    """The report on stdout: machine, notes, one line per latency row, FLOPs, peak, end to end, accuracy,
    one ``GOAL`` line per goal."""
    m = report["machine"]
    print(f"sonogate bench ({report['mode']}): {m.get('cpu_model')}, {m.get('usable_cores')} cores, "
          f"flags {' '.join(m.get('cpu_flags', []))}, load {m.get('load_average_start')}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"{'backend':<22}{'prec':<6}{'size':>5}{'thr':>4}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'n':>5}"
          f"{'x torch':>9}{'%peak':>7}")
    for r in sorted(report["rows"], key=lambda r: (r["input_size"], r["threads"], r["backend"], r["precision"])):
        ratio = r.get("ratio_to_peak")
        print(f"{r['backend']:<22}{r['precision']:<6}{r['input_size']:>5}{r['threads']:>4}{r['p50_ms']:>9.2f}"
              f"{r['p90_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['max_ms']:>9.2f}{r['n']:>5}"
              f"{_fmt(r.get('speedup_vs_torch_p50')):>9}{(f'{100 * ratio:.0f}%' if ratio else '-'):>7}")
    for s in report.get("skipped", []):
        print(f"skipped {s['backend']} {s['precision']} {s['input_size']}px {s['threads']}t: {s['reason']}")
    for size, f in report.get("flops", {}).items():
        print(f"flops {size}px: {f['gflops']:.3f} GFLOP")
    peak = report.get("peak_gflops", {})
    for t in sorted(set(peak.get("fp32", {})) | set(peak.get("int8", {})), key=int):
        print(f"peak {t} thread(s): fp32 {_fmt(peak['fp32'].get(t), 1)} GFLOP/s, int8 "
              f"{_fmt(peak['int8'].get(t), 1)} GOP/s")
    for e in peak.get("errors", []):
        print(f"peak: {e}")
    e2e = report.get("end_to_end", {})
    for r in e2e.get("runs", []):
        lat = r.get("latency_ms") or {}
        pace = f"{r['pace_fps']:g} FPS" if r.get("pace_fps") else "unpaced"
        if r.get("error"):
            print(f"end to end {pace}: {r['error']}")
        else:
            print(f"end to end {pace}: {_fmt(r.get('fps'), 1)} FPS, {r.get('dropped_frames')} dropped, p50 "
                  f"{_fmt(lat.get('p50'), 1)} ms, p99 {_fmt(lat.get('p99'), 1)} ms, CPU "
                  f"{_fmt(r.get('cpu_percent_of_one_core'), 0)}% of a core, RSS {_fmt(r.get('rss_peak_mb'), 0)} MB, "
                  f"first decision {_fmt(r.get('start_to_first_decision_s'))} s")
    if e2e.get("note"):
        print(f"end to end: {e2e['note']}")
    acc = report.get("accuracy", {})
    for r in acc.get("rows", []):
        print(f"accuracy {r['variant']} on {r['engine']}: " + ", ".join(
            f"{k} MAE {_fmt(v, 3)}" for k, v in r["mae"].items()))
    if acc.get("note"):
        print(f"accuracy: {acc['note']}")
    for g in report["goals"]:
        print(f"GOAL {g['status'].upper()}: {g['goal']}: {g['detail']}")
