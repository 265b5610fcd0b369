"""The test suite runs as the README says: plain `pytest` from a fresh clone, and CI runs
exactly that command."""

import ast
import re
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_test_imports_the_tests_package_or_conftest():
    # Plain `pytest` puts tests/ (not the checkout) on sys.path: `tests.x` is not importable,
    # and conftest is pytest's to load, not a module to import.
    bad = {str(p.relative_to(HERE)): sorted(n for n in _imports(p)
                                            if n == "conftest" or n.split(".")[0] == "tests")
           for p in HERE.rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_ci_runs_the_readme_test_command_word_for_word():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^pip install .*\.\[dev\].* && pytest$", readme, flags=re.M)
    assert len(commands) == 1, commands
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # .ci/run reads that very line out of the README and runs it.
    assert "README.md" in ci and 'bash -c "$readme_tests"' in ci
    assert not re.search(r"python[0-9.]* -m pytest", ci)
