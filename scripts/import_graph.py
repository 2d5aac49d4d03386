"""The project's module import graph: checked for cycles, drawn as Mermaid.

    python scripts/import_graph.py          # print the graph, write docs/import-graph.md
    python scripts/import_graph.py --check  # exit 1, printing the cycle, if there is one

Every ``import`` counts, also those inside functions: a lazy import still ties the two
modules together, and a cycle through one is a cycle that waits for the right call.
tests/test_structure.py runs the same check.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("hvae", "pipelines", "ui")  # the packages whose modules must form no cycle
DRAWN = (*CHECKED, "benchmarks")
# Modules drawn as one box: a package's modules, or a folder of scripts.
COLLAPSED = ("hvae.cli", "hvae.directions", "hvae.data", "ui", "benchmarks")
FRONT_ENDS = ("hvae.cli", "ui", "benchmarks", "hvae.demo", "hvae.rd_benchmark", "hvae.distributed")
LOADERS = ("pipelines", "hvae.loading")  # pipeline classes, and finding and loading them
# Training recipes end by saving a pipeline folder, so they import pipelines/ (lazily):
# the one place where hvae/ reaches up. Nothing below imports them, so no cycle results.
# Imported nearly everywhere; arrows to it would only hide the others.
UBIQUITOUS = ("hvae.errors",)
TRAINING = ("hvae.train_autoencoder", "hvae.train_hvae", "hvae.train_codec", "hvae.training")


def module_files(root: Path = ROOT, packages: tuple[str, ...] = CHECKED) -> dict[str, Path]:
    """Module name -> file, for every .py file under the ``packages`` folders."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """The dotted names that the import statements in ``tree`` import: ``a.b`` for both
    ``import a.b`` and ``from a import b`` (``b`` may be a module or a name in ``a``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = CHECKED) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in it)."""
    files = module_files(root, packages)
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        names = _imported_names(tree, module, path.name == "__init__.py")
        targets = set()
        for name in names:
            # The deepest project module the name lies in: ``a.b.c`` -> a.b.c, else a.b, ...
            parts = name.split(".")
            while parts and ".".join(parts) not in files:
                parts.pop()
            if parts:
                targets.add(".".join(parts))
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph.get(module, ())):
            if target in on_path:
                return path[path.index(target) :] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def _box(module: str) -> str:
    return next((c for c in COLLAPSED if module == c or module.startswith(c + ".")), module)


def _layer(box: str) -> str:
    if box in FRONT_ENDS:
        return "front ends"
    if box.startswith(LOADERS):
        return "pipelines"
    if box in TRAINING:
        return "training recipes"
    return "hvae core"


def mermaid(graph: dict[str, set[str]]) -> str:
    """The graph with packages collapsed into boxes, grouped into layers, top to bottom."""
    edges = sorted({(_box(a), _box(b)) for a, targets in graph.items() for b in targets})
    edges = [(a, b) for a, b in edges if a != b and b not in UBIQUITOUS]
    boxes = sorted({_box(m) for m in graph})
    layers = defaultdict(list)
    for box in boxes:
        layers[_layer(box)].append(box)
    ident = {box: box.replace(".", "_") for box in boxes}
    lines = ["```mermaid", "flowchart TB"]
    for layer in ("front ends", "pipelines", "training recipes", "hvae core"):
        lines.append(f'  subgraph {layer.replace(" ", "_")}["{layer}"]')
        lines += [f'    {ident[box]}["{box}"]' for box in layers[layer]]
        lines.append("  end")
    lines += [f"  {ident[a]} --> {ident[b]}" for a, b in edges]
    lines.append("```")
    return "\n".join(lines)


DOC_HEAD = """# Import graph

Written by `python scripts/import_graph.py` (rerun it after moving imports); checked by
`tests/test_structure.py`, which fails on any import cycle among the modules of `hvae/`,
`pipelines/` and `ui/`, counting imports inside functions too.

Arrows point from the importing module to the imported one. The layers read top to
bottom: the front ends (`hvae.cli`, `ui`, `benchmarks`, the demo and the rate-distortion
benchmark) load models through `hvae.loading` and call the pipelines; the pipelines
compose the core; the core goes from images (`hvae.data`) through stage 1
(`hvae.autoencoder`, `hvae.patch_autoencoder`) to the hierarchical VAE (`hvae.model`),
and from there to coding (`hvae.codec`, `hvae.entropy`, `hvae.refine`) and editing
(`hvae.directions`), and back to images.

Two rules keep it a graph without cycles:

- Nothing below the front ends imports the CLI: the loaders (`resolve_model`,
  `load_pipeline`, `load_codec`) live in `hvae.loading`, beside the pipelines they load.
- The core does not import `pipelines/`. The exceptions are the training recipes
  (`hvae.train_hvae`, `hvae.train_codec`), which end by saving a pipeline folder and so
  need the pipeline class: only front ends (the CLI, benchmarks) import them, so no
  cycle can run through them. Helpers that the pipelines and the core share (`hvae.seeds.image_seed`,
  `hvae.batch`) live in the core.

"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check for cycles")
    args = parser.parse_args(argv)
    cycle = find_cycle(import_graph())
    if cycle:
        print("import cycle: " + " -> ".join(cycle), file=sys.stderr)
        return 1
    if args.check:
        return 0
    drawing = mermaid(import_graph(ROOT, DRAWN))
    print(drawing)
    (ROOT / "docs" / "import-graph.md").write_text(DOC_HEAD + drawing + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
