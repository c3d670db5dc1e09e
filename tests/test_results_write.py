"""Writing results: ``--out`` refused before any scoring, and the result pair written as one unit.

``results.json`` records the sha256 of its per-image CSV (``per_image_sha256``) and a shard result
that of its arrays (``partial.arrays_sha256``); an interruption at any point of the write leaves
either a matching pair or one that ``cellbench submission validate``, ``cellbench compare`` and
``cellbench eval merge`` refuse.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellbench.errors import CellbenchError
from cellbench.results.builder import check_per_image_digest, result_paths, write_results
from cellbench.submission import validate_submission
from tests.conftest import run_cli
from tests.test_submission import make_submission


# ---------------------------------------------------------------------------------- --out
def _out_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """--out values that cannot be written, each with the words of its refusal."""
    imgs = tmp_path / "imgs"
    (tmp_path / "existing").mkdir()
    (tmp_path / "r.per_image.csv").mkdir()  # the CSV beside r.json would land on a folder
    (tmp_path / "afile").write_text("x")
    (tmp_path / "link").symlink_to(imgs, target_is_directory=True)
    return {
        "existing folder": (tmp_path / "existing", "names an existing folder"),
        "its CSV is a folder": (tmp_path / "r.json", "r.per_image.csv"),
        "in the image folder": (imgs / "results.json", "inside the image folder"),
        "deeper in the image folder": (imgs / "sub" / "r.json", "inside the image folder"),
        "through a link": (tmp_path / "link" / "r.json", "inside the image folder"),
        "inside a file": (tmp_path / "afile" / "r.json", "inside a file"),
    }


@pytest.fixture
def imgs(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    np.save(folder / "t1.npy", np.zeros((96, 96, 3), np.uint8))
    return folder


def test_bad_out_is_refused_before_any_scoring(
    tmp_path: Path, imgs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cellbench.evaluation as ev

    def started(*a, **k):
        raise AssertionError("scoring started before --out was checked")

    monkeypatch.setattr(ev, "open_dataset", started)
    for case, (out, words) in _out_cases(tmp_path).items():
        with pytest.raises(CellbenchError) as err:
            ev.evaluate(imgs, out=out)
        assert words in str(err.value) and "\n" not in str(err.value), case
        with pytest.raises(CellbenchError, match="existing folder"):
            ev.merge_shards([tmp_path / "missing-shard.json"], out=tmp_path / "existing")
    assert sorted(p.name for p in imgs.iterdir()) == ["t1.npy"]


def test_cli_eval_out_in_the_image_folder_is_one_line(tmp_path: Path, imgs: Path) -> None:
    data = tmp_path / "data"
    for out in (imgs / "results.json", tmp_path):
        res = run_cli("eval", str(imgs), "--data-dir", str(data), "--out", str(out))
        assert res.returncode == 2 and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert "--out" in res.stderr
    assert not data.exists()  # refused before the dataset was even opened


# -------------------------------------------------------------------------- the result pair
def _files(sub: Path) -> tuple[bytes, bytes]:
    json_path, csv_path, _ = result_paths(sub / "results.json")
    return json_path.read_bytes(), csv_path.read_bytes()


def _second_run(table: pd.DataFrame) -> pd.DataFrame:
    """Another run's table that no cross-check of the means can tell from the first: two images
    of one compound and MoA swap their ``nuc_size`` (every mean, per compound and per MoA too, is
    unchanged)."""
    new = table.copy()
    first = new.iloc[0]
    same = (new["compound"] == first["compound"]) & (new["true_moa"] == first["true_moa"])
    rows = new.index[same][:2]
    a, b = new.loc[rows[0], "nuc_size"], new.loc[rows[1], "nuc_size"]
    assert a != b
    new.loc[rows[0], "nuc_size"], new.loc[rows[1], "nuc_size"] = b, a
    return new


def _fail_on(monkeypatch: pytest.MonkeyPatch, k: int) -> list[str]:
    """Make the k-th rename (os.replace) of cellbench's atomic writes fail."""
    import cellbench.io

    done: list[str] = []
    real = os.replace

    def replace(src, dst):
        if len(done) == k:
            raise OSError("injected: interrupted between two writes")
        done.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(cellbench.io.os, "replace", replace)
    return done


@pytest.mark.parametrize("k", [0, 1])
def test_interrupted_write_never_leaves_a_new_table_beside_an_old_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k: int
) -> None:
    sub = make_submission(tmp_path / "submissions")
    assert validate_submission(sub) == []
    old = _files(sub)
    doc = json.loads((sub / "results.json").read_text())
    table = pd.read_csv(sub / "results.per_image.csv")
    new_table = _second_run(table)
    renamed = _fail_on(monkeypatch, k)
    with pytest.raises(OSError, match="injected"):
        write_results(doc, new_table, None, sub / "results.json")
    monkeypatch.undo()
    assert len(renamed) == k
    assert not [p.name for p in sub.iterdir() if p.name.endswith(".tmp")]  # no temporary left
    json_now, csv_now = _files(sub)
    assert json_now == old[0]  # the document is replaced last: an interruption keeps the old one
    mixed = csv_now != old[1]
    assert mixed == (k == 1)  # the CSV was renamed before the failure
    problems = [str(p) for p in validate_submission(sub)]
    if mixed:
        assert len(problems) == 1 and "per_image_sha256" in problems[0], problems
        assert "different runs" in problems[0]
        with pytest.raises(CellbenchError, match="per_image_sha256 differs"):
            check_per_image_digest(json.loads(json_now), sub / "results.per_image.csv")
        from cellbench.compare import compare_results

        with pytest.raises(CellbenchError, match="not the one its result document records"):
            compare_results(sub / "results.json", sub / "results.json")
    else:
        assert problems == []
    # the same write, not interrupted: a new pair that validates (the swap alone is not caught
    # by any other check, so the refusal above came from the digest)
    write_results(doc, new_table, None, sub / "results.json")
    assert validate_submission(sub) == []
    assert _files(sub)[1] != old[1]


def test_result_without_a_table_removes_a_stale_one(tmp_path: Path) -> None:
    sub = make_submission(tmp_path / "submissions")
    doc = json.loads((sub / "results.json").read_text())
    write_results(doc, pd.DataFrame(), None, sub / "results.json")
    assert not (sub / "results.per_image.csv").exists()
    assert json.loads((sub / "results.json").read_text())["per_image_sha256"] is None


def test_merge_refuses_shard_arrays_of_another_run(tmp_path: Path) -> None:
    from cellbench.evaluation import merge_shards
    from cellbench.scoring.arrays import ImageArrays

    def arrays(seed: int) -> ImageArrays:
        rng = np.random.default_rng(seed)
        return ImageArrays(["t1"], ["t1.npy"], ["0" * 64], rng.random((1, 3)), None)

    shard = tmp_path / "s1.json"
    write_results({"partial": {"shard": "1/2"}}, pd.DataFrame(), arrays(0), shard)
    recorded = json.loads(shard.read_text())["partial"]["arrays_sha256"]
    assert len(recorded) == 64
    with pytest.raises(CellbenchError, match="do not cover"):  # the pair itself is fine
        merge_shards([shard])
    arrays(1).save(result_paths(shard)[2])  # another run's arrays beside the document
    with pytest.raises(CellbenchError, match="arrays_sha256 differs"):
        merge_shards([shard])
