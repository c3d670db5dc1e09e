"""End to end on a fake *real* dataset: an IMPA-format ``bbbc021`` served on the loopback.

download (loopback) -> artifacts build -> protocol -> generate identity -> eval -> artifacts pack
(the maintainer registers the set and the protocol) -> submission validate -> leaderboard build,
with the real (not simulated) table on the page. Run in-process (Typer's runner) so the registry
of published sets and the accepted protocols can point at this fixture.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import build_mini_dataset
from tests.loopback_http import loopback_server
from tests.test_download import FP_NAME, make_zip
from tests.test_submission import metadata


def _impa_tar(root: Path) -> bytes:
    """The fixture dataset as IMPA's bbbc021_all.tar (top folder bbbc021_all/)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if not rel.startswith("embeddings/"):
                tf.add(path, arcname=f"bbbc021_all/{rel}")
    return buf.getvalue()


def _run(runner: CliRunner, *args: str) -> str:
    from cellbench.cli.main import app

    res = runner.invoke(app, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.mark.slow
def test_real_bbbc021_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from cellbench.artifacts import registry
    from cellbench.data.bbbc021 import BBBC021Dataset
    from cellbench.data.catalog import get_card
    from cellbench.submission import validate

    monkeypatch.setenv("CELLBENCH_PROGRESS", "0")
    monkeypatch.setenv("CELLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CELLBENCH_WORKERS", "1")
    src = build_mini_dataset(tmp_path / "src")
    fp = (src / "embeddings" / "csv" / "emb_fp.csv").read_bytes()
    blob = make_zip(tar=_impa_tar(src), include_fp=False, extra={FP_NAME: fp})
    data, runner = tmp_path / "data", CliRunner()
    with loopback_server("/records/8307629/files/IMPA.zip") as served:
        served.serve(blob)
        _run(runner, "data", "download", "bbbc021", "--data-dir", str(data), "--url", served.url)
    ds = BBBC021Dataset(data / "bbbc021", get_card("bbbc021"))
    assert len(ds.index) == 32

    _run(runner, "artifacts", "build", "--dataset", "bbbc021", "--data-dir", str(data))
    arts = data / "bbbc021" / "cellbench_artifacts"
    assert (arts / "MANIFEST.json").is_file()

    proto = tmp_path / "protocol.csv"
    _run(runner, "protocol", "--dataset", "bbbc021", "--data-dir", str(data), "--out", str(proto))
    images = tmp_path / "images"
    common = ("--dataset", "bbbc021", "--data-dir", str(data), "--protocol", str(proto))
    _run(runner, "generate", "identity", *common, "--out", str(images))
    sub = tmp_path / "subs" / "2026-01-15_identity-real"
    sub.mkdir(parents=True)
    _run(runner, "eval", str(images), *common, "--out", str(sub / "results.json"))
    doc = json.loads((sub / "results.json").read_text())
    assert doc["dataset"]["name"] == "bbbc021" and not doc["dataset"].get("simulated")
    manifest = json.loads((arts / "MANIFEST.json").read_text())
    assert doc["artifacts"]["files"].items() <= manifest["files"].items()
    _run(
        runner,
        "submission",
        "grid",
        str(images),
        "--protocol",
        str(proto),
        "--out",
        str(sub / "samples.png"),
    )
    # the submission carries its images: `submission pack` writes them and prints the block
    packed = _run(runner, "submission", "pack", str(images), "--out", str(sub / "images.tar.xz"))
    meta = metadata(
        model={"name": "identity", "version": "1"},
        kind="anchor",
        training={"dataset": None, "splits": []},
        sample_grid="samples.png",
        images=json.loads(packed)["images"],
    )
    (sub / "metadata.json").write_text(json.dumps(meta))

    # the maintainer accepts this dataset version and protocol ...
    accepted = {
        "dataset": "bbbc021",
        "dataset_version": doc["dataset"]["version"],
        "index_sha256": doc["dataset"]["index_sha256"],
        "made_by": "tests/test_e2e_real.py",
        "name": doc["protocol"]["name"],
        "split": doc["protocol"]["split"],
        "seed": 0,
        "protocol_version": doc["protocol"]["version"],
        "protocol_sha256": doc["protocol"]["sha256"],
        "n_tasks": doc["protocol"]["n_tasks"],
    }
    known = validate.accepted_protocols()
    monkeypatch.setattr(validate, "accepted_protocols", lambda: (*known, accepted))
    # ... but has published no artifact set yet: one line names the fix
    from cellbench.cli.main import app

    res = runner.invoke(app, ["submission", "validate", str(sub)])
    assert res.exit_code == 1
    assert "is not a registered set for bbbc021: no set is published" in res.output

    # then packs and registers this set
    entry = json.loads(
        _run(
            runner,
            "artifacts",
            "pack",
            "--dataset",
            "bbbc021",
            "--data-dir",
            str(data),
            "--out",
            str(tmp_path / "set.tar.gz"),
            "--url",
            "https://example.org/set.tar.gz",
        )
    )
    assert entry["sha256"] == manifest["sha256"]
    monkeypatch.setattr(registry, "published_sets", lambda d: [entry] if d == "bbbc021" else [])
    _run(runner, "submission", "validate", str(sub))

    site = tmp_path / "site"
    _run(
        runner, "leaderboard", "build", "--submissions", str(tmp_path / "subs"), "--out", str(site)
    )
    page = (site / "index.html").read_text()
    assert "<h3>bbbc021 impa-1 · cellflux-iid · metric suite" in page
    assert "simulated</span>" not in page
    assert f"artifacts sha256 <code>{manifest['sha256'][:12]}</code>" in page
    assert "identity" in page
