"""The drivers stand side by side on the library (issue 16 part 3).

Reads the source of every score_sde module with `ast` (imports at module level and inside
functions, in every spelling) and fails if a driver module imports another driver, or if a
library module (inference.py included) imports a driver. The list of drivers is written out
here and checked against the modules main.py's modes import, so a new mode module is a driver.
The bottom floor (sde_lib, storage, the data package) imports nothing above it, so every
other module, the metrics included, can import it.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "score_sde"
# The modules that host a --mode (or a mode's hook): each a mode over the library.
DRIVERS = {"train", "evaluate", "editing_modes", "sample_quality", "train_classifier",
           "generate", "grid_search", "video_modes"}
ENTRY_POINT = "main"  # picks a mode: the one module that imports drivers
# The bottom floor: modules (and packages) that import no score_sde module but each other, so
# every other module, the metrics included, can import them.
BOTTOM_FLOOR = {"sde_lib", "storage", "data"}


def imported_modules(source: str) -> set[str]:
    """The score_sde modules (first name below the package) that `source` imports anywhere:
    `import score_sde.x`, `from score_sde import x`, `from score_sde.x(.y) import z`, the
    relative forms of a module of the package, and `importlib.import_module("score_sde.x")`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names
                      if a.name.startswith("score_sde.")}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or module == "score_sde" or module.startswith("score_sde."):
                parts = module.split(".") if module else []
                below = parts[1:] if parts and parts[0] == "score_sde" and not node.level else parts
                found |= {below[0]} if below else {a.name for a in node.names}
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)
              and str(node.args[0].value).startswith("score_sde.")):
            found.add(str(node.args[0].value).split(".")[1])
    return found


def _modules() -> dict[str, str]:
    """Every top-level module of the package (subpackages by their folder name) -> source."""
    out = {p.stem: p.read_text() for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    for init in PACKAGE.glob("*/__init__.py"):
        out[init.parent.name] = "\n".join(p.read_text() for p in init.parent.rglob("*.py"))
    return out


def _mode_modules(main_source: str) -> set[str]:
    """The score_sde modules imported by the functions main.py registers as modes."""
    found = set()
    for node in ast.walk(ast.parse(main_source)):
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register_mode"
                for d in node.decorator_list):
            found |= imported_modules(ast.unparse(node))
    return found


def test_the_import_reader_sees_every_spelling():
    source = (
        "import score_sde.a\nimport score_sde.b.c as bc\nfrom score_sde import d, e as e2\n"
        "from score_sde.f import g\nfrom score_sde.h.i import j\nimport numpy, scoreless\n"
        "from . import k\nfrom .l import m\nfrom score_sde_other import n\n"
        "def fn():\n    from score_sde import o\n    import importlib\n"
        "    importlib.import_module('score_sde.p')\n"
        "class C:\n    def method(self):\n        import score_sde.q\n")
    assert imported_modules(source) == set("abdefhklopq")


def test_the_driver_list_is_the_modules_of_mains_modes():
    modules = _modules()
    assert DRIVERS <= set(modules), sorted(DRIVERS - set(modules))
    assert _mode_modules(modules[ENTRY_POINT]) == DRIVERS
    others = [name for name, src in modules.items()
              if "register_mode(" in src and name != ENTRY_POINT]
    assert others == [], f"{others} register modes outside main.py: add them to DRIVERS"


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_no_driver_imports_another(driver):
    imported = imported_modules(_modules()[driver])
    assert not imported & (DRIVERS - {driver}), (
        f"{driver}.py imports the driver(s) {sorted(imported & DRIVERS - {driver})}; move what "
        "they share one floor down (inference.py, eval_hooks.py)")


def test_library_imports_no_driver_nor_main():
    for name, source in _modules().items():
        if name in DRIVERS or name == ENTRY_POINT:
            continue
        bad = imported_modules(source) & (DRIVERS | {ENTRY_POINT})
        assert not bad, f"the library module {name} imports {sorted(bad)}"
    assert "inference" in _modules()  # the floor under the drivers is checked too


@pytest.mark.parametrize("name", sorted(BOTTOM_FLOOR))
def test_the_bottom_floor_imports_nothing_above_it(name):
    above = imported_modules(_modules()[name]) - BOTTOM_FLOOR
    assert not above, f"{name} is on the bottom floor but imports {sorted(above)}"


def test_the_former_data_modules_only_point_to_the_data_package():
    for name in ("datasets", "data_workers"):
        assert imported_modules(_modules()[name]) == {"data"}, name


def test_eval_mode_finds_the_sample_quality_hook_through_the_library():
    """main's eval mode imports sample_quality, whose hook lands in the library's registry,
    the one evaluate runs: neither driver imports the other."""
    main_source = _modules()[ENTRY_POINT]
    eval_mode = next(n for n in ast.walk(ast.parse(main_source))
                     if isinstance(n, ast.FunctionDef) and n.name == "_eval")
    assert {"evaluate", "sample_quality"} <= imported_modules(ast.unparse(eval_mode))
    from score_sde import eval_hooks, evaluate, sample_quality

    assert evaluate.EVAL_HOOKS is eval_hooks.EVAL_HOOKS
    assert eval_hooks.EVAL_HOOKS["sample_quality"] is sample_quality.score_samples


# ----------------------------------------------------------- the import graph, the functions

# Ported published networks keep the reference's long __call__ (line-for-line checkable).
LONG_FUNCTIONS_ALLOWED = {("models/ncsnpp.py", "__call__")}
MAX_FUNCTION_LINES = 80


def _module_files() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package by its __init__)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports anywhere (functions included: a circle
    hidden in a function is still a circle), each resolved to the most specific module."""
    files = _module_files()

    def resolve(name: str) -> str:
        while name not in files and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in files else ""

    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names if a.name.startswith("score_sde")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if base.split(".")[0] == "score_sde":
                    found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files
                              else resolve(base) for a in node.names}
        graph[module] = found - {module, ""}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, found = {}, {}, [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_the_package_import_graph_has_no_circle():
    graph = import_graph()
    assert "score_sde.sampling.steps" in graph["score_sde.sampling.fast"]
    assert circles(graph) == []


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                name = (str(path.relative_to(PACKAGE)), node.name)
                if lines > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS_ALLOWED:
                    long.append(f"{name[0]}:{node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
