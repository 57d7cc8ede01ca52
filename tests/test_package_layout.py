"""The code's layout: the runtime package the workers import (partner_pipeline, with dags/ and
plugins/) never imports the dev tools (partner_pipeline_dev: generator, demo, bench, local
services); no module imports itself back through others; `make run` does not load the generator."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from partner_pipeline.settings import PROJECT_ROOT

RUNTIME, DEV = "partner_pipeline", "partner_pipeline_dev"
INCLUDE = PROJECT_ROOT / "include"


def _module_name(path: Path) -> str:
    parts = path.relative_to(INCLUDE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in (RUNTIME, DEV) for p in sorted((INCLUDE / package).rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module `path` imports, anywhere in it (a function-level import counts too): for
    `from pkg import x`, pkg.x when that is a module, else pkg."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(path, name, set(modules)) if m in modules and m != name}
            for name, path in modules.items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_runtime_imports_nothing_from_the_dev_package():
    offenders = []
    runtime_files = [*(INCLUDE / RUNTIME).rglob("*.py"), *(PROJECT_ROOT / "dags").rglob("*.py"),
                     *(PROJECT_ROOT / "plugins").rglob("*.py")]
    for path in sorted(runtime_files):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} imports {n}" for n in names if _top(n) == DEV]
    assert not offenders, "the runtime must not import the dev tools:\n" + "\n".join(offenders)


def test_the_dev_package_exists_and_holds_the_tools():
    modules = _modules()
    for name in ("synth", "synth.identities", "synth.files", "synth.drops", "synth.truth", "synth.cli", "bench",
                 "bench_floor", "demo", "run", "local_s3", "local_airflow", "local_audience_api", "services", "upload"):
        assert f"{DEV}.{name}" in modules
        assert f"{RUNTIME}.{name}" not in modules


def test_no_import_cycle_among_modules():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_check_sees_a_function_level_import(tmp_path):
    """The checker reads imports inside functions too (the old run <-> local_airflow cycle was one)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from partner_pipeline_dev.run import main\n")
    assert _imports(module, "partner_pipeline_dev.x", {"partner_pipeline_dev.run"}) == {"partner_pipeline_dev.run"}


def _loaded_after_import(module: str) -> list[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return result.stdout.split()


def test_make_run_does_not_import_the_generator():
    loaded = _loaded_after_import(f"{DEV}.run")
    assert not [m for m in loaded if m == f"{DEV}.synth" or m.startswith(f"{DEV}.synth.")]


def test_the_nightly_tasks_do_not_import_the_dev_package():
    loaded = _loaded_after_import(f"{RUNTIME}.nightly")
    assert not [m for m in loaded if _top(m) == DEV]
