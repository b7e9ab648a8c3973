"""Tests of `mog_flows.runs`, the run engine of `fit` and `fit_maxent`: settings comparison, checkpoint files, RNG
capture and restore, the interrupt guard, divergence errors, temperature schedules. The trainers' own resume tests
(bitwise equal to uninterrupted runs) are in tests/test_training.py and tests/test_maxent.py."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import threading

import pytest
import torch
from torch import nn

from mog_flows import MixtureOfGaussians
from mog_flows.runs import (
    CONFIG_TOLERANCE,
    InterruptGuard,
    TrainingDivergedError,
    capture_rng,
    check_checkpoint_dir,
    check_mixture_settings,
    check_resume_config,
    check_state_fits,
    check_temperature_schedule,
    derive_seed,
    diverged,
    eval_mode,
    geometric_temperature,
    load_training_state,
    non_finite_parameters,
    read_checkpoint,
    restore_rng,
    same_setting,
    set_temperature,
    write_atomic,
    write_config,
)

CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (1.0, 1.0 + 0.5 * CONFIG_TOLERANCE, True),
        (1.0, 1.0 + 3 * CONFIG_TOLERANCE, False),
        (0.0, 0.5 * CONFIG_TOLERANCE, True),
        (3, 3, True),
        (3, 4, False),
        ([0.5, 2.0], (0.5, 2.0), True),  # a schedule from JSON (list) and from the caller (tuple)
        ([0.5, 2.0], [0.5], False),
        ({"rows": 3, "checksum": 1.25}, {"rows": 3, "checksum": 1.25 * (1 + 1e-12)}, True),
        ({"rows": 3}, {"rows": 3, "checksum": 1.0}, False),
        (None, 0.0, False),
        ("cosine", "cosine", True),
    ],
)
def test_same_setting(a, b, same):
    assert same_setting(a, b) is same and same_setting(b, a) is same


def test_check_resume_config_names_every_difference_and_ignores_other_keys(tmp_path):
    saved = {"lr": 1e-3, "steps": 10, "progress": True}
    current = {"lr": 2e-3, "steps": 11, "progress": False}
    with pytest.raises(ValueError, match=r"other settings \(lr: 0\.001 there, 0\.002 now; steps: 10 there, 11 now\)"):
        check_resume_config(saved, current, ["lr", "steps"], tmp_path / "latest.pt", "fit")
    check_resume_config(saved, {**saved, "progress": False}, ["lr", "steps"], tmp_path / "latest.pt", "fit")


# ---------------------------------------------------------------------------------------------- files
def test_write_atomic_replaces_the_file_whole_or_not_at_all(tmp_path):
    path = tmp_path / "latest.pt"
    write_atomic(path, lambda file: file.write(b"old"))

    def failing(file):
        file.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, failing)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no temporary file left


def test_write_config_creates_the_directory(tmp_path):
    write_config(tmp_path / "a" / "b", {"lr": 0.001, "schedule": [1.0, 0.5]})
    assert json.loads((tmp_path / "a" / "b" / "config.json").read_text()) == {"lr": 0.001, "schedule": [1.0, 0.5]}


def a_checkpoint(**changes):
    checkpoint = {
        "format": "test/1",
        "step": 3,
        "config": {},
        "model": {},
        "optimizer": {},
        "rng": {"torch": torch.get_rng_state()},
        "extra": torch.zeros(2),
    }
    checkpoint.update(changes)
    return {key: value for key, value in checkpoint.items() if value is not None}


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (lambda p: p.write_bytes(b""), r"cannot be read: it is truncated, corrupt, or was not written by the tester"),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), r"cannot be read"),
        (lambda p: torch.save({"f": io.BytesIO()}, p), r"cannot be read.*something other than tensors and containers"),
        (lambda p: torch.save([1, 2], p), r"not a the tester checkpoint: it holds a list, not a dict"),
        (lambda p: torch.save(a_checkpoint(format="other/1"), p), r"format 'other/1', expected 'test/1'"),
        (lambda p: torch.save(a_checkpoint(step=True), p), r"entry 'step' is missing or not a int"),
        (lambda p: torch.save(a_checkpoint(optimizer=None), p), r"entry 'optimizer' is missing or not a dict"),
        (lambda p: torch.save(a_checkpoint(extra=3), p), r"entry 'extra' is missing or not a Tensor"),
        (lambda p: torch.save(a_checkpoint(rng={}), p), r"RNG state 'torch' is missing"),
        (lambda p: torch.save(a_checkpoint(config={"bad": 1}), p), r"the problem says so"),
    ],
)
def test_read_checkpoint_refuses_what_is_not_a_checkpoint_of_its_format(tmp_path, write, match):
    path = tmp_path / "latest.pt"
    write(path)

    def problem(checkpoint):
        return "the problem says so" if checkpoint["config"] else None

    with pytest.raises(ValueError, match=rf"checkpoint {tmp_path}.*latest\.pt.*{match}"):
        read_checkpoint(path, "test/1", "the tester", {"extra": torch.Tensor}, problem)


def test_read_checkpoint_returns_a_good_one(tmp_path):
    torch.save(a_checkpoint(), tmp_path / "latest.pt")
    checkpoint = read_checkpoint(tmp_path / "latest.pt", "test/1", "the tester", {"extra": torch.Tensor})
    assert checkpoint["step"] == 3 and torch.equal(checkpoint["extra"], torch.zeros(2))


def test_check_checkpoint_dir(tmp_path):
    assert check_checkpoint_dir(None) is None
    assert check_checkpoint_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checked, not created
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"file is a file, not a directory"):
        check_checkpoint_dir(tmp_path / "file")
    with pytest.raises(ValueError, match=r"lies under .*file, a file"):
        check_checkpoint_dir(tmp_path / "file" / "run")
    with pytest.raises(ValueError, match=r"checkpoint_dir='' names no directory"):
        check_checkpoint_dir("")
    with pytest.raises(ValueError, match=r"must be a path \(str or os\.PathLike\) or None; got float"):
        check_checkpoint_dir(1.5)


# ---------------------------------------------------------------------------------------------- model state
def test_a_state_that_does_not_fit_leaves_the_model_and_optimizer_untouched(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = nn.Linear(4, 2)
    checkpoint = {"model": other.state_dict(), "optimizer": torch.optim.Adam(other.parameters()).state_dict()}
    with pytest.raises(ValueError, match=r"weight has shape \(2, 4\) there, \(2, 3\) here"):
        load_training_state(model, optimizer, checkpoint, tmp_path / "latest.pt")
    with pytest.raises(ValueError, match=r"missing \['bias'\], unexpected \['offset'\]"):
        check_state_fits(model, {"weight": before["weight"], "offset": before["bias"]}, tmp_path / "latest.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    optimizer_state = torch.optim.Adam([nn.Parameter(torch.zeros(1))]).state_dict()  # one parameter, not two
    with pytest.raises(ValueError, match=r"the optimizer state does not fit this model"):
        load_training_state(model, optimizer, {"model": before, "optimizer": optimizer_state}, tmp_path / "x.pt")


def test_check_mixture_settings_names_the_changed_setting(tmp_path):
    saved = MixtureOfGaussians(2, 3, estimator="pathwise", temperature=0.5).state_dict()
    model = MixtureOfGaussians(2, 3, estimator="exact", temperature=0.7)
    with pytest.raises(ValueError, match=r"model\.estimator: 'pathwise' there, 'exact' now; model\.temperature"):
        check_mixture_settings(model, saved, tmp_path / "latest.pt", temperature=True)
    model = MixtureOfGaussians(2, 3, estimator="pathwise", temperature=0.7)
    check_mixture_settings(model, saved, tmp_path / "latest.pt", temperature=False)  # τ set by a schedule


def test_non_finite_parameters_and_eval_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Linear(2, 1))
    with torch.no_grad():
        model[2].bias.fill_(math.nan)
    assert non_finite_parameters(model) == ["2.bias"]
    model[1].eval()  # a submodule in its own mode: kept after the block
    with eval_mode(model):
        assert not any(module.training for module in model.modules())
    assert model.training and model[0].training and not model[1].training


# ---------------------------------------------------------------------------------------------- random state
def test_capture_and_restore_rng_replay_the_same_draws(tmp_path):
    generator = torch.Generator().manual_seed(5)
    state = capture_rng(CPU, {"batches": generator})
    assert sorted(state) == ["batches", "torch"]
    first = (torch.rand(4), torch.rand(4, generator=generator))
    torch.manual_seed(99)
    generator.manual_seed(99)
    restore_rng(state, CPU, tmp_path / "latest.pt", seed=0, generators={"batches": generator})
    second = (torch.rand(4), torch.rand(4, generator=generator))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({}, r"'torch' is missing or not a byte tensor"),
        ({"torch": "state"}, r"'torch' is missing or not a byte tensor"),
        ({"torch": torch.zeros(5056)}, r"'torch' is missing or not a byte tensor"),  # float, not bytes
        ({"torch": torch.zeros(7, dtype=torch.uint8), "batches": torch.get_rng_state()}, r"size"),
        ({"torch": torch.get_rng_state()}, r"'batches' is missing"),
    ],
)
def test_an_invalid_rng_state_is_refused_before_any_stream_changes(tmp_path, state, match):
    generator = torch.Generator().manual_seed(5)
    expected = (torch.get_rng_state(), generator.get_state())
    with pytest.raises(ValueError, match=rf"checkpoint .*latest\.pt holds an invalid RNG state.*{match}"):
        restore_rng(state, CPU, tmp_path / "latest.pt", seed=0, generators={"batches": generator})
    assert torch.equal(torch.get_rng_state(), expected[0]) and torch.equal(generator.get_state(), expected[1])


def test_derive_seed_is_fixed_and_separates_purposes():
    assert derive_seed(3, "batches") == derive_seed(3, "batches")
    seeds = {derive_seed(seed, purpose) for seed in range(50) for purpose in ("batches", "init")}
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)


# ---------------------------------------------------------------------------------------------- divergence
def test_diverged_says_what_failed_and_which_checkpoint_is_kept(tmp_path):
    latest = tmp_path / "latest.pt"
    error = diverged("training", "the loss is nan", step=7, steps=9, latest=latest, saved_step=5, applied=False,
                     advice="Try less.")  # fmt: skip
    assert isinstance(error, TrainingDivergedError) and error.step == 7 and error.checkpoint == latest
    assert str(error) == (
        f"training diverged at step 7 of 9: the loss is nan; the update was not applied. The last good checkpoint, "
        f"{latest} (step 5), is kept. Try less."
    )
    error = diverged("fit_maxent", "x", step=1, steps=2, latest=None, saved_step=None, applied=True, advice="")
    assert error.checkpoint is None and "No checkpoint_dir was given, so nothing was saved." in str(error)
    assert "not applied" not in str(error)
    error = diverged("fit_maxent", "x", step=1, steps=2, latest=latest, saved_step=None, applied=True, advice="")
    assert error.checkpoint is None and f"Nothing was saved to {latest}." in str(error)


# ---------------------------------------------------------------------------------------------- temperatures
def test_geometric_temperature_runs_from_start_to_end_and_stays_there():
    schedule = (1.0, 0.01)
    taus = [geometric_temperature(schedule, step, 5) for step in range(7)]
    assert taus[0] == 1.0 and math.isclose(taus[4], 0.01) and taus[5] == taus[6] == taus[4]
    ratios = [b / a for a, b in zip(taus[:4], taus[1:5])]
    assert all(math.isclose(r, 0.01**0.25) for r in ratios)
    assert geometric_temperature(schedule, 0, 1) == 1.0  # a one-step run uses the start


def test_check_temperature_schedule():
    gumbel = MixtureOfGaussians(1, 2, estimator="gumbel-nested", temperature=0.8)
    exact = MixtureOfGaussians(1, 2, estimator="exact")
    assert check_temperature_schedule(None, []) is None
    assert check_temperature_schedule([2, 1], [exact]) == (2.0, 1.0)
    assert check_temperature_schedule("auto", [exact, gumbel], auto=0.05) == (0.8, 0.05)
    assert check_temperature_schedule("auto", [exact], auto=0.05) is None
    assert check_temperature_schedule(
        "auto", [MixtureOfGaussians(1, 2, estimator="gumbel-nested", temperature=0.01)], auto=0.05
    ) == (
        0.01,
        0.01,
    )
    with pytest.raises(ValueError, match=r"must be a pair \(start, end\); got 'auto'"):
        check_temperature_schedule("auto", [gumbel])
    with pytest.raises(ValueError, match=r"must be 'auto', None or a pair \(start, end\); got 'fast'"):
        check_temperature_schedule("fast", [gumbel], auto=0.05)
    with pytest.raises(ValueError, match=r"values must be finite and > 0"):
        check_temperature_schedule((1.0, 0.0), [gumbel])
    with pytest.raises(ValueError, match=r"contains no MixtureOfGaussians"):
        check_temperature_schedule((1.0, 0.5), [])
    set_temperature([gumbel, exact], 0.3)
    assert gumbel.temperature == exact.temperature == 0.3


# ---------------------------------------------------------------------------------------------- interruptions
@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs SIGTERM")
def test_interrupt_guard_defers_a_signal_inside_an_update_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with InterruptGuard() as guard:
        with guard.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert guard.pending and guard.reason == "received SIGTERM"  # held back: the update finishes
        guard.pending = False
        with pytest.raises(KeyboardInterrupt, match="received SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)  # outside an update: at once
    assert signal.getsignal(signal.SIGTERM) == before


def test_interrupt_guard_leaves_installed_handlers_and_other_threads_alone():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with InterruptGuard():
            assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    seen = []

    def in_a_thread():
        with InterruptGuard():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
