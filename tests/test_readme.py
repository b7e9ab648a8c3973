"""The README's usage example runs, its headline numbers are the reports', and its links stay in the repository.
The examples of the getting-started page (docs/index.md) run too."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?: ± \d+(?:\.\d+)?)?(?: of \d+)?")


def run(code: str, name: str) -> None:
    exec(compile(code, name, "exec"), {"__name__": "__readme__"})


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no section '## {title}'"
    return match[1]


def test_readme_opens_with_the_newcomer_commands():
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines() if line.startswith("make")] == [
        ["make", "demo"],
        ["make", "test"],
    ]
    assert len(README.encode()) <= 10 * 1024


def test_readme_usage_example_runs():
    run(FENCE.search(README)[1], "README.md")


@pytest.mark.parametrize("index", range(len(FENCE.findall((ROOT / "docs" / "index.md").read_text(encoding="utf-8")))))
def test_getting_started_examples_run(index):
    run(FENCE.findall((ROOT / "docs" / "index.md").read_text(encoding="utf-8"))[index], f"docs/index.md block {index}")


def test_readme_links_stay_in_the_repository():
    for target in LINK.findall(README):
        if target.startswith("https://"):
            continue
        path = (ROOT / target.split("#")[0]).resolve()
        assert ROOT in path.parents and path.exists(), f"README links {target}, not a file of the repository"


def test_headline_numbers_are_the_reports():
    rows = [line for line in section(README, "Results").splitlines() if line.startswith("| [")]
    assert rows
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        report = (ROOT / LINK.search(cells[0])[1]).read_text(encoding="utf-8")
        for cell in cells[2:]:
            for number in NUMBER.findall(cell):
                assert number in report, f"{number!r} (README results, row {cells[0]!r}) is not in its report"
