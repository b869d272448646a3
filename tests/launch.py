"""The one place the tests launch MPI jobs from: which launcher, with what environment, and the
checks every MPI test shares.

    from launch import MPIEXEC, ENV, mpirun, check_run, assert_matches_simulation
    p, seconds = mpirun(2, sys.executable, str(MPI_SCRIPTS / "fault.py"), ...)
    assert_matches_simulation(check_run(2, model="gpt2", tokens=37, segment_size=4), layers=2)

MPIEXEC is the test venv's own `mpiexec` (the mpich wheel), else the one on PATH; the Open MPI
tier (`tools/test_openmpi.sh`) sets PRISM_TEST_MPIEXEC to Open MPI's `mpirun`. Open MPI needs
two things MPICH does not: `--oversubscribe` to start more ranks than this machine has cores (the
suite runs 3 and 4 ranks on 2 cores), and, run as root (CI, containers),
OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 (MPICH ignores both).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent  # the checkout
MPI_SCRIPTS = TESTS / "mpi"  # the programs the tests run under mpiexec
BIN = Path(sys.executable).parent
MPIEXEC = (os.environ.get("PRISM_TEST_MPIEXEC")
           or (str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else shutil.which("mpiexec")))
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
           OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


@functools.lru_cache(maxsize=None)
def launcher_name() -> str:
    """'Open MPI', 'MPICH' (Hydra) or 'unknown', from the launcher's --version."""
    if MPIEXEC is None:
        return "none"
    try:
        out = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=30, env=ENV).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "Open MPI" in out or "OpenRTE" in out:
        return "Open MPI"
    return "MPICH" if "HYDRA" in out or "MPICH" in out else "unknown"


def launch_flags() -> list[str]:
    return ["--oversubscribe"] if launcher_name() == "Open MPI" else []


def mpirun(n, *args, timeout=240, mpmd=None, env=None):
    """Run `MPIEXEC -n n args...` (and an MPMD part `: -n k more...`); (CompletedProcess, seconds)."""
    cmd = [MPIEXEC, *launch_flags(), "-n", str(n), *args]
    if mpmd:
        cmd += [":", "-n", str(mpmd[0]), *mpmd[1:]]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV if env is None else env)
    return p, time.monotonic() - t0


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_run(n, **kw) -> dict:
    """tests/mpi/check_run.py on n ranks: one request served over the ranks and, on rank 0, the same
    request simulated in one process and unpartitioned; the differences and the bytes counted."""
    args = []
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}", json.dumps(v) if isinstance(v, dict) else str(v)]
    p, _ = mpirun(n, sys.executable, str(MPI_SCRIPTS / "check_run.py"), *args)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def assert_matches_simulation(r, layers):
    """Distributed and simulated runs do the same float32 operations on the same rows, apart from
    the order of some sums (per-token layers on n_p rows instead of N, two softmax blocks merged
    by log-sum-exp instead of one), so they agree to a few float32 ulps per layer: the bound is
    1e-5 of the output's scale per layer. With quantized summaries those last bits may round a
    value on a boundary to the other code, so the bound adds `err_step`, the output's change under
    one code step in every quantized exchange (measured by check_run.py on the simulation)."""
    assert r["err_sim"] <= 1e-5 * max(1.0, r["scale"]) * layers + r["err_step"], r
    assert r["bytes"] == [r["expected_bytes"]] * layers  # the cost model's formula, per layer


def assert_ids_match_simulation(r, layers, n):
    """Greedy ids of check_run.py's run against its simulation (`assert_greedy_ids_agree`), and
    the bytes the cost model predicts."""
    assert len(r["ids"][0]) == n and len(r["margins_sim"]) == n, r
    budget = 1e-5 * max(1.0, r["logit_scale"]) * layers + r["err_step"]
    assert_greedy_ids_agree(r["ids"], r["ids_sim"], r["margins_sim"], budget)
    assert r["bytes"] == [r["expected_bytes"]] * layers


def assert_greedy_ids_agree(ids, ids_sim, margins, budget):
    """Greedy ids `[B][n]`: each token equals the simulation's where the simulated top-2 logit
    margin (least over the batch) exceeds the logit budget; at a near-tie either token is right,
    and from a differing one on the two runs continue different prefixes."""
    for i, (a, b, margin) in enumerate(zip(zip(*ids), zip(*ids_sim), margins)):
        if margin > budget:
            assert a == b, (i, margin, budget, ids, ids_sim)
        elif a != b:
            return


def greedy_margins(model, run):
    """(run()'s Result, the top-2 logit margin at each token it generated (least over the batch),
    the largest logit): read at the model's LM head, which decoding calls once per token
    (`hf.model.decode_tokens`: logits `[B, V]`)."""
    logits = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: logits.append(o.float()))
    try:
        res = run()
    finally:
        hook.remove()
    import torch

    values = torch.stack(logits[: len(res.token_ids[0])])  # [n, B, V]
    top2 = values.topk(2, -1).values
    return res, (top2[..., 0] - top2[..., 1]).amin(-1).tolist(), values.abs().max().item()
