"""Shared test set-up: Triton's interpreter on machines without a GPU, seeds, error budget.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at
collection, before any test module imports prism_ops' Triton path.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

# Device the Triton tests run on: the GPU if there is one, else CPU through the interpreter.
TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"


def to_triton(t):
    """Move a tensor (or None) to TRITON_DEVICE."""
    return None if t is None else t.to(TRITON_DEVICE)
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
gpu = pytest.mark.gpu  # large shapes on a CUDA GPU: `tools/test.sh -m gpu`; skipped elsewhere


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

# Error floor per dtype, added to the 2x budget: a few ulps at unit scale.
FLOOR = {torch.float64: 1e-12, torch.float32: 4e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_within_budget(out, yardstick, oracle, dtype, what=""):
    """max|out - oracle| <= 2 * max|yardstick - oracle| + floor.

    yardstick is the same math done by torch in `dtype`; oracle is the float64 truth.
    """
    err = (out.double() - oracle.double()).abs().max().item()
    ref_err = (yardstick.double() - oracle.double()).abs().max().item()
    bound = 2 * ref_err + FLOOR[dtype]
    assert err <= bound, f"{what}: error {err:.3g} > budget {bound:.3g} (torch {dtype}: {ref_err:.3g})"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def allocated_bytes(f) -> int:
    """Bytes of CPU memory that f() allocates, counted by torch's profiler over every op (inside
    the custom ops too): a deterministic stand-in for peak memory when comparing two calls."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        f()
    return sum(e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0)
