"""Tests of fatlib.verify: exact MILP verification agrees with brute force and never contradicts PGD."""

import functools

import numpy as np
import pytest
import torch
from torch import nn

from fatlib import verify
from fatlib.attacks import pgd
from fatlib.threat import ThreatModel


def _trained_2d_net(seed=0):
    """A small ReLU MLP on 2-d inputs [1, 1, 2] with a non-trivial 3-class decision boundary."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                        nn.Linear(16, 3))
    points = torch.rand(1000, 2)
    labels = ((points[:, 0] * 3).floor() + (points[:, 1] * 2).floor()).long() % 3
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(400):
        loss = nn.functional.cross_entropy(net(points.reshape(-1, 1, 1, 2)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def _quadrant_labels(x):
    """Label = the brightest of the four 3x3 quadrants of a 1 x 6 x 6 image."""
    q = x.reshape(-1, 2, 3, 2, 3).mean(dim=(2, 4)).flatten(1)
    return q.argmax(1)


def _tiny_conv_net(seed=0, steps=150):
    """A tiny mnist_net-like CNN (conv, conv, fc, fc) on 1 x 6 x 6 inputs, briefly trained
    to name the brightest quadrant, so that its decision boundaries are close to the data."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, stride=1, padding=1), nn.ReLU(),
                        nn.Conv2d(3, 4, 2, stride=2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 4))
    x = torch.rand(512, 1, 6, 6)
    y = _quadrant_labels(x)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@pytest.fixture(scope="module")
def net2d():
    return _trained_2d_net()


@pytest.fixture(scope="module")
def grid():
    g = torch.linspace(0, 1, 301)
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 1, 1, 2)


def test_affine_layers_reproduce_the_network():
    net = _tiny_conv_net()
    layers = verify.affine_layers(net, (1, 6, 6))
    assert len(layers) == 4
    x = torch.rand(5, 1, 6, 6)
    a = x.reshape(5, -1).double().numpy().T
    for layer in layers[:-1]:
        a = np.maximum(layer.weight @ a + layer.bias[:, None], 0)
    logits = layers[-1].weight @ a + layers[-1].bias[:, None]
    np.testing.assert_allclose(logits.T, net(x).detach().double().numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["interval", "linear"])
def test_bounds_contain_sampled_activations(kind):
    net = _tiny_conv_net(1)
    layers = verify.affine_layers(net, (1, 6, 6))
    x = torch.rand(1, 6, 6)
    lo, hi = verify.input_box(x, 0.1)
    bounds = verify.BOUNDS[kind](layers, lo, hi)
    rng = np.random.default_rng(0)
    samples = rng.uniform(lo, hi, (300, lo.size))
    samples[:100] = np.where(rng.random((100, lo.size)) < 0.5, lo, hi)  # corners of the box
    a = samples.T
    for layer, (l, u) in zip(layers[:-1], bounds):
        z = layer.weight @ a + layer.bias[:, None]
        assert np.all(z >= l[:, None] - 1e-9) and np.all(z <= u[:, None] + 1e-9)
        a = np.maximum(z, 0)


def test_linear_bounds_are_tighter_than_interval_bounds():
    net = _tiny_conv_net(1)
    layers = verify.affine_layers(net, (1, 6, 6))
    lo, hi = verify.input_box(torch.rand(1, 6, 6), 0.1)
    box = verify.interval_bounds(layers, lo, hi)
    lin = verify.linear_bounds(layers, lo, hi)
    np.testing.assert_allclose(lin[0][0], box[0][0])  # the first layer is exact in both
    for (l1, u1), (l2, u2) in zip(box, lin):
        assert np.all(l2 >= l1 - 1e-12) and np.all(u2 <= u1 + 1e-12)


