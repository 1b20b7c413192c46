"""The layout holds: no role imports another role, the shared package imports no role, and no modules
import each other in a cycle (imports inside functions count too)."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROLES = ("rendezvous", "worker", "relay")
PACKAGES = ("shared", *ROLES)


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from package import module` names the module)."""
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def role_of(module: str) -> str:
    return module.split(".")[0]


def test_no_role_imports_another_role_and_shared_imports_no_role():
    crossings = sorted((module, target) for module, targets in project_imports().items() for target in targets
                       if role_of(target) != role_of(module) and role_of(target) in ROLES)
    assert crossings == []


def test_no_import_cycles():
    graph = project_imports()
    for name in graph:  # package __init__ modules are empty: an edge to a package is not a dependency
        graph[name] = {t for t in graph[name] if (ROOT / t.replace(".", "/")).with_suffix(".py").exists()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_walk_sees_imports():
    """The checks above would pass on an empty graph: make sure it is not empty."""
    graph = project_imports()
    assert "rendezvous.registry" in graph["rendezvous.http.routes"]
    assert "shared.host" in graph["worker.node"]
    assert {"worker", "relay"} & {role_of(t) for t in graph["shared.runner"]} == set()
