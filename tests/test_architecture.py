"""The layout is the architecture: the hospital (client/) and the coordinator (server/) meet
only in common/, which imports neither; the researcher's bench (lab/) may use both sides;
the `fedcmr` command (cli/) is the one place that names every side's commands.

Every module's imports are read with ast, those inside functions too, and so are strings
that name a fedcmr module (lazily imported handlers), so no edge hides in a late import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "client", "server", "lab", "cli")
#: package -> the packages it must never import
FORBIDDEN = {
    "common": {"client", "server", "lab", "cli"},
    "client": {"server", "lab", "cli"},
    "server": {"client", "lab", "cli"},
    "lab": {"cli"},
    "cli": set(),
}
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
