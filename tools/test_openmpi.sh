#!/usr/bin/env bash
# The Open MPI tier: Debian's Open MPI, mpi4py built from source against it in .venv-openmpi (a
# venv without the mpich wheel), then tests/distributed/test_openmpi.py under Open MPI's mpirun: a MiniLM
# embedding and a SmolLM2 generation equal to one process, a killed rank ending the job, and
# --verbose's transport lines. The setup is README.md's Open MPI block, run as written (read out
# of README.md, so the README's commands are the ones tested). Needs root and apt-get where Open
# MPI is not installed yet; otherwise it skips, saying why. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export DEBIAN_FRONTEND=noninteractive HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Open MPI refuses to start as root without these (CI and containers run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if ! command -v mpicc.openmpi >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "Open MPI tier skipped: Open MPI is not installed, and installing it needs root and apt-get"
    exit 0
  fi
  # The README's apt-get line assumes fresh package lists; refresh them once if it would fail.
  if ! apt-get install -y -q openmpi-bin libopenmpi-dev >/dev/null 2>&1; then
    apt-get update -q >/dev/null 2>&1 || true
    if ! apt-get install -y -q openmpi-bin libopenmpi-dev >/dev/null 2>&1; then
      echo "Open MPI tier skipped: apt-get could not install openmpi-bin and libopenmpi-dev"
      exit 0
    fi
  fi
fi
# README.md's block between <!-- openmpi:start --> and <!-- openmpi:end -->, without its fences.
block="$(awk '/<!-- openmpi:start -->/{on=1; next} /<!-- openmpi:end -->/{on=0} on && !/^```/' README.md)"
[ -n "$block" ] || { echo "README.md has no openmpi block" >&2; exit 1; }
echo "== README.md's Open MPI commands"
printf '%s\n' "$block"
bash -euo pipefail -c "$block"
# A rerun reuses .venv-openmpi (and its mpi4py build): make its prism-ops this checkout's, as
# tools/setup.sh does; and the tests need pytest.
rm -rf build
.venv-openmpi/bin/pip uninstall -q -y prism-ops >/dev/null 2>&1 || true
.venv-openmpi/bin/pip install -q --no-deps .
.venv-openmpi/bin/pip install -q pytest
rm -rf build
echo "== tests/distributed/test_openmpi.py under $(command -v mpirun.openmpi)"
cd "$(mktemp -d)"
PRISM_TEST_MPIEXEC="$(command -v mpirun.openmpi)" \
  exec "$repo/.venv-openmpi/bin/python" -m pytest "$repo/tests/distributed/test_openmpi.py" -p no:cacheprovider -q -rs "$@"