@pytest.mark.parametrize("kind", ["interval", "linear"])
def test_both_bounds_give_the_same_exact_verdicts(net2d, kind):
    torch.manual_seed(7)
    for _ in range(6):
        x = torch.rand(1, 1, 2)
        y = int(net2d(x[None]).argmax())
        a = verify.verify_point(net2d, x, y, 0.08, time_limit=20, bounds="interval")
        b = verify.verify_point(net2d, x, y, 0.08, time_limit=20, bounds=kind)
        assert a.status == b.status


def test_verdicts_agree_with_brute_force_grid(net2d, grid):
    """Verified points have no misclassified grid point; counterexamples are real."""
    with torch.no_grad():
        pred = net2d(grid).argmax(1)
    torch.manual_seed(1)
    seen = set()
    for _ in range(12):
        x = torch.rand(1, 1, 2)
        y = int(net2d(x[None]).argmax())
        for eps in (0.01, 0.05, 0.15):
            r = verify.verify_point(net2d, x, y, eps, time_limit=20)
            seen.add(r.status)
            in_ball = (grid - x).abs().flatten(1).amax(1) <= eps
            grid_robust = bool((pred[in_ball] == y).all())
            if r.status == "verified":
                assert grid_robust
            if r.reason.startswith("counterexample"):
                c = r.counterexample
                assert (c - x).abs().max() <= eps + 1e-6 and c.min() >= 0 and c.max() <= 1
                others = torch.arange(3) != y
                assert float(verify.margins(net2d, c, y)[others].min()) <= 1e-9
    assert {"verified", "not verified"} <= seen


def test_pgd_broken_points_are_never_verified():
    net = _tiny_conv_net(2)
    torch.manual_seed(3)
    x = torch.rand(40, 1, 6, 6)
    y = net(x).argmax(1)
    eps = 0.03
    threat = ThreatModel("linf", eps)
    delta = pgd(net, x, y, threat, alpha=eps / 4, steps=30, restarts=2)
    with torch.no_grad():
        broken = net(x + delta).argmax(1) != y
    assert broken.any(), "the test needs some points that PGD breaks"
    results = verify.verify(net, x[broken], y[broken], eps, time_limit=20)
    assert all(r.status != "verified" for r in results)


def test_tiny_eps_verifies_correct_points_with_margin():
    net = _tiny_conv_net(4)
    torch.manual_seed(5)
    x = torch.rand(10, 1, 6, 6)
    logits = net(x).detach()
    y = logits.argmax(1)
    top2 = logits.topk(2, dim=1).values
    margin_ok = (top2[:, 0] - top2[:, 1]) > 1e-3
    results = verify.verify(net, x[margin_ok], y[margin_ok], 1e-6, time_limit=10)
    assert results and all(r.status == "verified" for r in results)


def test_milp_finds_counterexamples_pgd_attack_option_and_summary():
    net = _tiny_conv_net(2)
    torch.manual_seed(3)
    x = torch.rand(6, 1, 6, 6)
    y = net(x).argmax(1)
    attack = functools.partial(pgd, threat=ThreatModel("linf", 0.02), alpha=0.005, steps=20)
    results = verify.verify(net, x, y, 0.02, time_limit=20, attack=attack)
    summary = verify.summarize(results)
    assert summary["n"] == 6
    assert summary["verified"] + summary["not_verified"] + summary["timed_out"] == 6
    wrong_label = verify.verify_point(net, x[0], (int(y[0]) + 1) % 4, 0.01)
    assert wrong_label.status == "not verified" and wrong_label.reason == "misclassified"


def test_model_is_unchanged_and_bad_input_is_rejected():
    net = _tiny_conv_net()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    verify.verify_point(net, torch.rand(1, 6, 6), 0, 0.05, time_limit=5)
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError):
        verify.verify_point(net, torch.rand(2, 1, 6, 6), 0, 0.05)
    with pytest.raises(ValueError):
        verify.affine_layers(nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Tanh()), (1, 2, 2))
    with pytest.raises(ValueError):
        verify.verify_point(net, torch.rand(1, 6, 6), 0, 0.05, bounds="octagon")
