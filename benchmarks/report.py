"""Render benchmark results: report.md tables, PNG plots, and the README performance table.

    python -m benchmarks.report RESULTS_JSON [--readme README.md]

:func:`compact_table` is the table ``python -m benchmarks.gpu_check`` prints last.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

README_BEGIN = "<!-- performance-table:begin -->"
README_END = "<!-- performance-table:end -->"


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return str(v)


def _params(p: Dict[str, Any], sep: str = ", ", drop: tuple = ()) -> str:
    return sep.join(f"{k}={'x'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                    for k, v in p.items() if k not in drop)


def _others(row: Dict[str, Any]) -> str:
    """Speedups over the case's further baselines (e.g. dense flash SDPA), as 'vs impl: 2.10x'."""
    return ", ".join(f"vs {k[len('speedup_vs_'):]}: {v:.2f}x" for k, v in row.items()
                     if k.startswith("speedup_vs_") and k != "speedup_vs_reference")


def short_tolerance(text: str) -> str:
    """The short tag before the first ': ' of a tolerance sentence ('rel<=3e-02', 'exact', ...)."""
    return text.split(": ", 1)[0] if text else ""


def _verdict(r: Dict[str, Any]) -> str:
    if r["status"] == "error":
        return f"ERROR {r.get('error', '')[:90]}"
    if r["status"] != "ok":
        return f"skipped: {r.get('reason', '')[:60]}"
    verdict = r.get("check") or "-"
    if verdict in ("pass", "fail"):
        return f"{verdict} ({short_tolerance(r.get('tolerance', ''))})"
    return "timed only" if verdict.startswith("not checked") else verdict


def compact_table(result: Dict[str, Any]) -> str:
    """Plain-text summary: the GPU check's phases (status, wall time / limit, notes) when present,
    then one line per row: case, params, dtype, impl, first call ms (compilation included), median
    ms (``*``: scaled, with the reason below), speedups, and the check verdict with its tolerance
    tag (or the error / skip reason)."""
    lines = []
    gc = result.get("gpu_check", {})
    if gc:
        lines.append(f"gpu_check on {result.get('env', {}).get('device_name', '?')}: "
                     f"{gc.get('wall_s', 0):.0f} s of a {gc.get('budget_s', 0):.0f} s budget")
        for ph in gc.get("phases", []):
            lines.append(f"  {ph['name']:<12}{ph['status']:<9}{ph.get('wall_s', 0):>6.1f} s / {ph.get('limit_s', 0):>4} s"
                         f"  {ph.get('note', '')}")
    header = ("case", "params", "dtype", "impl", "1st ms", "ms", "x ref", "x others", "check")
    table, notes = [header], set()
    for r in result.get("rows", []):
        others = " ".join(f"{k[len('speedup_vs_'):]}:{v:.2f}" for k, v in r.items()
                          if k.startswith("speedup_vs_") and k != "speedup_vs_reference")
        ms = _fmt(r.get("median_ms"), 3) + ("*" if r.get("timing_note") else "")
        if r.get("timing_note"):
            notes.add(f"* {r['name']} [{r['impl']}]: {r['timing_note']}")
        table.append((r["name"], _params(r["params"], " ", ("sizes_from", "density", "block")), r["dtype"],
                      r["impl"], _fmt(r.get("first_call_ms"), 0), ms, _fmt(r.get("speedup_vs_reference")), others,
                      _verdict(r)))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header) - 1)]
    for row in table:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row[:-1], widths)) + "  " + str(row[-1]))
    return "\n".join(lines + sorted(notes))


