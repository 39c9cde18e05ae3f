"""Read the package's import graph and report what issue 12 asks the house to show.

Stdlib only, nothing is imported from the package: every ``.py`` under ``lpo/``,
``evals/`` and ``baselines/`` is parsed with ``ast`` and mapped to its import name
through ``pyproject.toml``'s ``package-dir`` (``evals/X.py`` is ``lpo.evals.X``,
``baselines/X.py`` is ``lpo.baselines.X``, ``lpo/cli/X.py`` is ``lpo.cli.X``). The root
``cli.py``, which only launches ``lpo.cli``, is read as the module ``cli``. Every import
statement counts, wherever it sits: module level, inside a function (the lazy imports
that hide cycles), or under ``if TYPE_CHECKING:``. An edge goes to what a statement
names: ``import a.b`` and ``from a.b import f`` to ``a.b``; ``from a import b`` to the
package ``a`` (its ``__init__`` runs and is read) and, when ``a.b`` is a module, to it too.
The parent packages that Python initialises on the way are not edges: counting them
would put every package whose ``__init__`` imports its own modules in a cycle.

It prints
  (a) import cycles: strongly connected components of more than one module;
  (b) modules outside ``lpo/world/`` that import ``lpo.world``, split into *dispatch*
      (the CLI and the bench runner ``lpo/bench/``, which may legitimately hand a
      ``world`` choice to the world) and *real-mode* (everything else, which must not);
  (c) modules longer than 600 lines.

    python scripts/house_check.py            # the report
    python scripts/house_check.py --json     # the same, machine-readable

``tests/test_house.py`` imports :func:`analyse` and checks the report against its
allow-lists.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 600
WORLD = "lpo.world"
# Modules that may hand a `world` choice to the world: the CLI and the bench runner.
DISPATCH_PREFIXES = ("lpo.cli", "lpo.bench")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    scope: str  # "module", "function" or "type-checking"


@dataclass
class Report:
    modules: dict[str, Path]
    lines: dict[str, int]
    edges: list[Edge]
    cycles: list[list[str]] = field(default_factory=list)
    world_dispatch: dict[str, list[Edge]] = field(default_factory=dict)
    world_real: dict[str, list[Edge]] = field(default_factory=dict)
    long_modules: dict[str, int] = field(default_factory=dict)


def package_dirs(root: Path = ROOT) -> dict[str, str]:
    """Import prefix -> folder, from pyproject.toml's ``[tool.setuptools] package-dir``."""
    with open(root / "pyproject.toml", "rb") as f:
        pyproject = tomllib.load(f)
    mapping = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    if not mapping:
        raise SystemExit("pyproject.toml has no [tool.setuptools] package-dir; cannot map folders")
    return dict(mapping)


def discover(root: Path = ROOT) -> dict[str, Path]:
    """Import name -> file, for every module of the package (and the root cli.py)."""
    modules: dict[str, Path] = {}
    seen: set[Path] = set()
    # Longest folders first, so nothing is claimed twice when folders nest.
    for prefix, folder in sorted(package_dirs(root).items(), key=lambda kv: -len(kv[1])):
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            if path.resolve() in seen:
                continue
            rel = path.relative_to(base).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            if name in modules:
                continue
            modules[name] = path
            seen.add(path.resolve())
    launcher = root / "cli.py"  # the top-level entry point; not installed, run from a checkout
    if launcher.exists():
        modules["cli"] = launcher
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside (attributes drop off)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """Every import of a package module in ``path``, with its line and scope."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    edges: list[Edge] = []

    def add(target: str | None, node: ast.stmt, scope: str) -> None:
        if target is not None and target != module:
            edge = Edge(module, target, node.lineno, scope)
            if edge not in edges:
                edges.append(edge)

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_scope = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                child_scope = "function" if scope == "module" else scope
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, "type-checking")
                for stmt in child.orelse:
                    visit_stmt(stmt, scope)
                continue
            visit_stmt(child, child_scope)

    def visit_stmt(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_resolve(alias.name, modules), node, scope)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                if node.level > 1:
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import mod` runs pkg (its __init__) and then the module pkg.mod:
            # both are edges. `from mod import f` is an edge to mod.
            add(_resolve(base, modules), node, scope)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    add(full, node, scope)
        visit(node, scope)

    visit(tree, "module")
    return edges


def strongly_connected(nodes: list[str], graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def _in_world(module: str) -> bool:
    return module == WORLD or module.startswith(WORLD + ".")


def analyse(root: Path = ROOT) -> Report:
    modules = discover(root)
    lines = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in modules.items()}
    edges = [e for m, p in sorted(modules.items()) for e in imports_of(m, p, modules)]
    report = Report(modules=modules, lines=lines, edges=edges)

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        graph[e.source].add(e.target)
    report.cycles = [c for c in strongly_connected(sorted(modules), graph) if len(c) > 1]

    for e in edges:
        if _in_world(e.source) or not _in_world(e.target):
            continue
        dispatch = any(e.source == p or e.source.startswith(p + ".") for p in DISPATCH_PREFIXES)
        bucket = report.world_dispatch if dispatch else report.world_real
        bucket.setdefault(e.source, []).append(e)

    report.long_modules = {m: n for m, n in sorted(lines.items()) if n > MAX_LINES}
    return report


def cycle_edges(report: Report, cycle: list[str]) -> list[Edge]:
    members = set(cycle)
    return [e for e in report.edges if e.source in members and e.target in members]


def _rel(report: Report, module: str) -> str:
    return str(report.modules[module].relative_to(ROOT))


def render(report: Report) -> str:
    out: list[str] = []
    out.append(f"modules: {len(report.modules)}, import edges: {len(report.edges)}")
    out.append("")
    out.append(f"(a) import cycles: {len(report.cycles)}")
    for cycle in report.cycles:
        out.append("  - " + " <-> ".join(cycle))
        for e in cycle_edges(report, cycle):
            out.append(f"      {e.source} -> {e.target}  ({_rel(report, e.source)}:{e.line}, {e.scope})")
    out.append("")
    for title, bucket in (
        ("(b) real-mode modules importing lpo.world", report.world_real),
        ("(b) dispatch modules (CLI, bench) importing lpo.world", report.world_dispatch),
    ):
        out.append(f"{title}: {len(bucket)}")
        for module, found in sorted(bucket.items()):
            targets = sorted({e.target for e in found})
            where = ", ".join(f"{e.line}{'' if e.scope == 'module' else ' ' + e.scope[0]}" for e in found)
            out.append(f"  - {module} ({_rel(report, module)}) -> {', '.join(targets)}  [lines {where}]")
        out.append("")
    out.append(f"(c) modules over {MAX_LINES} lines: {len(report.long_modules)}")
    for module, n in sorted(report.long_modules.items(), key=lambda kv: -kv[1]):
        out.append(f"  - {n:5d}  {module} ({_rel(report, module)})")
    out.append("")
    out.append("line marks: f = function-level import, t = under `if TYPE_CHECKING:`")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = analyse()
    if args.json:
        print(json.dumps({
            "cycles": report.cycles,
            "world_real": {m: sorted({e.target for e in es}) for m, es in report.world_real.items()},
            "world_dispatch": {m: sorted({e.target for e in es}) for m, es in report.world_dispatch.items()},
            "long_modules": report.long_modules,
        }, indent=2))
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
