"""Input checks shared by the public ops. Every message names the argument and what was expected."""

from __future__ import annotations

import math
import numbers

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
    bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int {bound}{what}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {bound}{what}, got {value}")
    return value


def check_bool(value, name: str) -> bool:
    """A flag: exactly True or False (a truthy string like "no" would silently mean True)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _finite_positive(value) -> bool:
    """A real number (not a bool, not a string), finite and > 0."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and value > 0


def check_real(value, name: str, what: str = "a finite number > 0") -> float:
    """A finite real number > 0 (a scale); bools and strings are refused."""
    if not _finite_positive(value):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return float(value)


def check_weights(weights, num_partitions: int) -> list[float]:
    """Relative partition sizes: a list or tuple of `num_partitions` finite numbers > 0.

    A string is refused although it is a sequence: "21" would otherwise read as (2, 1).
    """
    what = f"weights must be a list of {num_partitions} finite numbers > 0 (one per partition)"
    if isinstance(weights, (str, bytes)) or not isinstance(weights, (list, tuple)):
        raise ValueError(f"{what}, got {weights!r} of type {type(weights).__name__}")
    if len(weights) != num_partitions:
        raise ValueError(f"{what}, got {len(weights)}: {weights!r}")
    for i, x in enumerate(weights):
        if not _finite_positive(x):
            raise ValueError(f"{what}, got weights[{i}] = {x!r} in {weights!r}")
    w = [float(x) for x in weights]
    if not math.isfinite(sum(w)):  # e.g. two weights of 1e308: the sizes would come out NaN
        raise ValueError(f"weights must sum to a finite number, got {weights!r}")
    return w


def check_qkv(q, k, v, k_name: str = "k", v_name: str = "v") -> None:
    """q `[B, H, Tq, D]` and k, v `[B, Hkv, Tk, D]` of one float dtype and device, D >= 1 and
    H a multiple of Hkv (grouped-query attention)."""
    check_tensor(q, "q", "[B, H, Tq, D]", 4)
    check_float(q, "q")
    for name, t in ((k_name, k), (v_name, v)):
        check_tensor(t, name, "[B, Hkv, Tk, D]", 4)
        check_same(t, q, name, "q")
    B, H, Tq, D = q.shape
    if D == 0:
        raise ValueError(f"q's head dim D (last axis) must be >= 1, got q of shape {shape_str(q)}")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(
            f"{k_name} must have shape [B, Hkv, Tk, D] with B={B} and D={D} as in q {shape_str(q)}, "
            f"got {shape_str(k)}"
        )
    if v.shape != k.shape:
        raise ValueError(f"{v_name} must have the shape of {k_name} {shape_str(k)}, got {shape_str(v)}")
    Hkv = k.shape[1]
    if Hkv == 0 or H % Hkv:
        raise ValueError(
            f"q's head count H={H} must be a multiple of {k_name}'s head count Hkv={Hkv} (grouped-query attention)"
        )
