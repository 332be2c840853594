"""Import directions of the package, read from the source (AST), not from a hand-kept list.

* No module-level import cycle among ``lnm_deploy`` modules (imports inside functions, used to
  keep optional dependencies lazy, and ``TYPE_CHECKING`` blocks do not count).
* No module imports another top-level package's private names (``_name``): a helper two stages
  share belongs in the lower one, public.
* ``lnm_deploy.core`` (when present) and ``lnm_deploy.errors`` sit at the ground: they import no
  other part of the package.
* No module below the package root imports from the root ``lnm_deploy`` itself (the root imports
  the stages, so that would be upward).
"""

from __future__ import annotations

import ast
from pathlib import Path

import lnm_deploy

ROOT = Path(lnm_deploy.__file__).parent
GROUND = ("lnm_deploy.core", "lnm_deploy.errors", "lnm_deploy._version")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, module: str) -> list[tuple[str, list[str], bool]]:
    """(imported module, names, at module level) for every lnm_deploy import of ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, list[str], bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                out.extend((a.name, [], top) for a in child.names if a.name.startswith("lnm_deploy"))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if mod.startswith("lnm_deploy"):
                    out.append((mod, [a.name for a in child.names], top))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return out


def _graph() -> dict[str, list[tuple[str, list[str], bool]]]:
    return {_module_name(p): _imports(p, _module_name(p)) for p in sorted(ROOT.rglob("*.py"))}


def _resolve(mod: str, names: list[str], modules: set[str]) -> list[str]:
    """The modules an import loads: ``from pkg import sub`` loads ``pkg.sub`` where that is a module."""
    out = [mod]
    out += [f"{mod}.{n}" for n in names if f"{mod}.{n}" in modules]
    return out


def _stage(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_level_import_cycle() -> None:
    graph = _graph()
    modules = set(graph)
    edges = {m: sorted({t for mod, names, top in imps if top for t in _resolve(mod, names, modules)
                        if t in modules and t != m}) for m, imps in graph.items()}
    # A package's __init__ importing its own submodules is how packages are built, not a cycle
    # of design; a submodule importing its package's __init__ back is.
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in edges[m]:
            if t.startswith(m + "."):
                continue
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t):], t]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            dfs(m)


def test_no_private_names_across_stages() -> None:
    bad = []
    for m, imps in _graph().items():
        for mod, names, _top in imps:
            if _stage(mod) == _stage(m):
                continue
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            if private or any(part.startswith("_") and part != "__init__" and part != "_version"
                              for part in mod.split(".")[1:]):
                bad.append(f"{m} imports {private or mod} from {mod}")
    assert not bad, "private names used across stages:\n" + "\n".join(bad)


def test_ground_modules_import_nothing_above() -> None:
    bad = []
    for m, imps in _graph().items():
        if not m.startswith(GROUND):
            continue
        for mod, _names, _top in imps:
            if not mod.startswith(GROUND):
                bad.append(f"{m} imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_upward_import_of_the_package_root() -> None:
    bad = [f"{m} imports from the package root"
           for m, imps in _graph().items() if m != "lnm_deploy"
           for mod, _names, _top in imps if mod == "lnm_deploy" and any(
               not (ROOT / f"{n}.py").exists() and not (ROOT / n).is_dir() for n in _names)]
    assert not bad, "\n".join(bad)
