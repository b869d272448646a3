"""Where `prism_ops.kernels` and `prism_ops.distributed` come from in a checkout.

The repository keeps the Triton kernels and the MPI layer in top-level folders, `kernels/` and
`distributed/` (the project's layout), and an install (pip, wheel) puts them inside the package
as `prism_ops/kernels/` and `prism_ops/distributed/` (pyproject.toml's package-dir). Neither
folder holds an `__init__.py`: a regular package called `kernels` or `distributed` at the top of
the checkout would shadow any installed package of that name for a Python started there
(transformers imports Hugging Face's own `kernels`). A folder without `__init__.py` loses to any
installed package of its name.

A checkout (Python started in the repository, or an editable install, which maps prism_ops to
the checkout) has no `prism_ops/kernels/`: then `use_checkout_folders` makes the two namespace
packages over the top-level folders, so the same imports work there as in an install.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

SUBPACKAGES = ("kernels", "distributed")


def use_checkout_folders(package) -> None:
    """Register `package.kernels` and `package.distributed` over the checkout's top-level folders
    when the package is the checkout's (no such folders inside it); an install changes nothing."""
    here = Path(package.__file__).resolve().parent
    root = here.parent
    if (here / "kernels").is_dir() or not (root / "pyproject.toml").is_file():
        return
    for name in SUBPACKAGES:
        folder = root / name
        full = f"{package.__name__}.{name}"
        if full in sys.modules or not folder.is_dir():
            continue
        spec = importlib.machinery.ModuleSpec(full, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        setattr(package, name, module)
