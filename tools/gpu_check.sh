#!/usr/bin/env bash
# One command for a CUDA box: environment, correctness of every Triton path, the benchmark.
#   usage: tools/gpu_check.sh [--quick] OUT_DIR
# Needs a python with a CUDA build of torch (>= 2.5) and Triton already installed, and pytest for
# the tests (pytest-xdist, if present, runs them in parallel); installs nothing. The checkout is
# used through PYTHONPATH (prism_ops/_layout.py finds kernels/ and distributed/ beside prism_ops/);
# PYTHON=... picks the interpreter (default python3). Exit status: 0 all passed, 1 a test failed,
# 2 bad usage or no CUDA GPU, 3 a benchmark row failed, 4 a stage ran out of time.
#
# Stages, in order, each under `timeout`, each writing into OUT_DIR as soon as it has something:
#   a. environment.txt: torch, CUDA, Triton, the GPU (and nvidia-smi when present)       cap  30 s
#   b. correctness.log / correctness.xml: the Triton tests of test_prism_attention.py and
#      test_segment_means.py (lse, k_valid, GQA 9/3, Tq = 1, odd D 40/59, block tails, rows
#      that see nothing, backward) plus the GPU-sized shape 113x203 at D 64/96/128/256 and
#      fp16/bf16/fp32, with PRISM_OPS_PIN_TILES=1: one tile per key, nothing autotuned       cap 150 s
#   c. bench_gpu.py --stage attention: 16 rows (fp16/bf16, D 64/128, T 4096/16384, causal
#      or not), each checked, then timed: kernel, op, SDPA flash, Flex; rows in gpu.jsonl   cap 300 s
#   d. bench_gpu.py --stage segment_means: the kernel against a device copy at 256 MB      cap  50 s
#
# Time plan for --quick (caps sum to 530 s, under 9 minutes; the plan, from compile counts):
#   Compile cost per kernel config: 0.2-1.7 s measured for sm_90 on a workstation CPU; about
#   5 s of CPU each on a loaded 2-core CI box (tests/kernel_compile.py --table). Planned with
#   1.7 s per compile, one compile at a time (worst case: no xdist).
#   a.  ~10 s: imports and device query.
#   b. ~140 s: ~58 prism_attention compiles (one pinned tile per key: 30 budget cases, 24 of
#      the 113x203 shape, 4 others) and ~15 segment_means compiles = ~125 s serial, ~20 s
#      with 8 xdist workers; the tests themselves run in seconds on a GPU.
#   c. ~265 s: 8 (dtype, D, causal) compile groups x 4-5 tiles = 36 compiles (~60 s); autotune
#      timing of 16 keys x 4-5 tiles (~15 s); 16 rows x 4 timed calls (~35 s); 16 FlexAttention
#      compiles by inductor at ~10 s each (~160 s, the largest item; its rows come last per T).
#   d.  ~20 s: 3 rows, 9 configs each of a small kernel, 256 MB reads.
#   Total ~435 s (7.3 min). Without --quick: every test (autotuned), T 2048-16384, caps x3.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
quick=0
out=""
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (usage: tools/gpu_check.sh [--quick] OUT_DIR)" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "gpu_check.sh: one OUT_DIR only" >&2; exit 2; }; out="$arg" ;;
  esac
done
[ -n "$out" ] || { echo "usage: tools/gpu_check.sh [--quick] OUT_DIR" >&2; exit 2; }
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
unset TRITON_INTERPRET
mkdir -p "$out"
out="$(cd "$out" && pwd)"
if [ "$quick" = 1 ]; then caps=(30 150 300 50); else caps=(90 450 900 150); fi
status=0
stage_status() {  # $1: exit code of a stage, $2: the status it maps to when nonzero
  if [ "$1" = 124 ] || [ "$1" = 137 ]; then echo "== stage ran out of time (cap reached)"; status=4
  elif [ "$1" != 0 ] && [ "$status" = 0 ]; then status="$2"; fi
}

echo "== a. environment (cap ${caps[0]} s)"
timeout "${caps[0]}" "$py" - "$repo" > "$out/environment.txt" 2>&1 <<'PY'
import platform, sys
try:
    import torch
except ImportError:
    sys.exit("gpu_check.sh: torch is not importable by this python (set PYTHON=/path/to/python)")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check.sh: no CUDA GPU: torch {torch.__version__} (CUDA build: {torch.version.cuda}) "
             "reports torch.cuda.is_available() == False")
try:
    import triton
except ImportError:
    sys.exit("gpu_check.sh: triton is not importable (CUDA builds of torch ship it)")
import prism_ops, prism_ops.kernels, prism_ops.distributed  # noqa: E401
if not prism_ops.__file__.startswith(sys.argv[1]):
    sys.exit(f"gpu_check.sh: prism_ops comes from {prism_ops.__file__}, not the checkout {sys.argv[1]}")
p = torch.cuda.get_device_properties(0)
print(f"device: {torch.cuda.get_device_name(0)} sm_{p.major}{p.minor} {p.multi_processor_count} SMs "
      f"{p.total_memory / 2**30:.1f} GiB")
print(f"torch {torch.__version__} CUDA {torch.version.cuda} triton {triton.__version__} python {platform.python_version()}")
print(f"prism_ops {prism_ops.__version__} from {prism_ops.__file__}")
PY
rc=$?
cat "$out/environment.txt"
if [ "$rc" != 0 ]; then
  [ "$rc" = 124 ] && echo "gpu_check.sh: the environment check ran past its ${caps[0]} s cap" >&2
  exit 2
fi
command -v nvidia-smi > /dev/null && timeout 10 nvidia-smi >> "$out/environment.txt" 2>&1

echo "== b. correctness of the Triton paths (cap ${caps[1]} s)"
if "$py" -c "import pytest" 2>/dev/null; then
  args=(-q -p no:cacheprovider --junitxml "$out/correctness.xml")
  if "$py" -c "import xdist" 2>/dev/null; then args+=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))"); fi
  if [ "$quick" = 1 ]; then
    export PRISM_OPS_PIN_TILES=1  # one tile per key: correctness, not speed, so nothing is autotuned
    sel=(-k "triton and (not large_gpu or 113-203-17)")
  else
    sel=(-k "triton")
  fi
  (cd "$out" && timeout "${caps[1]}" "$py" -m pytest "$repo/tests/ops/test_prism_attention.py" \
      "$repo/tests/ops/test_segment_means.py" "${sel[@]}" "${args[@]}") 2>&1 | tee "$out/correctness.log"
  stage_status "${PIPESTATUS[0]}" 1
  unset PRISM_OPS_PIN_TILES
else
  echo "gpu_check.sh: pytest is not installed: correctness stage skipped" | tee "$out/correctness.log"
  status=1
fi

lengths=4096,16384
[ "$quick" = 1 ] || lengths=2048,4096,8192,16384
echo "== c. attention benchmark (cap ${caps[2]} s)"
timeout "${caps[2]}" "$py" "$repo/bench/bench_gpu.py" --stage attention --lengths "$lengths" --out "$out" \
  2>&1 | tee "$out/bench-attention.log"
stage_status "${PIPESTATUS[0]}" 3

echo "== d. segment_means benchmark (cap ${caps[3]} s)"
timeout "${caps[3]}" "$py" "$repo/bench/bench_gpu.py" --stage segment_means --out "$out" \
  2>&1 | tee "$out/bench-segment-means.log"
stage_status "${PIPESTATUS[0]}" 3

echo "== results in $out (status $status): environment.txt correctness.{log,xml} gpu.{jsonl,md,json} configs-*.json"
exit "$status"
