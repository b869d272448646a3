"""GPU benchmarks for the Triton kernels (needs a CUDA GPU; any from an Orin to an H100/H200).

Two stages, each run on its own (`--stage`) so that tools/gpu_check.sh can give each a timeout:
- attention: per dtype (fp16, bf16), head dim (64, 128), T_local (4096 and 16384 by default) and
  causal or not, with 4 ranks at segment_size 16 (S = 3 * T_local / 16 summary rows, count 16
  each): prism_attention's kernel timed through its launcher (`prism_attention_triton`) and
  through the op (`prism_ops.prism_attention`, validation included), against SDPA's flash backend
  over the same number of keys per query (target >= 1.0x) and against FlexAttention given the
  same +ln(count) score_mod and partition-aware block mask (target >= 1.2x). Flex is compiled
  once (`torch.compile(flex_attention)`), with Dynamo's recompile limit raised so every
  (dtype, D, T, causal) case gets its own compiled kernel instead of a silent eager fallback.
- segment_means: the kernel (its launcher, with the per-row lengths made beforehand: one kernel
  launch) against a device-to-device copy of the same >= 256 MB x (target >= 80%).

Every output is checked before it is timed (the last CHECK_ROWS query rows against the torch path
in fp32, the error budget of tests/conftest.py); a row that fails its check, or errors, is written
with the reason and the next row runs. Each row is appended to OUT/gpu.jsonl and gpu.md is
rewritten as soon as it completes, so a run killed by a timeout keeps what it measured. The
chosen autotune config per key is printed and stored (OUT/configs.json).
FLOPs count the work each computation must do: 4 * B * H * Tq * D per visible key (causal: the
local block's lower triangle plus every summary row; SDPA causal runs the square T+S block).
Timings are triton.testing.do_bench medians, all baselines measured in the same process.

    python bench/bench_gpu.py --stage attention|segment_means|all [--lengths 4096,16384] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

B, H, RANKS, SEGMENT = 1, 16, 4, 16
TARGETS = {"vs_sdpa": 1.0, "vs_flex": 1.2, "vs_copy": 0.8}
CHECK_ROWS = 128  # query rows checked against the fp32 torch path before a case is timed
FLOOR = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # as tests/conftest.py
SEGMENT_MEANS_BYTES = 256 * 2**20


def tflops(q_rows, keys_per_row, D, ms):
    return 4 * B * H * q_rows * keys_per_row * D / (ms * 1e-3) / 1e12


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


class CheckFailed(AssertionError):
    pass


def check(what, got, ref, yard, dtype):
    """max|got - ref| <= 2 * max|yard - ref| + floor (ref fp32, yard the torch path in dtype)."""
    got, ref, yard = got.float(), ref.float(), yard.float()
    if not torch.isfinite(got).all():
        raise CheckFailed(f"{what}: non-finite output")
    err = (got - ref).abs().max().item()
    bound = 2 * (yard - ref).abs().max().item() + FLOOR[dtype]
    if err > bound:
        raise CheckFailed(f"{what}: error {err:.3g} > budget {bound:.3g}")
    return err


def bench_attention(T, D, dtype, causal, do_bench, flex):
    from prism_ops import prism_attention
    from prism_ops.kernels.prism_attention import prism_attention_triton
    from prism_ops.ops.prism_attention import prism_attention_torch

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

    # The reference: the last CHECK_ROWS queries (bottom-right causal alignment keeps their masks).
    rows = slice(T - CHECK_ROWS, T)
    q_rows = q[:, :, rows]
    ref = prism_attention_torch(q_rows.float(), k.float(), v.float(), k_sum.float(), v_sum.float(), counts,
                                causal=causal)
    yard = prism_attention_torch(q_rows, k, v, k_sum, v_sum, counts, causal=causal)

    kernel = lambda: prism_attention_triton(q, k, v, k_sum, v_sum, counts, causal=causal)  # noqa: E731
    op = lambda: prism_attention(q, k, v, k_sum, v_sum, counts, causal=causal, backend="triton")  # noqa: E731
    row["check_err"] = check("kernel", kernel()[:, :, rows], ref, yard, dtype)  # first call: autotunes
    check("op", op()[:, :, rows], ref, yard, dtype)
    ms = do_bench(kernel)
    row.update(ms=ms, tflops=tflops(T, seen, D, ms))
    row["op_ms"] = do_bench(op)
    row["op_overhead"] = row["op_ms"] / ms

    keys, vals = torch.cat([k, k_sum], 2), torch.cat([v, v_sum], 2)
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            if causal:  # flash's causal mask is the square one: run it over T + S queries and keys
                qq = torch.randn(B, H, n_keys, D, device=dev, dtype=dtype)
                sdpa = lambda: F.scaled_dot_product_attention(qq, keys, vals, is_causal=True)  # noqa: E731
                got = sdpa()[:, :, -CHECK_ROWS:]
                ref_s = F.scaled_dot_product_attention(qq[:, :, -CHECK_ROWS:].float(), keys.float(), vals.float())
            else:
                sdpa = lambda: F.scaled_dot_product_attention(q, keys, vals)  # noqa: E731
                got = sdpa()[:, :, rows]
                ref_s = F.scaled_dot_product_attention(q_rows.float(), keys.float(), vals.float())
            check("sdpa", got, ref_s, ref_s, dtype)  # budget: the floor (no yardstick of its own)
            ms_sdpa = do_bench(sdpa)
        sdpa_tf = tflops(n_keys, (n_keys + 1) / 2, D, ms_sdpa) if causal else tflops(T, n_keys, D, ms_sdpa)
        row.update(sdpa_flash_ms=ms_sdpa, sdpa_flash_tflops=sdpa_tf, vs_sdpa=row["tflops"] / sdpa_tf)
    except Exception as e:  # noqa: BLE001 - a baseline this GPU or torch lacks
        row["sdpa_error"] = _error(e)

    try:
        if flex is None:
            raise RuntimeError("FlexAttention is not in this torch (needs >= 2.5)")
        compiled, create_block_mask = flex
        log_m = torch.log(counts.float())

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + torch.where(kv_idx < T, 0.0, log_m[(kv_idx - T).clamp(min=0)])

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx >= T) | (kv_idx <= q_idx)  # causal on the local block; summaries seen by all

        block_mask = create_block_mask(mask_mod, None, None, T, n_keys, device=dev) if causal else None
        run = lambda: compiled(q, keys, vals, score_mod=score_mod, block_mask=block_mask)  # noqa: E731
        check("flex", run()[:, :, rows], ref, yard, dtype)
        ms_flex = do_bench(run)
        row.update(flex_ms=ms_flex, flex_tflops=tflops(T, seen, D, ms_flex), vs_flex=ms_flex / ms)
    except Exception as e:  # noqa: BLE001
        row["flex_error"] = _error(e)
    return row


def bench_segment_means(D, dtype, do_bench):
    from prism_ops.kernels.segment_means import segment_means_triton
    from prism_ops.ops.segment_means import num_summary_rows, segment_lengths, segment_means_torch

    T = SEGMENT_MEANS_BYTES // (B * H * D * torch.finfo(dtype).bits // 8)
    x = torch.randn(B, H, T, D, device="cuda", dtype=dtype)
    S = num_summary_rows(T, SEGMENT)
    lengths = segment_lengths(T, SEGMENT, 0, device="cuda")
    kernel = lambda: segment_means_triton(x, SEGMENT, S, lengths)  # noqa: E731 - one launch
    means, _ = kernel()
    ref, _ = segment_means_torch(x[:, :, : 64 * SEGMENT], SEGMENT)  # the first 64 rows, fp32 accumulation
    err = (means[:, :, :64].float() - ref.float()).abs().max().item()
    if err > 4 * torch.finfo(dtype).eps:
        raise CheckFailed(f"segment_means: error {err:.3g} on the first 64 rows")
    ms = do_bench(kernel)
    y = torch.empty_like(x)
    ms_copy = do_bench(lambda: y.copy_(x))
    moved = x.numel() * x.element_size() * (1 + 1 / SEGMENT)  # read x, write the means
    gbs, copy_gbs = moved / ms / 1e6, 2 * x.numel() * x.element_size() / ms_copy / 1e6
    return {"op": "segment_means", "dtype": str(dtype).split(".")[-1], "D": D, "T_local": T, "causal": None,
            "MB": x.numel() * x.element_size() / 2**20, "ms": ms, "GB/s": gbs, "copy_ms": ms_copy,
            "copy_GB/s": copy_gbs, "vs_copy": gbs / copy_gbs}


def chosen_configs() -> dict:
    """The autotuner's choice per key, for both kernels (what this run timed)."""
    from prism_ops.kernels import prism_attention as pa
    from prism_ops.kernels import segment_means as sm

    found = {}
    for name, mod in (("prism_attention", pa), ("segment_means", sm)):
        for tuner in (mod.tuned_kernel(False, False), mod.tuned_kernel(False, True)) if name == "prism_attention" \
                else (mod.tuned_kernel(False),):
            keys = mod.AUTOTUNE_KEY
            for key, cfg in getattr(tuner, "cache", {}).items():
                named = dict(zip(keys, key[:len(keys)]))
                named["dtypes"] = [str(x) for x in key[len(keys):]]
                found.setdefault(name, []).append({"key": named, "config": str(cfg)})
    return found


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
             "| op | dtype | D | T_local | causal | kernel ms | op ms | TFLOP/s | SDPA flash TFLOP/s | vs SDPA "
             "| Flex TFLOP/s | vs Flex | GB/s | copy GB/s | vs copy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['op']} | {r['dtype']} | {r['D']} | {r['T_local']} | {r['causal'] if r['causal'] is not None else ''}"
        if "error" in r:
            lines.append(f"{head} | failed: {r['error']} |")
        elif r["op"] == "prism_attention":
            sdpa = _fmt(r.get("sdpa_flash_tflops"), ".0f") or "error"
            flex = _fmt(r.get("flex_tflops"), ".0f") or "error"
            lines.append(f"{head} | {r['ms']:.3f} | {r['op_ms']:.3f} | {r['tflops']:.0f} | {sdpa} | "
                         f"{_fmt(r.get('vs_sdpa'), '.2f')}x | {flex} | {_fmt(r.get('vs_flex'), '.2f')}x | | | |")
        else:
            lines.append(f"{head} | {r['ms']:.3f} | | | | | | | {r['GB/s']:.0f} | {r['copy_GB/s']:.0f} | "
                         f"{r['vs_copy']:.0%} |")
    lines += ["", "Targets: " + ", ".join(f"{k} >= {v}" for k, v in TARGETS.items()) + "; "
              + ("met in every row." if all_met(rows) else "not met in every row (see the rows).")]
    errors = [f"- {r['op']} {r['dtype']} D{r['D']} T{r['T_local']} causal={r['causal']}: {r.get('sdpa_error') or ''} "
              f"{r.get('flex_error') or ''}" for r in rows if r.get("sdpa_error") or r.get("flex_error")]
    return "\n".join(lines + (["", "Baselines that failed:"] + errors if errors else [])) + "\n"


