"""The package's rooms and the one-way arrows between them (README, Layout), read from the source
with `ast`: every import counts, including those inside functions."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlservice"
# Each room may import from rooms of lower rank and from itself; rank 0 is what every layer shares
# (its rooms import one another, loop-free: see test_no_import_loops).
RANK = {"config": 0, "errors": 0, "paths": 0, "agent": 1, "data": 2, "training": 3, "tracking": 4,
        "runtime": 5, "jobs": 6, "commands": 7, "cli": 8}
# Third-party packages that belong to one edge of the service only.
OWNERS = {"ray": {"runtime", "jobs", "commands"}, "mlflow": {"tracking"}}
TOP_LEVEL = {"__init__.py", "cli.py", "errors.py", "paths.py"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (`from rlservice.x import y` counts as both
    `rlservice.x` and `rlservice.x.y`, since y may be a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
MODULES = set(SOURCES)


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "rlservice" and len(parts) > 1 else None


def rlservice_imports(module: str) -> set[str]:
    return {name for name in imports(SOURCES[module]) if name in MODULES and name != "rlservice"}


def test_every_room_has_a_rank():
    assert {room(m) for m in MODULES if room(m)} <= set(RANK)


def test_the_top_of_the_package_holds_only_what_every_layer_shares():
    loose = {p.name for p in PACKAGE.glob("*.py")}
    assert loose <= TOP_LEVEL, f"modules loose at the top of rlservice/: {sorted(loose - TOP_LEVEL)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m)))
def test_arrows_run_one_way(module):
    mine = RANK[room(module)]
    upward = sorted(name for name in rlservice_imports(module)
                    if RANK[room(name)] > mine)
    assert not upward, f"{module} imports from a room above its own: {upward}"


@pytest.mark.parametrize("package, owners", sorted(OWNERS.items()))
def test_ray_and_mlflow_stay_at_their_edges(package, owners):
    offenders = sorted(m for m in MODULES if room(m) and room(m) not in owners
                       and any(n == package or n.startswith(package + ".") for n in imports(SOURCES[m])))
    assert not offenders, f"{package} imported outside {sorted(owners)}: {offenders}"


def test_no_import_loops():
    graph = {m: rlservice_imports(m) - {m} for m in MODULES}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                pytest.fail("import loop: " + " -> ".join(cycle))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_a_broken_rule(tmp_path):
    """The rules above fail on a module that breaks them (a checker that never fails checks nothing)."""
    bad = tmp_path / "learner.py"
    bad.write_text("def f():\n    from rlservice.data.buffer import ReplayBuffer\n    import ray\n")
    assert {"rlservice.data.buffer", "ray"} <= imports(bad)
    assert RANK[room("rlservice.data.buffer")] > RANK["agent"]
