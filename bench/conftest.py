"""Collects pytest-benchmark timings and writes ratios against the baseline of the same run.

Every benchmark records (group, role, median seconds); at the end each group's candidate is
divided by its baseline and the table goes to bench/out/<file>.json and the terminal.
"""

import json
import os
import platform
from pathlib import Path

import pytest
import torch

RESULTS = {}  # group -> {role: median seconds}


@pytest.fixture
def record(benchmark):
    def _record(group, role, fn):
        benchmark.group = group
        benchmark.pedantic(fn, rounds=7, iterations=1, warmup_rounds=2)
        RESULTS.setdefault(group, {})[role] = benchmark.stats.stats.median

    return _record


def pytest_sessionfinish(session):
    if not RESULTS:
        return
    rows = []
    for group, r in RESULTS.items():
        if "baseline" in r and "candidate" in r:
            rows.append({"case": group, "baseline_s": r["baseline"], "candidate_s": r["candidate"],
                         "ratio": r["candidate"] / r["baseline"]})
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count()}
    (out / "prism_attention_cpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    if tr:
        tr.write_line("\ncandidate / baseline (median):")
        for r in rows:
            tr.write_line(f"  {r['case']:<40} {r['ratio']:.3f}  ({r['candidate_s'] * 1e3:.1f} ms / {r['baseline_s'] * 1e3:.1f} ms)")