def all_met(rows) -> bool:
    """Every row reaches its targets (a failed row or baseline counts as not met)."""
    for r in rows:
        keys = ("vs_sdpa", "vs_flex") if r["op"] == "prism_attention" else ("vs_copy",)
        if "error" in r or any(r.get(k) is None or r[k] < TARGETS[k] for k in keys):
            return False
    return True


class Recorder:
    """Rows written out as they complete: OUT/gpu.jsonl (appended), gpu.md and gpu.json (rewritten)."""

    def __init__(self, out: Path, info: dict):
        self.out, self.info = out, info
        out.mkdir(parents=True, exist_ok=True)
        self.rows = [json.loads(line) for line in (out / "gpu.jsonl").read_text().splitlines()] \
            if (out / "gpu.jsonl").exists() else []  # an earlier stage's rows

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.out / "gpu.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        (self.out / "gpu.md").write_text(markdown(self.info, self.rows))
        (self.out / "gpu.json").write_text(json.dumps({"meta": self.info, "targets": TARGETS, "rows": self.rows},
                                                      indent=2))
        brief = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        print(json.dumps(brief), flush=True)


def _flex():
    """(torch.compile(flex_attention), create_block_mask) with the recompile limit raised, or None."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # the name changed in torch 2.6
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)
    if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
        torch._dynamo.config.accumulated_recompile_limit = 4096
    return torch.compile(flex_attention, dynamic=False), create_block_mask


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="GPU benchmarks for prism-ops' Triton kernels (rows into --out)")
    ap.add_argument("--stage", choices=("attention", "segment_means", "all"), default="all")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out", help="folder for gpu.jsonl/md/json")
    ap.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[4096, 16384],
                    help="T_local values, comma-separated (default 4096,16384)")
    ap.add_argument("--quick", action="store_true", help="accepted for compatibility: the default is the quick plan")
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

    rec = Recorder(args.out, meta())
    print(json.dumps(rec.info), flush=True)
    failed = 0
    if args.stage in ("attention", "all"):
        flex = _flex()
        for T in args.lengths:  # the shorter length first: a timeout loses the long rows only
            for dtype in (torch.float16, torch.bfloat16):
                for D in (64, 128):
                    for causal in (False, True):
                        t0 = time.perf_counter()
                        try:
                            row = bench_attention(T, D, dtype, causal, do_bench, flex)
                        except Exception as e:  # noqa: BLE001 - this row fails, the next one runs
                            failed += 1
                            traceback.print_exc()
                            row = {"op": "prism_attention", "dtype": str(dtype).split(".")[-1], "D": D,
                                   "T_local": T, "causal": causal, "error": _error(e)}
                        row["seconds"] = round(time.perf_counter() - t0, 1)
                        rec.add(row)
    if args.stage in ("segment_means", "all"):
        for dtype, D in ((torch.float16, 128), (torch.float16, 64), (torch.bfloat16, 128)):
            t0 = time.perf_counter()
            try:
                row = bench_segment_means(D, dtype, do_bench)
            except Exception as e:  # noqa: BLE001
                failed += 1
                traceback.print_exc()
                row = {"op": "segment_means", "dtype": str(dtype).split(".")[-1], "D": D, "T_local": None,
                       "causal": None, "error": _error(e)}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rec.add(row)
    configs = chosen_configs()
    (args.out / f"configs-{args.stage}.json").write_text(json.dumps(configs, indent=2))
    for name, items in configs.items():
        for item in items:
            print(f"chosen config {name} {item['key']}: {item['config']}", flush=True)
    print(markdown(rec.info, rec.rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
