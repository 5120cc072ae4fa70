"""The house rules of the layout: dependencies point one way, no import circles, each module imports.

data_pipeline imports nothing of pretrain or launcher; pretrain nothing of launcher; launcher of
pretrain only the torch-free config package. The module graph (what each module imports, read
with `ast`) has no cycle, and each module imports in a fresh interpreter state by itself (a
package `__init__` that re-exports must not make a child importing first fail).
"""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.helpers.paths import REPO

PACKAGES = ("data_pipeline", "pretrain", "launcher")


def project_modules() -> dict[str, ast.Module]:
    """Every module of the three packages by dotted name (`__main__` modules left out), parsed."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = ast.parse(path.read_text(encoding="utf-8"))
    return modules


def imports_of(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The project modules `name` imports anywhere in its body (`from a import b` counts a.b when b is a
    module), with each module's parent packages, which Python imports first."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & known
    found.discard(name)
    return found


def test_dependencies_point_one_way():
    modules = project_modules()
    known = set(modules)
    allowed = {
        "data_pipeline": {"data_pipeline"},
        "pretrain": {"data_pipeline", "pretrain"},
        "launcher": {"data_pipeline", "launcher", "pretrain", "pretrain.config"},
    }
    for name, tree in modules.items():
        package = name.split(".")[0]
        for target in imports_of(name, tree, known):
            assert target.split(".")[0] in allowed[package], f"{name} imports {target}"
            if package == "launcher" and target.startswith("pretrain."):
                assert target.startswith("pretrain.config"), f"{name} imports {target}"


def test_the_launcher_reaches_only_the_torch_free_part_of_pretrain():
    """What the launcher loads of pretrain, followed through every import: the config package, its error
    type and the model registry with each architecture's config section and what the sections share
    (tests/launcher checks that neither torch nor numpy is loaded)."""
    modules = project_modules()
    known = set(modules)
    reached, todo = set(), [name for name in modules if name.startswith("launcher")]
    while todo:
        name = todo.pop()
        for target in imports_of(name, modules[name], known) - reached:
            reached.add(target)
            todo.append(target)
    torch_free = {
        "pretrain",
        "pretrain.errors",
        "pretrain.models",
        "pretrain.models.registry",
        "pretrain.models.architecture",
        "pretrain.models.model_section",
    }
    for name in sorted(n for n in reached if n.startswith("pretrain")):
        # an architecture's package (its __init__ imports nothing) and its config section
        in_architecture = name.startswith("pretrain.models.") and (
            name.endswith(".config") or (REPO / name.replace(".", "/") / "__init__.py").is_file()
        )
        assert name in torch_free or name.startswith("pretrain.config") or in_architecture, name


def test_no_import_circles():
    modules = project_modules()
    known = set(modules)
    # A package's own `__init__` importing its children is how re-exports work, not a circle.
    graph = {
        name: {t for t in imports_of(name, tree, known) if not name.startswith(f"{t}.")}
        for name, tree in modules.items()
    }
    done, active, path = set(), set(), []

    def visit(name: str) -> None:
        active.add(name)
        path.append(name)
        for target in sorted(graph[name]):
            assert target not in active, (
                f"import circle: {' -> '.join(path[path.index(target) :] + [target])}"
            )
            if target not in done:
                visit(target)
        active.discard(name)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name)


def test_every_module_imports_first():
    code = (
        "import importlib, sys\n"
        f"names = {sorted(project_modules())!r}\n"
        "failed = []\n"
        f"packages = {set(PACKAGES)!r}\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in packages]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
