"""Everything that needs a GPU, in one command that fits one device call (8 minutes on an H200).

    python -m benchmarks.gpu_check [--device cuda|cpu] [--smoke] [--out DIR] [--archive FILE.tar.gz]
                                   [--phases NAME ...] [--limit NAME=SECONDS ...] [--budget SECONDS]

Phases, each in its own subprocess killed at its time limit (the run then goes on with the next):

==========  ==========================================================================  =========
phase       what                                                                        limit (s)
==========  ==========================================================================  =========
env         device, driver, versions; makes ``videogpt_fast.kernels`` importable from a     15
            bare checkout (links ``videogpt_fast/kernels`` to ``kernels/``, as a
            development checkout has it; nothing is installed)
build       JIT-build ``csrc/`` (``videogpt_fast.csrc_build.load``)                      60
tests       ``pytest -m gpu`` with xdist workers sized to the cores and a per-test         90
            timeout; ``logs/tests.log`` ends with the pass count and the wall time
codebook    codebook search (+ EMA statistics) in fp32, bf16, fp16                       20
axial       axial attention forward+backward in fp32, bf16, fp16                         30
blocksparse block-sparse attention (+ FlexAttention, dense flash SDPA) at the prior's    120
            training sizes
decode      one sampling step's attention over the K/V cache (sampler sizes)             25
models      VQ-VAE encode+decode and train step, prior train step                       40
sampling    sampling on the UCF-101 prior sizes against the original algorithm          75
==========  ==========================================================================  =========

The limits add up to 475 s (``--budget``, default 480, also caps each phase by what is left).
Benchmark phases run ``python -m benchmarks.run --merge`` into ``OUT/results.json``, which is
rewritten after every case, so a phase killed at its limit keeps what it measured; this command
adds a ``gpu_check`` entry (each phase's status, wall time and limit, the test counts) after every
phase. Every row states its first call's time (compilation included), its check verdict and the
tolerance. A compact table is printed last (and saved as ``OUT/summary.txt``).

``--smoke`` runs the same pipeline at tiny sizes (``benchmarks.run --quick``; one test file) and,
with ``--device cpu``, finishes in about a minute on a CPU: that is how the pipeline is tested.
No PyAV is needed (the data-loading group is not part of the check). The original ``videogpt``
package is measured beside ours when it is importable (see ``benchmarks/original.py``).

Output: ``--out`` (default ``benchmarks/results/<device>-<date>``) with results.json, summary.txt,
report.md, plots and ``logs/<phase>.log``; ``--archive FILE.tar.gz`` also packs the folder into one
file that unpacks as ``<device>-<date>/`` (a device call returns at most 8 files). Exit status 0
when the environment phase ran, no phase failed or timed out and no row is an error; 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .report import compact_table

REPO = Path(__file__).resolve().parents[1]

# (name, default limit in seconds); the order is the order they run in
# (limits from the H200 run of 2026-11-30: env 5 s, build 47 s, tests 48 s, codebook 10 s, axial 20 s,
# blocksparse > 75 s (killed: FlexAttention compiles ~15 s per case), decode 14 s, models 23 s, sampling 52 s)
PHASES = (("env", 15), ("build", 60), ("tests", 90), ("codebook", 20), ("axial", 30),
          ("blocksparse", 120), ("decode", 25), ("models", 40), ("sampling", 75))
# benchmark phase -> the case names it runs (benchmarks.run --only)
BENCH_ONLY = {"codebook": ["codebook"], "axial": ["axial"], "blocksparse": ["blocksparse"], "decode": ["decode_attention"],
              "models": ["vqvae_encode_decode", "vqvae_train_step", "gpt_train_step"], "sampling": ["sample_codes"]}
# how long each implementation is timed (after its first call, which is timed on its own)
BENCH_TIMING = {"default": ["--warmup", "1", "--min-time", "0.2", "--max-iters", "30"],
                "sampling": ["--warmup", "0", "--min-time", "0", "--max-iters", "1"],
                "smoke": ["--warmup", "0", "--min-time", "0", "--max-iters", "1"]}
SMOKE_TESTS = ["tests/test_kernel_codebook.py"]

_ENV_CODE = """
import json, platform, sys
import torch
from benchmarks.harness import env_info
device = torch.device(sys.argv[1])
if device.type == "cuda" and not torch.cuda.is_available():
    sys.exit("--device cuda but torch sees no CUDA device")
