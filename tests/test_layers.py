"""The package's layers run one way (docs/design.md §4): every import of a privatenet module
points to the same layer or a lower one, none hides inside a function, and the imports form
no circle."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Bottom to top. A module belongs to the first entry that is it or a package above it.
LAYERS = (
    ("base", ("privatenet.errors", "privatenet.version", "privatenet.checks", "privatenet.runfiles",
              "privatenet.readers", "privatenet.storage", "privatenet.settings")),
    ("data", ("privatenet.data",)),
    ("models", ("privatenet.models",)),
    ("method", ("privatenet.losses", "privatenet.metrics", "privatenet.regularizer",
                "privatenet.erasure", "privatenet.bottleneck")),
    ("training", ("privatenet.train",)),
    ("audit and deployment", ("privatenet.auditing", "privatenet.export", "privatenet.bench",
                              "privatenet.video")),
    ("application", ("privatenet.app",)),
    ("interface", ("privatenet.cli", "privatenet.options", "privatenet.console",
                   "privatenet.__main__",
                   "privatenet")),
)


def layer_of(module: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return i
    raise AssertionError(f"{module} is in no layer; add it to LAYERS")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every privatenet import in ``path``; ``from
    privatenet.x import y`` counts as ``privatenet.x.y`` when ``y`` is a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if _is_module(f"{node.module}.{a.name}")
                     else node.module for a in node.names]
        for name in names:
            if name == "privatenet" or name.startswith("privatenet."):
                out.append((name, node.lineno, id(node) in top))
    return out


def _is_module(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _graph() -> dict[str, list[tuple[str, int, bool, Path]]]:
    return {_module_name(p): [(m, line, top, p) for m, line, top in _imports(p)]
            for p in sorted(SRC.rglob("*.py"))}


def test_every_module_has_a_layer_and_no_import_runs_upward():
    upward = []
    for module, imports in _graph().items():
        for target, line, _, path in imports:
            if layer_of(target) > layer_of(module):
                upward.append(f"{path.relative_to(SRC)}:{line} ({LAYERS[layer_of(module)][0]}) "
                              f"imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_no_privatenet_import_hides_inside_a_function():
    """Only optional extras (onnx, av, cv2) are imported where they are used; an import of our
    own inside a function would hide an arrow, or a circle, from the checks here."""
    local = [f"{path.relative_to(SRC)}:{line} imports {target}"
             for imports in _graph().values()
             for target, line, top, path in imports if not top]
    assert not local, "imports inside functions (move them to the top):\n" + "\n".join(local)


def test_the_top_level_imports_form_no_circle():
    graph = _graph()
    edges = {m: sorted({t for t, _, top, _ in imports if top and t in graph and t != m})
             for m, imports in graph.items()}
    # A module imports its package's __init__ first, so an edge into a package is an edge
    # into the package itself, which the check already covers.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(edges):
        if m not in state and (circle := visit(m)):
            pytest.fail("a circle of imports: " + " -> ".join(circle))


def test_the_check_sees_an_upward_import(tmp_path):
    """The checks above can fail: a model module importing the training package is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from privatenet.train.loop import fit\n")
    [(target, line, top)] = _imports(bad)
    assert (target, line, top) == ("privatenet.train.loop", 2, False)
    assert layer_of(target) > layer_of("privatenet.models.zoo")
