#!/usr/bin/env bash
# The model-zoo and Hugging Face adapter tests on the oldest transformers the package claims: the
# floor in pyproject.toml ("transformers>=X.Y"), its newest patch release, in .venv-floor. The
# main suite (tools/test.sh) runs on the newest release; tests/model_zoo.py says what each
# release does per family. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
floor="$(grep -o '"transformers>=[0-9.]*"' "$repo/pyproject.toml" | head -1 | tr -d '"' | cut -d= -f2)"
[ -n "$floor" ] || { echo "pyproject.toml names no transformers floor" >&2; exit 1; }
bash "$repo/tools/setup.sh" "$repo/.venv-floor" test "transformers==$floor.*"
py="$repo/.venv-floor/bin/python"
cd "$(mktemp -d)"
"$py" -c "import transformers; print('transformers', transformers.__version__, '(the floor, $floor)')"
exec "$py" -m pytest "$repo/tests/hf/test_model_zoo.py" "$repo/tests/hf/test_hf.py" "$repo/tests/hf/test_packing.py" "$repo/tests/test_models.py" \
  "$repo/tests/ops/test_api_errors.py" "$repo/tests/test_package.py" -p no:cacheprovider -q "$@"