info = env_info(device)
if device.type == "cuda":
    p = torch.cuda.get_device_properties(device)
    info.update(capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                memory_gib=round(p.total_memory / 2**30, 1))
import importlib.util
info["pytest_plugins"] = {m: importlib.util.find_spec(m) is not None for m in ("xdist", "pytest_timeout")}
info["av_importable"] = importlib.util.find_spec("av") is not None
print("ENV_JSON " + json.dumps(info, default=str))
"""

# exit status 0 when videogpt_fast.kernels imports from the checkout argv[1] (an editable install of
# another checkout would otherwise lend its kernels to a bare one); else 1, saying where they came from
_KERNELS_HERE = ("import sys, pathlib, videogpt_fast.kernels as k; where = pathlib.Path(k.__file__).resolve().parent; "
                 "repo = pathlib.Path(sys.argv[1]).resolve(); "
                 "sys.exit(0 if repo in where.parents else f'videogpt_fast.kernels imports from {where}, not from {repo}')")

_BUILD_CODE = """
import logging, time
logging.basicConfig(level=logging.INFO)
from videogpt_fast import csrc_build
why = csrc_build.why_unbuildable()
if why is not None:
    print("BUILD_SKIPPED " + why)
else:
    t = time.time()
    csrc_build.load(verbose=True)
    print(f"BUILD_OK {time.time() - t:.1f} s")
"""


def run_limited(cmd: Sequence[str], log: Path, limit_s: float, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run ``cmd`` in its own process group with stdout+stderr appended to ``log``; kill the whole
    group (workers, compilers) at ``limit_s``. Returns status ('ok', 'failed' or 'timeout'), rc
    and wall seconds."""
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        f.flush()
        proc = subprocess.Popen(list(cmd), cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(limit_s, 1))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended just now
                pass
            rc = proc.wait()
            status = "timeout"
            f.write(f"\n[gpu_check] killed at its {limit_s:.0f} s limit\n")
    return dict(status=status, rc=rc, wall_s=round(time.time() - t0, 1), limit_s=round(limit_s))


