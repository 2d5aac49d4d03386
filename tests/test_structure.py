"""The shape of the code: no import cycles, layers that only point down, no oversized files."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600


def _import_graph_module():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts/import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


import_graph = _import_graph_module()


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph.import_graph()


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from . import a\n")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (package / "b.py").write_text("import pkg.a\n")
    found = import_graph.import_graph(tmp_path, ("pkg",))
    assert found == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert import_graph.find_cycle(found) == ["pkg.a", "pkg.b", "pkg.a"]
    assert import_graph.find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles(graph):
    assert len(graph) > 20  # the project's modules were found
    cycle = import_graph.find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_below_the_cli_imports_it(graph):
    importers = {
        module
        for module, targets in graph.items()
        if not module.startswith("hvae.cli") and any(t.startswith("hvae.cli") for t in targets)
    }
    assert importers == set(), "load models with hvae.loading, not the CLI"


def test_the_core_imports_pipelines_only_to_load_or_save_them(graph):
    allowed = {"hvae.loading", "hvae.train_hvae", "hvae.train_codec", "hvae.train_rd"}
    reaching_up = {
        module
        for module, targets in graph.items()
        if module.startswith("hvae")
        and not module.startswith("hvae.cli")
        and any(t.startswith("pipelines") for t in targets)
    }
    assert reaching_up <= allowed, f"hvae/ modules importing pipelines/: {reaching_up - allowed}"


def test_no_source_file_is_over_600_lines():
    too_long = {
        str(path.relative_to(ROOT)): length
        for folder in ("hvae", "pipelines")
        for path in (ROOT / folder).rglob("*.py")
        if (length := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert too_long == {}, f"split these (lines): {too_long}"
