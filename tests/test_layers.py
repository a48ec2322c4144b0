"""The packages import downwards only, every import counted, those inside functions too; no module imports itself
back through others; only the command lines see argparse; and the test suite treats a missing package as a failure
in CI.

core (errors, timebase, ffmpeg, scratch) <- configs (typed specs) <- audio (decode, mel) <- models <- preprocess <-
engine, tools, demo <- stream_out.py. Inside engine/: render <- outputs <- assemble <- api <- serve <- cli, and
nothing imports engine/cli.py. models/ in particular never imports engine/ or preprocess/, so a model can be trained, loaded and
measured without the live loop or the video pipeline; preprocess/ uses models/ only to keep what a model needs
from the footage (the mouth animator's library of the presenter's mouths, IP_LAP's crops and landmarks). One
exception: a module's `if __name__ == "__main__":` block is a command line (`python -m models.evaluate`), the top
layer wherever its file sits, so what it imports is not counted; importing the module never runs it."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

OURS = {"core", "audio", "models", "preprocess", "engine", "tools", "demo", "configs", "stream_out"}
ALLOWED = {
    "core": set(),
    "configs": {"core"},
    "audio": {"core"},
    "models": {"core", "audio"},
    "preprocess": {"core", "audio", "models", "configs"},
    "engine": {"core", "audio", "models", "preprocess", "configs"},
    "tools": {"core", "audio", "models", "preprocess", "configs"},
    "demo": {"core", "audio", "models", "preprocess", "engine"},
}


def imports_of(path: Path) -> set[str]:
    """Top-level names of our packages that a file imports (relative imports stay in its own package)."""
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [node for node in tree.body if not is_main_block(node)]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS


def is_main_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"'


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for package, allowed in ALLOWED.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"{package}/ has no modules"
        for path in files:
            for name in sorted(imports_of(path) - allowed - {package}):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from engine.render.loop import LiveEngine\n    import preprocess.cache\n")
    assert imports_of(module) == {"engine", "preprocess"}
    module.write_text("import audio\nif __name__ == '__main__':\n    from tools.evaluate import main\n"
                      "if __name__ == 'x':\n    import engine\n")
    assert imports_of(module) == {"audio", "engine"}


ENGINE_LAYERS = ("engine.render", "engine.outputs", "engine.assemble", "engine.api", "engine.serve", "engine.cli")
COMMAND_LINES = {"engine/cli.py", "configs/flags.py", "preprocess/__main__.py", "models/train.py",
                 "models/iplap/train.py", "stream_out.py"}  # and tools/, demo/: commands all


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for package in OURS for p in sorted((ROOT / package).rglob("*.py"))} | \
        {"stream_out": ROOT / "stream_out.py"}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, inside functions too (a relative import resolved; `from x import
    y` counts x.y when y is a module, else x)."""
    modules = our_modules()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        tree.body = [node for node in tree.body if not is_main_block(node)]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
                edges.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str]:
    """One cycle (its modules, the first repeated at the end), or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return []


def test_no_module_imports_itself_back():
    graph = import_graph()
    assert len(graph) > 100 and "engine.render.loop" in graph["engine.assemble"]
    assert not (cycle := cycle_in(graph)), " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle_through_a_function_import():
    graph = import_graph()
    graph["engine.render.presenter"].add("engine.serve.sessions")  # as `def f(): from engine.serve import ...`
    assert "engine.render.presenter" in cycle_in(graph)


def layer_of(module: str) -> int:
    return next(i for i, prefix in enumerate(ENGINE_LAYERS) if module == prefix or module.startswith(prefix + "."))


def test_engine_layers_import_downwards_and_nothing_imports_the_cli():
    graph = import_graph()
    wrong = [f"{m} imports {d}" for m, deps in graph.items() if m.startswith("engine.")
             for d in deps if d.startswith("engine.") and layer_of(d) > layer_of(m)]
    wrong += [f"{m} imports engine.cli" for m, deps in graph.items() if "engine.cli" in deps and m != "stream_out"]
    assert not wrong, "\n".join(wrong)


def test_only_the_command_lines_see_argparse():
    """Below the entry points the engine reads typed specs (configs/spec.py): argv is parsed once, at the edge."""
    seen = []
    for name, path in our_modules().items():
        relative = str(path.relative_to(ROOT))
        if relative in COMMAND_LINES or relative.startswith(("tools/", "demo/")):
            continue
        tree = ast.parse(path.read_text(), str(path))
        tree.body = [node for node in tree.body if not is_main_block(node)]
        if any(isinstance(n, ast.Name) and n.id == "argparse" or isinstance(n, ast.alias) and n.name == "argparse"
               for n in ast.walk(tree)):
            seen.append(relative)
    assert not seen, f"argparse below the command lines: {seen}"


def test_imports_inside_functions_say_why_they_wait():
    """An import inside a function is there only to load a heavy or optional dependency when it is needed, and
    says so in a comment on its line or the line above; anything else is imported at the top."""
    silent = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and "#" not in lines[sub.lineno - 1] \
                            and not lines[sub.lineno - 2].strip().startswith("#"):
                        silent.append(f"{path.relative_to(ROOT)}:{sub.lineno}: {lines[sub.lineno - 1].strip()}")
    assert not silent, "\n".join(sorted(set(silent)))


def test_a_missing_dependency_fails_under_ci_and_skips_elsewhere(monkeypatch):
    import pytest

    from conftest import require
    def outcome() -> BaseException:
        try:
            require("no_such_package_here")
        except BaseException as exc:  # a skip is a BaseException too: catch it here, or this test would skip
            return exc
        raise AssertionError("a missing package was imported")

    monkeypatch.setenv("CI", "true")
    assert isinstance(outcome(), ModuleNotFoundError)
    monkeypatch.delenv("CI")
    assert isinstance(outcome(), pytest.skip.Exception)
