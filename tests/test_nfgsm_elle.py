"""N-FGSM (de Jorge et al. 2022) and ELLE / ELLE-A (Abad Rocamora et al. 2024): the attack,
the penalty, ELLE-A's lambda rule, their config fields and a few steps of fatlib.train."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fatlib import attacks, models, regularizers, runs
from fatlib.checkpoints import load_checkpoint
from fatlib.config import LATE_FIELD_DEFAULTS, TrainConfig
from fatlib.methods import AttackState, make_method
from fatlib.threat import ThreatModel, clip_to_box
from fatlib.train import train

from helpers import (Counting, TinyConvNet, TinyMLP, assert_same_state, model_state,
                     random_images, trained_mnist_model)

TOL = 1e-6
LINF = ThreatModel("linf", 0.05)


def tiny(**kw) -> TrainConfig:
    """cnn1 with 2 filters on 64 MNIST digits, 2 steps: well under a second."""
    base = dict(dataset="mnist", model="cnn1", model_kw={"n_filters": 2}, n_train=64, n_eval=32,
                epochs=1, batch_size=32, augment=False, lr_max=0.05, eps=0.1, eval_pgd_steps=2,
                lr_schedule="flat")
    return TrainConfig(**{**base, **kw})


def mixed_images(n=32, seed=0):
    """Half the images in [0.3, 0.7] (the box never binds), half in [0, 1] with exact 0s and 1s."""
    inside, y = random_images(n // 2, seed=seed, low=0.3, high=0.7)
    edge, y2 = random_images(n - n // 2, seed=seed + 1)
    edge[:, :, :3] = 0.0
    edge[:, :, -3:] = 1.0
    return torch.cat([inside, edge]), torch.cat([y, y2])


def linf(delta):
    return delta.flatten(1).abs().amax(1)


@pytest.fixture(scope="module")
def mnist_model():
    """A TinyConvNet (with BatchNorm) trained for one epoch on 500 MNIST digits; 64 test digits."""
    return trained_mnist_model(n_train=500, n_test=64, epochs=1)


# --- N-FGSM ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k, alpha_ratio", [(2.0, 1.0), (1.0, 1.25), (0.5, 2.0)])
def test_nfgsm_is_in_the_box_within_k_eps_plus_alpha_and_not_projected_to_eps(k, alpha_ratio):
    torch.manual_seed(0)
    model = TinyMLP().train()
    x, y = mixed_images()
    alpha = alpha_ratio * LINF.eps
    delta = attacks.nfgsm(model, x, y, LINF, alpha=alpha, noise_factor=k)
    assert delta.shape == x.shape and not delta.requires_grad
    assert float(linf(delta).max()) <= k * LINF.eps + alpha + TOL
    assert float((x + delta).min()) >= -TOL and float((x + delta).max()) <= 1 + TOL
    assert float(linf(delta[:16]).min()) > LINF.eps, "inside the box every example leaves the eps ball"


def test_nfgsm_is_the_papers_formula():
    """delta = clip_box(eta + alpha sign(grad at x + eta)), eta = clip_box(U[-k eps, k eps])."""
    model = TinyMLP().eval()
    x, y = mixed_images()
    k, alpha = 2.0, LINF.eps
    delta = attacks.nfgsm(model, x, y, LINF, alpha=alpha, noise_factor=k,
                          generator=torch.Generator().manual_seed(3))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    eta = clip_to_box((2 * u - 1) * k * LINF.eps, x)
    start = (x + eta).requires_grad_(True)
    F.cross_entropy(model(start), y, reduction="sum").backward()
    expected = clip_to_box(eta + alpha * start.grad.sign(), x)
    assert torch.allclose(delta, expected, atol=1e-7, rtol=0)


def test_nfgsm_without_noise_is_fgsm_from_x():
    model = TinyMLP().eval()
    x, y = random_images(16, low=0.3, high=0.7)
    assert torch.equal(attacks.nfgsm(model, x, y, LINF, noise_factor=0.0),
                       attacks.fgsm(model, x, y, LINF))


def test_nfgsm_same_seed_same_delta():
    model = TinyMLP().eval()
    x, y = mixed_images()

    def run(seed):
        return attacks.nfgsm(model, x, y, LINF, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))
    torch.manual_seed(1)
    first = attacks.nfgsm(model, x, y, LINF)
    torch.manual_seed(1)
    assert torch.equal(attacks.nfgsm(model, x, y, LINF), first), "global RNG: same seed, same delta"


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_nfgsm_leaves_the_model_unchanged_and_works_under_bf16(train_mode):
    torch.manual_seed(0)
    model = TinyConvNet().train(train_mode)
    x, y = random_images(16, (1, 12, 12))
    before, params = model_state(model), [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta = attacks.nfgsm(model, x, y, LINF)
    assert delta.dtype == torch.float32 and float(linf(delta).max()) <= 3 * LINF.eps + TOL
    assert_same_state(before, model_state(model))
    assert all(p.grad is None for p in model.parameters()), "no parameter gradients"
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


def test_nfgsm_raises_the_loss(mnist_model):
    model, x, y = mnist_model
    torch.manual_seed(0)
    delta = attacks.nfgsm(model, x, y, ThreatModel("linf", 0.1))
    with torch.no_grad():
        assert F.cross_entropy(model(x + delta), y) > F.cross_entropy(model(x), y)


@pytest.mark.parametrize("kw, message", [
    (dict(threat=ThreatModel("l2", 1.0)), "l-inf"),
    (dict(noise_factor=-1.0), "noise_factor"),
    (dict(noise_factor=float("nan")), "noise_factor"),
    (dict(noise_factor=30.0), "pixel range"),
    (dict(alpha=0.0), "alpha must be > 0"),
])
def test_nfgsm_rejects_bad_arguments(kw, message):
    model = TinyMLP().eval()
    x, y = random_images(4)
    threat = kw.pop("threat", LINF)
    with pytest.raises(ValueError, match=message):
        attacks.nfgsm(model, x, y, threat, **kw)


# --- ELLE -----------------------------------------------------------------------------------

def test_elle_points_are_uniform_in_the_ball_and_x_c_is_on_their_segment():
    x, _ = mixed_images(64)
    points, a = regularizers.elle_points(x, 0.1, generator=torch.Generator().manual_seed(0))
    x_a, x_b, x_c = points.split(64)
    assert points.shape == (192, *x.shape[1:]) and a.shape == (64,)
    assert float((x_a - x).abs().max()) <= 0.1 + TOL and float((x_b - x).abs().max()) <= 0.1 + TOL
    assert float((x_a - x).abs().max()) > 0.09 and float(x_a.min()) < 0, "not clipped to the box"
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and float(a.std()) > 0.1
    a_ = a.reshape(-1, 1, 1, 1)
    assert torch.allclose(x_c, (1 - a_) * x_a + a_ * x_b, atol=1e-7)


def test_elle_is_zero_for_a_loss_affine_in_x_and_positive_for_a_nonlinear_model():
    torch.manual_seed(0)
    x, y = random_images(16)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(144, 10)).double()

    def true_logit(logits, y):  # a linear model's logit of the true class: affine in x
        return logits.gather(1, y[:, None]).squeeze(1)

    affine = regularizers.elle(linear, x.double(), y, 0.1, loss_fn=true_logit, create_graph=False)
    assert affine.dtype == torch.float64 and float(affine) < 1e-24
    assert float(regularizers.elle(TinyMLP(), x, y, 0.1, create_graph=False)) > 1e-9


def test_elle_is_the_mean_squared_gap_of_the_loss_on_the_segment():
    """For L(x) = ||x||^2 the gap is exactly -a (1 - a) ||x_a - x_b||^2, per example."""
    x, y = random_images(8)
    x = x.double()
    value = regularizers.elle(nn.Flatten(), x, y, 0.1, generator=torch.Generator().manual_seed(4),
                              loss_fn=lambda z, y: z.pow(2).sum(1))
    points, a = regularizers.elle_points(x, 0.1, generator=torch.Generator().manual_seed(4))
    x_a, x_b, _ = points.split(8)
    gap = a * (1 - a) * (x_a - x_b).flatten(1).pow(2).sum(1)
    assert float(value) == pytest.approx(float(gap.pow(2).mean()), rel=1e-9)


def test_elle_is_one_forward_of_3b_points_pure_and_differentiable():
    torch.manual_seed(0)
    model = Counting(TinyConvNet()).train()
    x, y = random_images(16, (1, 12, 12))
    before = model_state(model)
    seed = torch.Generator().manual_seed(1)
    penalty = regularizers.elle(model, x, y, 0.1, generator=seed)
    assert (model.calls, model.rows) == (1, 48)
    assert_same_state(before, model_state(model))
    assert penalty.requires_grad and float(penalty.detach()) > 0
    penalty.backward()
    assert all(p.grad is not None for p in model.parameters())
    detached = regularizers.elle(model, x, y, 0.1, create_graph=False,
                                 generator=torch.Generator().manual_seed(1))
    assert not detached.requires_grad and torch.allclose(detached, penalty.detach(), rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = regularizers.elle(model, x, y, 0.1)
    assert low.dtype == torch.float32 and math.isfinite(float(low.detach()))
    assert_same_state(before, model_state(model))


# --- ELLE-A's lambda ------------------------------------------------------------------------

def test_elle_a_lambda_rule_on_a_scripted_sequence_of_errors():
    rule = regularizers.AdaptiveLambda(100.0, decay=0.5, sensitivity=2.0)
    errors = [1, 1, 1, 1, 10, 1, 1, 50, 2]
    # 3 errors before any jump can count; 10 > 1 + 2 * 0; then halving; 50 > 2.29 + 2 * 3.15
    assert [rule.update(e) for e in errors] == [0, 0, 0, 0, 100, 50, 25, 100, 50]
    assert rule.count == 9 and rule.mean == pytest.approx(np.mean(errors))
    assert rule.std == pytest.approx(np.std(errors))
    early = regularizers.AdaptiveLambda(100.0)
    assert [early.update(e) for e in (1, 1, 1000)] == [0, 0, 0], "a jump needs 3 earlier errors"
    assert early.update(float("nan")) == 0 and early.count == 3, "a non-finite error is skipped"


def test_elle_a_lambda_rule_matches_the_authors_list_based_rule():
    """The authors' rule keeps every error in a list and takes np.mean / np.std of it."""
    rng = np.random.default_rng(0)
    errors = np.abs(rng.normal(1.0, 0.3, 400)) + (rng.random(400) < 0.03) * rng.uniform(2, 8, 400)
    rule = regularizers.AdaptiveLambda(4000.0)
    lam, seen, expected, got = 0.0, [], [], []
    for e in errors:
        jump = len(seen) > 2 and e > np.mean(seen) + 2.0 * np.std(seen)
        lam = 4000.0 if jump else lam * 0.99
        seen.append(e)
        expected.append(lam)
        got.append(rule.update(e))
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    assert max(got) == 4000.0 and 0 < min(g for g in got if g > 0) < 4000.0


