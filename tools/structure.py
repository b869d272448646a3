"""Figures of the code's structure, as the architecture notes report them:

    python tools/structure.py [ROOT]

- functions over 60 lines (prism_ops/, kernels/, distributed/), longest first;
- modules that import prism_ops.distributed.runtime;
- attributes set on objects from outside their class (`x.attr = ...` where x is not self or cls);
- test files per folder of tests/.

Read from the source with `ast`; nothing is imported.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

PACKAGE_DIRS = ("prism_ops", "kernels", "distributed")


def sources(root: Path):
    for d in PACKAGE_DIRS:
        for path in sorted((root / d).rglob("*.py")):
            if not path.is_symlink() and "prism_ops/kernels" not in str(path) and "prism_ops/distributed" not in str(path):
                yield path


RUNTIME_NAMES = {"Request", "Result", "RequestError", "run_distributed", "too_long", "check_request"}


def _imports_runtime(node: ast.ImportFrom) -> bool:
    """from ...distributed.runtime import x, or the runtime's names through the package
    (`from prism_ops.distributed import Request`, as the package re-exported them once)."""
    mod = node.module or ""
    if mod.endswith("distributed.runtime") or (mod == "runtime" and node.level == 1):
        return True
    return mod.endswith("distributed") and bool({a.name for a in node.names} & RUNTIME_NAMES)


def main(argv=None) -> None:
    root = Path((argv or sys.argv[1:] or ["."])[0]).resolve()
    long, runtime_importers, outside = [], [], []
    for path in sources(root):
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append((n, f"{rel}:{node.lineno} {node.name}"))
            if isinstance(node, ast.ImportFrom) and _imports_runtime(node):
                runtime_importers.append(str(rel))
            if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for sub in ast.walk(t):
                        if (isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store)
                                and not (isinstance(sub.value, ast.Name) and sub.value.id in ("self", "cls"))):
                            outside.append(f"{rel}:{node.lineno} {ast.unparse(sub)}")
    tests = Counter(p.parent.relative_to(root).as_posix() for p in (root / "tests").rglob("test_*.py"))
    print(f"functions over 60 lines: {len(long)}")
    for n, where in sorted(long, reverse=True):
        print(f"  {n:4d}  {where}")
    print(f"modules importing distributed.runtime: {len(set(runtime_importers))}")
    for m in sorted(set(runtime_importers)):
        print(f"  {m}")
    print(f"attributes set from outside their class: {len(outside)}")
    for o in outside:
        print(f"  {o}")
    print("test files per folder: " + ", ".join(f"{k} {v}" for k, v in sorted(tests.items())))


if __name__ == "__main__":
    main()
