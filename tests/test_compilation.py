"""Tests of `fit(compile=...)` (`mog_flows.compilation`): a compiled run ends with the parameters of the eager one
(float64, both bases), resumes across the setting, falls back to eager with one warning when compilation fails (a
backend that raises, inductor without a C++ compiler) or computes other numbers than eager code (a backend that
scales its outputs; inductor's spline gradients on a CPU), and leaves the model's own errors alone.

Shapes: N rows, D = 2 features. Flows are tiny (two NSF layers of width 8) and runs short. The fast tests compile
with the "aot_eager" backend (Dynamo and AOTAutograd, no code generation: seconds); inductor's C++ code generation
takes a minute or more on a CPU, so its equivalence test is marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import warnings

import pytest
import torch
import torch._dynamo
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from mog_flows import MixtureOfGaussians, build_flow, fit
from mog_flows.compilation import CompileFallbackWarning, _disagreement, check_compile, relative_tolerance
from mog_flows.training import FitSettings

ARGS = dict(steps=8, batch_size=32, lr=3e-3, seed=3, checkpoint_every=3, progress=False, device="cpu")
FAILURE = "the test backend cannot compile anything"


@torch._dynamo.register_backend(name="mog_flows_test_failing")
def failing_backend(graph_module, example_inputs):
    raise RuntimeError(FAILURE)


@torch._dynamo.register_backend(name="mog_flows_test_wrong")
def wrong_backend(graph_module, example_inputs):
    """Runs the graph and returns its floating outputs 1 % too large: a compiler that computes wrong numbers."""

    def run(*args):
        outputs = graph_module(*args)
        return type(outputs)(o * 1.01 if torch.is_tensor(o) and o.is_floating_point() else o for o in outputs)

    return run


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: no graphs (or exhausted recompile budgets) left by another test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def data(n: int = 300) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    modes = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])  # (K, D)
    k = torch.randint(len(modes), (n,), generator=generator)
    return (modes[k] + 0.5 * torch.randn(n, 2, generator=generator)).double()


def make_flow(base: str = "mog") -> nn.Module:
    torch.manual_seed(0)
    return build_flow(2, base=base, transform="nsf", num_layers=2, hidden_features=8, num_components=3).double()


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def max_difference(a: nn.Module, b: nn.Module) -> float:
    pa, pb = parameters(a), parameters(b)
    assert pa.keys() == pb.keys()
    return max((pa[k] - pb[k]).abs().max().item() for k in pa)


def eager_and_compiled(base: str, compile, **kwargs) -> tuple[nn.Module, nn.Module, list, list]:
    x, val = data(), data(100)
    eager, compiled = make_flow(base), make_flow(base)
    expected = fit(eager, x, val_data=val, **{**ARGS, **kwargs})
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # compilation must not have been given up
        history = fit(compiled, x, val_data=val, compile=compile, **{**ARGS, **kwargs})
    return eager, compiled, expected.train_loss, history.train_loss


@pytest.mark.parametrize("base", ["mog", "gaussian"])
def test_a_compiled_run_ends_with_the_parameters_of_the_eager_run(base):
    eager, compiled, expected, losses = eager_and_compiled(base, "aot_eager")
    # float64: the compiled graphs compute the same operations, rounding may differ by a few ulps per step
    assert max_difference(eager, compiled) <= 1e-10
    assert losses == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("base", ["mog", "gaussian"])
def test_an_inductor_run_ends_with_the_parameters_of_the_eager_run(base):
    """Inductor (compile=True), float64: either its gradients pass the check against eager ones and the run ends
    within rounding of the eager one, or they fail it and the run falls back, with one warning, to the eager run.
    (torch 2.13's CPU code for the backward of nflows' rational-quadratic spline is wrong: the second case.)"""
    x, val = data(), data(100)
    eager, compiled = make_flow(base), make_flow(base)
    expected = fit(eager, x, val_data=val, **ARGS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileFallbackWarning)
        history = fit(compiled, x, val_data=val, compile=True, **ARGS)
    fallbacks = [str(w.message) for w in caught if issubclass(w.category, CompileFallbackWarning)]
    assert len(fallbacks) <= 1
    if fallbacks:
        assert "compiled gradients differ from the eager ones" in fallbacks[0]
        assert max_difference(eager, compiled) == 0.0 and history.train_loss == expected.train_loss
    else:
        # fused float64 arithmetic rounds differently by ~1e-16 relative per operation; 8 Adam steps of size
        # ≤ lr = 3e-3 keep the parameters within 1e-8
        assert max_difference(eager, compiled) <= 1e-8
        assert history.train_loss == pytest.approx(expected.train_loss, rel=1e-10)


def sigint_at_update(update: int):
    """A hook that sends SIGINT while the `update`-th optimiser step runs (fit finishes the step, saves, stops)."""
    updates = [0]

    def pre_step(optimizer, args, kwargs):
        updates[0] += 1
        if updates[0] == update:
            os.kill(os.getpid(), signal.SIGINT)

    return register_optimizer_step_pre_hook(pre_step)


@pytest.mark.parametrize(
    "first, second", [("aot_eager", False), pytest.param(False, "aot_eager", marks=pytest.mark.slow)]
)
def test_compile_is_not_part_of_what_a_resumed_run_must_match(tmp_path, first, second):
    x = data()
    reference, model = make_flow(), make_flow()
    fit(reference, x, **ARGS)
    hook = sigint_at_update(5)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(model, x, checkpoint_dir=tmp_path, compile=first, **ARGS)
    finally:
        hook.remove()
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 5
    assert json.loads((tmp_path / "config.json").read_text())["compile"] == first  # recorded, not compared
    history = fit(model, x, checkpoint_dir=tmp_path, compile=second, **ARGS)
    assert history.steps == ARGS["steps"]
    assert max_difference(reference, model) <= 1e-10


def test_a_backend_that_fails_falls_back_to_eager_with_one_warning():
    x = data()
    eager, model = make_flow(), make_flow()
    expected = fit(eager, x, **ARGS)
    with pytest.warns(CompileFallbackWarning, match=f"trains eagerly instead.*{FAILURE}") as record:
        history = fit(model, x, compile="mog_flows_test_failing", **ARGS)
    assert len([w for w in record if issubclass(w.category, CompileFallbackWarning)]) == 1
    # the failed attempt left no trace: the RNG, buffers and gradients were put back, every step ran eagerly
    assert max_difference(eager, model) == 0.0
    assert history.train_loss == expected.train_loss


def test_inductor_without_a_cxx_compiler_falls_back_to_eager(tmp_path, monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # nothing compiled earlier can be reused
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/c++",))
    x = data()
    eager, model = make_flow("gaussian"), make_flow("gaussian")
    expected = fit(eager, x, **ARGS)
    with pytest.warns(CompileFallbackWarning, match="compile=True.*trains eagerly instead.*C\\+\\+ compiler"):
        history = fit(model, x, compile=True, **ARGS)
    assert max_difference(eager, model) == 0.0
    assert history.train_loss == expected.train_loss


def test_a_backend_that_computes_other_numbers_is_caught_before_a_step_uses_them():
    x = data()
    eager, model = MixtureOfGaussians(2, 3).double(), MixtureOfGaussians(2, 3).double()
    model.load_state_dict(eager.state_dict())
    expected = fit(eager, x, **ARGS)
    with pytest.warns(CompileFallbackWarning, match="compiled loss .* differs from the eager"):
        history = fit(model, x, compile="mog_flows_test_wrong", **ARGS)
    assert max_difference(eager, model) == 0.0  # the checked step kept the eager results
    assert history.train_loss == expected.train_loss


def test_the_check_compares_losses_and_the_norm_of_all_gradients():
    loss = (torch.tensor(2.0, dtype=torch.float64), True)
    grads = [torch.tensor([3.0, 4.0], dtype=torch.float64), None, torch.zeros(2, dtype=torch.float64)]
    rho = relative_tolerance(torch.float64)
    assert rho == pytest.approx(2.2e-12, rel=0.01) and relative_tolerance(torch.float32) == pytest.approx(
        1.19e-3, rel=0.01
    )
    close = [grads[0] * (1 + rho / 2), None, grads[2] + 1e-15]
    assert _disagreement(loss, close, loss, grads) is None
    wrong = [grads[0], None, torch.tensor([0.0, 1e-6], dtype=torch.float64)]
    assert "gradients differ from the eager ones by 2e-07 relative" in _disagreement(loss, wrong, loss, grads)
    assert "different parameters" in _disagreement(loss, [grads[0], grads[0], grads[2]], loss, grads)
    other = (torch.tensor(2.1, dtype=torch.float64), True)
    assert "compiled loss 2.1 differs from the eager 2" in _disagreement(other, grads, loss, grads)


class BrokenInTraining(nn.Module):
    """A Gaussian density whose log_prob raises in training mode (fit's probes run in evaluation mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise ValueError("the model itself is broken")
        return -0.5 * ((x - self.loc) ** 2).sum(-1)


def test_an_error_of_the_model_itself_is_raised_without_a_fallback_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        with pytest.raises(ValueError, match="the model itself is broken"):
            fit(BrokenInTraining(), data(), compile="aot_eager", **ARGS)


def test_compile_takes_a_bool_or_a_known_backend():
    assert check_compile(True) is True and check_compile("aot_eager") == "aot_eager"
    with pytest.raises(ValueError, match="torch.compile backend .*got 'no-such-backend'"):
        FitSettings(steps=1, compile="no-such-backend")
    with pytest.raises(TypeError, match="bool or the name of a torch.compile backend; got int"):
        fit(make_flow(), data(), compile=1, **ARGS)
