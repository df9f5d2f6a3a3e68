"""Every local file that README.md, REPORT.md, model_card.md and docs/ link to or name under results/ exists."""

import re

import pytest

from conftest import ROOT

DOCUMENTS = ["README.md", "REPORT.md", "model_card.md", "docs/usage.md", "docs/evaluation.md", "docs/performance.md"]
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
