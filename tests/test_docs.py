"""Docs and code comments tell the truth about the repository: they cite files that exist."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO

SOURCE_DIRS = ("cellbench", "baselines", "bench", "tests")


def _sources() -> list[Path]:
    return sorted(
        p
        for d in SOURCE_DIRS
        for p in (REPO / d).rglob("*")
        if p.suffix in (".py", ".sh", ".md") and "__pycache__" not in p.parts
    )


def test_comments_cite_the_projects_docs_not_a_missing_spec() -> None:
    files = [*_sources(), *sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]
    citing = {
        p.relative_to(REPO).as_posix()
        for p in files
        if p.name != "test_docs.py" and re.search(r"\bSPEC\b", p.read_text(encoding="utf-8"))
    }
    assert not citing, f"cite docs/*.md instead of SPEC in {sorted(citing)}"


def test_cited_docs_pages_exist() -> None:
    cited: dict[str, str] = {}
    for path in _sources():
        for page in re.findall(r"\bdocs/[\w-]+\.md\b", path.read_text(encoding="utf-8")):
            cited.setdefault(page, path.relative_to(REPO).as_posix())
    assert "docs/scoring.md" in cited and "docs/cellfluxrl.md" in cited
    missing = {page: where for page, where in cited.items() if not (REPO / page).is_file()}
    assert not missing, f"cited but absent: {missing}"


def test_docs_name_the_current_metric_suite_version() -> None:
    from cellbench.metrics import rewards

    version = rewards.SUITE_VERSION
    assert f"metric suite version {version}" in (rewards.__doc__ or "").splitlines()[0]
    title = (REPO / "docs" / "scoring.md").read_text().splitlines()[0]
    assert title.endswith(f"(metric suite version {version})"), title
