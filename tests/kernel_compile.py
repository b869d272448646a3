"""Ahead-of-time compile of prism-ops' Triton kernels for a named NVIDIA GPU, with no GPU present.

Triton compiles a `@triton.jit` kernel for whatever target the active driver reports, and the
wheel ships ptxas. This module installs a stand-in driver (`ChipDriver`) whose
`get_current_target()` is `GPUTarget("cuda", arch, 32)` and whose device properties are the
chip's, then calls each kernel's `warmup(..., grid=...)` per config: the full path to a cubin,
nothing launched. For every compile it reports the shared memory Triton allocates, and from the
cubin (cuobjdump --dump-resource-usage) the registers per thread and the stack frame, which is
where ptxas spills (these kernels have no local arrays, so a stack frame > 0 is spills).

Must run without TRITON_INTERPRET (under the interpreter @triton.jit builds interpreter
functions), so tests/kernels/test_kernels_compile.py runs it as a subprocess:

    python tests/kernel_compile.py < jobs.json > results.json
    python tests/kernel_compile.py --table     # every job of `jobs()`, a markdown table

A job is {"kernel": "prism_attention" | "segment_means", "chip": "sm_90" | "sm_87", "dtype":
"float16" | "bfloat16" | "float32", "D": head dim, "tile": [BLOCK_M, BLOCK_N, warps, stages] or
[ROWS, warps], "variant": {...}}; a result adds "shared", "regs", "stack" (or "error"), "seconds" and
"cpu_seconds" (this compile's CPU time, ptxas included: the figure that does not depend on load).
Compiles go to Triton's cache (TRITON_CACHE_DIR, default ~/.triton/cache), so a second run only
reads cubins. `{"skip": reason}` when this Triton has no NVIDIA backend or no ptxas.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

# Per-block limits of the chips the package targets (CUDA C Programming Guide, compute
# capabilities table): opt-in shared memory per block, 32-bit registers per SM / per block.
CHIPS = {
    "sm_90": {"arch": 90, "name": "H100/H200", "max_shared_mem": 232448, "max_num_regs": 65536,
              "multiprocessor_count": 132},
    "sm_87": {"arch": 87, "name": "Jetson AGX Orin", "max_shared_mem": 166912, "max_num_regs": 65536,
              "multiprocessor_count": 16},
}


# Bounds the compile test asserts (the choice of tiles keeps every config inside them):
# - shared memory: at most the chip's, and no more than SHARED_TOLERANCE (+ 1 KiB) above the
#   launcher's estimate (`shared_memory_estimate`, which prunes by it: an estimate that is low
#   would let through a tile that does not fit), nor below it by more than SHARED_SLACK (an
#   estimate far too high would prune tiles that fit; tiles that keep q in registers use less);
# - spills: a stack frame of at most MAX_STACK_BYTES per thread (a few spilled values in the
#   softmax bookkeeping; the IEEE fp32 dots this replaced spilled 77-92 KB);
# - registers: the chip's register file holds one block (regs * threads <= max_num_regs).
SHARED_TOLERANCE = 0.01
SHARED_SLACK = 0.5
MAX_STACK_BYTES = 256
PRISM_DTYPES = ("float16", "bfloat16", "float32")
_ELEM = {"float16": 2, "bfloat16": 2, "float32": 4}


def jobs(chips=tuple(CHIPS)) -> list[dict]:
    """Every autotune config of both kernels that survives pruning on each chip.

    prism_attention: every tile of every (tile group, dtype class, query bucket) at the group's
    largest head dim (64, 128, 256) in fp16 and fp32; bf16 (same element size and tiles as fp16)
    and the odd head dims 40 and 96 at each list's first tile. The causal, k_valid, lse, summary
    variant: the largest kernel. segment_means: every (ROWS, warps) at D 128 fp16 with padding;
    the other dtypes and D 64/256 at one config.
    """
    from prism_ops.kernels import prism_attention as pa
    from prism_ops.kernels import segment_means as sm

    out = []
    for chip in chips:
        spec = CHIPS[chip]
        cap = divmod(spec["arch"], 10)
        for D in (64, 128, 256):
            for decode in (False, True):
                for dtype in PRISM_DTYPES:
                    tiles = pa.select_tiles(D, _ELEM[dtype], decode, spec["max_shared_mem"], cap)
                    if dtype == "bfloat16":
                        tiles = tiles[:1]
                    out += [{"kernel": "prism_attention", "chip": chip, "dtype": dtype, "D": D, "tile": list(t),
                             "variant": {"decode": decode}} for t in tiles]
        for D in (40, 96):
            t = pa.select_tiles(D, 2, False, spec["max_shared_mem"], cap)[0]
            out.append({"kernel": "prism_attention", "chip": chip, "dtype": "float16", "D": D, "tile": list(t),
                        "variant": {}})
        configs = [list(c) for c in sm._GPU_CONFIGS]
        out += [{"kernel": "segment_means", "chip": chip, "dtype": "float16", "D": 128, "tile": c, "variant": {}}
                for c in configs]
        out += [{"kernel": "segment_means", "chip": chip, "dtype": dt, "D": D, "tile": configs[-1], "variant": {}}
                for dt, D in (("bfloat16", 128), ("float32", 128), ("float16", 64), ("float16", 256))]
    return out


def estimate(job: dict) -> int | None:
    """The launcher's shared-memory estimate for a prism_attention job (None for segment_means)."""
    if job["kernel"] != "prism_attention":
        return None
    from prism_ops.kernels.prism_attention import shared_memory_estimate

    block_d = max(16, 1 << (job["D"] - 1).bit_length())
    return shared_memory_estimate(tuple(job["tile"]), block_d, _ELEM[job["dtype"]])