@pytest.mark.parametrize("kw", [dict(lambda_max=0.0), dict(lambda_max=float("inf")),
                                dict(lambda_max=1.0, decay=0.0), dict(lambda_max=1.0, decay=1.5),
                                dict(lambda_max=1.0, sensitivity=-1.0)])
def test_elle_a_rejects_bad_constants(kw):
    with pytest.raises(ValueError, match="ELLE-A"):
        regularizers.AdaptiveLambda(**kw)


def test_the_methods_regularizers_weight_elle_by_lambda():
    torch.manual_seed(0)
    model = TinyConvNet().train()
    x, y = random_images(16, (1, 12, 12))
    state = AttackState(ThreatModel("linf", 0.1), 0.1, 0.35)

    def penalty(seed, reg):
        torch.manual_seed(seed)
        return reg(model, x, y, state)

    constant = make_method(tiny(method="nfgsm", elle_lambda=50.0)).regularizer
    err = penalty(1, lambda m, x, y, s: regularizers.elle(m, x, y, s.threat.eps))
    assert torch.allclose(penalty(1, constant), 50.0 * err) and penalty(1, constant).requires_grad
    adaptive = make_method(tiny(method="fgsm", elle_lambda=50.0, elle_adaptive=True)).regularizer
    first = penalty(1, adaptive)  # lambda 0: no graph, the error still recorded
    assert float(first) == 0 and not first.requires_grad
    assert state.elle.count == 1 and state.elle.mean == pytest.approx(float(err.detach()))
    state.elle.value = 50.0
    weighted = penalty(1, adaptive)
    assert weighted.requires_grad and torch.allclose(weighted, 50.0 * err)
    assert state.elle.value == pytest.approx(50.0 * regularizers.ELLE_A_DECAY)
    assert make_method(tiny(method="nfgsm")).regularizer is None


