"""Tests of `mog_flows.maxent` (the augmented-Lagrangian schedule, `fit_maxent`) and `mog_flows.simplex`.

Shapes: E test batches, B rows per batch, m constraints, D features. Flows are tiny and runs short; the one
run that must converge (the 1-D Gaussian) takes about ten seconds on one thread.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from nflows.transforms.base import InputOutsideDomain

from mog_flows import MixtureOfGaussians, build_flow
from mog_flows.maxent import (
    FINAL_TEMPERATURE,
    MaxEntNotConvergedWarning,
    augmented_lagrangian_update,
    fit_maxent,
    penalty_statistics,
)
from mog_flows.nflows_adapters import flow_base
from mog_flows.simplex import AdditiveLogistic, AdditiveLogRatio, simplex_flow

DOUBLE = torch.float64
GAUSSIAN_ENTROPY = 0.5 * math.log(2 * math.pi * math.e)  # N(0, 1): 1.4189 nats


def moments(x: torch.Tensor) -> torch.Tensor:
    """T(x) = (x, x²) per feature: (n, D) -> (n, 2D)."""
    return torch.cat([x, x * x], dim=-1)


def residual_batches(means, num_batches=16, batch_size=64, seed=0) -> torch.Tensor:
    """Residuals (E, B, m) ~ N(means, I)."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.as_tensor(means, dtype=DOUBLE)
    return means + torch.randn(num_batches, batch_size, means.numel(), generator=generator, dtype=DOUBLE)


def reference_statistics(residuals: torch.Tensor, penalty_test: str) -> np.ndarray:
    """The penalty test's per-batch statistics, recomputed with numpy."""
    r = residuals.numpy()
    if penalty_test == "norm":
        return np.linalg.norm(r.mean(1), axis=-1)
    half = r.shape[1] // 2
    return np.einsum("em,em->e", r[:, :half].mean(1), r[:, half:].mean(1))


# ------------------------------------------------------------------------------------------ the schedule
def test_multipliers_move_by_penalty_times_pooled_violation():
    residuals = residual_batches([0.3, -0.2, 0.05])
    multipliers = torch.tensor([1.0, -2.0, 0.5], dtype=DOUBLE)
    update = augmented_lagrangian_update(residuals, multipliers, 2.5, torch.ones(16, dtype=DOUBLE))
    pooled = residuals.mean((0, 1))
    torch.testing.assert_close(update.violation, pooled, rtol=0, atol=1e-15)
    torch.testing.assert_close(update.multipliers, multipliers + 2.5 * pooled, rtol=0, atol=1e-15)
    assert not torch.equal(update.multipliers, multipliers)


@pytest.mark.parametrize("penalty_test", ["split", "norm"])
@pytest.mark.parametrize(
    ("previous_mean", "new_mean", "grows"),
    [
        ([1.0, 1.0], [1.0, 1.0], True),  # no progress: ‖R‖ did not fall below γ‖R_prev‖
        ([1.0, 1.0], [0.6, 0.6], True),  # fell, but not by the factor γ = 0.25
        ([1.0, 1.0], [0.02, 0.0], False),  # fell far below γ‖R_prev‖
    ],
)
def test_penalty_grows_by_beta_exactly_when_welch_rejects_a_fall(penalty_test, previous_mean, new_mean, grows):
    gamma, beta, alpha = 0.25, 4.0, 0.05
    previous = penalty_statistics(residual_batches(previous_mean, seed=1), penalty_test)
    residuals = residual_batches(new_mean, seed=2, batch_size=256)
    update = augmented_lagrangian_update(
        residuals,
        torch.zeros(2, dtype=DOUBLE),
        0.5,
        previous,
        gamma=gamma,
        beta=beta,
        alpha=alpha,
        penalty_test=penalty_test,
    )
    # the independent reference: scipy's Welch test on numpy-computed statistics
    factor = gamma**2 if penalty_test == "split" else gamma
    expected = scipy.stats.ttest_ind(
        reference_statistics(residuals, penalty_test),
        factor * previous.numpy(),
        equal_var=False,
        alternative="greater",
    ).pvalue
    assert update.welch_p_value == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert update.increased is grows
    assert update.penalty == (0.5 * beta if grows else 0.5)


@pytest.mark.parametrize("penalty_test", ["split", "norm"])
def test_penalty_decision_switches_at_the_test_level(penalty_test):
    # a borderline case: ‖R‖² = 0.125 = γ² ‖R_prev‖², so p is moderate; c grows iff p < α
    previous = penalty_statistics(residual_batches([1.0, 1.0], seed=3), penalty_test)
    residuals = residual_batches([0.25, 0.25], seed=4)
    p = augmented_lagrangian_update(
        residuals, torch.zeros(2, dtype=DOUBLE), 1.0, previous, penalty_test=penalty_test
    ).welch_p_value
    assert 1e-3 < p < 0.999
    for alpha, grows in ((p * 1.01, True), (p * 0.99, False)):
        update = augmented_lagrangian_update(
            residuals, torch.zeros(2, dtype=DOUBLE), 1.0, previous, alpha=alpha, penalty_test=penalty_test
        )
        assert update.increased is grows
        assert update.penalty == (4.0 if grows else 1.0)


def test_split_statistic_is_unbiased_for_the_squared_norm_and_the_norm_is_not():
    # ‖R‖² = 0.01; the per-batch norm has a floor of about √(m / B) = 0.18 whatever ‖R‖ is
    residuals = residual_batches([0.1, 0.0], num_batches=4000, batch_size=64, seed=5)
    split = penalty_statistics(residuals, "split")
    assert abs(split.mean().item() - 0.01) < 4 * split.std().item() / math.sqrt(split.numel())
    norm = penalty_statistics(residuals, "norm")
    assert (norm**2).mean().item() > 0.01 + 2 / 64 - 0.005  # E‖R̂‖² = ‖R‖² + tr Cov / B


def exact_t_sample(n: int, t: float) -> torch.Tensor:
    """n values whose one-sample t statistic is exactly t."""
    z = torch.randn(n, generator=torch.Generator().manual_seed(6), dtype=DOUBLE)
    z = (z - z.mean()) / z.std()
    return z + t / math.sqrt(n)


