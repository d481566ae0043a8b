"""The house rules a newcomer relies on, kept by walking the package: no import cycle, no module
over ~500 lines, and every shared fact spelt once (in `esper_lab.contracts`)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from esper_lab.contracts import ARMS, HEADS, REWARD_PARTS, Action, MemberStatus, RewardParts, RunKind, RunStatus

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "esper_lab"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(path: Path) -> set[str]:
    """The esper_lab modules `path` imports anywhere (functions included), but not under
    `if TYPE_CHECKING:` (annotations only: never executed, so never part of a cycle)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING" for n in ast.walk(node)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != module_name(path):
                found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = {name: runtime_imports(path) for name, path in MODULES.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{lines} lines: split it by concept"


# --- one vocabulary --------------------------------------------------------------------------------
def test_the_heads_and_reward_parts_are_derived_from_their_records():
    assert HEADS == tuple(Action.__dataclass_fields__)
    assert REWARD_PARTS == tuple(RewardParts.__dataclass_fields__)


# Names a study's code compares and writes: spelt as a literal only in `esper_lab.contracts`.
VOCABULARY = {*ARMS, *RunKind, *RunStatus, *MemberStatus} - {
    "random",
    "static",
    "heuristic",
    "oracle",
    "baseline",
    "running",
    "audit",
    "ppo",
    "planter",
}
# The exceptions are other things' names too (the `random` module, a `static` host, the CLI's
# `heuristic` policy and `audit` command, a pack's `baseline` cohort, the settings' `ppo` section
# and `planter` key): the others are enough to catch a re-spelt list.


def source_strings(path: Path) -> list[tuple[int, str]]:
    """Every string constant in a module or a notebook's code cells, docstrings excepted."""
    if path.suffix == ".ipynb":
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        texts = ["".join(c["source"]) for c in cells]
    else:
        texts = [path.read_text()]
    found = []
    for text in texts:
        tree = ast.parse("\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("%", "!"))))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        found += [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "contracts" not in p.parts) + sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shared_names_are_spelt_only_in_contracts(path):
    respelt = [(line, value) for line, value in source_strings(path) if value in VOCABULARY]
    assert respelt == [], f"use the contracts' names (ARMS, RunKind, RunStatus, MemberStatus) instead of {respelt}"
