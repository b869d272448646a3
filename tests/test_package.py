"""Packaging: prism_ops imports without triton; kernels and distributed install inside prism_ops."""

import subprocess
import sys


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


def test_namespaced_subpackages():
    import prism_ops.distributed
    import prism_ops.kernels

    assert prism_ops.kernels.__name__ == "prism_ops.kernels"
    assert prism_ops.distributed.__name__ == "prism_ops.distributed"
    # No bare top-level `kernels` / `distributed` module comes with the package.
    res = run_python("import importlib.util as u, os; os.chdir('/'); print(u.find_spec('kernels'), u.find_spec('distributed'))")
    assert res.stdout.strip() == "None None", res.stdout + res.stderr
