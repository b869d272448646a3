#!/usr/bin/env bash
# One command for a CUDA box: the GPU tests and the GPU benchmark, from this checkout, offline.
#   usage: tools/gpu_check.sh [--quick] OUT_DIR
# Needs a python with a CUDA build of torch (>= 2.5) and Triton already installed, and pytest for
# the tests; installs nothing. The checkout is used through PYTHONPATH (prism_ops/kernels and
# prism_ops/distributed are symlinks into it), so nothing needs building; PYTHON=... picks the
# interpreter (default python3). Writes into OUT_DIR: gpu-tests.log, gpu-tests.xml (JUnit),
# gpu.json and gpu.md (the benchmark table), environment.txt. --quick: the smaller GPU test
# shapes and one sequence length in the benchmark (a few minutes on an H100).
# Exit status: 0 all passed, 1 tests failed, 2 bad usage or no CUDA GPU, 3 the benchmark failed.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
quick=0
out=""
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (usage: tools/gpu_check.sh [--quick] OUT_DIR)" >&2; exit 2 ;;
    *) [ -z "$out" ] || { echo "gpu_check.sh: one OUT_DIR only" >&2; exit 2; }; out="$arg" ;;
  esac
done
[ -n "$out" ] || { echo "usage: tools/gpu_check.sh [--quick] OUT_DIR" >&2; exit 2; }
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1

# Preflight: a CUDA GPU, Triton, and this checkout's prism_ops (not an installed copy).
if ! "$py" - "$repo" <<'PY'
import sys
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
PY
then
  exit 2
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
"$py" - > "$out/environment.txt" <<'PY'
import platform, torch, triton, prism_ops
p = torch.cuda.get_device_properties(0)
print(f"device: {torch.cuda.get_device_name(0)} sm_{p.major}{p.minor} {p.multi_processor_count} SMs")
print(f"torch {torch.__version__} CUDA {torch.version.cuda} triton {triton.__version__} python {platform.python_version()}")
print(f"prism_ops {prism_ops.__version__} from {prism_ops.__file__}")
PY
cat "$out/environment.txt"

status=0
if "$py" -c "import pytest" 2>/dev/null; then
  sel=(-m gpu)
  [ "$quick" = 1 ] && sel+=(-k "not 2048-4096 and not 16384 and not -256-")  # drop the largest shapes
  echo "== GPU tests: pytest ${sel[*]}"
  (cd "$out" && "$py" -m pytest "$repo/tests/test_prism_attention.py" "$repo/tests/test_segment_means.py" \
      "$repo/tests/test_compile.py" "${sel[@]}" -q -p no:cacheprovider --junitxml "$out/gpu-tests.xml") \
      2>&1 | tee "$out/gpu-tests.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
else
  echo "gpu_check.sh: pytest is not installed: GPU tests skipped (the benchmark still runs)" | tee "$out/gpu-tests.log"
  status=1
fi

echo "== GPU benchmark: bench/bench_gpu.py"
bench=(--out "$out")
[ "$quick" = 1 ] && bench+=(--quick)
"$py" "$repo/bench/bench_gpu.py" "${bench[@]}" || { [ "$status" = 0 ] && status=3; }
echo "== results in $out (status $status)"
exit "$status"
