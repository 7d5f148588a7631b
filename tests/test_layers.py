"""The layers, checked over the source: the library imports no orchestrator or CLI, nothing imports the
CLI but its entry point, and project modules form no import cycle (imports inside functions count)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("anitrack", "flows", "tasks", "deployments", "schemas")
APPLICATION = {"anitrack.cli", "anitrack.__main__"}
ORCHESTRATION = ("flows", "tasks", "deployments", "prefect", "prefect_dask", "dask", "distributed")
PRESENTATION = ("typer", "click", "rich")


def layer(module: str) -> str:
    if module in APPLICATION:
        return "application"
    if module.split(".")[0] in ("flows", "tasks", "deployments"):
        return "orchestrator"
    return "library"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, module: str) -> set[str]:
    """Every module an import statement in the file names, at any depth (lazy imports count)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return out


def graph() -> nx.DiGraph:
    known = modules()
    g = nx.DiGraph()
    g.add_nodes_from(known)
    for module, path in known.items():
        for name in imports(path, module):
            if name in known and name != module:
                g.add_edge(module, name)
    return g


def test_no_layer_imports_a_higher_one():
    wrong = []
    for module, path in modules().items():
        for name in imports(path, module):
            top = name.split(".")[0]
            if layer(module) == "library" and (top in ORCHESTRATION or top in PRESENTATION or name in APPLICATION):
                wrong.append(f"{module} imports {name}")
            if layer(module) == "orchestrator" and (top in PRESENTATION or name in APPLICATION):
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_project_modules_form_no_import_cycle():
    cycles = list(nx.simple_cycles(graph()))
    assert not cycles, "\n".join(" -> ".join(c + c[:1]) for c in cycles[:10])


def test_the_episode_pipeline_loads_no_orchestrator_or_terminal_library():
    """The per-episode child process (``python -m anitrack.job``) imports only the library."""
    probe = ("import sys, anitrack.job, anitrack.episode; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))")
    loaded = subprocess.run([sys.executable, "-c", probe, *ORCHESTRATION, *PRESENTATION], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
