"""Backend selection: the Triton kernels or the plain-torch implementation.

`backend="auto"` takes Triton for CUDA tensors when Triton imports and the op supports the
inputs, otherwise torch. `"triton"` forces the kernels; on CPU tensors that works only under
Triton's interpreter (`TRITON_INTERPRET=1`, set before triton is first imported), which is how
CI runs the kernels without a GPU. Triton is imported lazily, so `import prism_ops` works on a
machine without it.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "torch", "triton")


def check_backend(backend) -> str:
    """One of BACKENDS, or a ValueError naming `backend` (checked where it is given, not at the
    first forward)."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, device: torch.device, unsupported: str | None) -> str:
    """Return "torch" or "triton" for a call on `device`.

    `unsupported` is None when the Triton kernel handles these inputs, else the reason it
    does not (e.g. "float64 input"): "auto" then falls back to torch and "triton" raises.
    """
    check_backend(backend)
    if backend == "torch":
        return "torch"
    runnable = triton_available() and (device.type == "cuda" or interpreting())
    if backend == "auto":
        # Under the interpreter "auto" still prefers torch on CPU: the interpreter is a test tool.
        if device.type == "cuda" and runnable and unsupported is None:
            return "triton"
        return "torch"
    if not triton_available():
        raise ValueError("backend='triton' needs the triton package (pip install triton)")
    if not runnable:
        raise ValueError(
            f"backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before triton is "
            f"imported to run the kernels on CPU; got tensors on {device}"
        )
    if unsupported is not None:
        raise ValueError(f"backend='triton' does not support {unsupported}; use backend='torch'")
    return "triton"
