"""The shape of the code (CONTRIBUTING.md): short functions, no import cycles, one definition of each shared idea."""
import ast
import glob
import os

from conftest import ROOT

MAX_FUNCTION_LINES = 60


def sources(*patterns) -> dict:
    """path relative to ROOT -> parsed module, for the files matching `patterns`."""
    out = {}
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(ROOT, pattern))):
            with open(path, encoding="utf-8") as f:
                out[os.path.relpath(path, ROOT)] = ast.parse(f.read(), path)
    return out


def project_modules() -> dict:
    return {os.path.splitext(p)[0]: tree for p, tree in sources("*.py").items()}


def imports_of(tree: ast.Module, names: set) -> set:
    """The project modules a module imports anywhere, at the top or inside a function."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & names


def test_no_function_is_longer_than_sixty_lines():
    long = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path, tree in sources("*.py", "bench/*.py", "tests/*.py", "data/*.py").items()
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_no_module_imports_one_that_imports_it_back():
    modules = project_modules()
    graph = {name: imports_of(tree, set(modules)) - {name} for name, tree in modules.items()}

    def reaches(start, goal, seen):
        for nxt in graph[start] - seen:
            if nxt == goal or reaches(nxt, goal, seen | {nxt}):
                return True
        return False
    cycles = sorted(name for name in graph if reaches(name, name, set()))
    assert not cycles, {name: sorted(graph[name]) for name in cycles}


def test_the_cycle_check_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from engine import evaluate\n    import runtime\n")
    assert imports_of(tree, {"engine", "runtime", "model"}) == {"engine", "runtime"}


def test_each_shared_function_is_defined_once():
    defined = {}
    for name, tree in project_modules().items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") \
                    and node.name not in ("main",):
                defined.setdefault(node.name, []).append(name)
    twice = {n: m for n, m in defined.items() if len(m) > 1}
    assert not twice, twice
    assert defined["probabilities"] == ["calibrate"]
