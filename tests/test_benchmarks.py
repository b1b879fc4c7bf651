"""The benchmark suite's machinery (not its timings): checking implementations against the
float64 truth or the reference, recording errors and skips, incremental results, the GPU check
command's phases (on CPU), the report and README table, and the adapter that runs the original
``videogpt`` package beside ours when it is installed."""
from __future__ import annotations

import argparse
import json
import re
import sys
import types

import pytest
import torch

from benchmarks import original as O
from benchmarks import report, run
from benchmarks.harness import Case, rel_error_check
from videogpt_fast.kernels import reference as R

CPU = torch.device("cpu")


def _case(**impls) -> Case:
    x = torch.arange(6.0)
    return Case("toy", "kernels", dict(N=6, shape=(2, 3)), "float32",
                impls={"reference": lambda: x * 2, **impls}, flops=12.0, bytes=48.0, items=6.0,
                check=rel_error_check(0.0), tolerance="rel<=0: exact", skipped={"triton": "no GPU here"})


def test_run_case_checks_times_and_records_errors_and_skips():
    x = torch.arange(6.0)
    rows = {r["impl"]: r for r in run.run_case(
        _case(good=lambda: x + x, wrong=lambda: x * 3, broken=lambda: 1 / 0), CPU, quick=True)}
    assert set(rows) == {"reference", "good", "wrong", "broken", "triton"}
    assert rows["good"]["status"] == "ok" and rows["good"]["check"] == "pass"
    assert rows["good"]["tolerance"] == "rel<=0: exact" and rows["good"]["first_call_ms"] > 0
    assert "check" not in rows["reference"]  # no truth: the reference is what the others are checked against
    assert rows["good"]["median_ms"] > 0 and rows["good"]["speedup_vs_reference"] > 0
    assert rows["good"]["tflops"] > 0 and rows["good"]["gbps"] > 0 and rows["good"]["throughput_unit"] == "items/s"
    assert rows["wrong"]["status"] == "error" and "check failed" in rows["wrong"]["error"]
    assert rows["wrong"]["check"] == "fail" and rows["wrong"]["tolerance"] == "rel<=0: exact"
    assert "median_ms" not in rows["wrong"]  # a wrong implementation is never timed
    assert rows["broken"]["status"] == "error" and "ZeroDivisionError" in rows["broken"]["error"]
    assert rows["triton"] == dict(name="toy", group="kernels", params=dict(N=6, shape=(2, 3)), dtype="float32",
                                  impl="triton", status="skipped", reason="no GPU here")


def _result(device="cuda"):
    x = torch.arange(6.0)
    case = _case(fast=lambda: x * 2, original=lambda: x * 2)
    rows = run.run_case(case, CPU, quick=True)
    for r in rows:  # make the ranking deterministic
        r["median_ms"] = dict(reference=4.0, fast=1.0, original=8.0).get(r["impl"], r.get("median_ms"))
        if r.get("median_ms"):
            r["speedup_vs_reference"] = 4.0 / r["median_ms"]
    env = dict(date="2026-11-23", torch=torch.__version__, triton="3.6.0", cuda="13.0", cuda_extension=False,
               cpu_count=16, platform="linux", device=device, device_name="NVIDIA H100 80GB HBM3",
               command="python -m benchmarks.run")
    return dict(env=env, ceilings=dict(matmul_tflops_float32=50.0, copy_gbps=2000.0), quick=False, rows=rows)


def test_readme_table_ranks_checked_fast_paths_and_compares_with_the_original():
    table = report.readme_table(_result(), "benchmarks/results/x/results.json")
    lines = [ln for ln in table.splitlines() if ln.startswith("| toy")]
    assert len(lines) == 1
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells[3] == "fast" and cells[5] == "4.00x" and cells[6] == "8.00x"  # never "original" or "reference"
    assert cells[7] == "-"  # no alternative (flash SDPA, FlexAttention) in this case
    res = _result()
    next(r for r in res["rows"] if r["impl"] == "fast")["speedup_vs_sdpa_flash_causal"] = 1.5
    row = next(ln for ln in report.readme_table(res, "x").splitlines() if ln.startswith("| toy"))
    assert [c.strip() for c in row.strip("|").split("|")][7] == "sdpa_flash_causal 1.50x"
    assert table.startswith(report.README_BEGIN) and table.endswith(report.README_END)