def problems(result: dict) -> list[str]:
    """What is wrong with one compile result against its chip and the bounds above ([] = fine)."""
    if "error" in result:
        return [f"does not compile: {result['error'][:500]}"]
    spec = CHIPS[result["chip"]]
    found = []
    if result["shared"] > spec["max_shared_mem"]:
        found.append(f"shared memory {result['shared']} B exceeds {result['chip']}'s {spec['max_shared_mem']} B")
    est = estimate(result)
    if est is not None and not (1 - SHARED_SLACK) * est <= result["shared"] <= (1 + SHARED_TOLERANCE) * est + 1024:
        found.append(f"shared memory {result['shared']} B is off the pruning estimate {est} B "
                     f"(allowed {1 - SHARED_SLACK:.0%} to {1 + SHARED_TOLERANCE:.0%} + 1 KiB)")
    if result["stack"] > MAX_STACK_BYTES:
        found.append(f"spills: stack frame {result['stack']} B per thread > {MAX_STACK_BYTES} B")
    warps = result["tile"][2] if result["kernel"] == "prism_attention" else result["tile"][1]
    if result["regs"] * 32 * warps > spec["max_num_regs"]:
        found.append(f"{result['regs']} registers x {32 * warps} threads exceed the {spec['max_num_regs']} register file")
    return found


def job_id(job: dict) -> str:
    var = "-decode" if job["variant"].get("decode") else ""
    return f"{job['chip']}-{job['kernel']}-{job['dtype']}-D{job['D']}-{'x'.join(map(str, job['tile']))}{var}"


def skip_reason() -> str | None:
    """Why ahead-of-time compiling cannot run here, or None."""
    try:
        import triton  # noqa: F401
        from triton.backends import backends
    except ImportError as e:
        return f"triton is not importable ({e})"
    if "nvidia" not in backends:
        return f"this Triton has no NVIDIA backend (backends: {sorted(backends)})"
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(90).path
    except Exception as e:  # noqa: BLE001 - older Triton layouts
        return f"cannot locate ptxas in this Triton ({type(e).__name__}: {e})"
    if not path or not os.path.exists(path):
        return f"ptxas not found (looked at {path})"
    return None