def write_report(result: Dict[str, Any], path: Path) -> Path:
    env, ceil = result["env"], result["ceilings"]
    lines = [f"# videogpt_fast benchmarks — {env['device_name']}", "",
             f"- date: {env['date']}", f"- command: `{env.get('command', '')}`",
             f"- torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, CUDA extension built: {env['cuda_extension']}",
             f"- CPU cores: {env['cpu_count']}; platform: {env['platform']}",
             "- measured ceilings: " + ", ".join(f"{k} = {v:.2f}" for k, v in ceil.items()), ""]
    if env["device"] == "cpu":
        lines += ["> CPU run: these figures say nothing about GPU speed; GPU results are **not measured** here.", ""]
    groups: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for row in result["rows"]:
        groups[row["group"]].append(row)
    for group, rows in groups.items():
        lines += [f"## {group}", "",
                  "| case | params | dtype | impl | first call ms | median ms | min ms | speedup vs ref | other speedups | TFLOP/s | % matmul peak | GB/s | % copy bw | throughput | check (tolerance) | status |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error') or r.get('reason')}"
            thr = f"{_fmt(r.get('throughput'))} {r.get('throughput_unit', '')}" if r.get("throughput") else ""
            check = r.get("check", "")
            if check in ("pass", "fail"):
                check = f"{check} ({r.get('tolerance', '')}){': ' + r['check_detail'] if r.get('check_detail') else ''}"
            lines.append("| " + " | ".join([r["name"], _params(r["params"]), r["dtype"], r["impl"],
                                             _fmt(r.get("first_call_ms"), 0), _fmt(r.get("median_ms"), 3),
                                             _fmt(r.get("min_ms"), 3), _fmt(r.get("speedup_vs_reference")), _others(r),
                                             _fmt(r.get("tflops")),
                                             _fmt(r.get("pct_matmul_peak"), 1), _fmt(r.get("gbps")), _fmt(r.get("pct_copy_bandwidth"), 1),
                                             thr, check, status]) + " |")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def write_plots(result: Dict[str, Any], out: Path) -> List[Path]:
    """speedup.png (bars per case and implementation) and scaling_<case>.png where a case varies."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("speedup_vs_reference")]
    paths: List[Path] = []
    if rows:
        labels = [f"{r['name']} [{r['impl']}] {r['dtype']}\n{_params(r['params'])}" for r in rows]
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
        ax.barh(range(len(rows)), [r["speedup_vs_reference"] for r in rows], color="tab:blue")
        ax.set_yticks(range(len(rows)), labels, fontsize=6)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("speedup over the reference (same process)")
        ax.set_title(f"videogpt_fast on {result['env']['device_name']}")
        fig.tight_layout()
        paths.append(out / "speedup.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    series: Dict[tuple, Dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in result["rows"]:
        for key in ("L", "B", "batch"):
            if key in r["params"] and r.get("median_ms"):
                series[(r["name"], r["dtype"], key)][r["impl"]].append((r["params"][key], r["median_ms"]))
    for (name, dtype, key), impls in series.items():
        if max(len(v) for v in impls.values()) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for impl, pts in impls.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ax.set_xlabel(key)
        ax.set_ylabel("median ms")
        ax.set_yscale("log")
        ax.set_title(f"{name} ({dtype})")
        ax.legend()
        fig.tight_layout()
        paths.append(out / f"scaling_{name}_{dtype}_{key}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def _commands(result: Dict[str, Any]) -> str:
    """How ``result`` was measured: its GPU-check command(s) when it came from ``benchmarks.gpu_check``
    (one per run when several were merged, ``gpu_check_runs``), else the benchmark command."""
    runs = result.get("gpu_check_runs") or ([result["gpu_check"]] if result.get("gpu_check") else [])
    commands = list(dict.fromkeys(r["command"] for r in runs if r.get("command")))
    if not commands:
        return f"`{result['env'].get('command', '')}`"
    return " then ".join(f"`{c}`" for c in commands)


def readme_table(result: Dict[str, Any], source: str) -> str:
    """The README's performance table: per case, the fastest implementation whose check passed
    (never the reference), its speedup over the reference and, when it ran, over the original package."""
    env = result["env"]
    best: Dict[tuple, Dict[str, Any]] = {}
    original_ms: Dict[tuple, float] = {}
    for r in result["rows"]:
        key = (r["name"], _params(r["params"]), r["dtype"])
        if r["impl"] == "original" and r.get("median_ms"):
            original_ms[key] = r["median_ms"]
        elif r.get("speedup_vs_reference") and r.get("check") == "pass" and r["impl"] != "reference":
            if key not in best or r["speedup_vs_reference"] > best[key]["speedup_vs_reference"]:
                best[key] = r
    lines = [README_BEGIN,
             f"Measured on **{env['device_name']}** ({env['date']}, torch {env['torch']}, triton {env['triton']}) "
             f"with {_commands(result)}; generated from `{source}`.", "",
             "| case | params | dtype | fastest impl | ms | speedup vs reference | speedup vs original package "
             "| vs what a user would pick instead |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in sorted(best.items()):
        name, params, dtype = key
        vs_orig = f"{_fmt(original_ms[key] / r['median_ms'])}x" if key in original_ms else "not run"
        others = ", ".join(f"{k[len('speedup_vs_'):]} {_fmt(v)}x" for k, v in sorted(r.items())
                           if k.startswith("speedup_vs_") and k != "speedup_vs_reference" and v) or "-"
        lines.append(f"| {name} | {params} | {dtype} | {r['impl']} | {_fmt(r['median_ms'], 3)} | "
                     f"{_fmt(r['speedup_vs_reference'])}x | {vs_orig} | {others} |")
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_BEGIN} ... {README_END} section to replace")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + table + tail)


_ENV_KEYS = ("device", "device_name", "date", "torch", "triton", "cuda", "cuda_extension", "cpu_count", "platform")
_ROW_KEYS = ("name", "group", "params", "dtype", "impl", "status")


def load_result(path: Path) -> Dict[str, Any]:
    """``path`` read as a ``benchmarks.run`` results.json (env, ceilings, rows; a row that ran has
    its median_ms).

    Raises:
        ValueError: naming the file and what is missing or malformed (OSError: unreadable).
    """
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(result, dict) or not isinstance(result.get("env"), dict) or not isinstance(
            result.get("rows"), list) or not isinstance(result.get("ceilings"), dict):
        raise ValueError(f"{path}: not a benchmark result (needs an object with env, ceilings and rows; "
                         f"a gpu_check whose environment phase failed has none)")
    missing = [k for k in _ENV_KEYS if k not in result["env"]]
    if missing:
        raise ValueError(f"{path}: env lacks {', '.join(missing)}")
    for i, r in enumerate(result["rows"]):
        if not isinstance(r, dict) or any(k not in r for k in _ROW_KEYS):
            raise ValueError(f"{path}: row {i} lacks one of {', '.join(_ROW_KEYS)}")
        if r["status"] == "ok" and not isinstance(r.get("median_ms"), (int, float)):
            raise ValueError(f"{path}: row {i} ({r['name']} [{r['impl']}]) ran but has no median_ms")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--readme", type=Path, default=None, help="replace the README's performance table")
    args = p.parse_args(argv)
    try:
        result = load_result(args.results)
        out = args.results.parent
        write_report(result, out / "report.md")
        write_plots(result, out)
        if args.readme:
            if result["env"]["device"] == "cpu":
                p.error("refusing to put CPU figures in the README's performance table")
            update_readme(args.readme, readme_table(result, str(args.results)))
    except (OSError, ValueError) as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