# --- config ---------------------------------------------------------------------------------

def test_the_new_fields_leave_every_existing_hash_unchanged():
    assert not set(json.loads(tiny().to_json())) & {"nfgsm_k", "elle_lambda", "elle_adaptive"}
    for name in ("nfgsm_k", "elle_lambda", "elle_adaptive"):
        assert name in LATE_FIELD_DEFAULTS and name in tiny().to_dict()
    checked = 0
    for folder in sorted(runs.REPO.joinpath("data", "records").iterdir()):
        if (folder / "config.json").exists():
            config = TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
            recorded = json.loads((folder / "provenance.json").read_text())["run_hash"]
            assert config.hash() == recorded, folder.name
            assert TrainConfig.from_dict(config.to_dict()) == config
            checked += 1
    assert checked > 0
    cfg = tiny(method="nfgsm")
    assert len({cfg.hash(), cfg.replace(nfgsm_k=1.0).hash(),
                cfg.replace(elle_lambda=10.0).hash(),
                cfg.replace(elle_lambda=10.0, elle_adaptive=True).hash()}) == 4


def test_nfgsm_and_elle_defaults_are_the_papers():
    nfgsm = tiny(method="nfgsm")
    assert nfgsm.nfgsm_k == 2.0 and nfgsm.alpha_value == pytest.approx(0.1)  # de Jorge et al.
    elle = tiny(method="fgsm", elle_lambda=4000, elle_adaptive=True)
    assert elle.fgsm_init == "zero" and elle.alpha_value == pytest.approx(0.1)  # the ELLE code
    assert isinstance(elle.elle_lambda, float) and elle.hash() == tiny(
        method="fgsm", elle_lambda=4000.0, elle_adaptive=True).hash()
    assert tiny(method="fgsm", elle_lambda=1.0, fgsm_init="random").alpha_value == pytest.approx(0.125)
    assert tiny(method="fgsm").fgsm_init == "random"
    assert TrainConfig.from_json(elle.to_json()) == elle


