"""The sanity checks added for issue 12: each passes on a healthy tiny model and fails on a
model (or a setting) built to fail it."""

import copy

import pytest
import torch
from torch import nn

from fatlib import evaluate, sanity
from fatlib.threat import ThreatModel

from helpers import trained_mnist_model
from test_autoattack import Dynamic
from test_evaluate_sanity import NoisyInEval, Softmax, ZeroInputGradient

THREAT = ThreatModel("linf", 0.1)


@pytest.fixture(scope="module")
def mnist():
    """TinyConvNet trained on the first 2,000 MNIST training images; the first 500 test images."""
    return trained_mnist_model(n_train=2000, n_test=500, epochs=4)


class Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model


class ShiftedClasses(Wrapper):
    """Logits in the wrong class order (a label-mapping bug): clean accuracy near 0."""

    def forward(self, x):
        return self.model(x).roll(1, dims=1)


class StuckInTrain(Wrapper):
    """Refuses eval mode: ``train(False)`` leaves every module training."""

    def train(self, mode=True):
        return super().train(True)


class BatchStatistics(Wrapper):
    """Normalises its input with batch statistics in every mode (BatchNorm without running stats)."""

    def __init__(self, model):
        super().__init__(model)
        self.norm = nn.BatchNorm2d(1, affine=False, track_running_stats=False)

    def forward(self, x):
        return self.model(0.13 + 0.3 * self.norm(x))


class Bf16Inside(Wrapper):
    """Computes under its own bf16 autocast, whatever the caller asked."""

    def forward(self, x):
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.model(x)


class Sqrt(Wrapper):
    """sqrt of the input first: the input gradient is infinite at black pixels."""

    def forward(self, x):
        return self.model(torch.sqrt(x))


class _RoundStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):
        return grad


class RoundStraightThrough(Wrapper):
    """Quantises its input to 5 levels, with an identity backward: shattered gradients."""

    def forward(self, x):
        return self.model(_RoundStraightThrough.apply(x))


def _run(check, model, x, y, threat=THREAT, **kw):
    torch.manual_seed(0)
    return check(model, x, y, threat, **kw)


CASES = {   # check -> (model wrapper built to fail it, number of images)
    "clean_accuracy": (sanity.check_clean_accuracy, ShiftedClasses, 100),
    "eval_mode": (sanity.check_eval_mode, StuckInTrain, 8),
    "batch_independence": (sanity.check_batch_independence, BatchStatistics, 32),
    "fp32": (sanity.check_fp32, Bf16Inside, 8),
    "finite_gradients": (sanity.check_finite_gradients, Sqrt, 32),
    "finite_differences": (sanity.check_finite_differences, RoundStraightThrough, 16),
    "finite_differences_zero": (sanity.check_finite_differences, ZeroInputGradient, 16),
    "attack_progress": (sanity.check_attack_progress, ZeroInputGradient, 100),
    "unbounded_attack": (sanity.check_unbounded_attack, ZeroInputGradient, 100),
    "autoattack_preflight": (sanity.check_autoattack_preflight, NoisyInEval, 32),
    "autoattack_preflight_dynamic": (sanity.check_autoattack_preflight, Dynamic, 32),
    "square_vs_pgd": (sanity.check_square_vs_pgd, ZeroInputGradient, 40),
}


@pytest.mark.parametrize("case", list(CASES))
def test_check_passes_on_a_healthy_model_and_fails_on_a_broken_one(mnist, case):
    check, broken, n = CASES[case]
    model, x, y = mnist
    x, y = x[:n], y[:n]
    healthy = _run(check, model, x, y)
    assert healthy.passed, healthy.message
    failed = _run(check, broken(copy.deepcopy(model)).eval(), x, y)   # StuckInTrain stays so
    assert not failed.passed, failed.message
    assert failed.name == healthy.name and failed.message != healthy.message
    print(f"{case}: healthy: {healthy.message}\n  broken: {failed.message}")
    assert not model.training


def test_pgd_converged_fails_when_the_evaluation_uses_too_few_steps(mnist):
    model, x, y = mnist
    ok = _run(sanity.check_pgd_converged, model, x[:100], y[:100])
    assert ok.passed, ok.message
    one_step = _run(sanity.check_pgd_converged, model, x[:100], y[:100], steps=1)
    assert not one_step.passed and "PGD-1 " in one_step.message


def test_transfer_weaker_flags_a_masked_model_with_its_undefended_surrogate(mnist):
    model, x, y = mnist
    x, y = x[:60], y[:60]
    default = _run(sanity.check_transfer_weaker, model, x, y)    # distilled MLP surrogate
    assert default.passed, default.message
    masked = _run(sanity.check_transfer_weaker, ZeroInputGradient(model).eval(), x, y,
                  surrogate=model)
    assert not masked.passed, masked.message


def test_autoattack_flags_check(mnist):
    model, x, y = mnist
    big = ThreatModel("linf", 0.3)   # APGD-CE breaks every example: no FAB-T or Square to run
    ok = _run(sanity.check_autoattack_flags, model, x[:16], y[:16], big)
    assert ok.passed and ok.name == "autoattack_flags", ok.message
    flagged = _run(sanity.check_autoattack_flags, Softmax(model).eval(), x[:16], y[:16], big)
    assert not flagged.passed and "probability distribution" in flagged.message
    result = evaluate.AutoAttackResult(torch.zeros(2), torch.tensor([True, False]), [],
                                       ["there are 2 points with zero gradient!"], "standard", 0)
    from_result = sanity.autoattack_check(result)
    assert not from_result.passed and "50.0%" in from_result.message


def test_registry_of_checks():
    assert len(sanity.CHECKS) >= 20 and len(set(sanity.CHECKS)) == len(sanity.CHECKS)
    assert set(sanity.CHEAP_CHECKS) | set(sanity.HEAVY_CHECKS) == set(sanity.CHECKS)
    assert not set(sanity.CHEAP_CHECKS) & set(sanity.HEAVY_CHECKS)
    for heavy in (sanity.check_square_vs_pgd, sanity.check_transfer_weaker,
                  sanity.check_autoattack_flags):
        assert heavy in sanity.HEAVY_CHECKS


def test_cheap_checks_take_seconds(mnist):
    import time

    model, x, y = mnist
    torch.manual_seed(0)
    start = time.perf_counter()
    checks = sanity.run_cheap(model, (x[:100] * 255).round().to(torch.uint8), y[:100], THREAT)
    assert time.perf_counter() - start < 30   # ~3 s on one idle core
    assert all(c.passed for c in checks), [c.message for c in checks if not c.passed]


def test_run_card_shows_a_sanity_report():
    from fatlib import book

    params = book.resolve_profile({"smoke": {"n": 1}}, "smoke")
    report = [sanity.Check("logits", True, "outputs in [-3, 4]"),
              sanity.Check("fp32", False, "logits computed as <bf16>")]
    card = book.run_card(params, sanity=report)
    rows = dict(card.rows)
    assert rows["sanity checks"] == "1 of 2 passed; failed: fp32"
    assert rows["sanity: logits"] == "passed: outputs in [-3, 4]"
    assert rows["sanity: fp32"].startswith("FAILED: ")
    assert "sanity: fp32" in repr(card) and "&lt;bf16&gt;" in card._repr_html_()
    assert "sanity checks" not in dict(book.run_card(params).rows)
