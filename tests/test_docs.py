"""The documentation check of scripts/check.sh passes on the docs and fails on their faults."""

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # three mkdocs builds in subprocesses

REPO = Path(__file__).resolve().parents[1]


def check(site: Path) -> subprocess.CompletedProcess[str]:
    config = site / "mkdocs.yml"
    return subprocess.run(
        [str(REPO / "scripts" / "check_docs.sh"), str(config)], capture_output=True, text=True
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of the documentation sources (the code they render stays the repo's)."""
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "docs_hooks.py", tmp_path / "scripts" / "docs_hooks.py")
    (tmp_path / "src").symlink_to(REPO / "src")
    return tmp_path


def test_the_docs_build_and_a_page_outside_the_nav_or_a_broken_link_fail_them(
    site: Path,
) -> None:
    done = check(site)
    assert done.returncode == 0, done.stderr
    assert (site / "build" / "site" / "index.html").exists()
    (site / "docs" / "concepts" / "orphan.md").write_text("# A page nobody links to\n")
    with (site / "docs" / "development.md").open("a") as page:
        page.write("\nSee [the missing page](concepts/missing.md).\n")
    done = check(site)  # each warning counts: strict mode aborts on one
    assert done.returncode == 1
    assert 'not included in the "nav" configuration:\n  - concepts/orphan.md' in done.stderr
    assert "contains a link 'concepts/missing.md', but the target is not found" in done.stderr
    assert "Aborted with 2 warnings in strict mode!" in done.stderr
