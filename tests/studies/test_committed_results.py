"""The committed study reports are what the report code makes of the committed rows: moving or refactoring the
code that writes them must leave each report byte for byte as it is (the full runs take hours; the rows do not
change when the code is only moved). The maximum-entropy reports also carry each run's command and wall time and
are checked by their smoke run instead (tests/studies/test_maxent.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mog_flows.studies import comparison, rad

RESULTS = Path(__file__).parents[2] / "experiments" / "results"


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("compare_bases", "Gaussian base vs mixture-of-Gaussians base"),
        ("compare_bases_quick", "Gaussian base vs mixture-of-Gaussians base (--quick)"),
    ],
)
def test_the_base_comparison_report_follows_from_its_rows(tmp_path, name, title):
    rows = comparison.read_results(RESULTS, name)
    comparison.write_markdown(rows, tmp_path / f"{name}.md", title=title)
    assert (tmp_path / f"{name}.md").read_text() == (RESULTS / f"{name}.md").read_text()


def test_the_rad_report_follows_from_its_rows(tmp_path, capsys):
    for path in RESULTS.glob("rad_comparison*"):
        shutil.copy(path, tmp_path / path.name)
    rad.main(["--report-only", "--out", str(tmp_path)])
    capsys.readouterr()
    assert (tmp_path / "rad_comparison.md").read_text() == (RESULTS / "rad_comparison.md").read_text()


def test_the_rad_learning_rates_are_the_ones_the_committed_selection_chose(tmp_path):
    rows = rad.read_rad_results(RESULTS, "rad_comparison_lr")
    assert {model: choice["lr"] for model, choice in rad.select_learning_rates(rows).items()} == rad.LEARNING_RATES
    assert {row["seed"] for row in rows} == {rad.LR_SEED} and {row["dataset"] for row in rows} == set(rad.LR_TARGETS)
    rad.write_lr_markdown(rows, tmp_path / "rad_comparison_lr.md")
    committed = (RESULTS / "rad_comparison_lr.md").read_text()
    assert (tmp_path / "rad_comparison_lr.md").read_text() == committed
    reported = rad.read_rad_results(RESULTS, "rad_comparison")
    assert rad.LR_SEED not in {row["seed"] for row in reported}
    assert all(row["lr"] == rad.LEARNING_RATES[row["model"]] for row in reported)


@pytest.mark.parametrize("study", ["jensen_warmup", "collinearity"])
def test_the_mdn_training_reports_follow_from_their_rows(tmp_path, study):
    import re

    from mog_flows.studies import collinearity, jensen_warmup, report

    module = {"jensen_warmup": jensen_warmup, "collinearity": collinearity}[study]
    texts = ("arm", "status", "reason") if study == "jensen_warmup" else collinearity.TEXTS
    rows = report.read_csv(RESULTS / f"{study}.csv", integers=module.INTEGERS, texts=texts)
    committed = (RESULTS / f"{study}.md").read_text()
    command = re.search(r"Written by `([^`]+)`", committed)[1]
    module.write_markdown(rows, tmp_path / f"{study}.md", command=command)
    assert (tmp_path / f"{study}.md").read_text() == committed