def test_report_files_and_readme_refuses_cpu_figures(tmp_path):
    res = _result("cpu")
    (tmp_path / "results.json").write_text(json.dumps(res, default=str))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nold\n{report.README_END}\nrest\n")
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "results.json"), "--readme", str(readme)])
    assert "old" in readme.read_text()
    assert "not measured" in (tmp_path / "report.md").read_text()
    res = _result("cuda")
    (tmp_path / "results.json").write_text(json.dumps(res, default=str))
    assert report.main([str(tmp_path / "results.json"), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "NVIDIA H100" in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert (tmp_path / "speedup.png").stat().st_size > 0


@pytest.mark.parametrize("kind, message", [
    ("missing", "No such file"), ("corrupt", "not JSON"), ("list", "not a benchmark result"),
    ("gpu_check_env_failed", "env lacks device"), ("row_without_median", r"row 0 \(x \[triton\]\) ran but has no median_ms"),
    ("readme_without_markers", "section to replace"),
])
def test_report_cli_bad_results_exit_status_2(kind, message, tmp_path, capsys):
    """One error line and exit status 2 (each was a traceback: FileNotFoundError, JSONDecodeError,
    TypeError, KeyError 'device_name', KeyError 'median_ms' in the README table, ValueError)."""
    path, readme = tmp_path / "results.json", tmp_path / "README.md"
    readme.write_text("no table here\n")
    res = _result("cuda")
    if kind == "gpu_check_env_failed":   # what gpu_check records when its environment phase fails
        res = dict(env={}, ceilings={}, rows=[], gpu_check=dict(command="x", phases=[]))
    elif kind == "row_without_median":
        res["rows"] = [dict(res["rows"][0], name="x", impl="triton", status="ok")]
        res["rows"][0].pop("median_ms", None)
    text = {"corrupt": "{bad", "list": "[]"}.get(kind, json.dumps(res, default=str))
    if kind != "missing":
        path.write_text(text)
    with pytest.raises(SystemExit) as exc:
        report.main([str(path)] + (["--readme", str(readme)] if kind == "readme_without_markers" else []))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and re.search(message, err) and "Traceback" not in err


# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fake_original(monkeypatch):
    """A stand-in ``videogpt`` package with the original's module layout, built from ours (the
    real one cannot be installed here); it exercises the adapter's plumbing, not the original's
    numbers (those are pinned by the reference fixtures)."""
    import videogpt_fast
    from videogpt_fast import attention, vqvae

    class OriginalLikeVideoGPT(videogpt_fast.VideoGPT):
        """The original's constructor: the VQ-VAE from ``VQVAE.load_from_checkpoint(args.vqvae)``."""
        def __init__(self, args):
            super().__init__(args, vqvae=vqvae.VQVAE.load_from_checkpoint(args.vqvae))

    gpt = types.ModuleType("videogpt.gpt")
    gpt.VideoGPT = OriginalLikeVideoGPT
    pkg = types.ModuleType("videogpt")
    pkg.attention, pkg.vqvae, pkg.gpt = attention, vqvae, gpt
    pkg.VQVAE, pkg.VideoGPT = videogpt_fast.VQVAE, videogpt_fast.VideoGPT
    for name, mod in (("videogpt", pkg), ("videogpt.attention", attention), ("videogpt.vqvae", vqvae),
                      ("videogpt.gpt", gpt)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(O, "_CACHE", {})
    yield pkg
    O._CACHE.clear()


def test_original_missing_is_recorded_with_the_reason(monkeypatch):
    monkeypatch.setattr(O, "_CACHE", {})
    monkeypatch.setitem(sys.modules, "videogpt", None)  # import fails as when not installed
    case = _case()
    O.add_original(case, lambda pkg: (lambda: None))
    assert "original" not in case.impls and "not importable" in case.skipped["original"]


def test_original_adapter_builds_equivalent_modules(fake_original, tmp_path):
    from videogpt_fast import VQVAE, VideoGPT
    torch.manual_seed(0)
    vq = VQVAE(argparse.Namespace(embedding_dim=8, n_codes=16, n_hiddens=16, n_res_layers=1,
                                  downsample=[2, 2, 2], sequence_length=4, resolution=8)).eval()
    vq.codebook._need_init = False
    x = torch.rand(2, 3, 4, 8, 8) - 0.5
    orig = O.vqvae(fake_original, vq)
    assert orig is not vq and not orig.training
    with torch.no_grad():
        assert torch.equal(orig.encode(x), vq.encode(x))

    prior = VideoGPT(dict(vqvae="unused", n_cond_frames=0, class_cond=False, hidden_dim=24, heads=2, layers=1,
                          dropout=0.0, attn_type="full", attn_dropout=0.0), vqvae=vq).eval()
    orig_prior = O.videogpt(fake_original, prior)  # its VQ-VAE handed over through load_from_checkpoint
    codes = torch.randint(0, 16, (2, *vq.latent_shape))
    emb = vq.codebook.dictionary_lookup(codes)
    with torch.no_grad():
        torch.testing.assert_close(orig_prior(emb, codes, {})[0], prior(emb, codes, {})[0])

    e, xs = torch.randn(16, 8), torch.randn(37, 8)
    assert torch.equal(O.codebook_search(fake_original, e)(xs), R.codebook_nearest_reference(xs, e))
    q, k, v = (torch.randn(2, 2, 3, 4, 5, 6) for _ in range(3))
    for d in (2, 3, 4):
        torch.testing.assert_close(O.axial_attention(fake_original, 3, d)(q, k, v),
                                   R.axial_attention_reference(q, k, v, d))


def test_cases_get_an_original_implementation_when_the_package_imports(fake_original):
    from benchmarks.cases_kernels import axial_cases
    from benchmarks.harness import Settings
    case = next(axial_cases(Settings(CPU, quick=True)))
    assert "original" in case.impls, case.skipped
    rows = {r["impl"]: r for r in run.run_case(case, CPU, quick=True)}
    assert rows["original"]["status"] == "ok" and rows["original"]["check"] == "pass"


def test_baselines_get_their_own_speedup_column(tmp_path):
    x = torch.arange(6.0)
    case = _case(fast=lambda: x * 2, dense=lambda: x * 2)
    case.baselines = ("dense",)
    rows = {r["impl"]: r for r in run.run_case(case, CPU, quick=True)}
    assert "speedup_vs_dense" in rows["fast"] and "speedup_vs_dense" not in rows["dense"]
    assert rows["fast"]["speedup_vs_dense"] == pytest.approx(rows["dense"]["median_ms"] / rows["fast"]["median_ms"])
    assert report._others(rows["fast"]).startswith("vs dense: ")


def test_dense_sdpa_bar_is_named_by_backend():
    from benchmarks.cases_kernels import _dense_sdpa
    fn = _dense_sdpa(CPU, torch.float32)
    q = torch.randn(1, 2, 16, 8)
    assert fn.__name__ == "sdpa_dense_causal"
    torch.testing.assert_close(fn(q, q, q), torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))


def test_merge_results_replaces_same_rows_and_keeps_commands():
    old = _result()
    new = _result()
    new["env"]["command"] = "python -m benchmarks.run --group models --merge"
    new["rows"] = [dict(r, median_ms=0.5) for r in new["rows"] if r["impl"] == "fast"] + [
        dict(name="other", group="models", params={}, dtype="float32", impl="reference", status="ok", median_ms=2.0)]
    new["wall_s"] = 1.0
    merged = run.merge_results(old, new)
    fast = [r for r in merged["rows"] if r["impl"] == "fast"]
    assert len(fast) == 1 and fast[0]["median_ms"] == 0.5
    assert {r["name"] for r in merged["rows"]} == {"toy", "other"}
    assert len(merged["rows"]) == len(old["rows"]) + 1
    assert merged["env"]["commands"] == ["python -m benchmarks.run", "python -m benchmarks.run --group models --merge"]
    other_device = dict(new, env=dict(new["env"], device_name="NVIDIA H200"))
    with pytest.raises(ValueError, match="--merge"):
        run.merge_results(old, other_device)


def test_case_groups_select_modules():
    from benchmarks.harness import Settings, all_cases
    names = {c.name for c in all_cases(Settings(CPU, quick=True), ["kernels"])}
    assert names and all(n.startswith(("codebook", "axial", "blocksparse", "decode")) for n in names)


# ----------------------------------------------------------------------------------------------
# checks against the truth
def test_truth_checks_every_impl_with_overrides_and_scaled_timing():
    x = torch.arange(1.0, 7.0)
    case = Case("toy", "kernels", {}, "float32", truth=lambda: x.double() * 2,
                impls={"reference": lambda: x * 2 * (1 + 1e-4), "fast": lambda: x * 2, "loose": lambda: x * 2.01},
                check=rel_error_check(1e-6), tolerance="rel<=1e-06: tight")
    case.impl_checks["loose"] = (rel_error_check(1e-2), "rel<=1e-02: loose")
    case.time_scale["fast"] = (1000.0, "timed over a part, scaled")
    rows = {r["impl"]: r for r in run.run_case(case, CPU, quick=True)}
    assert rows["reference"]["status"] == "error" and "relative error" in rows["reference"]["error"]  # checked too
    assert rows["fast"]["check"] == "pass" and "max relative error 0.0e+00" in rows["fast"]["check_detail"]
    assert rows["fast"]["timing_note"] == "timed over a part, scaled" and rows["fast"]["median_ms"] > 0
    assert rows["loose"]["check"] == "pass" and rows["loose"]["tolerance"] == "rel<=1e-02: loose"


def test_rel_error_check_rejects_nan_and_wrong_shapes():
    chk = rel_error_check(1e-3, ("out",))
    assert "1.0e-04" in chk(torch.ones(4), torch.ones(4) * (1 + 1e-4))
    with pytest.raises(AssertionError, match="non-finite"):
        chk(torch.ones(4), torch.tensor([1.0, float("nan"), 1.0, 1.0]))
    with pytest.raises(AssertionError, match="shape"):
        chk(torch.ones(4), torch.ones(5))
    with pytest.raises(AssertionError, match="relative error"):
        chk(torch.ones(4), torch.ones(4) * 1.01)


@pytest.mark.parametrize("exact", [False, True], ids=["bound", "exact"])
def test_codes_check_rejects_out_of_range_wrong_count_and_float_codes(exact):
    """-1 passed the rounding-bound check (e[-1] is the last code: gap 0, 'a near-tie'); K, a wrong count
    and float codes failed with IndexError / RuntimeError, or passed (float64 codes equal to the truth)."""
    from benchmarks.cases_kernels import codebook_truth, codes_check
    g = torch.Generator().manual_seed(3)
    x, e = torch.randn(40, 4, generator=g), torch.randn(5, 4, generator=g)
    truth = codebook_truth(x, e)
    chk, _ = codes_check(x, e, exact=exact)
    assert chk(truth, truth.clone()).startswith("0 of 40")
    last = truth.clone()
    last[0] = 4
    bad_minus = torch.where(last == 4, -1, last)
    for out, message in ((bad_minus, r"in \[0, 5\), got \[-1"), (torch.where(last == 4, 5, last), r"got \[0, 5\]"),
                         (truth[:-1], "40 integers"), (truth.double(), "40 integers")):
        with pytest.raises(AssertionError, match=message):
            chk(truth, out)


def _near_tie_codebook(dtype):
    """x = 0 between codes 0 and 1 at distances 1 and 1 + 1e-4 (a near-tie), code 2 far away."""
    x = torch.zeros(3, 4, dtype=dtype)
    x[1, 0], x[2, 0] = 5.0, -5.0
    e = torch.tensor([[1.0, 0, 0, 0], [0, 1.0001, 0, 0], [5.0, 0, 0, 0], [-5.0, 0, 0, 0]]).to(dtype)
    return x, e


def test_codes_check_against_the_float64_argmin_with_the_rounding_bound():
    from benchmarks.cases_kernels import codebook_truth, codes_check, rounding_bound
    x, e = _near_tie_codebook(torch.bfloat16)
    truth = codebook_truth(x, e)
    assert truth.tolist() == [0, 2, 3]
    check, tol = codes_check(x, e, exact=False)
    assert tol.startswith("ties<=bound:") and "bfloat16" in tol
    assert check(truth, truth) == "0 of 3 codes differ"
    # bf16 rounds 1.0001 to 1: picking code 1 for x = 0 is a near-tie within the bound
    assert "1 of 3 codes differ, all near-ties" in check(truth, torch.tensor([1, 2, 3]))
    with pytest.raises(AssertionError, match="beyond the rounding bound"):
        check(truth, torch.tensor([0, 0, 3]))  # code 0 for x = 5e_0 is 16 farther: no tie
    c16, _ = rounding_bound(torch.bfloat16, 4)
    c32, _ = rounding_bound(torch.float32, 4)
    assert c16 == pytest.approx(5 * 2.0 ** -8 + 4 * 2.0 ** -24) and c32 < 1e-5
    x32, e32 = _near_tie_codebook(torch.float32)
    exact, tol = codes_check(x32, e32, exact=True)
    assert tol.startswith("exact:")
    with pytest.raises(AssertionError, match="exact required"):
        exact(codebook_truth(x32, e32), torch.tensor([1, 2, 3]))


def test_codebook_case_fp32_certified_triton_exact_formula_paths_within_bound():
    """fp32: only the certified Triton search must equal the float64 codes exactly; the paths that
    evaluate the original's formula in fp32 (reference, torch, cuda, original) may differ on
    near-ties within the rounding bound (the H200 run of 2026-11-30: 1 of 65536 such codes)."""
    from benchmarks.cases_kernels import _codes_checks, codebook_cases
    from benchmarks.harness import Case, Settings
    case = next(codebook_cases(Settings(CPU, quick=True)))
    assert case.truth is not None and case.tolerance.startswith("ties<=bound")
    assert "torch" not in case.impl_checks and "reference" not in case.impl_checks
    rows = {r["impl"]: r for r in run.run_case(case, CPU, quick=True, min_time_s=0, max_iters=1, warmup=0)}
    assert rows["torch"]["check"] == "pass" and rows["torch"]["tolerance"].startswith("ties<=bound")
    x, e = torch.randn(64, 8), torch.randn(16, 8)
    probe = Case("codebook_nearest", "kernels", {}, "float32", impls={})
    _codes_checks(probe, x, e, ["reference", "torch", "triton", "cuda", "original"])
    assert set(probe.impl_checks) == {"triton"} and probe.impl_checks["triton"][1].startswith("exact")
    probe16 = Case("codebook_nearest", "kernels", {}, "float16", impls={})
    _codes_checks(probe16, x.half(), e.half(), ["triton", "cuda"])
    assert probe16.impl_checks == {}


# ----------------------------------------------------------------------------------------------
# incremental results and the GPU check command
def test_results_json_is_written_after_every_case(tmp_path, monkeypatch):
    calls = []

    def fake_run_case(case, *args, **kwargs):
        calls.append(case.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the run were killed during the second case
        return [dict(name=case.name, group=case.group, params=case.params, dtype=case.dtype, impl="reference",
                     status="ok", median_ms=1.0)]
    monkeypatch.setattr(run, "run_case", fake_run_case)
    monkeypatch.setattr(run, "measure_ceilings", lambda device, quick: dict(matmul_tflops_float32=1.0, copy_gbps=1.0))
    with pytest.raises(KeyboardInterrupt):
        run.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--group", "kernels", "--no-report"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in saved["rows"]] == calls[:1]


def test_gpu_check_parses_pytest_summaries():
    from benchmarks.gpu_check import parse_pytest_summary
    text = ("....F.\nFAILED tests/test_a.py::test_x - AssertionError: no\nERROR tests/test_b.py::test_y\n"
            "== 2 failed, 50 passed, 3 skipped, 1 error in 95.12s (0:01:35) ==\n")
    got = parse_pytest_summary(text)
    assert got == dict(failed=2, passed=50, skipped=3, error=1, pytest_s=95.12,
                       failures=["tests/test_a.py::test_x", "tests/test_b.py::test_y"])
    assert parse_pytest_summary("....F..\n[ 62%]") == {}  # killed before its summary


def test_gpu_check_kills_a_phase_at_its_limit(tmp_path):
    from benchmarks.gpu_check import run_limited
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    ph = run_limited([sys.executable, "-c", code], tmp_path / "log", 1.5)
    assert ph["status"] == "timeout" and ph["wall_s"] < 30 and "killed at its 2 s limit" in (tmp_path / "log").read_text()
    ok = run_limited([sys.executable, "-c", "print('hi')"], tmp_path / "log2", 30)
    assert ok["status"] == "ok" and ok["rc"] == 0 and "hi" in (tmp_path / "log2").read_text()


def test_gpu_check_arguments():
    from benchmarks.gpu_check import PHASES, parse_args
    assert sum(s for _, s in PHASES) <= 480  # the whole check fits 8 minutes by default
    args = parse_args(["--limit", "tests=100", "--smoke", "--device", "cpu"])
    assert args.limits["tests"] == 100 and args.limits["build"] == dict(PHASES)["build"]
    for bad in (["--limit", "nope=3"], ["--limit", "tests=soon"], ["--phases", "tests"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


@pytest.mark.parametrize("bad, message", [
    (["--limit", "tests=-5"], "seconds must be a finite number > 0"),   # was: skipped as "budget is spent"
    (["--limit", "tests=nan"], "seconds must be a finite number > 0"),  # was: a ValueError traceback mid-run
    (["--limit", "env=0"], "seconds must be a finite number > 0"),
    (["--budget", "0"], "--budget must be a finite number of seconds > 0"),
    (["--budget", "nan"], "--budget must be a finite number of seconds > 0"),  # was: no cap at all
    (["--out", "FILE"], "exists and is not a directory"),   # was: NotADirectoryError traceback
    (["--archive", "DIR"], "exists and is a directory"),    # was: IsADirectoryError after the first phase
])
def test_gpu_check_rejects_bad_numbers_and_paths_with_exit_status_2(bad, message, tmp_path, capsys):
    from benchmarks.gpu_check import parse_args
    (tmp_path / "FILE").write_text("x")
    bad = [str(tmp_path / "FILE") if a == "FILE" else str(tmp_path) if a == "DIR" else a for a in bad]
    with pytest.raises(SystemExit) as exc:
        parse_args(["--device", "cpu"] + bad)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_gpu_check_smoke_on_cpu(tmp_path):
    """The pipeline end to end on CPU (env, tests on a one-test file, the codebook phase), with the
    incremental results.json, the phases' record, the archive and the table printed last."""
    from benchmarks import gpu_check
    tests = tmp_path / "t" / "test_one.py"
    tests.parent.mkdir()
    tests.write_text("import pytest\n\n@pytest.mark.gpu\ndef test_one():\n    assert True\n\n"
                     "def test_not_gpu():\n    assert True\n")
    out = tmp_path / "out"
    rc = gpu_check.main(["--device", "cpu", "--smoke", "--out", str(out), "--archive", str(tmp_path / "a.tar.gz"),
                         "--phases", "env", "tests", "codebook", "--tests", str(tests)])
    result = json.loads((out / "results.json").read_text())
    phases = {p["name"]: p for p in result["gpu_check"]["phases"]}
    assert list(phases) == ["env", "tests", "codebook"], phases
    assert phases["tests"]["tests"]["passed"] == 1 and phases["tests"]["tests"]["deselected"] == 1
    assert (out / "logs" / "tests.log").read_text().splitlines()[-1].startswith("[gpu_check] tests: 1 passed")
    rows = [r for r in result["rows"] if r["name"] == "codebook_nearest"]
    assert {r["impl"] for r in rows if r["status"] == "ok"} == {"reference", "torch"}
    assert all(r["check"] == "pass" and r["tolerance"] and r["first_call_ms"] > 0 for r in rows if r["status"] == "ok")
    assert rc == 0, phases
    table = (out / "summary.txt").read_text()
    assert "codebook_nearest" in table and "pass (ties<=bound)" in table
    import tarfile
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        names = tar.getnames()
    assert f"cpu-smoke-{result['env']['date'][:10]}/results.json" in names, names


def test_gpu_check_finds_test_files_that_need_pyav(tmp_path):
    from benchmarks.gpu_check import files_needing_av
    (tmp_path / "test_a.py").write_text("import torch\nfrom videogpt_fast.data import preprocess\n")  # lazy av
    (tmp_path / "test_b.py").write_text("import torch\n\ndef test_x():\n    import av  # lazy: fine\n")
    (tmp_path / "test_c.py").write_text("import av\n")
    assert [p.rsplit("/", 1)[-1] for p in files_needing_av([str(tmp_path)])] == ["test_c.py"]


def test_flexattention_uses_the_strided_layout():
    """FlexAttention's BlockMask from the layout computes the block-sparse function (CPU: eager,
    forward only; the compiled variant runs on CUDA only)."""
    from benchmarks.cases_kernels import flex_blocksparse
    from videogpt_fast.attention import StridedSparsityConfig
    layout = StridedSparsityConfig((2, 8, 8), 2, True, 16, 2).make_layout()
    fn, name = flex_blocksparse(layout, 16, 128, CPU)
    q, k, v = (torch.randn(1, 2, 128, 16) for _ in range(3))
    with torch.no_grad():
        out = fn(q, k, v)
    ref = R.blocksparse_attention_reference(q.double(), k.double(), v.double(), layout, 16, True)
    assert name == "flex_eager" and float((out.double() - ref).norm() / ref.norm()) < 1e-5


def test_gpu_check_budget_caps_phases(tmp_path, capsys):
    from benchmarks import gpu_check
    rc = gpu_check.main(["--device", "cpu", "--smoke", "--out", str(tmp_path), "--budget", "1"])
    phases = json.loads((tmp_path / "results.json").read_text())["gpu_check"]["phases"]
    assert rc == 1 and [p["name"] for p in phases] == ["env"]  # nothing runs without the environment
    assert phases[0]["status"] == "skipped" and "budget is spent" in phases[0]["note"]
    assert "budget is spent" in capsys.readouterr().out


def test_run_refuses_a_mismatched_merge_with_exit_status_2(tmp_path, capsys):
    old = _result()  # a run on an H100
    (tmp_path / "results.json").write_text(json.dumps(old, default=str))
    with pytest.raises(SystemExit) as exc:
        run.main(["--quick", "--device", "cpu", "--out", str(tmp_path), "--merge", "--only", "nothing"])
    assert exc.value.code == 2 and "--merge: results.json holds a run on NVIDIA H100" in capsys.readouterr().err


def test_gpu_check_env_probe_wants_the_kernels_of_this_checkout(tmp_path):
    """A bare checkout beside an editable install of another one imported that one's kernels (the
    probe passed, no link was made, the run measured other code); the probe now names the checkout."""
    import subprocess
    from benchmarks import gpu_check
    env = gpu_check._phase_env()
    for repo, rc in ((gpu_check.REPO, 0), (tmp_path, 1)):
        run = subprocess.run([sys.executable, "-c", gpu_check._KERNELS_HERE, str(repo)], cwd=gpu_check.REPO, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == rc, run.stderr[-500:]


def test_gpu_check_archive_inside_the_output_folder_does_not_pack_itself(tmp_path):
    """--archive OUT/a.tar.gz: every pack added the previous archive (nested, growing with each phase)."""
    import tarfile
    from benchmarks import gpu_check
    out = tmp_path / "out"
    gpu_check.main(["--device", "cpu", "--smoke", "--phases", "env", "--out", str(out), "--archive", str(out / "a.tar.gz")])
    with tarfile.open(out / "a.tar.gz") as tar:
        names = tar.getnames()
    assert any(n.endswith("/results.json") for n in names) and not any(n.endswith(".tar.gz") for n in names), names
