#!/usr/bin/env bash
# Set up .venv-demo (first run only installs) and run the demo: PRISM attention inside the real
# all-MiniLM-L6-v2 encoder against exact attention. Extra arguments go to prism-demo.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/setup.sh" "$repo/.venv-demo" demo
cd "$(mktemp -d)"
exec "$repo/.venv-demo/bin/prism-demo" "$@"
