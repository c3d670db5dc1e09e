"""The one-way boundary: the toolkit finds generators through entry points, never by import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import cellbench
from cellbench.generators import ENTRY_POINT_GROUP, Generator, get_generator_class

PACKAGE = Path(cellbench.__file__).parent
SIX = {"identity", "real-shuffle", "cellflux", "phendiff", "impa", "cellfluxrl"}


def _baselines_references(path: Path) -> list[str]:
    """Every import of ``cellbench_baselines`` and every string naming it in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "cellbench_baselines" in node.value
        ):
            found.append(f"{path}:{node.lineno}: string {node.value[:60]!r}")
        found += [
            f"{path}:{node.lineno}: import {n}"
            for n in names
            if n == "cellbench_baselines" or n.startswith("cellbench_baselines.")
        ]
    return found


def test_no_toolkit_module_imports_or_names_the_baselines() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 40 and PACKAGE / "cli" / "train.py" in modules
    found = [hit for m in modules for hit in _baselines_references(m)]
    assert found == []


def test_the_grep_sees_an_import_and_a_string(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        'import cellbench_baselines.cellflux\nfrom cellbench_baselines import trainer\nX = "cellbench_baselines.impa:IMPA"\n'
    )
    assert len(_baselines_references(bad)) == 3


def test_entry_points_register_the_six_generators() -> None:
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert set(eps) == SIX
    for name in SIX:
        cls = get_generator_class(name)
        assert issubclass(cls, Generator) and cls.name == name and cls.summary, name
    assert get_generator_class("cellflux").post_trainer == "cellfluxrl"
    assert get_generator_class("cellflux").presets and not get_generator_class("identity").presets


def _fake_distribution(root: Path, entries: str) -> Path:
    """A distribution ``fakegen`` on ``root`` whose only content is cellbench.generators entries."""
    info = root / "fakegen-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakegen\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entries}\n")
    return root


def _python(code: str, path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_registry_rejects_a_target_that_is_not_a_generator(tmp_path: Path) -> None:
    site = _fake_distribution(tmp_path, "bogus = json:JSONDecoder\ngone = no_such_package.mod:Gen")
    code = """
import sys
from cellbench.errors import CellbenchError
from cellbench.generators import GENERATORS, get_generator_class
names = GENERATORS.names()
assert "bogus" in names and "identity" in names, names
assert "cellbench_baselines" not in sys.modules  # listing the names imports no generator
for name in ("bogus", "gone"):
    try:
        get_generator_class(name)
    except CellbenchError as exc:
        print(exc)
"""
    res = _python(code, site)
    assert res.returncode == 0, res.stderr
    bogus, gone = res.stdout.splitlines()
    assert bogus.startswith("generator 'bogus' (json:JSONDecoder, cellbench.generators entry")
    assert "of fakegen) is not a cellbench.generators.Generator subclass" in bogus
    assert "generator 'gone' (no_such_package.mod:Gen) cannot be imported (no_such_package)" in gone
    assert "pip install -e ." in gone
    ls = subprocess.run(
        [sys.executable, "-m", "cellbench", "ls", "models"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site), "COLUMNS": "300"},
        timeout=120,
    )
    assert ls.returncode == 0, ls.stderr
    assert (
        "(unusable: generator 'bogus'" in ls.stdout and "anchor: returns the control" in ls.stdout
    )


def test_a_missing_distribution_is_explained() -> None:
    code = """
from importlib import metadata
metadata.entry_points = lambda **kw: []  # as if no distribution declared the group
from cellbench.errors import CellbenchError
from cellbench.generators import get_generator_class
try:
    get_generator_class("cellflux")
except CellbenchError as exc:
    print(exc)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("no generator is installed (no distribution has")
    assert "pip install -e ." in res.stdout


@pytest.mark.parametrize("name", ["cellflux", "impa"])
def test_trainable_generators_take_training_through_their_hooks(name: str) -> None:
    cls = get_generator_class(name)
    cfg = cls.training_config("cpu-small", overrides={"steps": 7, "seed": None})
    assert cfg["steps"] == 7 and cfg["preset"] == "cpu-small"
    with pytest.raises(cellbench.errors.CellbenchError, match="is not trainable"):
        get_generator_class("identity").training_config("cpu-small")
