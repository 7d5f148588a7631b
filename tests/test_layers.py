"""The layers, checked over the source: the library imports no orchestrator or CLI, nothing imports the
CLI but its entry point, and project modules form no import cycle (imports inside functions count)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
# the source folders and the package each installs as (pyproject's package-dir)
PACKAGES = {"anitrack": "anitrack", "flows": "anitrack.flows", "tasks": "anitrack.tasks",
            "schemas": "anitrack.schemas"}
APPLICATION = ("anitrack.cli", "anitrack.__main__", "anitrack.web")  # and the modules under them
ORCHESTRATOR = ("anitrack.flows", "anitrack.tasks")
THIRD_PARTY_ORCHESTRATION = ("prefect", "prefect_dask", "dask", "distributed")
PRESENTATION = ("typer", "click", "rich", "fastapi", "starlette", "uvicorn", "jinja2")


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def layer(module: str) -> str:
    if within(module, APPLICATION):
        return "application"
    if within(module, ORCHESTRATOR):
        return "orchestrator"
    return "library"


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
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
            orchestration = top in THIRD_PARTY_ORCHESTRATION or layer(name) == "orchestrator"
            if layer(module) == "library" and (orchestration or top in PRESENTATION or layer(name) == "application"):
                wrong.append(f"{module} imports {name}")
            if layer(module) == "orchestrator" and (top in PRESENTATION or layer(name) == "application"):
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_project_modules_form_no_import_cycle():
    cycles = list(nx.simple_cycles(graph()))
    assert not cycles, "\n".join(" -> ".join(c + c[:1]) for c in cycles[:10])


def package_of(module: str) -> str:
    """The unit a package-level cycle is counted between: anitrack's top-level modules and subpackages."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_packages_form_no_import_cycle():
    """Modules may avoid a cycle by importing inside functions; packages may not reach into each other both
    ways either (one package's modules importing another's, and back)."""
    known = modules()
    g = nx.DiGraph()
    for module, path in known.items():
        for name in imports(path, module):
            if name in known and package_of(name) != package_of(module):
                g.add_edge(package_of(module), package_of(name))
    cycles = list(nx.simple_cycles(g))
    assert not cycles, "\n".join(" -> ".join(c + c[:1]) for c in cycles[:10])


def test_the_wheel_installs_nothing_but_anitrack(tmp_path):
    """`pip install anitrack` puts only anitrack into site-packages: flows/, tasks/ and schemas/ go under it,
    with the review app's static files."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    names = zipfile.ZipFile(next(tmp_path.glob("anitrack-*.whl"))).namelist()
    assert {n.split("/")[0] for n in names} == {"anitrack", next(n.split("/")[0] for n in names if ".dist-info" in n)}
    for module in ("anitrack/flows/ingest.py", "anitrack/tasks/ingest.py", "anitrack/schemas/tables.py",
                   "anitrack/web/static/review.js"):
        assert module in names, module


def test_importing_the_flows_changes_no_prefect_setting():
    probe = ("import os; before = {k: v for k, v in os.environ.items() if k.startswith('PREFECT_')}; "
             "import anitrack.flows.ingest, anitrack.flows.service, anitrack.tasks.ingest, anitrack.cli; "
             "after = {k: v for k, v in os.environ.items() if k.startswith('PREFECT_')}; print(before == after)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PREFECT_")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_the_episode_pipeline_loads_no_orchestrator_or_terminal_library():
    """The per-episode child process (``python -m anitrack.worker``) imports only the library."""
    probe = ("import sys, anitrack.worker, anitrack.episode; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))")
    loaded = subprocess.run([sys.executable, "-c", probe, *THIRD_PARTY_ORCHESTRATION, *PRESENTATION],
                            cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def lock_calls() -> list[str]:
    """Where the source takes a series lock: calls of ``.lock(`` or ``series_lock(`` outside their definitions."""
    found = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name in ("lock", "series_lock"):
                    found.append(f"{module}:{node.lineno} {name}")
    return found


def test_the_series_lock_is_taken_in_one_place():
    """Only the orchestrator's ``series_lock`` takes ``Lake.lock``; the flows and the command line reach it
    through ``series_lock``, and the library takes no lock of its own."""
    calls = lock_calls()
    assert [c for c in calls if c.endswith(" lock")] == [next(c for c in calls if c.startswith("anitrack.flows.executor:")
                                                             and c.endswith(" lock"))], calls
    users = {c.split(":")[0] for c in calls if c.endswith("series_lock")}
    assert users <= {"anitrack.flows.executor", "anitrack.flows.ingest", "anitrack.flows.identify",
                     "anitrack.flows.backfill", "anitrack.flows.corrections",
                     "anitrack.cli.pipeline"}, users
    assert not [c for c in calls if layer(c.split(":")[0]) == "library"], calls


def test_no_library_module_runs_episodes_in_its_own_pool():
    """Episodes run as tasks of the flows' task runner; the only pools in the library are the detectors'
    own inside one episode (animeface's processes, the hub detectors' one thread)."""
    pools = {m for m, path in modules().items() if layer(m) == "library"
             and ("ThreadPoolExecutor" in path.read_text() or "ProcessPoolExecutor" in path.read_text())}
    assert pools == {"anitrack.detect", "anitrack.models"}, pools


def test_the_offline_parts_meet_their_roles_contracts():
    """What the episode pipeline relies on, checked on the real parts it builds from each registry."""
    import numpy as np

    from anitrack.config import load_config, resolve_profile
    from anitrack.detect import DETECTORS, Detector, FaceFinder, make_detector, make_face_finder
    from anitrack.detections import Detections
    from anitrack.embed import EMBEDDERS, Embedder, make_embedder
    from anitrack.shots import ShotDetector, make_shot_detector

    assert set(DETECTORS) == {"animeface", "yolo", "imgutils"} and set(EMBEDDERS) == {"hybrid", "descriptor", "ccip"}
    config = resolve_profile(load_config(["detect.workers=1"], environ={}), "offline")
    detector = make_detector(config)
    try:
        assert isinstance(detector, Detector)
        found = detector.detect([np.zeros((64, 64, 3), np.uint8)] * 2)
        assert len(found) == 2 and all(isinstance(d, Detections) and len(d) == 0 for d in found)
    finally:
        detector.close()
    person_first = resolve_profile(load_config(["detect.detector=yolo", "detect.workers=1"], environ={}), "offline")
    finder = make_face_finder(person_first)
    assert isinstance(finder, FaceFinder) and finder.find_faces([np.zeros((32, 32, 3), np.uint8)]) == [None]
    finder.close()
    for name in ("hybrid", "descriptor"):
        embedder = make_embedder(resolve_profile(load_config([f"embed.model={name}"], environ={}), "offline"))
        assert isinstance(embedder, Embedder)
        vectors = embedder.embed([np.full((40, 32, 3), 128, np.uint8)] * 3, [None] * 3)
        assert vectors.shape[0] == 3 and vectors.dtype == np.float32
    assert isinstance(make_shot_detector("content"), ShotDetector)
