"""The package's one test hook: a callback on every change of a rank's phase. None in production.

    hooks.on_phase = fn        # fn(rank, phase), set once at start-up, before any phase changes

Tests that must act while a rank is in a given phase (signal it, hold a short phase open, slow
the decoding down) install it from outside the package: `tests/harness/sitecustomize.py`, put on
PYTHONPATH in the environment of a job a test starts, reads the test's settings and sets it. The
package reads no test setting itself; with no hook a change of phase costs one `is None` test.
"""

from __future__ import annotations

from typing import Callable

on_phase: Callable[[int, str], None] | None = None
