"""The folder tree is the architecture: imports point down the layer order and never loop.

Every `import` in src/kmsgate counts, wherever it stands: module level, inside a function,
and under `if TYPE_CHECKING:`. An annotation-only import still says "this module knows
that one", so it must respect the same order; a cycle hidden behind TYPE_CHECKING or a
function-level import is still a cycle in the design. Imports made by name at run time
(`importlib.import_module`, `python -m`) are not seen: the only ones are the CLI loading
its own command modules and the record writer's child process.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import kmsgate
from kmsgate.errors import KmsgateError

SRC = Path(kmsgate.__file__).parent

# Lowest first. A module may import its own layer and the layers below it. Each name is the
# first component under kmsgate (a package or a top-level module); `kmsgate` is the root
# package itself, which holds only __version__.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("kmsgate", "errors", "values", "uuids", "heap", "_native", "file_modes"),
    ("net", "systemd"),
    ("protocol",),
    ("catalog",),
    ("observability",),
    ("store",),
    ("recording",),
    ("auth",),
    ("access",),
    ("config",),
    ("dns",),
    ("client",),
    ("server",),
    ("web",),
    ("node",),
    ("cli",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

# Exceptions used as control flow, not errors: they need not derive from KmsgateError.
NOT_ERRORS = {"kmsgate.web.context.LoginRequired"}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `root` (a kmsgate package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported kmsgate module, line) for every import statement in the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield (submodule if submodule in known else target), node.lineno


def import_graph(root: Path) -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Module -> the kmsgate modules it imports, and the first line of each edge."""
    found = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in found}
    lines: dict[tuple[str, str], int] = {}
    for name, path in found.items():
        for target, line in imports(name, path, set(found)):
            if target.split(".")[0] != root.name or target == name:
                continue
            graph[name].add(target)
            lines.setdefault((name, target), line)
    return graph, lines


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layering_problems(root: Path) -> list[str]:
    """One line per import that points up the layer order, per cycle and per unplaced name."""
    graph, lines = import_graph(root)
    problems = []
    for module in sorted(graph):
        if layer_of(module) not in RANK:
            problems.append(f"{module}: {layer_of(module)!r} has no place in LAYERS")
            continue
        for target in sorted(graph[module]):
            if RANK.get(layer_of(target), len(LAYERS)) > RANK[layer_of(module)]:
                problems.append(
                    f"{module}:{lines[module, target]} imports {target}, a higher layer "
                    f"({layer_of(module)} < {layer_of(target)})"
                )
    for component in cycles(graph):
        members = set(component)
        edges = [
            f"{source}:{lines[source, target]} -> {target}"
            for source in component
            for target in sorted(graph[source] & members)
        ]
        problems.append("import cycle: " + "; ".join(edges))
    return problems


def test_imports_point_down_the_layers_and_never_loop() -> None:
    problems = layering_problems(SRC)
    assert not problems, "\n".join(problems)


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / "kmsgate" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "kmsgate"


def test_the_checker_sees_upward_imports_wherever_they_stand(tmp_path: Path) -> None:
    """A function-level and a TYPE_CHECKING import up the order are both reported."""
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "store/__init__.py": "",
            "store/a.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from kmsgate.web.app import App\n"
                "def f():\n    from kmsgate.server import host\n"
            ),
            "web/__init__.py": "",
            "web/app.py": "from kmsgate.store.a import f\n",
            "server/__init__.py": "",
            "server/host.py": "from . import relay\n",
            "server/relay.py": "from .host import x\n",
        },
    )
    problems = layering_problems(root)
    assert "kmsgate.store.a:3 imports kmsgate.web.app, a higher layer (store < web)" in problems
    assert "kmsgate.store.a:5 imports kmsgate.server.host, a higher layer (store < server)" in (
        problems
    )
    assert (
        "import cycle: kmsgate.server.host:1 -> kmsgate.server.relay; "
        "kmsgate.server.relay:1 -> kmsgate.server.host"
    ) in problems
    assert not any(problem.startswith("kmsgate.web.app") for problem in problems)


def test_the_checker_reports_a_package_without_a_layer(tmp_path: Path) -> None:
    root = _write(tmp_path, {"__init__.py": "", "gadgets/__init__.py": ""})
    assert layering_problems(root) == ["kmsgate.gadgets: 'gadgets' has no place in LAYERS"]


def test_every_exception_kmsgate_defines_is_a_kmsgate_error() -> None:
    """`except KmsgateError` catches every error kmsgate raises of its own."""
    strays = []
    for info in pkgutil.walk_packages([str(SRC)], "kmsgate."):
        if info.name.startswith("kmsgate.store.migrations"):
            continue  # Alembic runs these inside its own context
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
                and f"{info.name}.{name}" not in NOT_ERRORS
                and not issubclass(value, KmsgateError)
            ):
                strays.append(f"{info.name}.{name}")
    assert not strays, f"not derived from KmsgateError: {strays}"
