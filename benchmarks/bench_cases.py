"""pytest-benchmark front end of the case registry (the same cases ``python -m benchmarks.run`` runs).

    python -m pytest benchmarks/bench_cases.py --benchmark-group-by=param:case      # GPU: full sizes
    python -m pytest benchmarks/bench_cases.py -k codebook                            # one family

Every implementation of a case is one test in the case's group; it is checked against the case's
float64 truth (or the reference, computed in the same test) before it is timed. On a CPU-only machine the ``--quick`` sizes run.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.harness import Settings, all_cases, synchronize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SETTINGS = Settings(DEVICE, quick=DEVICE.type == "cpu")


def _ids():
    """(case id, impl) pairs, from one pass over the registry (cases are rebuilt per test)."""
    out = []
    for i, case in enumerate(all_cases(SETTINGS)):
        cid = f"{i:02d}-{case.name}-{case.dtype}"
        out += [(cid, impl) for impl in case.impls]
        out += [pytest.param(cid, impl, marks=pytest.mark.skip(reason=why))
                for impl, why in case.skipped.items() if ":" not in impl]
    return out


def _case(cid: str):
    index = int(cid.split("-", 1)[0])
    for i, case in enumerate(all_cases(SETTINGS)):
        if i == index:
            return case
    raise LookupError(cid)


@pytest.mark.parametrize("case_id,impl", _ids())
def test_case(benchmark, case_id, impl):
    case = _case(case_id)
    out = case.impls[impl]()
    if case.check is not None and f"{impl}:check" not in case.skipped:
        check = case.impl_checks.get(impl, (case.check, case.tolerance))[0]
        if case.truth is not None:
            check(case.truth(), out)
        elif impl != case.reference and case.reference in case.impls:
            check(case.impls[case.reference](), out)
    benchmark.group = case_id
    benchmark.extra_info.update(params={k: str(v) for k, v in case.params.items()}, impl=impl,
                                reference=case.reference, device=str(DEVICE))

    def run():
        case.impls[impl]()
        synchronize(DEVICE)
    benchmark.pedantic(run, rounds=5 if SETTINGS.quick else 20, warmup_rounds=1, iterations=1)
