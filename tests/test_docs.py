"""The documents: every local file they link to or name under results/ exists; README.md stays concise; no commit
hash or TODO is left in a finished document; the generated result tables match the JSON files they come from."""

import re

import pytest

from pipeline.evaluation import results_tables

from conftest import ROOT

DOCUMENTS = ["README.md", "REPORT.md", "model_card.md", "docs/usage.md", "docs/evaluation.md", "docs/performance.md",
             "results/README.md"]
README_WORD_BUDGET = 1500
# a short git hash: 7-12 hex digits with at least one letter and one digit, not part of a longer token (checksums,
# which documents may quote in full, are 40 or 64 digits)
COMMIT_HASH = re.compile(r"(?<![0-9A-Za-z_./-])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,12}(?![0-9A-Za-z_-])")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # Markdown links and images
FENCED = re.compile(r"```.*?```", re.S)
INLINE_CODE = re.compile(r"`([^`]*)`")
RESULTS_PATH = re.compile(r"(results/[A-Za-z0-9_./-]+\.(?:jsonl|json|png))")


def local_references(text: str) -> set[str]:
    """Links/images, and results/ files named in prose or as a lone inline-code path (not in commands)."""
    # inline code with spaces is a command line: the paths in it are outputs it will write
    text = INLINE_CODE.sub(lambda span: "" if " " in span.group(1) else span.group(1), FENCED.sub("", text))
    found = {target.split("#")[0] for target in LINK.findall(text)}
    found |= set(RESULTS_PATH.findall(text))
    return {path for path in found if path and "://" not in path and not path.startswith("#") and "*" not in path}


@pytest.mark.parametrize("document", DOCUMENTS)
def test_referenced_files_exist(document):
    path = ROOT / document
    if not path.exists():
        pytest.skip(f"{document} not written yet")
    # links are relative to the document; results/ paths named in prose, to the repository
    def exists(ref: str) -> bool:
        return (path.parent / ref).exists() or (ref.startswith("results/") and (ROOT / ref).exists())

    missing = sorted(ref for ref in local_references(path.read_text()) if not exists(ref))
    assert not missing, f"{document} references missing files: {missing}"


def test_readme_is_concise():
    words = len((ROOT / "README.md").read_text().split())
    assert words <= README_WORD_BUDGET, f"README.md has {words} words; keep it under {README_WORD_BUDGET}"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_finished_documents_carry_no_commit_hashes_or_todos(document):
    text = (ROOT / document).read_text()
    assert not COMMIT_HASH.findall(text), f"{document} names commits: {COMMIT_HASH.findall(text)}"
    assert "TODO" not in text, f"{document} still has a TODO"


def test_commit_hash_pattern():
    assert COMMIT_HASH.findall("fixed in a985646, see 1a781ad.") == ["a985646", "1a781ad"]
    assert not COMMIT_HASH.findall("sha256 d863565576ab9947da5d23317319ffaffa021a9c1d29b40e5ef3c1d2d39b5e65 1000000")


def test_result_tables_match_their_json(capsys):
    assert results_tables.main(["--root", str(ROOT), "--check"]) == 0, capsys.readouterr().out