def test_stopping_test_is_two_sided_and_bonferroni_corrected():
    n = 200  # E·B = 4 · 50
    satisfied, borderline = exact_t_sample(n, 0.0), exact_t_sample(n, -2.2)  # two-sided p ≈ 0.029
    both = torch.stack([satisfied, borderline], -1).reshape(4, 50, 2)
    update = augmented_lagrangian_update(both, torch.zeros(2, dtype=DOUBLE), 1.0, torch.ones(4, dtype=DOUBLE))
    expected = scipy.stats.ttest_1samp(both.reshape(n, 2).numpy(), 0.0).pvalue
    np.testing.assert_allclose(update.constraint_p_values.numpy(), expected, rtol=1e-9)
    assert 0.025 < expected[1] < 0.035
    assert update.converged  # 0.029 > α/m = 0.025: passes with two constraints
    alone = borderline.reshape(4, 50, 1)
    assert not augmented_lagrangian_update(alone, torch.zeros(1, dtype=DOUBLE), 1.0, torch.ones(4)).converged
    violated = both + torch.tensor([0.0, 0.5], dtype=DOUBLE)
    assert not augmented_lagrangian_update(violated, torch.zeros(2, dtype=DOUBLE), 1.0, torch.ones(4)).converged


# ------------------------------------------------------------------------------------------ fit_maxent
def mixture_flow(estimator: str = "pathwise", seed: int = 0):
    """A 1-D MAF (one affine layer) over a 3-component mixture started far from N(0, 1)."""
    torch.manual_seed(seed)
    flow = build_flow(
        1, base="mog", transform="maf", num_layers=1, hidden_features=8, num_components=3, estimator=estimator
    )
    with torch.no_grad():
        flow_base(flow).loc.copy_(torch.tensor([[-3.0], [0.5], [2.0]]))
    return flow


def test_recovers_the_standard_normal_from_its_first_two_moments():
    flow = mixture_flow("pathwise")
    with torch.no_grad():
        start = moments(flow.sample(20_000)).mean(0)
    assert abs(start[1].item() - 1) > 2  # E[x²] ≈ 5.4 at the start: far from the constraint
    target = torch.tensor([0.0, 1.0])
    result = fit_maxent(
        flow,
        moments,
        target,
        steps=3000,
        batch_size=256,
        epoch_steps=300,
        lr=1e-3,
        test_batches=32,
        eval_samples=2**14,
        seed=0,
        progress=False,
    )
    assert result.converged
    assert result.steps == result.history.steps[-1] < 3000
    assert abs(result.entropy - GAUSSIAN_ENTROPY) < 0.05
    assert result.violation.abs().max().item() < 0.05
    assert result.entropy_std_error < 0.01
    # q ∝ exp(-λᵀT): N(0, 1) ∝ exp(-x²/2) has λ = (0, ½), the sign under which λᵀR is the entropy's excess
    torch.testing.assert_close(result.multipliers, torch.tensor([0.0, 0.5]), atol=0.06, rtol=0)
    history = result.history
    assert abs(history.entropy_excess[-1]) < 0.005  # the default entropy_tolerance, met where the run stopped
    assert len(history.entropy) == len(history.exact_entropy) == len(history.penalty) == history.epochs
    assert history.violation_norm[0] > history.violation_norm[-1]
    # an exact estimator's training-time estimates are the exact ones
    assert history.entropy == history.exact_entropy


SMOKE = dict(steps=6, epoch_steps=3, batch_size=16, test_batches=2, eval_samples=64, seed=0, progress=False)


@pytest.mark.parametrize(
    ("base", "estimator"),
    [
        ("gaussian", None),
        ("mog", "exact"),
        ("mog", "pathwise"),
        ("mog", "gumbel-nested"),
        ("mog", "gumbel-exact"),
        ("mog", "gumbel-joint"),
    ],
)
@pytest.mark.parametrize("transform", ["nsf", "maf", "realnvp"])
def test_runs_with_every_flow_and_estimator(base, estimator, transform, capfd):
    torch.manual_seed(0)
    kwargs = {} if estimator is None else dict(estimator=estimator, num_components=2)
    flow = build_flow(2, base=base, transform=transform, num_layers=2, hidden_features=8, **kwargs)
    initial = copy.deepcopy(flow.state_dict())
    rng = torch.get_rng_state()
    result = fit_maxent(flow, moments, torch.tensor([0.0, 0.0, 1.0, 1.0]), **SMOKE)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    assert math.isfinite(result.entropy) and result.violation.shape == (4,)
    assert torch.isfinite(result.violation).all() and torch.isfinite(result.multipliers).all()
    history = result.history
    assert history.epochs == len(history.steps) >= 1 and result.steps == history.steps[-1]
    assert all(math.isfinite(v) for v in history.entropy + history.exact_entropy + history.violation_norm)
    assert any(not torch.equal(value, flow.state_dict()[name]) for name, value in initial.items())
    base_distribution = flow_base(flow)
    if isinstance(base_distribution, MixtureOfGaussians):
        assert base_distribution.estimator == estimator  # the evaluation did not leave it changed
        gumbel = estimator.startswith("gumbel")
        assert base_distribution.temperature == pytest.approx(FINAL_TEMPERATURE if gumbel else 0.5)
        assert (history.entropy == history.exact_entropy) is not gumbel
    assert capfd.readouterr().err == ""  # progress=False: no bar


def test_a_dirichlet_problem_on_the_simplex_runs():
    # the MEFN Dirichlet study: E[log y_k] = ψ(α_k) - ψ(α_0) on the 2-simplex, α = (1, 2, 3)
    alpha = torch.tensor([1.0, 2.0, 3.0])
    target = torch.digamma(alpha) - torch.digamma(alpha.sum())
    torch.manual_seed(0)
    flow = simplex_flow(
        build_flow(
            2, base="mog", transform="nsf", num_layers=2, hidden_features=8, num_components=2, estimator="pathwise"
        )
    )

    def log_coordinates(y):  # (n, 2) -> (n, 3)
        return torch.cat([y, 1 - y.sum(-1, keepdim=True)], -1).log()

    result = fit_maxent(flow, log_coordinates, target, **SMOKE)
    assert math.isfinite(result.entropy) and torch.isfinite(result.violation).all()


# ------------------------------------------------------------------------------------------ checkpoints
class InterruptingMoments:
    """T(x) = (x, x²) that raises KeyboardInterrupt at call `at` (never when at is None)."""

    def __init__(self, at: int | None = None) -> None:
        self.at, self.calls = at, 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return moments(x)


