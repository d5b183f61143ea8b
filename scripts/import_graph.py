#!/usr/bin/env python3
"""Print fabtier's import graph and check its layering.

    python3 scripts/import_graph.py            # module -> modules it imports, then packages
    python3 scripts/import_graph.py --check    # exit 1 on an import cycle or an upward import

Every import counts, also one inside a function or under `if TYPE_CHECKING:`: a lazy import
hides a dependency, it does not remove it. Packages are layered, lowest first; a module may
import its own package and the layers below it, never a layer above:

    core                 errors, units, clock, settings, records, protocols
    ingest, simulator    the path of a message; the fab model and load generator
    tiers                hot ring, unsealed buffer, stores, Parquet, lake, warm store, sinks
    alerts               rules, recipes, lot context, engine, outbox, alert sinks
    lifecycle            tiering jobs, scheduler, audit trail, policy, Glue
    analytics            the SQL session and its sources
    fabtier, dashboard   configuration loading, the pipeline's roles, API, CLI, benchmarks;
                         the operators' dashboard (a process of its own)
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("ingest", "simulator"),
    ("tiers",),
    ("alerts",),
    ("lifecycle",),
    ("analytics",),
    ("fabtier", "dashboard"),
)
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every package of LAYERS under `root`."""
    found = {}
    for package in LEVEL:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in its file)."""
    known = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where a lower layer imports a higher one."""
    return sorted((source, target) for source, targets in graph.items() for target in targets
                  if LEVEL[target.split(".")[0]] > LEVEL[source.split(".")[0]])


def package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {package: set() for package in LEVEL}
    for source, targets in graph.items():
        for target in targets:
            if source.split(".")[0] != target.split(".")[0]:
                edges[source.split(".")[0]].add(target.split(".")[0])
    return edges


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 on a cycle or an upward import")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    graph = imports(args.root)
    found_cycles, violations = cycles(graph), upward(graph)
    if not args.check:
        for module in sorted(graph):
            print(f"{module} -> {', '.join(sorted(graph[module])) or '-'}")
        print()
        for package, targets in package_edges(graph).items():
            print(f"package {package} (layer {LEVEL[package]}) -> {', '.join(sorted(targets)) or '-'}")
        print()
    for group in found_cycles:
        print("import cycle: " + " -> ".join(group))
    for source, target in violations:
        print(f"upward import: {source} (layer {LEVEL[source.split('.')[0]]}) imports "
              f"{target} (layer {LEVEL[target.split('.')[0]]})")
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, "
          f"{len(found_cycles)} cycle(s), {len(violations)} upward import(s)")
    return 1 if found_cycles or violations else 0


if __name__ == "__main__":
    sys.exit(main())
