"""Tests of fatlib.theory (andriushchenko2020 Lemma 1, Lemma 2, eq. 6, cnn1 analyses). Seconds."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from fatlib import models, theory
from fatlib.attacks import fgsm
from fatlib.models import build
from fatlib.threat import ThreatModel

EPS = 8 / 255


# --- Lemma 1 ---

def test_lemma1_bound_range_and_endpoints():
    d = 3072
    alphas = np.linspace(0, 2 * EPS, 41)
    bound = theory.lemma1_bound(alphas, EPS, d)
    assert bound.shape == alphas.shape
    assert np.all(np.diff(bound) >= -1e-15)  # non-decreasing in alpha
    assert math.isclose(bound[0], math.sqrt(d / 3) * EPS, rel_tol=1e-12)
    assert math.isclose(bound[-1], math.sqrt(d) * EPS, rel_tol=1e-12)  # = ||delta_FGSM||_2
    assert np.all(bound <= math.sqrt(d) * EPS * (1 + 1e-12))


def test_lemma1_fgsm_equivalent_step_is_7_over_255():
    # §3: FGSM-RS with alpha = 1.25 eps (eps = 8/255) ~ FGSM with alpha ~ 7/255
    assert abs(theory.lemma1_bound(1.25 * EPS, EPS, 1) * 255 - 7.1) < 0.05


def test_lemma1_monte_carlo_below_bound_and_tight_in_high_dimension():
    g = torch.Generator().manual_seed(0)
    alphas = np.array([0.0, 0.5, 1.0, 1.25, 1.5, 2.0]) * EPS
    for d, tol in ((100, 0.01), (3072, 0.002)):
        mc = theory.lemma1_monte_carlo(alphas, EPS, d, n_samples=300, generator=g)
        bound = theory.lemma1_bound(alphas, EPS, d)
        assert np.all(mc <= bound * 1.002)               # Jensen, up to Monte-Carlo noise
        assert np.all(mc >= bound * (1 - tol))           # tight for large d
    # in d = 1 the gap is large at alpha = 0: E|eta| = eps/2 vs sqrt(E eta^2) = eps/sqrt(3)
    mc1 = theory.lemma1_monte_carlo(0.0, EPS, 1, n_samples=20000, generator=g)
    assert abs(mc1 / EPS - 0.5) < 0.01


def test_lemma1_monte_carlo_matches_fatlib_fgsm_rs_on_a_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    x = torch.full((256, 3, 8, 8), 0.5)  # far from the box: the projection onto [0, 1] is inactive
    y = torch.randint(0, 10, (256,))
    alpha = 1.25 * EPS
    delta = fgsm(model, x, y, ThreatModel("linf", EPS), alpha=alpha, init="random")
    ours = float(delta.flatten(1).norm(dim=1).mean())
    mc = theory.lemma1_monte_carlo(alpha, EPS, 192, n_samples=2000,
                                   generator=torch.Generator().manual_seed(1))
    assert abs(ours - mc) / mc < 0.01


def test_lemma1_rejects_alpha_outside_range():
    with pytest.raises(ValueError, match="alpha"):
        theory.lemma1_bound(2.5 * EPS, EPS, 10)
    with pytest.raises(ValueError, match="eps"):
        theory.lemma1_monte_carlo(0.01, 0.0, 10)


# --- Appendix C.1 ---

def test_shortened_fgsm_keeps_the_linf_norm_box_and_nested_supports(cnn1):
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    shares = [0.25, 0.5, 1.0]
    deltas = theory.shortened_fgsm(cnn1, x, y, EPS, shares, seed=1)
    for p, d in zip(shares, deltas):
        assert d.abs().max() <= EPS + 1e-7 and (x + d).min() >= 0 and (x + d).max() <= 1
        moved = (d != 0).flatten(1).float().mean(1)
        assert torch.all(moved <= p + 1e-6) and torch.all(moved >= 0.9 * p)  # the box cuts a few
    assert all(torch.all((a == 0) | (a == b)) for a, b in zip(deltas, deltas[1:]))  # nested
    assert torch.equal(deltas[-1], fgsm(cnn1, x, y, ThreatModel("linf", EPS), init="zero"))
    assert [d.flatten(1).norm(dim=1).mean() for d in deltas] == sorted(
        d.flatten(1).norm(dim=1).mean() for d in deltas)
    with pytest.raises(ValueError, match="shares must lie in"):
        theory.shortened_fgsm(cnn1, x, y, EPS, [0.0])


def test_linearization_error_is_second_order_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10), nn.Tanh(), nn.Linear(10, 10))
    model.train()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 10, (6,))
    delta = 0.1 * torch.randn(6, 3, 8, 8)  # large enough for fp32, small for the 3rd order
    full, half = theory.linearization_error(model, x, y, [delta, delta / 2])
    assert model.training and torch.all(full > 0)
    assert 3.5 < full.sum() / half.sum() < 4.5  # the error is of second order in delta
    x_adv = (x + delta).requires_grad_(True)
    by_hand = nn.functional.cross_entropy(model(x_adv), y, reduction="none")
    x0 = x.clone().requires_grad_(True)
    f0 = nn.functional.cross_entropy(model(x0), y, reduction="none")
    (g,) = torch.autograd.grad(f0.sum(), x0)
    expected = (by_hand - f0 - (g * delta).flatten(1).sum(1)).abs().detach()
    assert torch.allclose(full, expected, rtol=1e-4, atol=1e-7)


def test_linearity_by_length_is_shortened_fgsm_then_linearization_error(cnn1):
    cnn1.train()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    shares = [0.25, 1.0]
    measured = theory.linearity_by_length({"cnn1": (cnn1, EPS)}, x, y, shares, seed=3)["cnn1"]
    deltas = theory.shortened_fgsm(cnn1, x, y, EPS, shares, seed=3)
    for ours, theirs in zip(measured["errors"], theory.linearization_error(cnn1, x, y, deltas)):
        assert torch.allclose(ours, theirs)
    assert measured["l2"] == [float(d.flatten(1).norm(dim=1).mean()) for d in deltas]
    assert cnn1.training
    with pytest.raises(ValueError, match="shares must lie in"):
        theory.linearity_by_length({"cnn1": (cnn1, EPS)}, x, y, [1.5])


# --- Lemma 2 ---

def test_lemma2_bound_is_monotone_in_eps_and_within_half_and_one():
    eps = np.array([0.25, 1, 4, 8, 16, 64, 255]) / 255
    bound = theory.lemma2_bound(eps, n_samples=20000, generator=torch.Generator().manual_seed(0))
    assert np.all((bound >= 0.5) & (bound <= 1))
    assert np.all(np.diff(bound) <= 1e-12)
    assert bound[0] > 0.9 and bound[-1] == 0.5
    assert 0.68 < bound[3] < 0.77   # eps = 8/255, p = 27: about 0.72


def test_lemma2_model_matches_assumptions_and_is_aligned_at_small_eps():
    from fatlib.metrics import gradient_alignment

    g = torch.Generator().manual_seed(0)
    model = theory.lemma2_model(8, "cifar10", generator=g)
    assert float(model.conv.bias.detach().abs().max()) == 0
    x = torch.rand(8, 3, 32, 32, generator=g)
    assert not any(isinstance(m, models.Normalize) for m in model.modules())
    y = torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    assert gradient_alignment(model, x, y, 0.1 / 255) > 0.99


# --- eq. 6 ---

def test_eq6_cosine_equals_autograd_for_a_single_filter():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 12, 12, generator=g, dtype=torch.float64)
    eta = (2 * torch.rand(x.shape, generator=g, dtype=torch.float64) - 1) * 0.3
    k, p = 16, 27
    w = torch.randn(p, generator=g, dtype=torch.float64)
    u = torch.randn(k, generator=g, dtype=torch.float64)
    b = -0.5 * float(w.sum())  # about half the units active

    def grad_logistic(inp):  # loss log(1 + exp(-f)) for label +1: l' < 0 everywhere
        inp = inp.clone().requires_grad_(True)
        loss = nn.functional.softplus(-theory.single_filter_cnn(inp, w, b, u)).sum()
        return torch.autograd.grad(loss, inp)[0].flatten(1)

    g1, g2 = grad_logistic(x), grad_logistic(x + eta)
    autograd_cos = (g1 * g2).sum(1) / (g1.norm(dim=1) * g2.norm(dim=1))
    eq6 = theory.eq6_cosine(w, b, u, theory.image_patches(x), theory.image_patches(eta))
    assert eq6.shape == (16,)
    assert torch.allclose(eq6, autograd_cos, atol=1e-10)
    assert float(eq6.min()) < 0.99   # the noise flips some units: a non-trivial check


def test_image_patches_are_non_overlapping():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    z = theory.image_patches(x, 3)
    assert z.shape == (2, 4, 27)
    assert torch.equal(z.flatten(1).sort().values, x.flatten(1).sort().values)
    with pytest.raises(ValueError, match="divisible"):
        theory.image_patches(torch.zeros(1, 3, 7, 7), 3)


# --- cnn1 analyses ---

@pytest.fixture()
def cnn1():
    torch.manual_seed(0)
    return build("cnn1", "cifar10", n_filters=4).eval()


def test_pixel_filters_reproduce_the_models_feature_maps(cnn1):
    x = torch.rand(3, 3, 32, 32)
    w, b = theory.pixel_filters(cnn1)
    direct = nn.functional.conv2d(x, w, b, padding=1)
    maps = theory.preactivations(cnn1, x)
    assert maps.shape == (3, 4, 32, 32)
    # exact away from the zero-padded border (padding is zeros in normalised space)
    assert torch.allclose(direct[..., 1:-1, 1:-1], maps[..., 1:-1, 1:-1], atol=1e-5)


def test_filter_norms_and_zero_filters(cnn1):
    norms = theory.filter_norms(cnn1)
    assert norms["filter"].shape == (4,) and norms["outgoing"].shape == (4,)
    assert torch.allclose(norms["outgoing"].square().sum(), cnn1.linear.weight.square().sum())
    before = cnn1.conv.weight.clone()
    zeroed = theory.zero_filters(cnn1, 2)
    assert torch.equal(cnn1.conv.weight, before)               # original untouched
    assert float(theory.filter_norms(zeroed)["filter"][2]) == 0
    x = torch.rand(2, 3, 32, 32)
    maps = theory.preactivations(zeroed, x)
    assert torch.allclose(maps[:, 2], cnn1.conv.bias[2].expand(2, 32, 32))
    with pytest.raises(ValueError, match="filter indices"):
        theory.zero_filters(cnn1, [4])


def test_activation_flips_vanish_for_tiny_noise_and_are_fractions(cnn1):
    x = torch.rand(4, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    tiny = theory.activation_flips(cnn1, x, 1e-6, generator=g)
    big = theory.activation_flips(cnn1, x, 64 / 255, generator=g)
    assert float(tiny["flipped"].max()) < 1e-3
    assert float(big["flipped"].sum()) > float(tiny["flipped"].sum())
    for v in big.values():
        assert v.shape == (4,) and float(v.min()) >= 0 and float(v.max()) <= 1


def test_laplace_cosine():
    lap = torch.tensor(theory.LAPLACE_KERNELS["8"]).expand(3, 3, 3)
    smooth = torch.ones(3, 3, 3)
    cos = theory.laplace_cosine(torch.stack([lap, -lap, smooth]), "8")
    assert torch.allclose(cos, torch.tensor([1.0, -1.0, 0.0]), atol=1e-6)
    with pytest.raises(ValueError):
        theory.laplace_cosine(torch.zeros(2, 3, 5, 5))


def test_collapse_point_is_the_one_definition():
    from fatlib import overfitting

    assert theory.collapse_point is overfitting.collapse_point


def test_noise_gain_is_larger_for_a_high_frequency_filter(cnn1):
    x = torch.nn.functional.avg_pool2d(torch.rand(4, 3, 32, 32), 5, 1, 2)  # smooth images
    with torch.no_grad():
        cnn1.conv.weight[0] = 1.0                                        # smooth filter
        cnn1.conv.weight[1] = torch.tensor(theory.LAPLACE_KERNELS["8"])  # Laplace filter
    gain = theory.noise_gain(cnn1, x, 8 / 255, generator=torch.Generator().manual_seed(0))
    assert gain.shape == (4,)
    assert float(gain[1]) > 3 * float(gain[0])


# --- what the andriushchenko2020 pages show ---

def test_lemma1_ratio_and_figure():
    g = torch.Generator().manual_seed(0)
    assert 0.99 < theory.lemma1_ratio(1.25 * EPS, EPS, 3072, n_samples=100, generator=g) <= 1.001
    fig = theory.lemma1_figure([1, 3072], EPS, n_alpha=3, n_samples=10, generator=g)
    assert len(fig.layout.sliders[0].steps) == 2 and len(fig.data) == 1 + 2 * 2


def test_lemma1_box_rows_are_shorter_with_the_box():
    torch.manual_seed(0)
    model = theory.lemma2_model(4, "cifar10", generator=torch.Generator().manual_seed(0))
    x = torch.rand(8, 3, 32, 32) ** 4        # many dark pixels: the box cuts coordinates
    rows = theory.lemma1_box_rows(model, x, torch.randint(0, 10, (8,)), EPS)
    assert [r["attack"].split()[0] for r in rows] == ["FGSM", "FGSM-RS", "FGSM-RS"]
    assert all(float(r["ratio"]) <= 1.0 for r in rows)


def test_alignment_at_init_and_eq6_check():
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (4,))
    make = lambda gen: theory.lemma2_model(4, "cifar10", generator=gen)  # noqa: E731
    values = theory.alignment_at_init(make, x, y, [1 / 255, 64 / 255], n_inits=2)
    assert values.shape == (2,) and values[0] > values[1] and values[0] > 0.95
    rows, worst = theory.eq6_check(x, 10 / 255, generator=torch.Generator().manual_seed(0))
    assert len(rows) == 2 * 3 and worst < 1e-9
    assert {r["filter"] for r in rows} == set(theory.EQ6_FILTERS)


def test_initial_model_is_the_training_loops_start(tmp_path):
    from fatlib.train import TrainConfig, train

    cfg = TrainConfig(dataset="cifar10", model="cnn1", model_kw={"n_filters": 4}, n_train=8,
                      batch_size=8, epochs=1, n_eval=0, final_n_eval=0, seed=3)
    start = train(cfg, max_steps=0).model.state_dict()
    for k, v in theory.initial_model(cfg).state_dict().items():
        assert torch.equal(v, start[k]), k


def test_analyse_cnn1_finds_the_filter_whose_removal_restores_alignment(cnn1):
    x = torch.nn.functional.avg_pool2d(torch.rand(8, 3, 32, 32), 5, 1, 2)
    with torch.no_grad():   # filter 2: a loud Laplace filter with large outgoing weights
        cnn1.conv.weight[2] = 5 * torch.tensor(theory.LAPLACE_KERNELS["8"])
        cnn1.conv.bias[2] = -0.05
        cnn1.linear.weight.view(10, 4, -1)[:, 2] *= 20
    a = theory.analyse_cnn1(cnn1, x, torch.randint(0, 10, (8,)), 8 / 255)
    assert a.offending == 2 and a.zeroed[2] > a.alignment
    assert int(torch.argmax(a.gain)) == 2 and float(a.laplace[2]) > 0.99
    assert a.loud == [i for i in range(4) if float(a.gain[i]) > 1]
    rows = theory.filter_rows(a, theory.initial_model(
        SimpleNamespace(seed=0, model="cnn1", dataset="cifar10", model_kw={"n_filters": 4})))
    assert rows[2]["filter"] == "w3 (offending)" and rows[-1]["filter"] == "none zeroed"


def test_cnn1_figures_build(cnn1):
    x = torch.rand(1, 3, 32, 32)
    assert len(theory.filters_figure({"a": cnn1, "b": cnn1}, 0).data) == 8
    assert len(theory.growth_figure(cnn1, cnn1, 1).data) == 5
    assert len(theory.feature_maps_figure(cnn1, x, 8 / 255, 0, 1).data) == 6
    assert theory.filter_image(torch.zeros(3, 3, 3)).shape == (60, 60, 3)