def install_driver(chip: str) -> None:
    """Make a stand-in CUDA driver for `chip` Triton's active driver (this process only)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase
    from triton.backends.nvidia.driver import ty_to_cpp
    from triton.runtime import driver

    spec = CHIPS[chip]
    props = {"max_shared_mem": spec["max_shared_mem"], "max_num_regs": spec["max_num_regs"],
             "multiprocessor_count": spec["multiprocessor_count"], "warpSize": 32,
             "sm_clock_rate": 0, "mem_clock_rate": 0, "mem_bus_width": 0}

    class Utils:
        def get_device_properties(self, device):
            return dict(props)

    class ChipDriver(DriverBase):
        def __init__(self):
            self.utils = Utils()
            self.get_current_device = lambda: 0
            self.get_current_stream = lambda device=None: 0
            self.get_device_capability = lambda device=None: divmod(spec["arch"], 10)

        @classmethod
        def is_active(cls):
            return True

        def map_python_to_cpp_type(self, ty):
            return ty_to_cpp(ty)

        def get_current_target(self):
            return GPUTarget("cuda", spec["arch"], 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise RuntimeError("a stand-in driver for ahead-of-time compiles cannot time kernels")

    driver.set_active(ChipDriver())


def _prism_attention_warmup(job):
    import torch
    import triton

    from prism_ops.kernels.prism_attention import DECODE_MAX_TQ, LOG2E, prism_attention_kernel

    dtype, D, var = getattr(torch, job["dtype"]), job["D"], job["variant"]
    B, H, Hkv = 1, 8, 2
    Tq = 1 if var.get("decode") else 1024  # Tq = 1 is a Triton specialisation of its own
    Tk, S = 1024, 192
    e = lambda *shape, dt=dtype: torch.empty(*shape, dtype=dt)  # noqa: E731 - CPU: never read
    q, k, v = e(B, H, Tq, D), e(B, Hkv, Tk, D), e(B, Hkv, Tk, D)
    ks, vs, c = e(B, Hkv, S, D), e(B, Hkv, S, D), e(S, dt=torch.int32)
    kv, out, lse = e(B, Tk, dt=torch.int8), e(B, H, Tq, D), e(B, H, Tq, dt=torch.float32)
    m, n, warps, stages = job["tile"]
    args = (q, k, v, ks, vs, c, kv, out, lse, 0.125 * LOG2E, Tq, Tk, S, H, H // Hkv, 256, int(Tq <= DECODE_MAX_TQ),
            *q.stride(), *k.stride(), *v.stride(), *ks.stride(), *vs.stride(), 0, c.stride(0), *kv.stride(),
            *out.stride(), *lse.stride())
    flags = dict(D=D, BLOCK_D=max(16, triton.next_power_of_2(D)), CAUSAL=var.get("causal", True),
                 LOG_COUNT_BIAS=True, HAS_SUM=True, HAS_KVALID=var.get("k_valid", True),
                 STORE_LSE=var.get("lse", True), TF32X3=dtype == torch.float32, DOT_FP32=False)
    return prism_attention_kernel.warmup(*args, **flags, BLOCK_M=m, BLOCK_N=n, num_warps=warps,
                                         num_stages=stages, grid=(triton.cdiv(Tq, m), B * H))


def _segment_means_warmup(job):
    import torch
    import triton

    from prism_ops.kernels.segment_means import block_t, segment_means_kernel

    dtype, D, var = getattr(torch, job["dtype"]), job["D"], job["variant"]
    B, H, T, seg = 1, 8, 4096, var.get("segment_size", 16)
    S = -(-T // seg)
    x, means = torch.empty(B, H, T, D, dtype=dtype), torch.empty(B, H, S, D, dtype=dtype)
    valid, counts = torch.empty(B, T, dtype=torch.int8), torch.empty(B, S, dtype=torch.int32)
    rows, warps = job["tile"]
    block_d = max(16, triton.next_power_of_2(D))
    has_valid = var.get("valid", True)
    return segment_means_kernel.warmup(
        x, valid, means, counts, T, H, S, seg, 0, triton.next_power_of_2(seg),
        *x.stride(), *valid.stride(), *means.stride(), *counts.stride(),
        D=D, BLOCK_D=block_d, BLOCK_T=block_t(seg, T, block_d), HAS_VALID=has_valid, ROWS=rows,
        num_warps=warps, num_stages=1, grid=(triton.cdiv(S, rows), B * H))


def _resources(cubin: bytes) -> dict:
    """Registers per thread and stack frame bytes of a cubin, read by the wheel's cuobjdump."""
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = os.path.join(os.path.dirname(get_ptxas(90).path), "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text))
    return {"regs": int(fields["REG"]), "stack": int(fields["STACK"]), "local": int(fields.get("LOCAL", 0))}


_CURRENT_CHIP = None


def compile_job(job: dict) -> dict:
    """Compile one job for its chip; the job plus what ptxas made of it (or the error)."""
    global _CURRENT_CHIP
    if _CURRENT_CHIP != job["chip"]:
        from prism_ops.kernels.prism_attention import prism_attention_kernel
        from prism_ops.kernels.segment_means import segment_means_kernel

        install_driver(job["chip"])
        for kernel in (prism_attention_kernel, segment_means_kernel):
            kernel.device_caches.clear()  # keyed by device index only: it holds the last chip's target
        _CURRENT_CHIP = job["chip"]
    t0, c0 = time.perf_counter(), os.times()
    try:
        warm = _prism_attention_warmup if job["kernel"] == "prism_attention" else _segment_means_warmup
        kernel = warm(job)
        res = {"shared": int(kernel.metadata.shared), **_resources(kernel.asm["cubin"])}
    except Exception as e:  # noqa: BLE001 - reported per job, the others still compile
        res = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
    c1 = os.times()  # CPU time of this worker and of the ptxas it ran: a loaded machine's wall time is noise
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) + (
        c1.children_system - c0.children_system)
    return {**job, **res, "seconds": round(time.perf_counter() - t0, 3), "cpu_seconds": round(cpu, 3)}


def compile_all(jobs: list[dict], workers: int | None = None) -> list[dict]:
    """Compile every job, in a pool of forked workers (ptxas is single-threaded)."""
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    if workers == 1:
        return [compile_job(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(compile_job, jobs))


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(json.dumps({"error": "run without TRITON_INTERPRET: it turns kernels into interpreter functions"}))
        return 2
    reason = skip_reason()
    if reason:
        print(json.dumps({"skip": reason}))
        return 0
    import triton

    table = "--table" in sys.argv
    todo = jobs() if table else json.load(sys.stdin)
    t0 = time.perf_counter()
    results = compile_all(todo, int(os.environ.get("PRISM_COMPILE_WORKERS", "0")) or None)
    wall = round(time.perf_counter() - t0, 2)
    if not table:
        print(json.dumps({"triton": triton.__version__, "seconds": wall, "results": results}))
        return 0
    print(f"Triton {triton.__version__}: {len(results)} compiles in {wall} s wall")
    print("| config | shared B | estimate B | regs | stack B | CPU s | problems |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {job_id(r)} | {r.get('shared', '')} | {estimate(r) or ''} | {r.get('regs', '')} | "
              f"{r.get('stack', '')} | {r['cpu_seconds']} | {'; '.join(problems(r))} |")
    return 1 if any(problems(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
