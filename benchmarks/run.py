"""Run every benchmark case and write results.json, report.md and PNG plots.

    python -m benchmarks.run [--quick] [--device cpu|cuda] [--out DIR] [--group G ...] [--only SUBSTR ...] [--merge]

Each case runs the reference and the fast paths on the same inputs in this process, checks each
against the truth (a float64 computation where the case has one, else the reference), then times
them; every checked row states its tolerance and the first call's time (compilation included).
``--group``/``--only`` select cases; ``--merge`` adds the rows to an existing results.json in
``--out`` (replacing rows of the same case, parameters, dtype and implementation), so a
time-limited GPU session can measure group by group. results.json is rewritten after every case.
The device's matmul rate and copy bandwidth are measured first (or reused with ``--merge``), and
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
from typing import Any, Dict, List, Optional

import torch

from .harness import GROUPS, Settings, all_cases, env_info, measure_ceilings, summarize, synchronize, time_callable
from .report import write_plots, write_report

log = logging.getLogger("benchmarks")


def _first_call(fn, device: torch.device):
    """``fn()`` once, synchronized: its output and wall milliseconds (compilation and autotuning
    included on a first call)."""
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, (time.perf_counter() - t0) * 1e3


def run_case(case, device: torch.device, quick: bool, min_time_s: Optional[float] = None,
             max_iters: Optional[int] = None, warmup: Optional[int] = None) -> List[Dict[str, Any]]:
    """Check and time every implementation of ``case``; one row per implementation.

    Each implementation's first call is timed on its own (``first_call_ms``: compilation included),
    its output checked against ``case.truth()`` (float64, computed once) or, for cases without a
    truth, against the reference implementation's output; then it is timed. A failed check makes
    the row an error and the implementation is not timed. Every checked row states the tolerance."""
    rows: List[Dict[str, Any]] = []
    base = dict(name=case.name, group=case.group, params=case.params, dtype=case.dtype)
    timed: Dict[str, float] = {}
    expected, truth_error = None, None
    if case.truth is not None:
        try:
            expected = case.truth()
        except Exception as e:  # every check then fails with this reason
            truth_error = f"the float64 truth failed: {type(e).__name__}: {e}"
            log.error("%s: %s", case.name, truth_error)
    min_time_s = min_time_s if min_time_s is not None else (0.1 if quick else 1.0)
    max_iters = max_iters if max_iters is not None else (10 if quick else 100)
    warmup = warmup if warmup is not None else (1 if quick else 2)
    for impl, fn in case.impls.items():
        row = dict(base, impl=impl, status="ok")
        try:
            out, row["first_call_ms"] = _first_call(fn, device)
            if case.truth is None and impl == case.reference:
                expected = out
            if f"{impl}:check" in case.skipped:
                row["check"] = "not checked: " + case.skipped[f"{impl}:check"]
            elif case.check is not None and (case.truth is not None or impl != case.reference):
                check, row["tolerance"] = case.impl_checks.get(impl, (case.check, case.tolerance))
                if truth_error:
                    raise AssertionError(truth_error)
                if expected is None:
                    raise AssertionError(f"no {case.reference} output to check against")
                try:
                    detail = check(expected, out)
                except AssertionError as e:
                    row["check"] = "fail"
                    raise AssertionError(f"check failed: {e}") from None
                row["check"] = "pass"
                if detail:
                    row["check_detail"] = detail
            del out
            stats = summarize(time_callable(fn, device, warmup=1 if quick else 2,
                                            min_time_s=min_time_s, max_iters=max_iters))
            if impl in case.time_scale:
                factor, why = case.time_scale[impl]
                stats.update({k: stats[k] * factor for k in ("median_ms", "min_ms", "max_ms")})
                row["timing_note"] = why
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
    return dict(old, **dict(new, env=env, rows=rows, wall_s=old.get("wall_s", 0.0) + new["wall_s"]))


def _pct_of_ceilings(row: Dict[str, Any], ceilings: Dict[str, float]) -> None:
    if "tflops" in row:
        key = f"matmul_tflops_{row['dtype']}" if f"matmul_tflops_{row['dtype']}" in ceilings else "matmul_tflops_float32"
        row["pct_matmul_peak"] = 100 * row["tflops"] / ceilings[key]
    if "gbps" in row:
        row["pct_copy_bandwidth"] = 100 * row["gbps"] / ceilings["copy_gbps"]


def write_results(path: Path, result: Dict[str, Any]) -> None:
    """Write ``result`` atomically (a run killed mid-write leaves the previous file whole)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes; finishes on CPU in minutes")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="benchmarks/results/latest", help="output folder")
    p.add_argument("--only", nargs="+", default=None, help="run only cases whose name contains one of these")
    p.add_argument("--group", nargs="+", choices=GROUPS, default=None, help="run only these case groups")
    p.add_argument("--merge", action="store_true",
                   help="merge into OUT/results.json from an earlier run on the same device instead of replacing it "
                        "(its measured ceilings are reused)")
    p.add_argument("--min-time", type=float, default=None, help="seconds to time each implementation (after warm-up)")
    p.add_argument("--max-iters", type=int, default=None, help="most timed calls per implementation")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls after the first call (default 1 quick, 2)")
    p.add_argument("--no-report", action="store_true", help="write results.json only (no report.md, no plots)")
    p.add_argument("--csrc", choices=["load", "skip"], default="load",
                   help="on CUDA: build or load the CUDA extension (load), or leave it unbuilt (skip: its rows say why)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device")
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    t0 = time.time()
    if device.type == "cuda" and args.csrc == "load":  # JIT-build (or find) the CUDA extension so its ops are timed too
        from videogpt_fast import csrc_build
        try:
            csrc_build.load()
        except Exception as e:
            log.warning("CUDA extension unavailable, its implementations are skipped: %s", e)
    env = env_info(device)
    env["command"] = " ".join(["python -m benchmarks.run"] + (argv if argv is not None else sys.argv[1:]))
    log.info("device %s | torch %s | triton %s", env["device_name"], env["torch"], env["triton"])
    old = json.loads((out / "results.json").read_text()) if args.merge and (out / "results.json").exists() else None
    if old is not None:  # refuse a mismatched merge before measuring anything
        try:
            merge_results(old, dict(env=env, ceilings={}, quick=args.quick, wall_s=0.0, rows=[]))
        except ValueError as e:
            p.error(str(e))
    if old is not None and old.get("ceilings"):
        ceilings = old["ceilings"]
        log.info("ceilings (from %s): %s", out / "results.json", ", ".join(f"{k}={v:.2f}" for k, v in ceilings.items()))
    else:
        ceilings = measure_ceilings(device, args.quick)
        log.info("ceilings: %s", ", ".join(f"{k}={v:.2f}" for k, v in ceilings.items()))
    rows: List[Dict[str, Any]] = []
    from tqdm import tqdm

    def result_now() -> Dict[str, Any]:
        new = dict(env=env, ceilings=ceilings, quick=args.quick, wall_s=time.time() - t0, rows=rows)
        return merge_results(old, new) if old is not None else new

    # cases are built one at a time (and freed after running): full-size inputs do not all fit
    # at once; results.json is rewritten after every case, so a killed run keeps what it measured
    for case in tqdm(all_cases(Settings(device, args.quick), args.group, args.only), desc="benchmarks", unit="case"):
        new_rows = run_case(case, device, args.quick, args.min_time, args.max_iters, args.warmup)
        for row in new_rows:
            _pct_of_ceilings(row, ceilings)
        rows.extend(new_rows)
        del case
        write_results(out / "results.json", result_now())
    result = result_now()
    write_results(out / "results.json", result)
    written = [out / "results.json"]
    if not args.no_report:
        written.append(write_report(result, out / "report.md"))
        written += write_plots(result, out)
    errors = [r for r in rows if r["status"] == "error"]
    log.info("wrote %s in %.0f s; %d rows, %d errors", ", ".join(map(str, written)), time.time() - t0,
             len(rows), len(errors))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
