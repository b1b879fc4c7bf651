"""Run every benchmark case and write results.json, report.md and PNG plots.

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--out DIR] [--group G ...] [--only SUBSTR] [--merge]

Each case runs the reference and the fast paths on the same inputs in this process, checks that
they agree, then times them. ``--group``/``--only`` select cases; ``--merge`` adds the rows to an
existing results.json in ``--out`` (replacing rows of the same case, parameters, dtype and
implementation), so a time-limited GPU session can measure group by group. The device's matmul rate and copy bandwidth are measured first, and
each result states its FLOP/s and bytes/s against those ceilings.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List

import torch

from .harness import GROUPS, Settings, all_cases, env_info, measure_ceilings, summarize, time_callable
from .report import write_plots, write_report

log = logging.getLogger("benchmarks")


def run_case(case, device: torch.device, quick: bool) -> List[Dict[str, Any]]:
    """Check and time every implementation of ``case``; one row per implementation."""
    rows: List[Dict[str, Any]] = []
    outputs: Dict[str, Any] = {}
    base = dict(name=case.name, group=case.group, params=case.params, dtype=case.dtype)
    timed: Dict[str, float] = {}
    for impl, fn in case.impls.items():
        row = dict(base, impl=impl, status="ok")
        try:
            outputs[impl] = fn()
            if impl != case.reference and case.check is not None and case.reference in outputs \
                    and f"{impl}:check" not in case.skipped:
                case.check(outputs[case.reference], outputs[impl])
                row["check"] = "agrees with " + case.reference
            elif f"{impl}:check" in case.skipped:
                row["check"] = case.skipped[f"{impl}:check"]
            stats = summarize(time_callable(fn, device, warmup=1 if quick else 3,
                                            min_time_s=0.1 if quick else 1.0, max_iters=10 if quick else 100))
            row.update(stats)
            timed[impl] = stats["median_ms"]
            secs = stats["median_ms"] * 1e-3
            if case.flops:
                row["tflops"] = case.flops / secs / 1e12
            if case.bytes:
                row["gbps"] = case.bytes / secs / 1e9
            if case.items:
                row["throughput"] = case.items / secs
                row["throughput_unit"] = f"{case.item_unit}/s"
        except Exception as e:  # recorded, never hidden
            row["status"] = "error"
            row["error"] = f"{type(e).__name__}: {e}"
            log.error("%s [%s] failed: %s", case.name, impl, row["error"])
            log.debug(traceback.format_exc())
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref_ms = timed.get(case.reference)
    for row in rows:
        if ref_ms and row.get("median_ms"):
            row["speedup_vs_reference"] = ref_ms / row["median_ms"]
        for other in case.baselines:
            if timed.get(other) and row.get("median_ms") and row["impl"] != other:
                row[f"speedup_vs_{other}"] = timed[other] / row["median_ms"]
    for impl, reason in case.skipped.items():
        if ":" not in impl:
            rows.append(dict(base, impl=impl, status="skipped", reason=reason))
    return rows


def _row_key(row: Dict[str, Any]) -> str:
    return json.dumps([row["name"], row["impl"], row["params"], row["dtype"]], sort_keys=True, default=str)


def merge_results(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """``new``'s rows added to ``old``'s (same case, params, dtype and impl: the new row wins); the
    environment must name the same device; every command is kept."""
    if old["env"]["device_name"] != new["env"]["device_name"] or old.get("quick") != new.get("quick"):
        raise ValueError(f"--merge: results.json holds a run on {old['env']['device_name']} (quick={old.get('quick')}), "
                         f"this run is on {new['env']['device_name']} (quick={new.get('quick')})")
    fresh = {_row_key(r) for r in new["rows"]}
    rows = [r for r in old["rows"] if _row_key(r) not in fresh] + new["rows"]
    commands = old["env"].get("commands", [old["env"].get("command")]) + [new["env"].get("command")]
    env = dict(new["env"], commands=commands, command=" && ".join(c for c in commands if c))
    return dict(new, env=env, rows=rows, wall_s=old.get("wall_s", 0.0) + new["wall_s"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes; finishes on CPU in minutes")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="benchmarks/results/latest", help="output folder")
    p.add_argument("--only", default=None, help="run only cases whose name contains this")
    p.add_argument("--group", nargs="+", choices=GROUPS, default=None, help="run only these case groups")
    p.add_argument("--merge", action="store_true",
                   help="merge into OUT/results.json from an earlier run on the same device instead of replacing it")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.time()
    if device.type == "cuda":  # JIT-build (or find) the CUDA extension so its ops are timed too
        from videogpt_fast import csrc_build
        try:
            csrc_build.load()
        except Exception as e:
            log.warning("CUDA extension unavailable, its implementations are skipped: %s", e)
    env = env_info(device)
    env["command"] = " ".join(["python -m benchmarks.run"] + (argv if argv is not None else sys.argv[1:]))
    log.info("device %s | torch %s | triton %s", env["device_name"], env["torch"], env["triton"])
    ceilings = measure_ceilings(device, args.quick)
    log.info("ceilings: %s", ", ".join(f"{k}={v:.2f}" for k, v in ceilings.items()))
    rows: List[Dict[str, Any]] = []
    from tqdm import tqdm
    # cases are built one at a time (and freed after running): full-size inputs do not all fit at once
    for case in tqdm(all_cases(Settings(device, args.quick), args.group), desc="benchmarks", unit="case"):
        if not args.only or args.only in case.name:
            rows.extend(run_case(case, device, args.quick))
        del case
    for row in rows:
        if "tflops" in row:
            key = f"matmul_tflops_{row['dtype']}" if f"matmul_tflops_{row['dtype']}" in ceilings else "matmul_tflops_float32"
            row["pct_matmul_peak"] = 100 * row["tflops"] / ceilings[key]
        if "gbps" in row:
            row["pct_copy_bandwidth"] = 100 * row["gbps"] / ceilings["copy_gbps"]
    result = dict(env=env, ceilings=ceilings, quick=args.quick, wall_s=time.time() - t0, rows=rows)
    if args.merge and (out / "results.json").exists():
        result = merge_results(json.loads((out / "results.json").read_text()), result)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    write_report(result, out / "report.md")
    plots = write_plots(result, out)
    errors = [r for r in rows if r["status"] == "error"]
    log.info("wrote %s, %s and %d plots in %.0f s; %d errors", out / "results.json", out / "report.md",
             len(plots), time.time() - t0, len(errors))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
