"""Input checks shared by the public ops. Every message names the argument and what was expected."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def shape_str(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_tensor(x, name: str, layout: str, ndim: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {shape_str(x)}")


def check_float(x: torch.Tensor, name: str) -> None:
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")


def check_same(x: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    """x must share dtype and device with ref."""
    if x.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {x.dtype} but {ref_name} has {ref.dtype}; they must match")
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}; they must match")


def check_mask(mask, name: str, B: int, T: int, device: torch.device) -> None:
    """A per-token boolean mask [B, T] (True = real token)."""
    check_tensor(mask, name, f"[B, T] = [{B}, {T}] bool", 2)
    if tuple(mask.shape) != (B, T):
        raise ValueError(f"{name} must have shape [B, T] = [{B}, {T}], got {shape_str(mask)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = real token), got {mask.dtype}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but the data is on {device}")


def check_int(value, name: str, minimum: int, maximum: int | None = None, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}{what}, got {value}")
    return value


def check_weights(weights, num_partitions: int) -> list[float]:
    """Relative partition sizes: `num_partitions` positive numbers."""
    w = [float(x) for x in weights]
    if len(w) != num_partitions or any(not x > 0 for x in w):
        raise ValueError(f"weights must be {num_partitions} positive numbers (one per partition), got {weights!r}")
    return w