RESUMABLE = dict(steps=40, epoch_steps=10, batch_size=32, test_batches=2, eval_samples=128, seed=3, progress=False)
FAR_TARGET = torch.tensor([3.0, 10.0])  # out of reach in 40 steps: no early stop


@pytest.mark.parametrize(("estimator", "final_lr"), [("pathwise", None), ("gumbel-nested", None), ("exact", 1e-4)])
def test_resume_after_an_interruption_gives_the_uninterrupted_result(estimator, final_lr, tmp_path):
    settings = {**RESUMABLE, "final_lr": final_lr}
    reference_flow = mixture_flow(estimator)
    reference = fit_maxent(reference_flow, InterruptingMoments(), FAR_TARGET, checkpoint_dir=tmp_path / "a", **settings)
    assert reference.history.epochs == 4
    flow = mixture_flow(estimator)
    # calls: 1 probe, 2 initial test batches, then per epoch 10 steps + 2 test batches (+ exact ones for Gumbel)
    with pytest.raises(KeyboardInterrupt) as interrupted:
        fit_maxent(flow, InterruptingMoments(at=40), FAR_TARGET, checkpoint_dir=tmp_path / "b", **settings)
    assert any("resume" in note for note in getattr(interrupted.value, "__notes__", []))
    saved = torch.load(tmp_path / "b" / "latest.pt", weights_only=True)
    assert 0 < saved["step"] < 40 and saved["step"] % 10 == 0
    fresh = mixture_flow(estimator, seed=1)  # other initial parameters: everything must come from the checkpoint
    resumed = fit_maxent(fresh, InterruptingMoments(), FAR_TARGET, checkpoint_dir=tmp_path / "b", **settings)
    assert resumed.entropy == reference.entropy
    assert torch.equal(resumed.violation, reference.violation)
    assert torch.equal(resumed.multipliers, reference.multipliers) and resumed.penalty == reference.penalty
    assert resumed.history.entropy == reference.history.entropy
    assert resumed.history.penalty == reference.history.penalty
    for name, value in reference_flow.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(fresh.state_dict()[name], value), name
    # a finished run resumes to the same result without training
    again = fit_maxent(
        mixture_flow(estimator), InterruptingMoments(), FAR_TARGET, checkpoint_dir=tmp_path / "b", **settings
    )
    assert again.entropy == reference.entropy


def test_resume_with_other_settings_is_refused(tmp_path):
    fit_maxent(mixture_flow(), InterruptingMoments(), FAR_TARGET, checkpoint_dir=tmp_path, **RESUMABLE)
    with pytest.raises(ValueError, match="other settings.*lr"):
        fit_maxent(mixture_flow(), InterruptingMoments(), FAR_TARGET, checkpoint_dir=tmp_path, lr=0.5, **RESUMABLE)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(bytes(range(256)) * 8)


def _a_fit_checkpoint(path):
    torch.save({"format": "mog_flows.fit/1", "step": 3}, path)


def _without_multipliers(path):
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["multipliers"]
    torch.save(checkpoint, path)


def _invalid_rng(path):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["rng"]["torch"] = torch.zeros(7, dtype=torch.uint8)
    torch.save(checkpoint, path)


def _rng_of_wrong_dtype(path):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["rng"]["torch"] = checkpoint["rng"]["torch"].float()
    torch.save(checkpoint, path)


def _step_beyond_its_history(path):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["step"] += RESUMABLE["epoch_steps"]
    torch.save(checkpoint, path)


def _other_flow(path):
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"] = build_flow(1, base="gaussian", transform="maf", num_layers=1, hidden_features=8).state_dict()
    torch.save(checkpoint, path)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (_truncate, r"cannot be read: it is truncated, corrupt"),
        (_garbage, r"cannot be read"),
        (_a_fit_checkpoint, r"not a mog_flows\.fit_maxent checkpoint: format 'mog_flows\.fit/1'"),
        (_without_multipliers, r"entry 'multipliers' is missing or not a Tensor"),
        (_invalid_rng, r"invalid RNG state"),
        (_rng_of_wrong_dtype, r"invalid RNG state: 'torch' is missing or not a byte tensor"),
        (_step_beyond_its_history, r"is inconsistent: step 30, 2 recorded epochs"),
        (_other_flow, r"does not fit this model"),
    ],
    ids=lambda value: getattr(value, "__name__", "")[1:],
)
def test_a_corrupt_checkpoint_gives_a_clear_error_and_leaves_the_flow_alone(tmp_path, corrupt, match):
    settings = {**RESUMABLE, "steps": 20}
    fit_maxent(mixture_flow(), moments, FAR_TARGET, checkpoint_dir=tmp_path, **settings)
    corrupt(tmp_path / "latest.pt")
    flow = mixture_flow(seed=4)
    before = copy.deepcopy(flow.state_dict())
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=rf"checkpoint .*latest\.pt.*{match}"):
        fit_maxent(flow, moments, FAR_TARGET, checkpoint_dir=tmp_path, **settings)
    for name, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(flow.state_dict()[name], value), name
    assert torch.equal(torch.get_rng_state(), rng)


def test_the_checkpoint_s_rng_state_drives_the_rest_of_the_run(tmp_path):
    # a run interrupted in epoch 3 resumes from the end of epoch 2 and, drawing from the saved RNG state, ends as
    # the uninterrupted run; the same checkpoint with another (valid) RNG state ends elsewhere
    reference = fit_maxent(mixture_flow(), moments, FAR_TARGET, **RESUMABLE)
    with pytest.raises(KeyboardInterrupt):  # calls: 1 probe, 2 initial test batches, 12 per epoch: epoch 3
        fit_maxent(mixture_flow(), InterruptingMoments(at=30), FAR_TARGET, checkpoint_dir=tmp_path / "a", **RESUMABLE)
    checkpoint = torch.load(tmp_path / "a" / "latest.pt", weights_only=True)
    assert checkpoint["step"] == 20
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_bytes((tmp_path / "a" / "config.json").read_bytes())
    checkpoint["rng"] = {"torch": torch.Generator().manual_seed(12345).get_state()}
    torch.save(checkpoint, tmp_path / "b" / "latest.pt")
    resumed = fit_maxent(mixture_flow(), InterruptingMoments(), FAR_TARGET, checkpoint_dir=tmp_path / "a", **RESUMABLE)
    other = fit_maxent(mixture_flow(), InterruptingMoments(), FAR_TARGET, checkpoint_dir=tmp_path / "b", **RESUMABLE)
    assert resumed.entropy == reference.entropy and resumed.history.entropy == reference.history.entropy
    assert other.history.entropy[:2] == reference.history.entropy[:2]
    assert other.history.entropy[2:] != reference.history.entropy[2:]


