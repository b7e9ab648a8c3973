"""Tests of `mog_flows.studies.jensen_warmup` and its loop (`mog_flows.studies.mdn_training`): the hard start
does what it says, a diverged run is recorded and not raised, the bound-first arms differ from NLL only in their
first W steps only, and the study end to end with --quick settings."""

from __future__ import annotations

import math

import torch

from mog_flows.mdn import MixtureDensityNetwork
from mog_flows.studies import jensen_warmup as jw
from mog_flows.studies.mdn_training import command_line, hard_start, train

QUICK = dict(steps=30, warmup_steps=10, train_size=400, test_size=200, eval_size=100, eval_every=10)


def test_the_hard_start_makes_sharp_far_components():
    torch.manual_seed(0)
    model = hard_start(MixtureDensityNetwork(1, 2, 3), mean_spread=4.0, initial_std=0.05)
    parameters = model(torch.zeros(5, 1))
    factor = parameters["precision_cholesky"]
    torch.testing.assert_close(factor.diagonal(dim1=-2, dim2=-1), torch.full((5, 3, 2), 20.0), rtol=1e-2, atol=0)
    assert factor.triu(1).abs().max() < 0.1  # off-diagonal entries stay near 0
    assert parameters["means"].abs().max() > 2.0  # spread 4 × N(0, 1)


def test_a_run_whose_loss_overflows_is_recorded_as_diverged_not_raised():
    spec = jw.WarmupSpec("nll", 0, initial_std=1e-30, **QUICK)  # U = 1e30 I: the first loss overflows float32
    row = jw.run_spec(spec)
    assert row["status"] == "diverged" and row["diverged_step"] == 1
    assert math.isnan(row["final_nll"]) and row["reason"]
    spec = jw.WarmupSpec("weighted", 0, initial_std=1e-30, **QUICK)  # through jensen_bound's input checks
    row = jw.run_spec(spec)
    assert row["status"] == "diverged" and row["diverged_step"] == 1


def test_train_stops_at_a_non_finite_loss():
    model = MixtureDensityNetwork(1, 1, 2)
    data = (torch.randn(50, 1), torch.randn(50, 1))

    def loss(m, y, x, step):
        return -m.log_prob(y, x).mean() * (math.inf if step == 3 else 1.0)

    outcome = train(model, data, loss, steps=10, lr=1e-3, batch_size=8, seed=0)
    assert outcome.diverged and outcome.diverged_step == 4 and outcome.steps == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nll_only_and_bound_first_share_the_start_and_the_batches():
    # W = 0 steps of bound make a bound arm the NLL arm exactly; a W > 0 arm differs
    rows = {arm: jw.run_spec(jw.WarmupSpec(arm, 1, **{**QUICK, "warmup_steps": 0})) for arm in ("nll", "uniform")}
    assert rows["nll"]["final_nll"] == rows["uniform"]["final_nll"]
    torch.testing.assert_close(rows["nll"]["eval_nll"], rows["uniform"]["eval_nll"], rtol=0, atol=0)
    warm = jw.run_spec(jw.WarmupSpec("uniform", 1, **QUICK))
    assert warm["final_nll"] != rows["nll"]["final_nll"]


def test_command_line_leaves_out_the_output_folder():
    assert command_line("experiments/x.py", ["--quick", "--out", "/tmp/a", "--seeds", "1"]) == (
        "python experiments/x.py --quick --seeds 1"
    )


def test_the_study_runs_end_to_end_with_quick_settings(tmp_path, capsys):
    rows = jw.main(["--quick", "--out", str(tmp_path)])
    capsys.readouterr()
    text = (tmp_path / "jensen_warmup_quick.md").read_text()
    assert "Written by `python experiments/jensen_warmup.py --quick`" in text
    for heading in ("## Summary", "## Final test NLL per seed", "## Every run", "## What the numbers say"):
        assert heading in text
    assert len(rows) == len(jw.ARMS) * 2
    assert {r["arm"] for r in rows} == set(jw.ARMS)
    assert (tmp_path / "jensen_warmup_quick.csv").exists() and (tmp_path / "jensen_warmup_quick.png").exists()
    # the report follows from the CSV alone
    from mog_flows.studies import report

    written = report.read_csv(
        tmp_path / "jensen_warmup_quick.csv", integers=jw.INTEGERS, texts=("arm", "status", "reason")
    )
    jw.write_markdown(written, tmp_path / "again.md", command="python experiments/jensen_warmup.py --quick")
    assert (tmp_path / "again.md").read_text() == text
