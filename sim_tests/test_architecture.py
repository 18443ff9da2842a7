"""The layering of the code base (docs/architecture.md), checked on the source with an AST walk.

Every module of ``lava_spikingbert``, ``training`` and ``hw_export`` belongs to one layer, and a
layer may import only the layers listed for it (its own included): data flows one way, train ->
quantize and export -> run -> report, with the command line and the parity tooling on top. The walk
also counts imports inside functions, so a lazy import cannot hide an upward edge or a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lava_spikingbert", "training", "hw_export")

# module name prefix -> layer; the longest matching prefix wins
LAYER_OF = {
    "lava_spikingbert": "top",  # the package root holds only the version and the map of the layers
    "lava_spikingbert.contract": "contract",
    "lava_spikingbert.model": "model",
    "lava_spikingbert.lava": "lava",
    "training": "training",
    "hw_export": "hw_export",
    "lava_spikingbert.cli": "top",
    "lava_spikingbert.lava_eval": "top",
    "lava_spikingbert.parity": "top",
    "lava_spikingbert.loihi_eval": "top",
}
ALLOWED = {
    "contract": {"contract"},
    "model": {"contract", "model"},
    "lava": {"contract", "lava"},
    "training": {"contract", "model", "training"},
    "hw_export": {"contract", "model", "training", "hw_export"},
    "top": {"contract", "model", "lava", "training", "hw_export", "top"},
}
# third-party packages a layer must never import (the contract and the Lava runtime run without torch)
FORBIDDEN = {
    "contract": {"torch", "transformers", "torchdeq", "safetensors", "lava"},
    "lava": {"torch", "transformers", "torchdeq", "safetensors"},
}


def discover(root: Path, packages=PACKAGES) -> dict[str, Path]:
    mods = {}
    for pkg in packages:
        for f in (root / pkg).rglob("*.py"):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def layer_of(module: str, layers: dict[str, str] = LAYER_OF) -> str:
    best = max((p for p in layers if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise KeyError(f"{module}: no layer assigned (add it to LAYER_OF)")
    return layers[best]


def imports_of(module: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(project modules, top-level third-party packages) imported anywhere in the module."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    project, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                hit = resolve(alias.name)
                project.add(hit) if hit else external.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - (node.level - 1)] + ([base] if base else []))
            elif resolve(base) is None:
                external.add(base.split(".")[0])
                continue
            for alias in node.names:  # `from pkg import sub` is an edge to the submodule
                sub = f"{base}.{alias.name}"
                hit = sub if sub in mods else resolve(base)
                if hit:
                    project.add(hit)
    project.discard(module)
    return project, external


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in edges:
                    continue
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def violations(root: Path, packages=PACKAGES, layers: dict[str, str] = LAYER_OF, allowed=ALLOWED,
               forbidden=FORBIDDEN) -> list[str]:
    mods = discover(root, packages)
    edges, problems = {}, []
    for module, path in sorted(mods.items()):
        project, external = imports_of(module, path, mods)
        edges[module] = project
        layer = layer_of(module, layers)
        for target in sorted(project):
            if layer_of(target, layers) not in allowed[layer]:
                problems.append(f"{module} ({layer}) imports {target} ({layer_of(target, layers)})")
        for pkg in sorted(external & forbidden.get(layer, set())):
            problems.append(f"{module} ({layer}) imports {pkg}")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in find_cycles(edges)]
    return problems


def test_layers_are_respected_and_the_import_graph_is_acyclic():
    assert violations(ROOT) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


@pytest.mark.parametrize("files, expected", [
    ({"lava_spikingbert/contract/a.py": "from lava_spikingbert.model import b\n",
      "lava_spikingbert/model/b.py": ""}, "contract) imports lava_spikingbert.model.b (model)"),
    ({"lava_spikingbert/lava/a.py": "def f():\n    from training import c\n", "training/c.py": ""},
     "lava_spikingbert.lava.a (lava) imports training.c (training)"),
    ({"lava_spikingbert/lava/a.py": "def f():\n    import torch.nn\n"}, "lava_spikingbert.lava.a (lava) imports torch"),
    ({"lava_spikingbert/contract/a.py": "import transformers\n"}, "imports transformers"),
    ({"lava_spikingbert/model/a.py": "from lava_spikingbert.model.b import x\n",
      "lava_spikingbert/model/b.py": "def g():\n    from . import a\n"},
     "import cycle: lava_spikingbert.model.a <-> lava_spikingbert.model.b"),
])
def test_the_checker_catches_violations(tmp_path, files, expected):
    base = {f"{p}/__init__.py": "" for p in ("lava_spikingbert", "lava_spikingbert/contract", "lava_spikingbert/model",
                                             "lava_spikingbert/lava", "training", "hw_export")}
    _write(tmp_path, {**base, **files})
    found = violations(tmp_path)
    assert any(expected in v for v in found), found