def parse_pytest_summary(text: str) -> Dict[str, Any]:
    """Counts from pytest's last summary line ('3 failed, 50 passed, 2 skipped in 95.1s') and the
    names of failed tests ('FAILED tests/x.py::test - reason' lines)."""
    counts: Dict[str, Any] = {}
    for line in reversed(text.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", line)
        secs = re.search(r" in ([\d.]+)s", line)
        if found and secs:
            counts = {("error" if k.startswith("error") else k): int(n) for n, k in found}
            counts["pytest_s"] = float(secs.group(1))
            break
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    if failures:
        counts["failures"] = failures[:30]
    return counts


_NEEDS_AV = re.compile(r"^(?:import av\b|from av\b)", re.M)


def files_needing_av(paths: Sequence[str]) -> List[str]:
    """Test files under ``paths`` that import PyAV at module level: without PyAV their collection
    fails and stops the whole pytest run, so the tests phase ignores them (and says so). The package
    imports PyAV lazily, so today no test file should need this; it guards against regressions."""
    found = []
    for p in paths:
        root = REPO / p if not Path(p).is_absolute() else Path(p)
        files = sorted(root.rglob("test_*.py")) if root.is_dir() else [root]
        found += [str(f.relative_to(REPO) if f.is_relative_to(REPO) else f) for f in files
                  if f.suffix == ".py" and _NEEDS_AV.search(f.read_text())]
    return found


def default_workers() -> int:
    """xdist workers: the cores less two (compilers and the driver need some), 1 to 12."""
    return max(1, min(12, (os.cpu_count() or 1) - 2))


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def _phase_env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _load(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, result: Dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(path)


class GpuCheck:
    """The phases of one run; state lives in ``out/results.json``."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.t0 = time.time()
        self.phases: List[Dict[str, Any]] = []
        self.out: Optional[Path] = Path(args.out) if args.out else None
        self.env: Dict[str, Any] = {}
        self.csrc_ok = False
        self.run_name = "gpu_check"
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # logs before the output folder is known

    # ------------------------------------------------------------------ bookkeeping
    def left(self) -> float:
        return self.args.budget - (time.time() - self.t0)

    def log(self, name: str) -> Path:
        path = (self.out or self.scratch) / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, phase: Dict[str, Any]) -> None:
        self.phases.append(phase)
        print(f"[gpu_check] {phase['name']}: {phase['status']} in {phase.get('wall_s', 0):.1f} s "
              f"(limit {phase.get('limit_s', '-')} s) {phase.get('note', '')}", flush=True)
        if self.out is not None:
            path = self.out / "results.json"
            result = _load(path) or dict(env=self.env, ceilings={}, quick=self.args.smoke, wall_s=0.0, rows=[])
            result["gpu_check"] = dict(command=" ".join(["python -m benchmarks.gpu_check"] + self.args.argv),
                                       budget_s=self.args.budget, wall_s=round(time.time() - self.t0, 1),
                                       smoke=self.args.smoke, phases=self.phases)
            _save(path, result)
            self.pack()

    def pack(self) -> None:
        """Pack the output folder into ``--archive`` (after every phase: a run killed later still
        leaves an archive of what it measured)."""
        if self.args.archive and self.out is not None:
            archive = Path(self.args.archive)
            archive.parent.mkdir(parents=True, exist_ok=True)
            tmp = archive.with_name(archive.name + ".tmp")
            inside = archive.resolve().parent == self.out.resolve()   # never pack the previous archive
            skip = f"{self.run_name}/{archive.name}"
            with tarfile.open(tmp, "w:gz") as tar:   # unpacks as <device>-<date>/
                tar.add(self.out, arcname=self.run_name, filter=lambda ti: None if inside and ti.name == skip else ti)
            tmp.replace(archive)

    def limit(self, name: str) -> float:
        return min(self.args.limits[name], self.left())

    # ------------------------------------------------------------------ phases
    def phase_env(self, limit: float) -> Dict[str, Any]:
        log = self.log("env")
        t0 = time.time()
        link_note = None
        probe = [sys.executable, "-c", _KERNELS_HERE, str(REPO)]
        if run_limited(probe, log, limit, _phase_env())["status"] != "ok":
            # a bare checkout (no install, no videogpt_fast/kernels link): link kernels/ where setup.py's
            # package_dir puts it, as a development checkout has it (videogpt_fast imports its kernels)
            link = REPO / "videogpt_fast" / "kernels"
            if not link.exists() and not link.is_symlink():
                link.symlink_to(Path("..") / "kernels", target_is_directory=True)
                link_note = "linked videogpt_fast/kernels -> ../kernels (a bare checkout)"
            again = run_limited(probe, log, max(limit - (time.time() - t0), 1), _phase_env())
            if again["status"] != "ok":
                return dict(again, wall_s=round(time.time() - t0, 1), note=_tail(log.read_text()))
        ph = run_limited([sys.executable, "-c", _ENV_CODE, self.args.device], log,
                         max(limit - (time.time() - t0), 1), _phase_env())
        ph["wall_s"] = round(time.time() - t0, 1)
        text = log.read_text()
        found = re.findall(r"^ENV_JSON (.*)$", text, flags=re.M)
        if ph["status"] == "ok" and found:
            self.env = json.loads(found[-1])
            ph["note"] = (f"{link_note + ' | ' if link_note else ''}{self.env.get('device_name')} | "
                          f"torch {self.env.get('torch')} | triton {self.env.get('triton')} | "
                          f"{self.env.get('cpu_count')} cores")
        elif ph["status"] == "ok":
            ph.update(status="failed", note="no ENV_JSON line in the log")
        else:
            ph["note"] = _tail(text)
        return ph

    def phase_build(self, limit: float) -> Dict[str, Any]:
        if self.args.device != "cuda":
            return dict(status="skipped", note="the CUDA extension is built only with --device cuda")
        log = self.log("build")
        ph = run_limited([sys.executable, "-c", _BUILD_CODE], log, limit, _phase_env())
        text = log.read_text()
        skipped = re.findall(r"^BUILD_SKIPPED (.*)$", text, flags=re.M)
        if skipped:
            ph.update(status="skipped", note=skipped[-1])
        self.csrc_ok = ph["status"] == "ok" and not skipped
        if ph["status"] in ("failed", "timeout"):
            ph["note"] = _tail(text)
        return ph

    def phase_tests(self, limit: float) -> Dict[str, Any]:
        log = self.log("tests")
        plugins = self.env.get("pytest_plugins", {})
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfEs"]
        notes = []
        if plugins.get("xdist") and self.args.workers > 1:
            cmd += ["-n", str(self.args.workers)]
        else:
            notes.append("one worker" + ("" if plugins.get("xdist") else " (pytest-xdist not installed)"))
        if plugins.get("pytest_timeout"):
            cmd += ["--timeout", str(self.args.test_timeout)]
        else:
            notes.append("no per-test timeout (pytest-timeout not installed)")
        paths = self.args.tests or (SMOKE_TESTS if self.args.smoke else ["tests"])
        if self.env.get("av_importable") is False:
            skipped = files_needing_av(paths)
            cmd += [f"--ignore={f}" for f in skipped]
            if skipped:
                notes.append(f"PyAV missing: {len(skipped)} files not collected ({', '.join(Path(f).name for f in skipped)})")
        cmd += paths
        ph = run_limited(cmd, log, limit, _phase_env())
        counts = parse_pytest_summary(log.read_text())
        ph["tests"] = counts
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if isinstance(v, int))
        if not counts:
            summary = "no pytest summary (killed before the end?)"
        with open(log, "a") as f:  # the log's last line: what a reader looks for
            f.write(f"[gpu_check] tests: {summary}; wall {ph['wall_s']:.1f} s (limit {ph['limit_s']} s), "
                    f"status {ph['status']}\n")
        ph["note"] = "; ".join([summary] + notes)
        return ph

    def phase_bench(self, name: str, limit: float) -> Dict[str, Any]:
        log = self.log(name)
        cmd = [sys.executable, "-m", "benchmarks.run", "--device", self.args.device, "--merge", "--no-report",
               "--out", str(self.out), "--only", *BENCH_ONLY[name],
               "--csrc", "load" if self.csrc_ok else "skip"]
        if self.args.smoke:
            cmd += ["--quick", *BENCH_TIMING["smoke"]]
        else:
            cmd += BENCH_TIMING.get(name, BENCH_TIMING["default"])
        ph = run_limited(cmd, log, limit, _phase_env())
        rows = [r for r in _load(self.out / "results.json").get("rows", [])
                if any(o in r["name"] for o in BENCH_ONLY[name])]
        errors = sum(r["status"] == "error" for r in rows)
        ph["note"] = f"{len(rows)} rows, {errors} errors"
        if ph["status"] == "timeout":
            ph["note"] += " (killed at its limit: the rows measured so far are kept)"
        elif ph["status"] == "failed" and errors == 0:
            ph["note"] += "; " + _tail(log.read_text())
        return ph

    # ------------------------------------------------------------------ driver
    def run(self) -> int:
        selected = [name for name, _ in PHASES if name in self.args.phases]
        for name in selected:
            limit = self.limit(name)
            if limit < 5:
                ph = dict(status="skipped", note=f"the {self.args.budget:.0f} s budget is spent")
            elif name == "env":
                ph = self.phase_env(limit)
            elif name == "build":
                ph = self.phase_build(limit)
            elif name == "tests":
                ph = self.phase_tests(limit)
            else:
                ph = self.phase_bench(name, limit)
            if name == "env":
                dev = "cpu" if self.args.device == "cpu" else _slug(self.env.get("device_name", "cuda"))
                self.run_name = f"{dev}{'-smoke' if self.args.smoke else ''}-{datetime.date.today().isoformat()}"
                if self.out is None:
                    self.out = REPO / "benchmarks" / "results" / self.run_name
            if self.out is not None:
                self.out.mkdir(parents=True, exist_ok=True)
                stale = self.out / "results.json"
                if name == "env" and stale.exists():  # an earlier check's results: kept aside, not merged into
                    stale.replace(self.out / f"results.before-{time.strftime('%Y%m%d-%H%M%S')}.json")
                if name == "env":  # the log went to /tmp before the folder was known
                    _move_log(self.scratch / "logs" / "env.log", self.log("env"))
            ph = dict(name=name, **ph)
            self.record(ph)
            if name == "env" and ph["status"] not in ("ok",):
                print("[gpu_check] the environment phase failed: nothing else can run", file=sys.stderr)
                break
        return self.finish()

    def finish(self) -> int:
        result = _load(self.out / "results.json") if self.out else {}
        if self.out is not None and result.get("rows"):
            from .report import write_plots, write_report
            try:
                write_report(result, self.out / "report.md")
                write_plots(result, self.out)
            except Exception as e:  # the table below is what matters; say why the extras are missing
                print(f"[gpu_check] report/plots not written: {type(e).__name__}: {e}", file=sys.stderr)
        table = compact_table(result or dict(gpu_check=dict(phases=self.phases)))  # printed last
        if self.out is not None:
            (self.out / "summary.txt").write_text(table + "\n")
            if self.args.archive:
                self.pack()
                print(f"[gpu_check] packed {self.out} into {self.args.archive}")
        print(table)
        bad_phase = any(p["status"] in ("failed", "timeout") or (p["name"] == "env" and p["status"] != "ok")
                        for p in self.phases)
        bad_row = any(r["status"] == "error" for r in result.get("rows", []))
        print(f"[gpu_check] {time.time() - self.t0:.0f} s; results in {self.out}", flush=True)
        return 1 if bad_phase or bad_row else 0


def _tail(text: str, n: int = 200) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[-n:]


def _move_log(src: Path, dst: Path) -> None:
    if src.exists() and src.resolve() != dst.resolve():
        dst.write_text(src.read_text())
        src.unlink()


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and one test file (the pipeline's own test)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<device>-<date>)")
    p.add_argument("--archive", default=None, help="also pack the output folder into this .tar.gz")
    names = [n for n, _ in PHASES]
    p.add_argument("--phases", nargs="+", choices=names, default=names, help="phases to run (in the fixed order)")
    p.add_argument("--limit", action="append", default=[], metavar="PHASE=SECONDS",
                   help="override a phase's time limit (repeatable); defaults: "
                        + ", ".join(f"{n}={s}" for n, s in PHASES))
    p.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (caps every phase)")
    p.add_argument("--workers", type=int, default=default_workers(), help="pytest-xdist workers for the tests")
    p.add_argument("--test-timeout", type=int, default=60, help="pytest-timeout seconds per test")
    p.add_argument("--tests", nargs="+", default=None, help="test paths for the tests phase (default tests/)")
    args = p.parse_args(argv)
    args.argv = argv
    args.limits = dict(PHASES)
    for item in args.limit:
        name, _, secs = item.partition("=")
        if name not in args.limits or not secs:
            p.error(f"--limit {item}: expected PHASE=SECONDS with PHASE one of {', '.join(names)}")
        try:
            args.limits[name] = float(secs)
        except ValueError:
            p.error(f"--limit {item}: {secs!r} is not a number of seconds")
        if not 0 < args.limits[name] < math.inf:
            p.error(f"--limit {item}: seconds must be a finite number > 0")
    if not 0 < args.budget < math.inf:
        p.error(f"--budget must be a finite number of seconds > 0, got {args.budget}")
    for flag, path in (("--out", args.out), ("--archive", args.archive)):
        if path and Path(path).exists() and Path(path).is_dir() != (flag == "--out"):
            p.error(f"{flag} {path}: exists and is {'not ' if flag == '--out' else ''}a directory")
    if "env" not in args.phases:
        p.error("--phases must include env (it finds the device and the output folder)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    return GpuCheck(parse_args(argv)).run()


if __name__ == "__main__":
    raise SystemExit(main())
