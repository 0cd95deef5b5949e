"""The rules of the house, checked: import contracts (pyproject.toml, import-linter), no
import cycle among the project's modules (deferred imports count), the installed package
claims no generic top-level names, and the API process runs without torch."""

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import grimp
import pytest
from importlinter import api as linter_api  # noqa: F401 - the tool must be installed

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("pomstream", "model", "server", "kernels", "bench", "media")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project as pip installs it: a wheel built from a copy of the source (no stale
    build folder), unpacked. Import tools walk package folders, which an editable
    install maps from the repository root, so they read this copy instead."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", *SOURCE_DIRS):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("pomstream-*.whl")
    target = tmp / "site"
    zipfile.ZipFile(wheel).extractall(target)
    return target


def test_import_contracts_hold(installed):
    """``lint-imports`` with the contracts of pyproject.toml (floors, server wings, the API
    without torch, acyclic siblings)."""
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(lint), str(ROOT / "pyproject.toml"), "--no-cache"],
                         capture_output=True, text=True, cwd=installed, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(installed)})
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout, res.stdout[-4000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph.modules:
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(
                        graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_no_import_cycles_among_modules(installed, monkeypatch):
    """Module by module, deferred (function-level) imports included."""
    monkeypatch.syspath_prepend(str(installed))
    for name in [m for m in sys.modules if m == "pomstream" or m.startswith("pomstream.")]:
        monkeypatch.delitem(sys.modules, name)  # find the installed copy, not the editable one
    graph = grimp.build_graph("pomstream", cache_dir=None)
    for name in ("pomstream.server.http.live", "pomstream.kernels.pom.common",
                 "pomstream.model.streaming", "pomstream.media.fmp4"):
        assert name in graph.modules  # the whole package was read
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles(tmp_path, monkeypatch):
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from cyc import b  # deferred\n")
    (pkg / "b.py").write_text("from cyc import a\n")
    (pkg / "c.py").write_text("from cyc import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("cyc", cache_dir=None)) == [["cyc.a", "cyc.b"]]


def test_installed_package_adds_no_generic_top_level_modules(installed):
    """A wheel of the project holds one top-level package: pomstream."""
    names = [p.relative_to(installed).as_posix() for p in installed.rglob("*") if p.is_file()]
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"pomstream"}, tops
    for sub in ("model", "server", "kernels", "bench", "media"):
        assert any(n.startswith(f"pomstream/{sub}/") for n in names), sub
    # every package of the source tree is in the wheel (pyproject lists them by hand)
    for init in ROOT.glob("**/__init__.py"):
        rel = init.relative_to(ROOT)
        if rel.parts[0] in SOURCE_DIRS:
            inside = rel if rel.parts[0] == "pomstream" else Path("pomstream", *rel.parts)
            assert inside.as_posix() in names, f"{rel} is not packaged"
    assert "pomstream/model/weights/pom-dit-demo.safetensors" in names
    assert "pomstream/server/static/index.html" in names


@pytest.mark.parametrize("role", ["api"])
def test_api_process_runs_without_torch(role, tmp_path):
    """``pomstream api``'s code path (settings, runtime, app, every route module) imports
    no torch: the API container need not install it."""
    code = textwrap.dedent(f"""
        import sys
        from pomstream.cli import build_parser
        from pomstream.server.roles import run_server  # what `pomstream {role}` runs
        from pomstream.server.http.app import create_app
        from pomstream.server.runtime import Runtime
        from pomstream.server.settings import Settings, model_info
        info = model_info("demo")
        app = create_app(Settings(redis_url="redis://127.0.0.1:1"))
        assert info.prompt_rules.describe()
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "triton"))
        assert not bad, bad
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
