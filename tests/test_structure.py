"""The package's shape, read from its source: modules a newcomer can read in one sitting,
functions that fit a screen, no argument lists to thread by hand, no import cycles."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "grokjax"
MAX_MODULE_LINES, MAX_FUNCTION_LINES, MAX_PARAMETERS = 450, 70, 8


def modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def functions(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def parameters(fn) -> int:
    """Named parameters, ``self``/``cls`` and ``*args``/``**kwargs`` not counted."""
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    return len([n for n in names if n not in ("self", "cls")])


def imports(tree: ast.Module) -> set[str]:
    """grokjax modules a module imports anywhere in it (inside functions too)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("grokjax"):
            parts = node.module.split(".")
            if len(parts) > 1:
                out.add(parts[1])
            else:  # from grokjax import analysis
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("grokjax."))
    return out


def test_no_module_is_too_long():
    long = {p.name: n for p in PACKAGE.glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def plugin_factories() -> set[tuple[str, str]]:
    """(module, function) of the built-in plug-ins: their keyword arguments are sweep settings
    (``[model] d_model = 256``), the contract sweep files rely on, not arguments passed by hand."""
    from grokjax.plugins import BUILTINS, resolve

    fns = (resolve(kind, name) for kind, names in BUILTINS.items() for name in names)
    return {(fn.__module__.rsplit(".", 1)[-1], fn.__name__) for fn in fns if hasattr(fn, "__name__")}


def test_no_function_is_too_long_or_takes_too_many_parameters():
    long, wide, factories = [], [], plugin_factories()
    for name, tree in modules().items():
        for fn in functions(tree):
            if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{name}.{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)")
            if parameters(fn) > MAX_PARAMETERS and (name, fn.name) not in factories:
                wide.append(f"{name}.{fn.name} ({parameters(fn)} parameters)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
    assert not wide, f"functions over {MAX_PARAMETERS} parameters: {wide}"


def test_no_import_cycle():
    trees = modules()
    graph = {name: imports(tree) & set(trees) - {name} for name, tree in trees.items() if name != "__init__"}
    graph = {name: deps - {"__init__", "__main__"} for name, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(name, path):
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
