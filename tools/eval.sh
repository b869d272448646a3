#!/usr/bin/env bash
# Set up .venv-eval (first run only installs) and run prism-eval on the real models.
# Writes docs/EVAL.md, docs/eval.json and docs/eval_*.png. Extra arguments go to prism-eval,
# e.g. tools/eval.sh --models minilm --passages 16
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/setup.sh" "$repo/.venv-eval" eval
cd "$repo"
exec "$repo/.venv-eval/bin/prism-eval" "$@"
