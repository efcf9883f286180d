"""The shape of the source: functions short enough to read in one sitting (nanoGPT's standard).

The dataset generators under ``src/mmfuse/datasets/`` are exempt: each draws one synthetic
dataset top to bottom, and splitting the drawing would scatter its rules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "mmfuse"
EXEMPT = SOURCE / "datasets"
MAX_LINES = 60


def long_functions(tree: ast.AST, limit: int) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, length)`` of each function in ``tree`` longer than
    ``limit`` lines, counted from its ``def`` (decorators excluded) to its last line."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}."
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    found.append((name[:-1], child.lineno, length))
            visit(child, name)

    visit(tree, "")
    return found


def test_long_functions_are_found():
    """The check itself: a 61-line function is caught, nested ones named by their path."""
    body = "\n".join(f"        x{i} = {i}" for i in range(59))
    code = f"class A:\n    def f(self):\n{body}\n        return 0\n    def g(self):\n        pass\n"
    assert long_functions(ast.parse(code), MAX_LINES) == [("A.f", 2, 61)]
    assert long_functions(ast.parse(code), 61) == []


def test_no_function_over_60_lines():
    """Outside the dataset generators, no function is over ``MAX_LINES`` lines."""
    files = [p for p in sorted(SOURCE.rglob("*.py")) if not p.is_relative_to(EXEMPT)]
    assert len(files) > 20, f"found only {len(files)} source files under {SOURCE}"
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        offenders += [f"{path.relative_to(SOURCE.parent)}:{line} {name} ({length} lines)"
                      for name, line, length in long_functions(tree, MAX_LINES)]
    if offenders:
        pytest.fail(f"{len(offenders)} function(s) over {MAX_LINES} lines; split them into "
                    "named steps:\n" + "\n".join(offenders))


OUTPUT_TYPES = {"category", "binary", "number", "set", "text"}


def output_type_switches(root: Path) -> list[str]:
    """Places outside ``outputs/`` and ``datasets/`` that switch on an output type's name: a
    comparison of an output's ``type`` (or a ``kind``/``output_type`` variable) with one of the
    names, or a table keyed by them that includes ``set`` (a name only outputs have)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if {"outputs", "datasets"} & set(path.relative_to(root).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                names = {c.value for c in [node.left, *node.comparators]
                         if isinstance(c, ast.Constant)}
                for c in [node.left, *node.comparators]:
                    if isinstance(c, ast.Tuple | ast.List | ast.Set):
                        names |= {e.value for e in c.elts if isinstance(e, ast.Constant)}
                subject = [c for c in [node.left, *node.comparators]
                           if (isinstance(c, ast.Attribute) and c.attr == "type")
                           or (isinstance(c, ast.Name) and c.id in ("kind", "output_type"))]
                if subject and names & OUTPUT_TYPES:
                    found.append(f"{path}:{node.lineno}")
            elif isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if "set" in keys and len(keys & OUTPUT_TYPES) >= 2:
                    found.append(f"{path}:{node.lineno}")
    return found


def test_output_types_are_asked_not_switched_on():
    """An output type is one registered unit: the rest of mmfuse asks it (outputs/kind.py)
    instead of testing its name; issue 24 allows at most 3 such places."""
    places = output_type_switches(SOURCE)
    assert len(places) <= 3, places


def test_the_switch_finder_finds_a_switch(tmp_path):
    (tmp_path / "x.py").write_text('def f(o):\n    return o.type == "number"\n'
                                   'T = {"set": 1, "text": 2}\n')
    where = tmp_path / "x.py"
    assert sorted(output_type_switches(tmp_path)) == [f"{where}:2", f"{where}:3"]
