"""GPU benchmarks for the Triton kernels (needs CUDA; run on an H100/H200 or any CUDA GPU).

Per dtype (fp16, bf16), head dim (64, 128) and T_local (2k to 16k), with 4 ranks at
segment_size 16 (S = 3 * T_local / 16 summary rows):
- prism_attention (Triton) TFLOP/s against SDPA's flash backend over the same number of keys
  (target >= 0.9x) and against FlexAttention given the same +ln(count) bias as a score_mod
  (target >= 1.2x);
- segment_means (Triton) bandwidth against the device's measured copy bandwidth (target >= 80%).
Timings are triton.testing.do_bench medians, baselines measured in the same process.
Writes bench/out/gpu.json and prints a markdown table.

    python bench/bench_gpu.py [--quick]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

B, H, RANKS, SEGMENT = 1, 16, 4, 16


def tflops(T_q, n_keys, D, ms):
    return 4 * B * H * T_q * n_keys * D / (ms * 1e-3) / 1e12


def bench_attention(T, D, dtype, causal, do_bench):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import flex_attention

    import prism_ops

    dev = "cuda"
    q = torch.randn(B, H, T, D, device=dev, dtype=dtype)
    k, v = torch.randn_like(q), torch.randn_like(q)
    S = (RANKS - 1) * T // SEGMENT
    k_sum, v_sum = torch.randn(B, H, S, D, device=dev, dtype=dtype), torch.randn(B, H, S, D, device=dev, dtype=dtype)
    counts = torch.full((S,), SEGMENT, device=dev, dtype=torch.int32)
    n_keys = T + S
    ms_prism = do_bench(lambda: prism_ops.prism_attention(q, k, v, k_sum, v_sum, counts, causal=causal, backend="triton"))
    keys, vals = torch.cat([k, k_sum], 2), torch.cat([v, v_sum], 2)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        ms_sdpa = do_bench(lambda: F.scaled_dot_product_attention(q, keys, vals))
    log_m = torch.log(counts.float())

    def score_mod(score, b, h, q_idx, kv_idx):
        local = kv_idx < T
        bias = torch.where(local, 0.0, log_m[(kv_idx - T).clamp(min=0)])
        if causal:
            return torch.where(local & (kv_idx > q_idx), -float("inf"), score + bias)
        return score + bias

    flex = torch.compile(flex_attention)
    ms_flex = do_bench(lambda: flex(q, keys, vals, score_mod=score_mod))
    # Causal work is about half the local block: count the FLOPs actually needed.
    useful = (T / 2 + S) if causal else n_keys
    return {
        "op": "prism_attention", "dtype": str(dtype).split(".")[-1], "D": D, "T_local": T, "causal": causal,
        "keys": n_keys, "ms": ms_prism, "tflops": tflops(T, useful, D, ms_prism),
        "sdpa_flash_ms": ms_sdpa, "sdpa_flash_tflops": tflops(T, n_keys, D, ms_sdpa),
        "flex_ms": ms_flex, "vs_sdpa_tflops": tflops(T, useful, D, ms_prism) / tflops(T, n_keys, D, ms_sdpa),
        "vs_flex_speed": ms_flex / ms_prism,
    }


def bench_segment_means(T, D, dtype, do_bench):
    import prism_ops

    x = torch.randn(B, H, T, D, device="cuda", dtype=dtype)
    ms = do_bench(lambda: prism_ops.segment_means(x, SEGMENT, backend="triton"))
    ms_copy = do_bench(lambda: x.clone())
    moved = x.numel() * x.element_size() * (1 + 1 / SEGMENT)  # read x, write the means
    gbs, copy_gbs = moved / ms / 1e6, 2 * x.numel() * x.element_size() / ms_copy / 1e6
    return {"op": "segment_means", "dtype": str(dtype).split(".")[-1], "D": D, "T_local": T,
            "ms": ms, "GB/s": gbs, "copy_GB/s": copy_gbs, "vs_copy": gbs / copy_gbs}


def main():
    ap = argparse.ArgumentParser(description="GPU benchmarks for prism-ops' Triton kernels")
    ap.add_argument("--quick", action="store_true", help="one size per case")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    from triton.testing import do_bench

    lengths = [4096] if args.quick else [2048, 4096, 8192, 16384]
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for D in (64, 128):
            for T in lengths:
                for causal in (False, True):
                    rows.append(bench_attention(T, D, dtype, causal, do_bench))
                rows.append(bench_segment_means(T, D, dtype, do_bench))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    (out / "gpu.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"device: {meta['device']}, torch {meta['torch']}")
    print("| op | dtype | D | T_local | causal | ms | TFLOP/s | vs SDPA flash (TFLOP/s) | vs Flex (speed) | GB/s | vs copy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["op"] == "prism_attention":
            print(f"| {r['op']} | {r['dtype']} | {r['D']} | {r['T_local']} | {r['causal']} | {r['ms']:.3f} | "
                  f"{r['tflops']:.0f} | {r['vs_sdpa_tflops']:.2f}x | {r['vs_flex_speed']:.2f}x | | |")
        else:
            print(f"| {r['op']} | {r['dtype']} | {r['D']} | {r['T_local']} | | {r['ms']:.3f} | | | | "
                  f"{r['GB/s']:.0f} | {r['vs_copy']:.0%} |")


if __name__ == "__main__":
    main()
