"""The package boundaries, read from the code itself (ast): a wrong import arrow fails here, not in review.

- ``artifact`` is a leaf: it imports none of ``models``, ``training``, ``service`` (nor torch).
- ``models`` imports only itself; ``service`` never imports ``models`` or ``training``; ``training`` imports
  nothing of ``service``.
- Inside ``service``: ``core`` imports nothing else of the service, ``engine`` and ``scoring`` never import
  ``api``, ``client`` imports none of the server (nor torch), and no route module imports another.
- No function in ``models/``, ``training/`` or ``service/`` is longer than 80 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("artifact", "models", "training", "service")
MAX_FUNCTION_LINES = 80


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute names (relative imports resolved), at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path).split(".")[: None if path.name == "__init__.py" else -1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def top(name: str) -> str:
    return name.split(".")[0]


FORBIDDEN = {
    "artifact": {"models", "training", "service", "torch"},
    "models": {"artifact", "training", "service"},
    "service": {"models", "training"},
    "training": {"service"},
}


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_in_the_allowed_directions(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules(package)
        for name in sorted(imported(path))
        if top(name) in FORBIDDEN[package]
    ]
    assert not wrong, wrong


def layer_imports(layer: str) -> dict[str, set[str]]:
    return {
        str(path.relative_to(ROOT)): {name for name in imported(path) if name.startswith("service.")}
        for path in modules(f"service/{layer}")
    }


@pytest.mark.parametrize(
    ("layer", "may_not"),
    [
        ("core", ("service.api", "service.engine", "service.scoring", "service.main")),
        ("engine", ("service.api", "service.main")),
        ("scoring", ("service.api", "service.main")),
        # the bulk-scoring client speaks HTTP only: none of the server's code (nor torch) comes with it
        ("client", ("service.api", "service.core", "service.engine", "service.scoring", "service.main")),
    ],
)
def test_service_layers_point_down(layer: str, may_not: tuple[str, ...]) -> None:
    wrong = [
        f"{where} imports {name}"
        for where, names in layer_imports(layer).items()
        for name in sorted(names)
        if name.startswith(may_not)
    ]
    assert not wrong, wrong


def test_the_client_does_not_bring_torch() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules("service/client")
        for name in sorted(imported(path))
        if top(name) in ("torch", "artifact", "fastapi", "starlette")
    ]
    assert modules("service/client") and not wrong, wrong


def test_no_route_imports_another_route() -> None:
    wrong = [
        f"{where} imports {name}"
        for where, names in layer_imports("api/routes").items()
        for name in sorted(names)
        if name.startswith("service.api.routes.")
    ]
    assert not wrong, wrong


def test_no_function_is_longer_than_80_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for package in ("models", "training", "service")
        for path in modules(package)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


def test_the_checks_see_a_wrong_arrow(tmp_path: Path) -> None:
    """The import reader resolves the forms a wrong import could take (guards against a vacuous test)."""
    source = tmp_path / "probe.py"
    source.write_text(
        "import models.flow\nfrom training import train\n\ndef f():\n    from service.core import config\n"
    )
    assert {"models.flow", "training", "training.train", "service.core", "service.core.config"} <= imported(source)
