"""The packages import downwards only, every import counted, those inside functions too; and the test suite treats a
missing package as a failure in CI.

core (errors, timebase, ffmpeg, scratch) <- audio (decode, mel) <- models <- preprocess <- engine, tools, demo <-
stream_out.py. models/ in particular never imports engine/ or preprocess/, so a model can be trained, loaded and
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
    "configs": set(),
    "audio": {"core"},
    "models": {"core", "audio"},
    "preprocess": {"core", "audio", "models", "configs"},
    "engine": {"core", "audio", "models", "preprocess", "configs"},
    "tools": {"core", "audio", "models", "preprocess"},
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
    module.write_text("def f():\n    from engine.loop import LiveEngine\n    import preprocess.cache\n")
    assert imports_of(module) == {"engine", "preprocess"}
    module.write_text("import audio\nif __name__ == '__main__':\n    from tools.evaluate import main\n"
                      "if __name__ == 'x':\n    import engine\n")
    assert imports_of(module) == {"audio", "engine"}


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