@pytest.mark.parametrize(
    ("change", "match"),
    [("estimator", r"_distribution\.estimator: 'pathwise' there, 'exact' now"),
     ("temperature", r"_distribution\.temperature: 0\.5 there, 0\.9 now")],
)  # fmt: skip
def test_resuming_into_a_flow_with_another_estimator_or_temperature_is_refused(tmp_path, change, match):
    # neither estimator anneals τ ("auto" does so for Gumbel estimators only), so τ is the model's own setting
    # estimator=None: "auto" would train the "exact" base with "pathwise", as the checkpoint's
    fit_maxent(mixture_flow("pathwise"), moments, FAR_TARGET, checkpoint_dir=tmp_path, estimator=None, **SMOKE)
    other = mixture_flow("exact" if change == "estimator" else "pathwise")
    if change == "temperature":
        flow_base(other).temperature = 0.9
    with pytest.raises(ValueError, match=rf"model built with other settings.*{match}"):
        fit_maxent(other, moments, FAR_TARGET, checkpoint_dir=tmp_path, estimator=None, **SMOKE)
    assert flow_base(other).temperature == (0.9 if change == "temperature" else 0.5)
    fit_maxent(mixture_flow("pathwise"), moments, FAR_TARGET, checkpoint_dir=tmp_path, **SMOKE)


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a directory\n")
    return path


@pytest.mark.parametrize(
    ("make_directory", "match"),
    [
        pytest.param(lambda tmp: "", r"checkpoint_dir='' .*current directory", id="empty-string"),
        pytest.param(_a_file, r"notes\.txt is a file, not a directory", id="a-file"),
        pytest.param(lambda tmp: _a_file(tmp) / "run", r"run lies under .*notes\.txt, a file", id="under-a-file"),
        pytest.param(
            lambda tmp: 3, r"checkpoint_dir must be a path \(str or os\.PathLike\) or None; got int", id="int"
        ),
    ],
)
def test_a_bad_checkpoint_dir_is_refused_before_any_work(tmp_path, monkeypatch, make_directory, match):
    working = tmp_path / "working"
    working.mkdir()
    monkeypatch.chdir(working)
    statistic = InterruptingMoments()
    with pytest.raises(ValueError, match=match):
        fit_maxent(mixture_flow(), statistic, FAR_TARGET, checkpoint_dir=make_directory(tmp_path), **SMOKE)
    assert statistic.calls == 0  # refused before the probe and the initial test batches
    assert list(working.iterdir()) == []