@pytest.mark.parametrize("changes, message", [
    (dict(method="nfgsm", norm="l2", eps=1.0), "norm='linf'"),
    (dict(method="nfgsm", nfgsm_k=-1.0), "nfgsm_k"),
    (dict(nfgsm_k=float("inf")), "nfgsm_k"),
    (dict(method="nfgsm", nfgsm_k=20.0), "pixel range"),
    (dict(elle_lambda=-1.0), "elle_lambda must be"),
    (dict(elle_lambda=float("inf")), "elle_lambda must be"),
    (dict(method="pgd", elle_lambda=10.0), "is for method 'fgsm' or 'nfgsm'"),
    (dict(method="gradalign", elle_lambda=10.0), "is for method"),
    (dict(method="fgsm", norm="l2", eps=1.0, elle_lambda=10.0), "l-inf ball"),
    (dict(method="fgsm", elle_adaptive=True), "set elle_lambda > 0"),
    (dict(method="fgsm", elle_lambda=10.0, elle_adaptive="yes"), "True or False"),
])
def test_bad_nfgsm_and_elle_configs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(**changes)


# --- fatlib.train ---------------------------------------------------------------------------

def no_times(history):
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in history]


@pytest.mark.parametrize("changes", [
    dict(method="nfgsm"),
    dict(method="fgsm", elle_lambda=100.0),
    dict(method="fgsm", elle_lambda=100.0, elle_adaptive=True),
    dict(method="nfgsm", elle_lambda=100.0, elle_adaptive=True, eval_every=1),
], ids=["nfgsm", "fgsm-elle", "fgsm-elle_a", "nfgsm-elle_a"])
def test_the_new_methods_train_with_finite_losses(changes):
    cfg = tiny(**changes)
    torch.manual_seed(cfg.seed)
    before = [p.detach().clone()
              for p in models.build(cfg.model, cfg.dataset, **cfg.model_kw).parameters()]
    result = train(cfg)
    assert result.complete and result.steps_run == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, result.model.parameters()))
    last = result.history[-1]
    assert math.isfinite(last["train_loss"]) and last["train_loss"] > 0
    assert 0 <= last["pgd_acc"] <= last["clean_acc"] <= 100
    if cfg.method == "nfgsm":  # the training perturbations leave the eps ball (no projection)
        assert cfg.eps < last["delta_linf"] <= (cfg.nfgsm_k + 1) * cfg.eps + TOL
    else:
        assert last["delta_linf"] <= cfg.eps + TOL
    if cfg.eval_every:
        assert no_times(train(cfg).history) == no_times(result.history), "same seed, same numbers"


def test_an_elle_a_run_stopped_after_an_epoch_resumes_to_the_same_weights(tmp_path):
    # ELLE-A's lambda rule (AttackState.elle) is part of the checkpoint: without it the resumed
    # run would restart the rule at lambda = 0 and its weights would differ
    cfg = tiny(method="fgsm", elle_lambda=100.0, elle_adaptive=True, epochs=3, n_train=128)
    part = train(cfg, tmp_path, until_epoch=2)
    assert not part.complete
    kept = load_checkpoint(tmp_path / "checkpoint.pt")["state"]["elle"]
    assert kept["count"] == part.steps_run == 8 and kept["lambda_max"] == 100.0
    rest, whole = train(cfg, tmp_path), train(cfg)
    assert rest.steps_run == 4
    assert all(torch.equal(a, b) for a, b in zip(rest.model.state_dict().values(),
                                                 whole.model.state_dict().values()))
    assert no_times(rest.history) == no_times(whole.history)
