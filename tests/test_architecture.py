"""The layout is the architecture: the hospital (client/) and the coordinator (server/) meet
only in common/ (the contract), which imports neither; support/ (process plumbing both sides
use: Flower's processes and environment, the CLI's options) imports only the contract; the
researcher's bench (lab/) may use both sides; the `fedcmr` command (cli/) is the one place
that names every side's commands. No module imports itself back through others (no import
cycle), and no module outside the model registry branches on a model's name.

Every module's imports are read with ast, those inside functions and under TYPE_CHECKING
too, and so are strings that name a fedcmr module (lazily imported handlers), so no edge
hides in a late import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "support", "client", "server", "lab", "cli")
#: package -> the packages it must never import
FORBIDDEN = {
    "common": {"support", "client", "server", "lab", "cli"},
    "support": {"client", "server", "lab", "cli"},
    "client": {"server", "lab", "cli"},
    "server": {"client", "lab", "cli"},
    "lab": {"cli"},
    "cli": set(),
}
#: Where a model's name may be compared with a literal: the registry and the models.
MODEL_HOME = ("common/models/",)
MAX_LINES = 400


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def imported_packages(source: str) -> list[tuple[int, str]]:
    """(line, fedcmr package) for every import of, or string naming, a fedcmr module."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [node.value.split(":")[0]] if node.value.startswith("fedcmr.") else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "fedcmr" and len(parts) > 1 and parts[1] in PACKAGES:
                found.append((node.lineno, parts[1]))
    return found


def violations(package: str, path: str, source: str) -> list[str]:
    return [f"{path}:{line}: {package}/ imports {target}/"
            for line, target in imported_packages(source) if target in FORBIDDEN[package]]


def test_the_sides_meet_only_in_common():
    found = []
    for path in modules():
        package = path.relative_to(REPO).parts[0]
        found += violations(package, str(path.relative_to(REPO)), path.read_text())
    assert not found, "forbidden imports:\n" + "\n".join(found)


@pytest.mark.parametrize(("package", "source"), [
    ("client", "from fedcmr.server.settings import FederationSettings\n"),
    ("server", "def f():\n    from fedcmr.client import site_work\n"),
    ("common", "import fedcmr.lab.synthetic\n"),
    ("common", "HANDLER = 'fedcmr.client.commands:cmd_prepare'\n"),
])
def test_a_forbidden_edge_is_named(package, source):
    """The check bites: each of these edges is reported with its file and line."""
    (problem,) = violations(package, "x.py", source)
    assert problem.startswith(f"x.py:{source.count(chr(10))}: {package}/ imports")


def test_the_allowed_edges_pass():
    assert not violations("client", "x.py", "from fedcmr.common.learning import data\n")
    assert not violations("lab", "x.py", "from fedcmr.server import cli\nimport fedcmr.client\n")


def test_files_do_one_job_each():
    """No source file over about MAX_LINES lines."""
    long = [f"{p.relative_to(REPO)}: {n} lines" for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, long


def test_the_installed_packages_are_the_folders():
    """pyproject maps every folder with code (and each sub-package) to an installed name."""
    import tomllib

    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {str(p.parent.relative_to(REPO)).replace("/", ".") for pkg in PACKAGES
               for p in (REPO / pkg).rglob("__init__.py")}
    assert {f"fedcmr.{f}" for f in folders} == set(setup["packages"])
    assert {setup["package-dir"][f"fedcmr.{pkg}"] for pkg in PACKAGES} == set(PACKAGES)


def test_every_module_a_string_names_exists():
    """A lazily imported module or handler named in a string ("fedcmr.x.y:func", a list of
    modules to preload) names a module that exists: a move cannot leave one behind."""
    known = {module_name(p) for p in modules()}
    missing = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value.split(":")[0]
                if name.startswith("fedcmr.") and " " not in name and name not in known \
                        and name.split(".")[1] in PACKAGES:
                    missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value}")
    assert not missing, missing


# -- no import cycle ---------------------------------------------------------------------
def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(["fedcmr", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the fedcmr modules it imports (every import statement, wherever it is;
    `from package import module` names the module)."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph[module] |= {t for t in targets if t in sources and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_back():
    sources = {module_name(p): p.read_text() for p in modules()}
    assert not cycles(import_graph(sources)), cycles(import_graph(sources))


def test_a_cycle_is_found_through_late_and_type_checking_imports():
    """The check bites: a cycle of three whose edges hide in a function and under
    TYPE_CHECKING is named; a chain is not a cycle."""
    sources = {"fedcmr.client.a": "def f():\n    from fedcmr.client import b\n",
               "fedcmr.client.b": "from fedcmr.client.c import X\n",
               "fedcmr.client.c": "if TYPE_CHECKING:\n    import fedcmr.client.a\n",
               "fedcmr.client.d": "import fedcmr.client.a\n"}
    assert cycles(import_graph(sources)) == [["fedcmr.client.a", "fedcmr.client.b",
                                              "fedcmr.client.c"]]
    del sources["fedcmr.client.c"]
    assert cycles(import_graph(sources)) == []


# -- models are plug-ins -----------------------------------------------------------------
def model_name_branches(path: str, source: str) -> list[str]:
    """Comparisons of anything with a built-in model's name ("cnn" == ..., ... in
    ("cnn", "measures")): a branch on a model that belongs in its plug-in."""
    from fedcmr.common.models.registry import BUILTIN

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            for part in (node.left, *node.comparators):
                values = ([part] if isinstance(part, ast.Constant)
                          else list(getattr(part, "elts", [])))
                if any(isinstance(v, ast.Constant) and v.value in BUILTIN for v in values):
                    found.append(f"{path}:{node.lineno}: compares with a model's name")
    return found


def test_no_branch_on_a_model_name_outside_the_registry():
    found = []
    for path in modules():
        rel = str(path.relative_to(REPO))
        if not rel.startswith(MODEL_HOME):
            found += model_name_branches(rel, path.read_text())
    assert not found, "\n".join(found)


def test_a_model_name_branch_is_named():
    assert model_name_branches("x.py", "if run.model == 'measures':\n    pass\n") == [
        "x.py:1: compares with a model's name"]
    assert model_name_branches("x.py", "ok = name in ('cnn', 'measures')\n")
    assert not model_name_branches("x.py", "if run.model == DEFAULT_MODEL:\n    pass\n")
