"""Packaging: prism_ops imports without triton; kernels and distributed install inside prism_ops and shadow nothing."""

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_without_triton_and_torch_backend_works():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, prism_ops\n"
        "q = torch.randn(1, 2, 8, 16)\n"
        "out = prism_ops.partitioned_attention(q, q, q, num_partitions=2, segment_size=2)\n"
        "assert out.shape == q.shape\n"
        "try:\n"
        "    prism_ops.prism_attention(q, q, q, backend='triton')\n"
        "except ValueError as e:\n"
        "    assert 'needs the triton package' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('triton backend without triton did not raise')\n"
        "print('ok')\n"
    )
    res = run_python(code)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


ROOT = Path(__file__).resolve().parent.parent

# Where the package's kernels and MPI layer, and the top-level `kernels` (Hugging Face's, where
# this transformers depends on it), come from in one process.
WHERE = """
import importlib.util as u, json, sys
import prism_ops.kernels.prism_attention as k, prism_ops.distributed.comm as c
out = {"ours": [k.prism_attention_triton.__module__, c.Communicator.__module__], "kernels": None}
spec = u.find_spec("kernels")
if spec is not None:
    import kernels
    out["kernels"] = [getattr(kernels, "__file__", None), list(getattr(kernels, "__path__", []))]
print(json.dumps(out))
"""


def where(cwd):
    res = subprocess.run([sys.executable, "-c", WHERE], capture_output=True, text=True, timeout=120, cwd=cwd)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def hf_kernels_installed():
    """Hugging Face's `kernels` distribution (transformers 5.25 depends on it), if installed."""
    try:
        return metadata.distribution("kernels")
    except metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize("cwd", ["/", str(ROOT)], ids=["elsewhere", "checkout-root"])
def test_top_level_kernels_is_never_ours(cwd):
    """Nothing of the project is a top-level `kernels` or `distributed`: from anywhere, and from
    the checkout's root (where Python puts the folder on sys.path), `kernels` is Hugging Face's
    package when it is installed, and the package's own kernels import beside it."""
    got = where(cwd)
    assert got["ours"] == ["prism_ops.kernels.prism_attention", "prism_ops.distributed.comm"], got
    dist = hf_kernels_installed()
    if dist is None:
        assert cwd == str(ROOT) or got["kernels"] is None, got  # elsewhere: no `kernels` at all
        if got["kernels"] is not None:  # at the root: only the folder, as a namespace (no __init__)
            assert got["kernels"][0] is None, got
        return
    init = Path(got["kernels"][0]).resolve()
    assert init == Path(dist.locate_file("kernels/__init__.py")).resolve(), got
    assert init.parent != ROOT / "kernels", got  # not the checkout's folder


def test_transformers_imports_its_kernels_beside_ours():
    """transformers' hub-kernels integration (which imports `kernels`) and a real model load work
    from the checkout's root, where the folder `kernels/` sits."""
    code = ("import prism_ops.kernels.segment_means, transformers\n"
            "from transformers import BertConfig, BertModel\n"
            "from transformers.integrations import hub_kernels\n"
            "m = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))\n"
            "print(type(m).__name__)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "BertModel", res.stderr


def test_no_init_at_the_top_of_the_checkout():
    for name in ("kernels", "distributed"):
        assert not (ROOT / name / "__init__.py").exists(), f"{name}/__init__.py would shadow an installed {name}"
        assert (ROOT / name).is_dir()
    assert not (ROOT / "prism_ops" / "kernels").exists() and not (ROOT / "prism_ops" / "distributed").exists()
