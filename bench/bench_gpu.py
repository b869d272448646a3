"""GPU benchmarks for the Triton kernels (needs a CUDA GPU; any from an Orin to an H100/H200).

Per dtype (fp16, bf16), head dim (64, 128), T_local (2k to 16k; 4k with --quick) and causal or
not, with 4 ranks at segment_size 16 (S = 3 * T_local / 16 summary rows, count 16 each):
- prism_attention (Triton) TFLOP/s against SDPA's flash backend over the same number of keys
  per query (target >= 1.0x) and against FlexAttention given the same +ln(count) score_mod and the
  same partition-aware mask (causal on the local block, summaries visible to all) as a block mask
  (target >= 1.2x);
- segment_means (Triton) bandwidth against a device-to-device copy of x (target >= 80%).
FLOPs count the work each computation must do: 4 * B * H * Tq * D per visible key (causal: the
local block's lower triangle plus every summary row; SDPA causal runs the square T+S block).
Timings are triton.testing.do_bench medians, all baselines measured in the same process.
A baseline this torch lacks (FlexAttention before 2.5) or that fails is recorded as an error.
Writes gpu.json and gpu.md into --out (default bench/out) and prints the table.

    python bench/bench_gpu.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

B, H, RANKS, SEGMENT = 1, 16, 4, 16
TARGETS = {"vs_sdpa": 1.0, "vs_flex": 1.2, "vs_copy": 0.8}


def tflops(q_rows, keys_per_row, D, ms):
    return 4 * B * H * q_rows * keys_per_row * D / (ms * 1e-3) / 1e12


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def bench_attention(T, D, dtype, causal, do_bench):
    import prism_ops

    dev = "cuda"
    q = torch.randn(B, H, T, D, device=dev, dtype=dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    S = (RANKS - 1) * T // SEGMENT
    k_sum, v_sum = torch.randn(B, H, S, D, device=dev, dtype=dtype), torch.randn(B, H, S, D, device=dev, dtype=dtype)
    counts = torch.full((S,), SEGMENT, device=dev, dtype=torch.int32)
    n_keys = T + S
    seen = ((T + 1) / 2 + S) if causal else n_keys  # keys a query sees, on average
    row = {"op": "prism_attention", "dtype": str(dtype).split(".")[-1], "D": D, "T_local": T, "S": S,
           "causal": causal, "keys": n_keys}
    ms = do_bench(lambda: prism_ops.prism_attention(q, k, v, k_sum, v_sum, counts, causal=causal, backend="triton"))
    row.update(ms=ms, tflops=tflops(T, seen, D, ms))

    keys, vals = torch.cat([k, k_sum], 2), torch.cat([v, v_sum], 2)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if causal:  # flash's causal mask is the square one: run it over T + S queries and keys
            qq = torch.randn(B, H, n_keys, D, device=dev, dtype=dtype)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ms_sdpa = do_bench(lambda: F.scaled_dot_product_attention(qq, keys, vals, is_causal=True))
            sdpa_tf = tflops(n_keys, (n_keys + 1) / 2, D, ms_sdpa)
        else:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                ms_sdpa = do_bench(lambda: F.scaled_dot_product_attention(q, keys, vals))
            sdpa_tf = tflops(T, n_keys, D, ms_sdpa)
        row.update(sdpa_flash_ms=ms_sdpa, sdpa_flash_tflops=sdpa_tf, vs_sdpa=row["tflops"] / sdpa_tf)
    except Exception as e:  # noqa: BLE001 - a baseline this GPU or torch lacks
        row["sdpa_error"] = _error(e)

    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        log_m = torch.log(counts.float())

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + torch.where(kv_idx < T, 0.0, log_m[(kv_idx - T).clamp(min=0)])

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx >= T) | (kv_idx <= q_idx)  # causal on the local block; summaries seen by all

        block_mask = create_block_mask(mask_mod, None, None, T, n_keys, device=dev) if causal else None
        flex = torch.compile(flex_attention, dynamic=False)
        ms_flex = do_bench(lambda: flex(q, keys, vals, score_mod=score_mod, block_mask=block_mask))
        row.update(flex_ms=ms_flex, flex_tflops=tflops(T, seen, D, ms_flex), vs_flex=ms_flex / ms)
    except Exception as e:  # noqa: BLE001
        row["flex_error"] = _error(e)
    return row


def bench_segment_means(T, D, dtype, do_bench):
    import prism_ops

    x = torch.randn(B, H, T, D, device="cuda", dtype=dtype)
    ms = do_bench(lambda: prism_ops.segment_means(x, SEGMENT, backend="triton"))
    y = torch.empty_like(x)
    ms_copy = do_bench(lambda: y.copy_(x))
    moved = x.numel() * x.element_size() * (1 + 1 / SEGMENT)  # read x, write the means
    gbs, copy_gbs = moved / ms / 1e6, 2 * x.numel() * x.element_size() / ms_copy / 1e6
    return {"op": "segment_means", "dtype": str(dtype).split(".")[-1], "D": D, "T_local": T, "causal": None,
            "ms": ms, "GB/s": gbs, "copy_ms": ms_copy, "copy_GB/s": copy_gbs, "vs_copy": gbs / copy_gbs}


def meta() -> dict:
    import triton

    props = torch.cuda.get_device_properties(0)
    return {"device": torch.cuda.get_device_name(0), "sm": f"{props.major}.{props.minor}",
            "sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
            "python": platform.python_version()}


def _fmt(x, spec):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(info: dict, rows: list[dict]) -> str:
    lines = [f"GPU: {info['device']} (sm_{info['sm'].replace('.', '')}, {info['sms']} SMs), torch {info['torch']}, "
             f"CUDA {info['cuda']}, Triton {info['triton']}. B={B}, H={H}, {RANKS} ranks, segment size {SEGMENT}.", "",
             "| op | dtype | D | T_local | causal | ms | TFLOP/s | SDPA flash TFLOP/s | vs SDPA | Flex TFLOP/s | vs Flex "
             "| GB/s | copy GB/s | vs copy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["op"] == "prism_attention":
            sdpa = _fmt(r.get("sdpa_flash_tflops"), ".0f") or "error"
            flex = _fmt(r.get("flex_tflops"), ".0f") or "error"
            lines.append(f"| prism_attention | {r['dtype']} | {r['D']} | {r['T_local']} | {r['causal']} | {r['ms']:.3f} | "
                         f"{r['tflops']:.0f} | {sdpa} | {_fmt(r.get('vs_sdpa'), '.2f')}x | {flex} | "
                         f"{_fmt(r.get('vs_flex'), '.2f')}x | | | |")
        else:
            lines.append(f"| segment_means | {r['dtype']} | {r['D']} | {r['T_local']} | | {r['ms']:.3f} | | | | | | "
                         f"{r['GB/s']:.0f} | {r['copy_GB/s']:.0f} | {r['vs_copy']:.0%} |")
    lines += ["", "Targets: " + ", ".join(f"{k} >= {v}" for k, v in TARGETS.items()) + "; "
              + ("met in every row." if all_met(rows) else "not met in every row (see the rows).")]
    errors = [f"- {r['dtype']} D{r['D']} T{r['T_local']} causal={r['causal']}: {r.get('sdpa_error') or ''} "
              f"{r.get('flex_error') or ''}" for r in rows if r.get("sdpa_error") or r.get("flex_error")]
    return "\n".join(lines + (["", "Baselines that failed:"] + errors if errors else [])) + "\n"


def all_met(rows) -> bool:
    """Every row reaches its targets (a failed baseline counts as not met)."""
    for r in rows:
        keys = ("vs_sdpa", "vs_flex") if r["op"] == "prism_attention" else ("vs_copy",)
        if any(r.get(k) is None or r[k] < TARGETS[k] for k in keys):
            return False
    return True


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="GPU benchmarks for prism-ops' Triton kernels (writes gpu.json, gpu.md)")
    ap.add_argument("--quick", action="store_true", help="one length (T_local 4096) per case")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out", help="folder for gpu.json and gpu.md")
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="T_local values, comma-separated (default 2048,4096,8192,16384)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA GPU: torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})", file=sys.stderr)
        return 2
    try:
        from triton.testing import do_bench as _do_bench
    except ImportError:
        print("bench_gpu.py needs triton (it comes with CUDA builds of torch)", file=sys.stderr)
        return 2

    def do_bench(fn):
        return _do_bench(fn, warmup=25, rep=100, return_mode="median")

    lengths = args.lengths or ([4096] if args.quick else [2048, 4096, 8192, 16384])
    info, rows = meta(), []
    for dtype in (torch.float16, torch.bfloat16):
        for D in (64, 128):
            for T in lengths:
                for causal in (False, True):
                    rows.append(bench_attention(T, D, dtype, causal, do_bench))
                rows.append(bench_segment_means(T, D, dtype, do_bench))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps({"meta": info, "targets": TARGETS, "rows": rows}, indent=2))
    table = markdown(info, rows)
    (args.out / "gpu.md").write_text(table)
    print(table)
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
