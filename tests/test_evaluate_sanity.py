"""fatlib.evaluate (PGD against torchattacks) and fatlib.sanity (on healthy and broken models).

AutoAttack is tested in test_autoattack.py, the checks added for issue 12 in test_sanity_checks.py.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fatlib import attacks, evaluate, sanity
from fatlib.threat import ThreatModel

from helpers import TinyConvNet, random_images, trained_mnist_model

EPS = 0.1
THREAT = ThreatModel("linf", EPS)


@pytest.fixture(scope="module")
def mnist():
    """TinyConvNet trained on the first 2,000 MNIST training images; the first 500 test images."""
    return trained_mnist_model(n_train=2000, n_test=500, epochs=4)


# --- evaluate ---------------------------------------------------------------------------------

def test_evaluate_returns_per_example_correctness_and_restores_the_mode(mnist):
    model, x, y = mnist
    x, y = x[:100], y[:100]
    model.train()
    try:
        before = [b.clone() for b in model.buffers()]
        with torch.autocast("cpu", dtype=torch.bfloat16):  # evaluation must ignore it (fp32)
            torch.manual_seed(0)
            res = evaluate.evaluate(model, x, y, THREAT, pgd_steps=5, pgd_restarts=2, batch_size=32)
        assert model.training and all(m.training for m in model.modules())
        assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    finally:
        model.eval()
    assert set(res) == {"clean", "fgsm", "pgd"}
    assert all(v.dtype == torch.bool and v.shape == (100,) for v in res.values())
    torch.manual_seed(0)
    again = evaluate.evaluate(model, (x * 255).round().to(torch.uint8), y, THREAT, pgd_steps=5,
                              pgd_restarts=2, batch_size=32)
    assert evaluate.accuracy(again["clean"]) == pytest.approx(evaluate.accuracy(res["clean"]), abs=1)
    acc = {k: evaluate.accuracy(v) for k, v in res.items()}
    assert acc["pgd"] <= acc["fgsm"] <= acc["clean"]
    robust = res["clean"] & res["pgd"]
    assert evaluate.accuracy(robust) <= acc["pgd"]


def test_evaluate_accepts_custom_attacks_and_rejects_bad_input(mnist):
    model, x, y = mnist
    x, y = x[:20], y[:20]
    noise = ("noise", lambda m, xb, yb: THREAT.random_init(xb))
    res = evaluate.evaluate(model, x, y, THREAT, attacks=("clean", noise))
    assert set(res) == {"clean", "noise"}
    with pytest.raises(ValueError):
        evaluate.evaluate(model, x, y, THREAT, attacks=("cw",))
    with pytest.raises(ValueError):
        evaluate.evaluate(model, x * 255, y, THREAT, attacks=("clean",))
    with pytest.raises(ValueError):
        evaluate.accuracy(torch.zeros(0, dtype=torch.bool))
    assert evaluate.accuracy(torch.tensor([True, False, True, True])) == 75.0


def test_pgd_agrees_with_torchattacks(mnist):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = mnist
    kw = dict(alpha=EPS / 4, steps=20)
    torch.manual_seed(0)
    ours = evaluate.accuracy(evaluate.attack_correct(
        model, x, y, functools.partial(attacks.pgd, threat=THREAT, restarts=1, **kw)))
    torch.manual_seed(0)
    x_adv = torchattacks.PGD(model, eps=EPS, random_start=True, **kw)(x, y)
    theirs = evaluate.accuracy(evaluate.predict_correct(model, x_adv, y))
    assert 5 < theirs < 80, "choose eps so that robust accuracy is informative"
    assert abs(ours - theirs) <= 1.5, (ours, theirs)


# --- sanity: a healthy model passes, broken ones are flagged ----------------------------------

class NoisyInEval(nn.Module):
    """Adds Gaussian input noise in every mode: non-deterministic evaluation."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x + 0.2 * torch.randn_like(x))


class Softmax(nn.Module):
    """Returns probabilities instead of logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return F.softmax(self.model(x), dim=1)


class _ZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class ZeroInputGradient(nn.Module):
    """Blocks the input gradient (custom autograd function, or x.detach())."""

    def __init__(self, model, detach=False):
        super().__init__()
        self.model, self.detach = model, detach

    def forward(self, x):
        return self.model(x.detach() if self.detach else _ZeroGrad.apply(x))


def checks_by_name(model, x, y, cheap_only=True):
    torch.manual_seed(0)
    return {c.name: c for c in sanity.run_all(model, x, y, THREAT, cheap_only=cheap_only)}


def _failed(checks):
    return [f"{c.name}: {c.message}" for c in checks.values() if not c.passed]


def test_cheap_sanity_checks_pass_on_a_healthy_model(mnist):
    model, x, y = mnist
    checks = checks_by_name(model, x[:100], y[:100])
    assert len(checks) == len(sanity.CHEAP_CHECKS) and not _failed(checks), _failed(checks)
    assert [c.name for c in sanity.run_cheap(model, x[:8], y[:8], THREAT)] == list(checks)
    assert not model.training


@pytest.mark.slow
def test_every_sanity_check_passes_on_a_healthy_model(mnist):
    model, x, y = mnist
    # 30 images: the heavy checks include a full standard AutoAttack (~10-15 s here).
    checks = checks_by_name(model, x[:30], y[:30], cheap_only=False)
    assert len(checks) == len(sanity.CHECKS) >= 20 and not _failed(checks), _failed(checks)
    assert set(sanity.CHEAP_CHECKS) < set(sanity.CHECKS)
    assert not model.training


@pytest.mark.parametrize("broken, flagged", [
    (NoisyInEval, "deterministic"),
    (Softmax, "logits"),
    (ZeroInputGradient, "input_gradients"),
    (functools.partial(ZeroInputGradient, detach=True), "input_gradients"),
], ids=["noise", "softmax", "zero_grad_function", "detach"])
def test_sanity_flags_broken_models(mnist, broken, flagged):
    model, x, y = mnist
    checks = checks_by_name(broken(model).eval(), x[:40], y[:40])
    assert not checks[flagged].passed, checks[flagged].message
    assert checks[flagged].message


def test_attack_purity_check(monkeypatch):
    class Counter(nn.Module):  # a model that writes to a buffer in every forward
        def __init__(self):
            super().__init__()
            self.net = TinyConvNet()
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x):
            self.seen += 1
            return self.net(x)

    x, y = random_images(16, (1, 12, 12))
    model = Counter().eval()
    check = sanity.check_attack_purity(model, x, y, THREAT)
    assert check.passed, check.message   # preserved_state restores buffers written in forward
    assert float(model.seen) == 0 and not model.training

    def impure_fgsm(model, x, y, threat, **kw):
        model(x)                          # a forward outside preserved_state
        return torch.zeros_like(x)

    monkeypatch.setattr(attacks, "fgsm", impure_fgsm)
    check = sanity.check_attack_purity(model, x, y, THREAT)
    assert not check.passed and "fgsm_rs" in check.message
    assert not model.training
