"""Import cycles inside src/tokenleap: exits 1 and prints them if there are any.

    python scripts/import_cycles.py

Reads every module's imports with `ast` (no code runs). Module-level imports form the graph
whose cycles are errors; imports inside functions (deferred on purpose, e.g. an optional heavy
dependency) are listed separately so a cycle hidden behind one is visible too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom | ast.Import, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    base = importer if is_package else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module or ""
    out = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
    return out or ([target] if target in modules else [])


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = {module_name(p): p for p in (ROOT / "tokenleap").rglob("*.py")}
    modules = set(files)
    top: dict[str, set[str]] = {m: set() for m in modules}
    deferred: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        package = path.name == "__init__.py"
        top_level = set(map(id, tree.body))
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(block.test) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in type_only:  # `if TYPE_CHECKING:` blocks never run
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges = resolve(name, package, node, modules)
                (top if id(node) in top_level else deferred)[name].update(e for e in edges if e != name)
    return top, deferred


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    top, deferred = graph()
    found = cycles(top)
    both = cycles({m: top[m] | deferred[m] for m in top})
    print(f"{len(top)} modules, {sum(map(len, top.values()))} module-level imports, "
          f"{sum(map(len, deferred.values()))} deferred")
    for comp in found:
        print("cycle (module level):", " <-> ".join(comp))
    for comp in both:
        if comp not in found:
            print("cycle through a deferred import:", " <-> ".join(comp))
    return 1 if found or both else 0


if __name__ == "__main__":
    sys.exit(main())
