"""Static checks of the library's layering and its manners towards the caller's process.

Read from the source with ``ast`` (imports inside functions count too), so a new module or a
new lazy import is checked without editing this file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "neuralpath"

# Modules that drive a whole run; nothing below them may reach up into them.
RUN_LEVEL = (
    "neuralpath.runner",
    "neuralpath.study",
    "neuralpath.evaluation",
    "neuralpath.attribution",
    "neuralpath.transfer",
    "neuralpath.store",
    "neuralpath.report",
    "neuralpath.cli",
)
LOWER_PACKAGES = {
    "neuralpath.metrics": RUN_LEVEL + ("neuralpath.methods",),
    "neuralpath.methods": RUN_LEVEL,
}
# Calls that reseed a process-wide random number generator.
GLOBAL_RESEEDS = {
    ("torch", "manual_seed"),
    ("torch", "seed"),
    ("torch.random", "manual_seed"),
    ("torch.cuda", "manual_seed"),
    ("torch.cuda", "manual_seed_all"),
    ("random", "seed"),
    ("np.random", "seed"),
    ("numpy.random", "seed"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> list[Path]:
    """Every module of the library except the CLI (the program, which may seed its process)."""
    return [p for p in sorted(SRC.rglob("*.py")) if "cli" not in p.relative_to(SRC).parts]


def imported(path: Path) -> set[str]:
    """Absolute names of the neuralpath modules ``path`` imports, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name.startswith("neuralpath")}


def reaches(name: str, banned: tuple[str, ...]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


@pytest.mark.parametrize("package", sorted(LOWER_PACKAGES))
def test_lower_layers_do_not_import_the_run_level(package: str) -> None:
    """Metrics never import attribution (nor the methods), the methods (GEN-CNP's trainer
    included) never import the runner or anything else that drives a run."""
    offenders = {
        module_name(path): sorted(n for n in imported(path) if reaches(n, LOWER_PACKAGES[package]))
        for path in library_modules()
        if reaches(module_name(path), (package,))
    }
    assert offenders, f"no modules found under {package}"
    assert {m: names for m, names in offenders.items() if names} == {}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _forks_rng(node: ast.With) -> bool:
    return any(
        isinstance(item.context_expr, ast.Call)
        and _dotted(item.context_expr.func).endswith("fork_rng")
        for item in node.items
    )


def global_reseeds(source: str) -> list[int]:
    """Lines of ``source`` that reseed a global generator outside a ``fork_rng`` block."""
    found: list[int] = []

    def visit(node: ast.AST, forked: bool) -> None:
        if isinstance(node, ast.With | ast.AsyncWith):
            forked = forked or _forks_rng(node)  # type: ignore[arg-type]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = _dotted(node.func.value)
            if (owner, node.func.attr) in GLOBAL_RESEEDS and not forked:
                found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, forked)

    visit(ast.parse(source), False)
    return found


def test_the_library_never_reseeds_the_global_rng() -> None:
    """Seeded work runs on its own generators or inside ``torch.random.fork_rng``, so calling the
    library leaves the caller's random streams where they were (study.py included)."""
    offenders = {
        module_name(path): lines
        for path in library_modules()
        if (lines := global_reseeds(path.read_text()))
    }
    assert offenders == {}


def test_the_reseed_check_sees_a_reseed() -> None:
    """The static check above finds a bare reseed and accepts one inside ``fork_rng``."""
    source = "import torch\ntorch.manual_seed(0)\nwith torch.random.fork_rng():\n    torch.seed()\n"
    assert global_reseeds(source) == [2]
    assert global_reseeds("import random\ndef f():\n    random.seed(3)\n") == [3]
