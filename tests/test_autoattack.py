"""fatlib.evaluate's AutoAttack: the reference implementation (pyautoattack), its log and flags.

A full standard AutoAttack costs ~10 s here whatever the batch (FAB-T and Square's 5,000
queries on the few examples that survive APGD), so the runs are few and on 16 images or fewer.
Determinism: the run with a drawn seed equals the reference run directly with that seed.
"""

import re

import pytest
import torch

from fatlib import evaluate
from fatlib.threat import ThreatModel

from helpers import model_state, trained_mnist_model
from test_evaluate_sanity import NoisyInEval, Softmax, ZeroInputGradient

pytest.importorskip("pyautoattack")

LINF = ThreatModel("linf", 0.1)
N = 16


@pytest.fixture(scope="module")
def mnist():
    """TinyConvNet trained on the first 2,000 MNIST training images; the first 500 test images."""
    return trained_mnist_model(n_train=2000, n_test=500, epochs=4)


@pytest.fixture(scope="module")
def linf_run(mnist):
    """One standard l-inf run with a seed drawn from torch's RNG, the model in train mode."""
    model, x, y = mnist
    model.train()
    try:
        before = model_state(model)
        torch.manual_seed(5)
        seed = int(torch.randint(0, 2**31 - 1, ()))    # the one draw run_autoattack makes
        rng = torch.get_rng_state()
        torch.manual_seed(5)
        result = evaluate.run_autoattack(model, x[:N], y[:N], LINF)
        after, rng_after = model_state(model), torch.get_rng_state()
    finally:
        model.eval()
    return result, before, after, result.seed == seed and torch.equal(rng, rng_after)


def test_autoattack_runs_the_reference_standard_version_and_logs_it(linf_run):
    result, *_ = linf_run
    assert result.version == "standard" and not result.flags, result.flags
    log = "\n".join(result.log)
    assert "using standard version including apgd-ce, apgd-t, fab-t, square" in log
    # the reference runs each attack on what survived the previous ones, and stops once
    # nothing is left: every stage up to that point is logged, in order
    left = None
    for stage in ("APGD-CE", "APGD-T", "FAB-T", "SQUARE"):
        found = re.search(rf"robust accuracy after {stage}: ([\d.]+)%", log)
        if left == 0.0:
            assert found is None, f"{stage} ran on no examples"
            continue
        assert found, f"no {stage} stage in the log:\n{log}"
        left = float(found.group(1))
    assert result.correct.dtype == torch.bool and result.correct.shape == (N,)
    assert float(LINF.norms(result.delta).max()) <= LINF.eps + 1e-6


def test_autoattack_leaves_model_and_rng_unchanged(linf_run):
    _, before, after, rng_unchanged = linf_run
    assert before[0] == after[0] and all(before[0])           # still in train mode
    assert all(torch.equal(a, b) for a, b in zip(before[1], after[1]))   # BN stats untouched
    assert rng_unchanged


def test_autoattack_is_at_least_as_strong_as_pgd_50_10(mnist, linf_run):
    model, x, y = mnist
    result, *_ = linf_run
    torch.manual_seed(0)
    pgd = evaluate.evaluate(model, x[:N], y[:N], LINF, attacks=("pgd",))["pgd"]
    assert evaluate.accuracy(result.correct) <= evaluate.accuracy(pgd), result.log


@pytest.mark.slow
def test_autoattack_equals_the_reference_called_directly_with_the_same_seed(mnist, linf_run):
    from pyautoattack import AutoAttack

    model, x, y = mnist
    result, *_ = linf_run
    with torch.random.fork_rng():
        x_adv, y_adv = AutoAttack(model.eval(), norm="Linf", eps=LINF.eps, version="standard",
                                  seed=result.seed).run_standard_evaluation(x[:N], y[:N])
    assert torch.equal(y_adv == y[:N], result.correct)
    assert torch.allclose(x[:N] + result.delta, x_adv, atol=1e-6)


