"""The documentation points at results that exist: every ``docs/results/<folder>`` named in the README
and in docs/*.md, and every folder in the README's results table, is in the repository."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def _named_folders(text: str) -> set[str]:
    return set(re.findall(r"(?:^|[^.\w/])(?:docs/)?results/([A-Za-z0-9_]+)", text))


def test_every_results_folder_the_docs_name_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = {f"{d.relative_to(ROOT)}: results/{name}" for d in docs
               for name in _named_folders(d.read_text(encoding="utf-8")) if not (RESULTS / name).is_dir()}
    assert not missing, sorted(missing)


def test_every_sibling_folder_a_results_readme_names_exists():
    """``../NAME`` in a results README is another results folder (``../shared`` is the data outside the repository)."""
    missing = {f"{r.relative_to(ROOT)}: ../{name}" for r in sorted(RESULTS.glob("*/README.md"))
               for name in re.findall(r"`\.\./([A-Za-z0-9_]+)", r.read_text(encoding="utf-8"))
               if name != "shared" and not (RESULTS / name).is_dir()}
    assert not missing, sorted(missing)


def test_the_readme_results_table_names_existing_folders():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## What it reaches", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| cohort")]
    folders = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.rsplit("|", 2)[1])}
    assert {"size_ablation", "hybrid_seeds", "kfold_cpu_paper"} <= folders
    assert all((RESULTS / name).is_dir() for name in folders), sorted(f for f in folders if not (RESULTS / f).is_dir())


def test_the_folder_pattern_reads_paths_and_skips_relative_ones():
    text = "see docs/results/a_b/README.md, `results/c` and ../results/d or x/results/e"
    assert _named_folders(text) == {"a_b", "c"}
