#!/usr/bin/env bash
# Set up .venv-test (first run only installs) and run the whole test suite on CPU.
# Tests run from an empty directory against the installed package, not the checkout.
# Extra arguments go to pytest, e.g. tools/test.sh -k segment_means. The 25 slowest tests are
# listed at the end (--durations). Float results are compared within stated error budgets
# (tests/budgets.py), so the suite passes on any CPU, whatever its vector width or thread count.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/tools/setup.sh" "$repo/.venv-test" test
py="$repo/.venv-test/bin/python"
cd "$(mktemp -d)"
"$py" -c "import prism_ops; assert 'site-packages' in prism_ops.__file__, prism_ops.__file__; print('testing', prism_ops.__file__)"
exec "$py" -m pytest "$repo/tests" -p no:cacheprovider -q --durations=25 "$@"