def test_autoattack_l2(mnist):
    model, x, y = mnist
    threat = ThreatModel("l2", 2.0)   # APGD-CE breaks all 8: the later stages are skipped (fast)
    result = evaluate.run_autoattack(model, x[:8], y[:8], threat, seed=1)
    assert float(threat.norms(result.delta).max()) <= threat.eps * (1 + 1e-6)
    assert 0 <= float((x[:8] + result.delta).min()) and float((x[:8] + result.delta).max()) <= 1
    torch.manual_seed(0)
    pgd = evaluate.accuracy(evaluate.attack_correct(model, x[:8], y[:8], evaluate.make_attack(
        "pgd", threat, pgd_steps=20, pgd_restarts=1)))
    assert evaluate.accuracy(result.correct) <= pgd
    assert any("max L2 perturbation" in line for line in result.log), result.log


def test_autoattack_as_an_attack_in_evaluate(mnist):
    model, x, y = mnist
    torch.manual_seed(0)
    res = evaluate.evaluate(model, x[:8], y[:8], ThreatModel("linf", 0.3),
                            attacks=("clean", "autoattack"))
    assert evaluate.accuracy(res["autoattack"]) <= evaluate.accuracy(res["clean"])
    with pytest.raises(ValueError, match="version"):
        evaluate.autoattack(model, x[:4], y[:4], LINF, version="fast")


def test_autoattack_rand_version_for_randomised_models(mnist):
    model, x, y = mnist
    noisy = NoisyInEval(model).eval()
    torch.manual_seed(0)
    assert any("randomized" in f for f in evaluate.autoattack_preflight(noisy, x[:16], y[:16], LINF))
    assert not evaluate.autoattack_preflight(noisy, x[:16], y[:16], LINF, version="rand")
    result = evaluate.run_autoattack(noisy, x[:4], y[:4], ThreatModel("linf", 0.2), version="rand",
                                     seed=0)
    assert "using rand version including apgd-ce, apgd-dlr" in "\n".join(result.log)


class Dynamic(torch.nn.Module):
    """Takes one input-gradient step inside its forward (a 'dynamic' defence)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.model(z).logsumexp(1).sum(), z)
        return self.model(x - 0.01 * g.sign())


def test_autoattack_preflight_flags(mnist):
    model, x, y = mnist
    x, y = x[:16], y[:16]
    assert evaluate.autoattack_preflight(model, x, y, LINF) == []
    assert any("probability" in f for f in evaluate.autoattack_preflight(Softmax(model), x, y, LINF))
    assert any("dynamic" in f for f in evaluate.autoattack_preflight(Dynamic(model), x, y, LINF))
    assert evaluate.autoattack_preflight(model, x, y, LINF) == []   # its counters are reset
    five = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))
    assert any("target classes" in f for f in evaluate.autoattack_preflight(five, x, y % 5, LINF))


def test_autoattack_flags_zero_gradients_and_square_success(mnist):
    model, x, y = mnist
    result = evaluate.run_autoattack(ZeroInputGradient(model).eval(), x[:3], y[:3],
                                     ThreatModel("linf", 0.3), seed=0)
    assert any("zero gradient" in f for f in result.flags), result.flags
    assert any("Square Attack has decreased" in f for f in result.flags), result.flags


def test_square_alone(mnist):
    model, x, y = mnist
    x, y = x[:16], y[:16]
    torch.manual_seed(0)
    delta = evaluate.square(model, x, y, LINF, queries=200, seed=0)
    assert torch.equal(delta, evaluate.square(model, x, y, LINF, queries=200, seed=0))
    assert float(LINF.norms(delta).max()) <= LINF.eps + 1e-6
    clean = evaluate.accuracy(evaluate.predict_correct(model, x, y))
    assert evaluate.accuracy(evaluate.predict_correct(model, x, y, delta)) < clean