# a child process running fit_maxent that says so in the file `ready` at its `at`-th statistic call and waits there
# until the parent has sent it a signal (file `sent`)
SIGNALLED_CHILD = """
import json, signal, sys, time
from pathlib import Path
import torch
from mog_flows import build_flow
from mog_flows.maxent import fit_maxent

spec = json.loads(sys.argv[1])
signal.signal(signal.SIGHUP, signal.SIG_DFL)
torch.set_num_threads(1)
flow = build_flow(1, **spec["flow"])
flow.load_state_dict(torch.load(spec["state"], weights_only=True))
calls = [0]

def moments(x):  # the name is part of the run's settings
    calls[0] += 1
    if calls[0] == spec["at"]:
        Path(spec["ready"]).touch()
        for _ in range(1200):
            if Path(spec["sent"]).exists():
                break
            time.sleep(0.05)
    return torch.cat([x, x * x], dim=-1)

try:
    fit_maxent(flow, moments, torch.tensor(spec["target"]), checkpoint_dir=spec["directory"], **spec["arguments"])
except KeyboardInterrupt as error:
    print("interrupted:", error, *getattr(error, "__notes__", []))
    sys.exit(3)
print("finished")
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
def test_sigterm_and_sighup_stop_the_run_like_ctrl_c_and_it_resumes_exactly(tmp_path, signum):
    # a preempted job keeps the state of its last completed epoch and resumes from it
    flow = mixture_flow("pathwise")
    torch.save(flow.state_dict(), tmp_path / "initial.pt")
    reference = fit_maxent(copy.deepcopy(flow), moments, FAR_TARGET, **RESUMABLE)
    ready, sent, directory = tmp_path / "ready", tmp_path / "sent", tmp_path / "run"
    spec = dict(
        flow=dict(base="mog", transform="maf", num_layers=1, hidden_features=8, num_components=3, estimator="pathwise"),
        state=str(tmp_path / "initial.pt"),
        at=25,  # calls: 1 probe, 2 initial test batches, then per epoch 10 steps + 2 test batches: epoch 2
        target=FAR_TARGET.tolist(),
        directory=str(directory),
        arguments=RESUMABLE,
        ready=str(ready),
        sent=str(sent),
    )
    child = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED_CHILD, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), child.communicate(timeout=60)[1]
        child.send_signal(signum)
        sent.touch()
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 3, f"exit code {child.returncode}; stderr: {err[-2000:]}"
    assert f"received {signal.Signals(signum).name}" in out and "resume" in out
    assert torch.load(directory / "latest.pt", weights_only=True)["step"] == 10
    fresh = mixture_flow("pathwise", seed=1)
    resumed = fit_maxent(fresh, moments, FAR_TARGET, checkpoint_dir=directory, **RESUMABLE)
    assert resumed.entropy == reference.entropy and torch.equal(resumed.multipliers, reference.multipliers)
    assert resumed.history.entropy == reference.history.entropy


@pytest.mark.parametrize(("penalty", "max_penalty", "expected"), [(1.0, 3.0, 3.0), (1.0, 8.0, 4.0), (3.0, 3.0, 3.0)])
def test_max_penalty_caps_the_growth_of_c(penalty, max_penalty, expected):
    previous = penalty_statistics(residual_batches([1.0, 1.0], seed=1), "split")
    residuals = residual_batches([1.0, 1.0], seed=2, batch_size=256)  # no progress: c must grow
    update = augmented_lagrangian_update(
        residuals, torch.zeros(2, dtype=DOUBLE), penalty, previous, max_penalty=max_penalty
    )
    assert update.increased
    assert update.penalty == expected
    # λ moves with the c of the epoch, not the capped next one
    torch.testing.assert_close(update.multipliers, penalty * residuals.mean((0, 1)), rtol=0, atol=1e-15)


def test_max_penalty_below_the_current_penalty_is_refused():
    previous = penalty_statistics(residual_batches([1.0, 1.0], seed=1), "split")
    with pytest.raises(ValueError, match=r"max_penalty must be None or ≥ the current penalty 2.0; got 1.0"):
        augmented_lagrangian_update(
            residual_batches([1.0, 1.0]), torch.zeros(2, dtype=DOUBLE), 2.0, previous, max_penalty=1.0
        )


def test_fit_maxent_never_lets_c_pass_max_penalty():
    torch.manual_seed(0)
    flow = build_flow(1, base="gaussian", transform="maf", num_layers=1, hidden_features=8)
    # an unreachable target (E[x] = 5 with E[x²] = 1) keeps ‖R‖ from falling: the schedule asks for a larger c
    # after every epoch
    result = fit_maxent(
        flow, moments, [5.0, 1.0], steps=40, epoch_steps=5, batch_size=32, test_batches=4, penalty=1.0, beta=2.0,
        max_penalty=4.0, seed=0, progress=False, stop_early=False,
    )  # fmt: skip
    assert max(result.history.penalty) == 4.0
    assert result.penalty == 4.0


# ------------------------------------------------------------------------------------------ bad input
def conditional_flow():
    return build_flow(1, base="mog", transform="maf", num_layers=1, hidden_features=8, context_features=2)


@pytest.mark.parametrize(
    ("statistic", "target", "make_flow", "kwargs", "match"),
    [
        (lambda x: x.sum(-1), [0.0], None, {}, r"shape \(4, 1\).*got shape \(4,\)"),
        (moments, [0.0, 1.0, 2.0], None, {}, r"to a tensor of shape \(4, 3\).*m = 3.*got shape \(4, 2\)"),
        (lambda x: [x], [0.0], None, {}, r"got a list"),
        (moments, [0.0, float("nan")], None, {}, r"target must be finite.*1 NaN"),
        (moments, [0.0, float("inf")], None, {}, r"target must be finite"),
        (moments, [[0.0, 1.0]], None, {}, r"target must have shape \(m,\).*got \(1, 2\)"),
        (moments, [], None, {}, r"target must have shape \(m,\) with m ≥ 1"),
        (lambda x: moments(x).detach(), [0.0, 1.0], None, {}, r"differentiable"),
        (moments, [0.0, 1.0], conditional_flow, {}, r"unconditional"),
        (
            moments,
            [0.0, 1.0],
            lambda: build_flow(1, base="gaussian", transform="maf", num_layers=1),
            dict(temperature_schedule=(1.0, 0.1)),
            r"no MixtureOfGaussians",
        ),
        (moments, [0.0, 1.0], None, dict(gamma=1.5), r"gamma must be a finite number in \(0, 1\); got 1.5"),
        (moments, [0.0, 1.0], None, dict(beta=1.0), r"beta must be a finite number > 1"),
        (moments, [0.0, 1.0], None, dict(batch_size=1), r"batch_size must be at least 2"),
        (moments, [0.0, 1.0], None, dict(penalty_test="mean"), r"penalty_test must be one of"),
        (moments, [0.0, 1.0], None, dict(lr=1e-3, final_lr=1e-2), r"final_lr must be None or a number in \(0, lr"),
        (moments, [0.0, 1.0], None, dict(final_lr=0.0), r"final_lr must be None or a number in \(0, lr"),
        (
            moments,
            [0.0, 1.0],
            None,
            dict(penalty=2.0, max_penalty=1.0),
            r"max_penalty must be None or a finite number ≥ penalty = 2.0; got 1.0",
        ),
        (moments, [0.0, 1.0], None, dict(max_penalty=math.inf), r"max_penalty must be None or a finite number"),
        (moments, [0.0, 1.0], None, dict(entropy_tolerance=0.0), r"entropy_tolerance must be a number > 0 or None"),
        (moments, [0.0, 1.0], None, dict(entropy_tolerance="0.01"), r"entropy_tolerance must be a number > 0"),
    ],
)
def test_bad_input_is_refused(statistic, target, make_flow, kwargs, match):
    flow = mixture_flow() if make_flow is None else make_flow()
    before = copy.deepcopy(flow.state_dict())
    with pytest.raises(ValueError, match=match):
        fit_maxent(flow, statistic, target, steps=2, progress=False, **kwargs)
    for name, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(flow.state_dict()[name], value)


class BadFrom:
    """T(x) = (x, x²) with `value` in the first `rows` rows from call `at` on."""

    def __init__(self, at: int, rows: int, value: float) -> None:
        self.at, self.rows, self.value, self.calls = at, rows, value, 0

    def __call__(self, x):
        self.calls += 1
        values = moments(x)
        if self.calls >= self.at:
            values = torch.cat([torch.full_like(values[: self.rows], self.value), values[self.rows :]])
        return values


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize(
    ("at", "where"),
    [
        (1, r"for 3 of 4 samples of the initial flow"),
        (2, r"for 3 of 16 samples in the test batches before the first step"),
        (6, r"for 3 of 16 samples at step 3 of 6"),  # calls: 1 probe, 2 test batches, then one per step
    ],
    ids=["probe", "initial-test-batches", "step-3"],
)
def test_a_statistic_that_returns_nan_or_inf_is_named_instead_of_the_learning_rate(at, where, value):
    with pytest.raises(ValueError, match=rf"statistic returned NaN or inf {where}") as info:
        fit_maxent(mixture_flow(), BadFrom(at, 3, value), [0.0, 1.0], **SMOKE)
    assert "lr" not in str(info.value) and "diverged" not in str(info.value)


def test_a_flow_that_is_not_a_distribution_is_refused():
    with pytest.raises(TypeError, match="nflows Flow or Distribution; got Linear"):
        fit_maxent(torch.nn.Linear(1, 1), moments, [0.0, 1.0], steps=2)


# ------------------------------------------------------------------------------------------ simplex map
def test_additive_logistic_log_det_matches_autograd():
    transform = AdditiveLogistic(2)
    x = torch.cat([torch.randn(16, 2, dtype=DOUBLE) * 3, torch.tensor([[8.0, -8.0], [-9.0, -9.0]], dtype=DOUBLE)])
    y, log_det = transform(x)
    _, inverse_log_det = transform.inverse(y)
    for i in range(x.shape[0]):
        jacobian = torch.autograd.functional.jacobian(lambda row: transform(row.unsqueeze(0))[0].squeeze(0), x[i])
        sign, log_abs = torch.linalg.slogdet(jacobian)
        assert sign.item() == 1.0
        torch.testing.assert_close(log_det[i], log_abs, rtol=1e-9, atol=1e-9)
        inverse_jacobian = torch.autograd.functional.jacobian(
            lambda row: transform.inverse(row.unsqueeze(0))[0].squeeze(0), y[i]
        )
        torch.testing.assert_close(inverse_log_det[i], torch.linalg.slogdet(inverse_jacobian)[1], rtol=1e-7, atol=1e-7)


def test_additive_logistic_maps_onto_the_simplex_and_inverts_exactly():
    transform = AdditiveLogistic(2)
    x = torch.randn(1000, 2, dtype=DOUBLE) * 2
    y, log_det = transform(x)
    assert (y > 0).all() and (y.sum(-1) < 1).all()
    torch.testing.assert_close(y, torch.softmax(torch.cat([x, torch.zeros(1000, 1, dtype=DOUBLE)], -1), -1)[:, :2])
    back, inverse_log_det = transform.inverse(y)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_det + inverse_log_det, torch.zeros(1000, dtype=DOUBLE), rtol=0, atol=1e-12)
    ratio = AdditiveLogRatio(2)  # the data-side direction
    torch.testing.assert_close(ratio(y)[0], x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ratio.inverse(x)[0], y, rtol=0, atol=1e-15)


@pytest.mark.parametrize("point", [[-0.1, 0.5], [0.5, 0.5], [0.7, 0.4], [0.0, 0.3]])
def test_points_off_the_open_simplex_are_outside_the_domain(point):
    with pytest.raises(InputOutsideDomain, match="open simplex"):
        AdditiveLogistic(2).inverse(torch.tensor([point, [0.2, 0.3]]))


def test_simplex_flow_is_a_normalised_density_on_the_simplex():
    torch.manual_seed(0)
    flow = simplex_flow(build_flow(2, base="gaussian", transform="maf", num_layers=1)).to(DOUBLE)
    # a new flow is the identity, so this is the logistic normal: N(alr(y); 0, I) / (y₁ y₂ y₃)
    h = 1 / 300  # midpoint rule over the cells inside the triangle; the density vanishes fast at its edges
    grid = torch.arange(h / 2, 1, h, dtype=DOUBLE)
    y1, y2 = torch.meshgrid(grid, grid, indexing="ij")
    inside = (y1 + y2) < 1 - h / 2
    points = torch.stack([y1[inside], y2[inside]], -1)
    with torch.no_grad():
        density = flow.log_prob(points).exp()
    assert abs(density.sum().item() * h * h - 1) < 1e-4
    third = 1 - points.sum(-1)
    expected = (
        torch.distributions.Normal(0.0, 1.0).log_prob((points / third.unsqueeze(-1)).log()).sum(-1)
        - points.log().sum(-1)
        - third.log()
    )
    torch.testing.assert_close(flow.log_prob(points), expected.to(DOUBLE))
    sample = flow.sample(500)
    assert (sample > 0).all() and (sample.sum(-1) < 1).all()


@pytest.mark.parametrize("stop_early", [True, False])
def test_stop_early_false_takes_every_step(stop_early):
    torch.manual_seed(0)
    flow = build_flow(1, base="gaussian", transform="maf", num_layers=1, hidden_features=8)  # N(0, 1) at the start
    settings = dict(steps=60, epoch_steps=20, batch_size=256, test_batches=8, eval_samples=256, lr=1e-6, seed=0)
    result = fit_maxent(flow, moments, torch.tensor([0.0, 1.0]), stop_early=stop_early, progress=False, **settings)
    assert result.history.constraint_p_value[0] > 0.025  # the first epoch passes the stopping test
    assert result.steps == (20 if stop_early else 60)
    assert result.history.epochs == (1 if stop_early else 3)


class RecordingAdam(torch.optim.Adam):
    """Adam that records the learning rate of every step."""

    rates: list[float] = []

    def step(self, closure=None):
        RecordingAdam.rates.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.mark.parametrize("final_lr", [None, 1e-4])
def test_learning_rate_is_constant_or_cosine_from_lr_to_final_lr(final_lr, monkeypatch):
    import mog_flows.maxent as maxent_module

    monkeypatch.setattr(maxent_module.torch.optim, "Adam", RecordingAdam)
    RecordingAdam.rates = []
    fit_maxent(mixture_flow(), moments, FAR_TARGET, steps=9, epoch_steps=3, batch_size=16, test_batches=2,
               eval_samples=32, lr=1e-2, final_lr=final_lr, stop_early=False, progress=False)  # fmt: skip
    rates = RecordingAdam.rates
    assert len(rates) == 9
    if final_lr is None:
        assert rates == [1e-2] * 9
    else:
        expected = [1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(9)]
        assert rates == pytest.approx(expected, rel=1e-12)
        assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-4)


# ------------------------------------------------------------------------------ standardisation and diagnostics
SHORT = dict(steps=40, epoch_steps=20, batch_size=64, test_batches=4, eval_samples=2**12, seed=0, progress=False)


def scaled_moments(factor_x: float, factor_x2: float):
    """T(x) = (factor_x · x, factor_x2 · x²): the moments of `moments` in other units."""

    def statistic(x):
        return torch.cat([factor_x * x, factor_x2 * x * x], dim=-1)

    return statistic


def trained(statistic, target, **kwargs):
    flow = mixture_flow("pathwise")
    with pytest.warns(MaxEntNotConvergedWarning):  # 40 steps: far from converged
        result = fit_maxent(flow, statistic, target, **{**SHORT, **kwargs})
    return flow, result


def test_the_units_of_the_constraints_do_not_change_the_run():
    flow, result = trained(moments, [0.0, 1.0])
    scaled_flow, scaled = trained(scaled_moments(1000.0, 1000.0), [0.0, 1000.0])
    # the standardised problems are the same, so are the runs, up to rounding
    for (name, value), other in zip(flow.named_parameters(), scaled_flow.parameters()):
        assert torch.allclose(value, other, rtol=1e-4, atol=1e-5), name
    assert torch.allclose(scaled.scale, 1000 * result.scale, rtol=1e-6)
    assert torch.allclose(scaled.standardized_violation, result.standardized_violation, atol=1e-4)
    assert torch.allclose(scaled.violation, 1000 * result.violation, rtol=1e-3, atol=1e-2)
    # λ of the caller's problem: q ∝ exp(-Σ λ_j T_j), so λ scales inversely with T
    assert torch.allclose(scaled.multipliers, result.multipliers / 1000, rtol=1e-3, atol=1e-8)
    assert scaled.penalty == result.penalty
    assert scaled.history.violation_norm == pytest.approx(result.history.violation_norm, rel=1e-4)


def test_violation_is_in_the_caller_s_units_and_matches_fresh_samples():
    statistic = scaled_moments(1e-3, 1e3)
    flow, result = trained(statistic, [0.0, 1e3], test_batches=32)  # the scale from 32 · 64 samples
    assert torch.allclose(result.violation, result.standardized_violation * result.scale, rtol=1e-6)
    # the scale is each statistic's standard deviation under the initial flow: 1e-3 · sd(x) and 1e3 · sd(x²)
    initial = mixture_flow("pathwise")
    with torch.no_grad():
        x = initial.sample(2**15)
    expected_scale = statistic(x).std(0)
    assert torch.allclose(result.scale.to(expected_scale), expected_scale, rtol=0.1)  # sd of x²: heavy tails
    # E[T] - t on independent samples of the delivered flow, within a few standard errors
    with torch.no_grad():
        values = statistic(flow.sample(2**15))
    fresh = values.mean(0) - torch.tensor([0.0, 1e3])
    error = torch.hypot(values.std(0) / math.sqrt(values.shape[0]), result.violation_std_error.to(values))
    assert ((fresh - result.violation.to(fresh)).abs() < 5 * error).all()
    assert result.constraint_p_values.shape == (2,)
    assert ((result.constraint_p_values >= 0) & (result.constraint_p_values <= 1)).all()


def test_constraints_of_very_different_scales_converge_together():
    """The converging run of the standard normal, with E[1e-3 x] = 0 and E[1e3 x²] = 1e3 as the constraints."""
    flow = mixture_flow("pathwise")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MaxEntNotConvergedWarning)  # a converged run does not warn
        result = fit_maxent(
            flow,
            scaled_moments(1e-3, 1e3),
            [0.0, 1e3],
            steps=3000,
            batch_size=256,
            epoch_steps=300,
            test_batches=32,
            eval_samples=2**14,
            progress=False,
        )
    assert result.converged
    assert abs(result.entropy - GAUSSIAN_ENTROPY) < 0.05
    assert result.standardized_violation.abs().max().item() < 0.05
    assert abs(result.violation[0].item()) < 0.05e-3 and abs(result.violation[1].item()) < 0.05e3


def test_a_run_stopped_before_its_test_passes_warns_with_numbers():
    flow = mixture_flow("pathwise")
    with pytest.warns(MaxEntNotConvergedWarning, match=r"constraint 1: standardised violation [+-]\d") as record:
        result = fit_maxent(flow, moments, [0.0, 1.0], **SHORT)
    assert not result.converged and result.steps == SHORT["steps"]
    assert len(record) == 1 and "tolerance ±" in str(record[0].message)
    assert issubclass(MaxEntNotConvergedWarning, UserWarning)


@pytest.mark.parametrize("old", ["mog_flows.maxent/1", "mog_flows.maxent/2"])  # before standardising / whitening
def test_a_checkpoint_of_an_older_format_is_refused(tmp_path, old):
    with pytest.warns(MaxEntNotConvergedWarning):
        fit_maxent(mixture_flow(), moments, [0.0, 1.0], checkpoint_dir=tmp_path, **SMOKE)
    path = tmp_path / "latest.pt"
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["format"] = old
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=old.split("/")[-1].join([r"maxent/", ""])):
        fit_maxent(mixture_flow(), moments, [0.0, 1.0], checkpoint_dir=tmp_path, **SMOKE)


def test_a_statistic_constant_under_the_initial_flow_is_refused():
    def statistic(x):
        return torch.cat([x, 0 * x + 2.0], dim=-1)

    with pytest.raises(ValueError, match=r"statistic column 1 \(of 2\) has zero variance under the initial flow"):
        fit_maxent(mixture_flow(), statistic, [0.0, 2.0], **SMOKE)


def test_a_metric_turns_the_update_into_c_w_transpose_w_times_the_violation():
    residuals = residual_batches([0.3, -0.2, 0.1])
    metric = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.0, -1.0, 3.0]], dtype=DOUBLE)
    multipliers = torch.tensor([0.1, 0.2, -0.3], dtype=DOUBLE)
    previous = torch.full((16,), 10.0, dtype=DOUBLE)
    update = augmented_lagrangian_update(residuals, multipliers, 2.0, previous, metric=metric)
    violation = residuals.mean((0, 1))
    assert torch.allclose(update.multipliers, multipliers + 2.0 * metric.T @ metric @ violation, atol=1e-12)
    weighted = residuals @ metric.T
    assert np.allclose(update.statistics.numpy(), reference_statistics(weighted, "split"), atol=1e-12)
    # the stopping test tests the constraints themselves, not their mixtures
    plain = augmented_lagrangian_update(residuals, multipliers, 2.0, previous)
    assert torch.equal(update.constraint_p_values, plain.constraint_p_values)
    with pytest.raises(ValueError, match=r"metric must have shape \(3, 3\)"):
        augmented_lagrangian_update(residuals, multipliers, 2.0, previous, metric=torch.eye(2, dtype=DOUBLE))


def test_whitening_makes_the_run_invariant_to_mixing_the_constraints():
    """T' = A T, t' = A t (A invertible, not diagonal) is the same problem; the whitened penalty ‖Cov^-1/2 R‖ is the
    Mahalanobis norm, invariant under A, and so is the run (float64, up to rounding)."""
    mix = torch.tensor([[1.0, 2.0], [-0.5, 3.0]], dtype=DOUBLE)

    def mixed(x):
        return moments(x) @ mix.T

    target = torch.tensor([0.0, 1.0], dtype=DOUBLE)
    runs = []
    for statistic, goal in ((moments, target), (mixed, mix @ target)):
        flow = mixture_flow().double()
        with pytest.warns(MaxEntNotConvergedWarning):
            result = fit_maxent(flow, statistic, goal, **SHORT)
        runs.append((flow, result))
    (flow, result), (mixed_flow, mixed_result) = runs
    for (name, value), other in zip(flow.named_parameters(), mixed_flow.parameters()):
        assert torch.allclose(value, other, rtol=1e-7, atol=1e-9), name
    assert mixed_result.entropy == pytest.approx(result.entropy, rel=1e-9)
    assert torch.allclose(mixed_result.violation, mix @ result.violation, atol=1e-9)
    # λ'ᵀT' = λᵀT: λ = Aᵀλ'
    assert torch.allclose(mix.T @ mixed_result.multipliers, result.multipliers, atol=1e-8)


def test_stationarity_is_zero_in_the_exponential_family_and_known_outside_it():
    from mog_flows.maxent import _stationarity

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2**16, 1, generator=generator, dtype=DOUBLE)
    log_q = torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 0])  # -x²/2 - log √(2π)
    assert _stationarity(-log_q, torch.cat([x, x * x], dim=1)) < 1e-20  # affine in (x, x²)
    # on T = x alone, log q = -x²/2 + const leaves the residual -x²/2 + x²'s mean: ½ Var(x²/2) = ½ · ½ = 0.25
    assert _stationarity(-log_q, x) == pytest.approx(0.25, rel=0.03)


def test_a_run_whose_constraints_pass_but_log_q_is_not_affine_in_t_warns_about_that():
    flow = mixture_flow("pathwise")
    with pytest.warns(MaxEntNotConvergedWarning, match=r"log q is not yet an affine function of T") as record:
        result = fit_maxent(flow, moments, [0.0, 1.0], stationarity_tolerance=1e-12, **SHORT)
    assert not result.converged
    assert result.history.stationarity[-1] > 1e-12 and result.stationarity > 0
    assert "tolerance 1e-12" in str(record[0].message)


def test_auto_trains_an_exact_diagonal_base_pathwise_and_gives_it_back():
    """estimator="auto": an "exact" base's gradient misses how the component choice depends on the weights (biased);
    it trains with "pathwise" instead, exactly as a "pathwise" base would, and gets its estimator back afterwards."""
    auto = mixture_flow("exact")
    with pytest.warns(MaxEntNotConvergedWarning):
        fit_maxent(auto, moments, FAR_TARGET, **SMOKE)
    assert flow_base(auto).estimator == "exact"
    pathwise = mixture_flow("pathwise")
    as_is = mixture_flow("exact")
    with pytest.warns(MaxEntNotConvergedWarning):
        fit_maxent(pathwise, moments, FAR_TARGET, estimator=None, **SMOKE)
        fit_maxent(as_is, moments, FAR_TARGET, estimator=None, **SMOKE)
    weights = [flow_base(f).mixture_parameters()["weights"].detach() for f in (auto, pathwise, as_is)]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])
    with pytest.raises(ValueError, match=r'estimator must be "auto" or None'):
        fit_maxent(mixture_flow(), moments, FAR_TARGET, estimator="pathwise", **SMOKE)


def test_the_history_records_the_first_order_effect_of_the_violations_on_the_entropy():
    """entropy_excess = λᵀR̂, λ the epoch's standardised multipliers (history.multipliers · scale) and R̂ the test's
    standardised violations: 0 in the first epoch (λ = 0), and with a standard error from the test samples."""
    _, result = trained(moments, [0.0, 1.0])
    history = result.history
    assert history.epochs == 2 and history.entropy_excess[0] == 0.0
    for e in range(history.epochs):
        multipliers = torch.tensor(history.multipliers[e], dtype=DOUBLE) * result.scale
        violation = torch.tensor(history.constraint_violation[e], dtype=DOUBLE)
        assert history.entropy_excess[e] == pytest.approx((multipliers @ violation).item(), rel=1e-6)
    assert history.entropy_excess[1] != 0.0 and history.entropy_excess_std_error[1] > 0
    assert len(history.entropy_excess_std_error) == history.epochs


def test_the_entropy_excess_is_what_the_violations_cost_in_entropy_to_first_order():
    """For the answer p = N(0, 1) of E[x] = 0, E[x²] = 1 (λ* = (0, ½)) and q = N(0, σ²): H(q) - H(p) = log σ and
    λ*ᵀR - KL(q ‖ p) = ½(σ² - 1) - ½(σ² - 1 - log σ²) agree, and λ*ᵀR is their first-order part."""
    for sigma in (0.9, 0.99, 1.01, 1.1):
        excess = 0.5 * (sigma**2 - 1)  # λ*ᵀR, R = (0, σ² - 1) in the raw units of T
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(0.0, sigma), torch.distributions.Normal(0.0, 1.0)
        ).item()
        assert excess - kl == pytest.approx(math.log(sigma), abs=1e-7)
        assert abs(excess - math.log(sigma)) < 2 * (sigma - 1) ** 2  # the gap is KL: second order in σ - 1


def test_a_run_whose_violations_still_move_the_entropy_warns_about_that():
    flow = mixture_flow("pathwise")
    with pytest.warns(MaxEntNotConvergedWarning, match=r"still move the entropy by λᵀR̂ = [+-]\d") as record:
        result = fit_maxent(flow, moments, [0.0, 1.0], stationarity_tolerance=None, entropy_tolerance=1e-12, **SHORT)
    assert not result.converged
    assert abs(result.history.entropy_excess[-1]) >= 1e-12
    assert "(tolerance 1e-12)" in str(record[0].message)


def test_the_entropy_test_only_ever_delays_the_stop():
    """The converging run of the standard normal: without the entropy test it stops no later, and with an
    impossible tolerance it never stops; the trajectory is the same up to the earlier stop."""
    kwargs = dict(steps=3000, batch_size=256, epoch_steps=300, lr=1e-3, test_batches=32, eval_samples=2**12)
    runs = {}
    for tolerance in (None, 0.005, 1e-12):
        flow = mixture_flow("pathwise")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MaxEntNotConvergedWarning)
            runs[tolerance] = fit_maxent(
                flow, moments, [0.0, 1.0], entropy_tolerance=tolerance, progress=False, **kwargs
            )
    assert runs[None].converged and runs[None].steps <= runs[0.005].steps
    assert not runs[1e-12].converged and runs[1e-12].steps == 3000
    shared = runs[None].history.epochs
    assert runs[1e-12].history.exact_entropy[:shared] == runs[None].history.exact_entropy
