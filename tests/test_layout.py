"""The house shows its stages (issue 23): explorer/ is one subpackage per stage of the data path, every import
points down the stages (or stays inside its own), no module imports another in a circle, no private name crosses
modules, and docs/architecture.md names only modules and names that exist."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "explorer"

#: The stages bottom-up, as docs/architecture.md draws them; `demo_model` trains and measures the demo on top.
STAGES = ("core", "inputs", "model", "geometry", "correction", "report", "evaluation", "app", "demo_model")


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def _explorer_imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import of explorer code in `path`, lazy ones too."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "explorer"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "explorer":
                found.append((target, [a.name for a in node.names], node.lineno))
    return found


def _resolve(target: str, names: list[str], modules: dict[str, Path]) -> list[str]:
    """The modules an import statement loads: `from explorer.x import mod` names a module, else `target` is one."""
    loaded = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
    return loaded or [target if target in modules else f"{target}.__init__"]


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 2 and parts[1] in STAGES else None


def test_explorer_holds_only_stage_packages_at_its_top():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__"))
    assert top == sorted(["__init__.py", "__main__.py", *STAGES])
    assert all((PACKAGE / stage / "__init__.py").read_text().startswith('"""') for stage in STAGES)


def test_every_import_points_down_the_stages():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        here = _stage(module)
        if here is None:  # explorer/__init__ re-exports the API; __main__ runs the CLI
            continue
        for target, names, line in _explorer_imports(path, module):
            for loaded in _resolve(target, names, modules):
                there = _stage(loaded)
                if there is not None and there > here:
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {loaded} ({STAGES[there]} is above "
                                  f"{STAGES[here]})")
    assert not upward, "\n".join(upward)


def test_no_module_imports_another_in_a_circle():
    modules = _modules()
    graph = {m: {t for target, names, _ in _explorer_imports(p, m) for t in _resolve(target, names, modules)
                 if t in modules and t != m and not t.endswith("__init__")}
             for m, p in modules.items() if not m.endswith(("__init__", "__main__"))}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" → ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "\n".join(circles)


def test_no_private_name_crosses_modules():
    modules = _modules()
    crossing = [f"{path.relative_to(ROOT)}:{line} takes {name} from {target}"
                for module, path in modules.items() for target, names, line in _explorer_imports(path, module)
                for name in names if name.startswith("_") and not name.startswith("__")]
    assert not crossing, "\n".join(crossing)


# `module.name` / `module.py` mentions in docs/architecture.md; the same name may be several modules' (no stage
# prefix in the doc's tables), so a mention holds when some module of that name has it.
_MENTION = re.compile(r"`(?:explorer\.)?([a-z_]+(?:\.[a-z_]+)*)\.([A-Za-z_][A-Za-z0-9_]*)(?:\(\))?`")


_FILE_SUFFIXES = {"py", "md", "json", "jsonl", "lock", "html", "csv", "txt", "safetensors", "wav", "png"}


def _by_short_name() -> dict[str, list[str]]:
    short: dict[str, list[str]] = {}
    for module in _modules():
        if not module.endswith("__main__"):
            name = module.removesuffix(".__init__")
            short.setdefault(name.rpartition(".")[2], []).append(name)
            short.setdefault(name, []).append(name)
            if name.count(".") >= 2:
                short.setdefault(name.split(".", 1)[1], []).append(name)
    return short


def test_architecture_doc_names_only_what_exists():
    text = (ROOT / "docs" / "architecture.md").read_text()
    short = _by_short_name()
    mentions = set(_MENTION.findall(text))
    assert len(mentions) > 30  # the doc's recipes and tables name real functions, not only files
    tests = {p.name for p in (ROOT / "tests").glob("*.py")}
    missing = []
    for module, name in sorted(mentions):
        if name in _FILE_SUFFIXES or module.split(".")[0] not in short:  # a data file, or not explorer's module
            if name == "py" and f"{module}.py" not in tests and module.rpartition(".")[2] not in short:
                missing.append(f"{module}.py")
            continue
        if name == "py":
            continue
        found = any(hasattr(importlib.import_module(m), name) or f"{m}.{name}" in _modules()
                    for m in short[module] if not m.endswith("espeak_library"))
        if not found:
            missing.append(f"{module}.{name}")
    assert not missing, "docs/architecture.md names what does not exist:\n" + "\n".join(missing)


def test_the_checks_would_catch_an_upward_import_and_a_private_name(tmp_path):
    """The checker itself: a core module that imports the app, and a private name taken, are both seen."""
    fake = tmp_path / "explorer" / "core" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from explorer.app import ui\nfrom explorer.model.loading import _private\n")
    imports = _explorer_imports(fake, "explorer.core.bad")
    loaded = [t for target, names, _ in imports for t in _resolve(target, names, _modules())]
    assert _stage(loaded[0]) == STAGES.index("app") > _stage("explorer.core.bad")
    assert imports[1][1] == ["_private"]


def test_the_public_api_resolves_lazily_to_each_stage():
    import explorer

    for name in explorer.__all__:
        value = getattr(explorer, name)
        assert value is getattr(importlib.import_module(explorer._PUBLIC[name]), name), name
    assert set(dir(explorer)) >= set(explorer.__all__)
