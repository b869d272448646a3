"""The Triton kernels compiled ahead of time for sm_90 (H100/H200) and sm_87 (Jetson Orin), no GPU.

Every autotune config that survives pruning on each chip (`kernel_compile.jobs()`) is compiled to
a cubin by `tests/kernel_compile.py` in a subprocess (it must run without the TRITON_INTERPRET
that conftest sets), and each must compile, fit the chip's shared memory, match the launcher's
shared-memory estimate and stay under the spill bound (`kernel_compile.problems`). A tile that
overflows shared memory must fail that same check. Compiles land in Triton's cache, so a rerun
reads cubins; a cold run is about 100 compiles.
"""

import json
import os
import subprocess
import sys

import pytest

import kernel_compile as kc

from launch import TESTS as HERE  # noqa: E402  (tests/kernel_compile.py is there)
JOBS = kc.jobs()
# Over sm_90's 232,448 B: 2 B * 128 * (64 + 2 * 64 * 8) = 278,528 B of q and eight K/V stages (on
# sm_90 the estimate of 64-row fp16 tiles is what Triton allocates, within 1%).
BROKEN = {"kernel": "prism_attention", "chip": "sm_90", "dtype": "float16", "D": 128, "tile": [64, 64, 4, 8],
          "variant": {}}


def _compile(jobs):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the same prism_ops as this process
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its default
    proc = subprocess.run([sys.executable, str(HERE / "kernel_compile.py")], input=json.dumps(jobs), env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"kernel_compile.py failed:\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    return {kc.job_id(r): r for r in report["results"]}


@pytest.fixture(scope="module")
def compiled():
    return _compile(JOBS + [BROKEN])


@pytest.mark.parametrize("job", JOBS, ids=[kc.job_id(j) for j in JOBS])
def test_config_compiles_and_fits(compiled, job):
    result = compiled[kc.job_id(job)]
    assert kc.problems(result) == [], f"{kc.job_id(job)}: {kc.problems(result)}"


def test_too_much_shared_memory_fails_the_check(compiled):
    assert kc.estimate(BROKEN) > kc.CHIPS["sm_90"]["max_shared_mem"]
    found = kc.problems(compiled[kc.job_id(BROKEN)])
    assert any("exceeds sm_90's" in p or "does not compile" in p for p in found), found


def test_pruning_drops_what_does_not_fit_and_hopper_8_warp_small_tiles():
    from prism_ops.kernels import prism_attention as pa

    assert (64, 64, 4, 5) not in pa.select_tiles(128, 2, False, 166912, (8, 7))
    assert pa.select_tiles(128, 2, False, 1024, (8, 7)) == [min(pa.candidate_tiles(128, 2, False),
                                                                 key=lambda t: pa.shared_memory_estimate(t, 128, 2))]
    for chip, spec in kc.CHIPS.items():
        for job in (j for j in JOBS if j["chip"] == chip and j["kernel"] == "prism_attention"):
            assert kc.estimate(job) <= spec["max_shared_mem"], kc.job_id(job)
    hopper = [j for j in JOBS if j["chip"] == "sm_90" and j["kernel"] == "prism_attention"]
    assert not [j for j in hopper if j["tile"][2] == 8 and j["tile"][0] * j["tile"][1] < 128 * 128]
    orin = [tuple(j["tile"]) for j in JOBS if j["chip"] == "sm_87" and j["D"] == 128 and j["dtype"] == "float16"]
    assert (128, 64, 8, 3) in orin  # the Hopper-only prune leaves Ampere alone
    assert pa.select_tiles(128, 2, False, 232448, (9, 0), pinned=True) == pa.select_tiles(128, 2, False, 232448,
                                                                                          (9, 0))[:1]
