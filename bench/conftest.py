"""Ratios against a baseline measured in the same test, rounds interleaved.

`compare(case, baseline, candidate)` alternates the two callables for ROUNDS rounds (after
warm-up) and keeps the ratio of medians, so drift on a shared machine hits both alike; the
candidate's timing also goes through pytest-benchmark for its usual statistics. At the end the
table goes to bench/out/prism_attention_cpu.json and the terminal.
"""

import json
import os
import platform
import time
from pathlib import Path

import pytest
import torch

ROUNDS, WARMUP = 15, 2
RESULTS = []


@pytest.fixture
def compare(benchmark):
    def _compare(case, baseline, candidate):
        for _ in range(WARMUP):
            baseline(), candidate()
        times = {"baseline": [], "candidate": []}
        for _ in range(ROUNDS):
            for role, fn in (("baseline", baseline), ("candidate", candidate)):
                t0 = time.perf_counter()
                fn()
                times[role].append(time.perf_counter() - t0)
        med = {role: sorted(t)[ROUNDS // 2] for role, t in times.items()}
        row = {"case": case, "baseline_s": med["baseline"], "candidate_s": med["candidate"],
               "ratio": med["candidate"] / med["baseline"]}
        RESULTS.append(row)
        benchmark.extra_info.update(row)
        benchmark.pedantic(candidate, rounds=3, iterations=1)
        return row

    return _compare


def pytest_sessionfinish(session):
    if not RESULTS:
        return
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "rounds": ROUNDS}
    (out / "prism_attention_cpu.json").write_text(json.dumps({"meta": meta, "rows": RESULTS}, indent=2))
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr:
        tr.write_line(f"\ncandidate / baseline, medians of {ROUNDS} interleaved rounds:")
        for r in RESULTS:
            tr.write_line(f"  {r['case']:<40} {r['ratio']:.3f}  ({r['candidate_s'] * 1e3:.1f} ms / {r['baseline_s'] * 1e3:.1f} ms)")
