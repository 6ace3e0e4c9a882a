"""Properties of fatlib.visualize (l2fast Figures 3-5): each objective improves, the images stay
in the l2 ball and in [0, 1], the model is left as it was, and bad inputs are refused."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fatlib import models
from fatlib.visualize import (feature_visualization, interpolation, noise_like, representation,
                              targeted_perturbation)

from helpers import TinyConvNet, assert_same_state, model_state, random_images, train_quick

TOL = 1e-5
EPS, STEPS, STEP = 2.0, 8, 0.4
PGD = dict(eps=EPS, steps=STEPS, step_size=STEP)


@pytest.fixture(scope="module")
def tiny():
    """A TinyConvNet (with BatchNorm, representation dim 256) after a few Adam steps on random
    12x12 images, in eval mode, and 4 other random images."""
    x, y = random_images(100, (1, 12, 12), seed=1)
    model = train_quick(TinyConvNet(), x, y, epochs=2, batch_size=50)
    return model, random_images(4, (1, 12, 12), seed=2)[0]


def full_state(model):
    """Modes, buffers, parameter values, their requires_grad flags and .grad (copies)."""
    params = [(p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
              for p in model.parameters()]
    return model_state(model), params


def assert_unchanged(before, model):
    (state, params), (state_now, params_now) = before, full_state(model)
    assert_same_state(state, state_now)
    for (p, flag, grad), (q, flag_now, grad_now) in zip(params, params_now):
        assert torch.equal(p, q) and flag == flag_now
        assert (grad is None and grad_now is None) or torch.equal(grad, grad_now)


def assert_in_ball(images, x0, eps=EPS):
    assert images.shape == x0.shape and not images.requires_grad
    dist = (images - x0).flatten(1).norm(dim=1)
    assert float(dist.max()) <= eps + TOL
    assert float(images.min()) >= 0 and float(images.max()) <= 1


# --- representation -------------------------------------------------------------------------

def _last_linear(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("make, shape", [
    (lambda: models.build("preact_resnet18", "cifar10", base_width=4), (3, 32, 32)),
    (lambda: models.mnist_net(), (1, 28, 28)),
    (lambda: models.SingleLayerCNN(n_filters=2, height=8, width=8), (3, 8, 8)),
])
def test_representation_is_the_input_of_the_last_linear(make, shape):
    torch.manual_seed(0)
    model = make().train()
    x = torch.rand(2, *shape)
    before = full_state(model)
    rep = representation(model, x)
    assert_unchanged(before, model)           # still in train mode, BN stats untouched
    last = _last_linear(model)
    assert rep.shape == (2, last.in_features) and not rep.requires_grad
    with torch.no_grad():
        logits = model.eval()(x)
        assert torch.allclose(last(rep), logits, atol=1e-5)


def test_representation_needs_a_linear_layer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(ValueError, match="no nn.Linear"):
        representation(model, torch.rand(1, 1, 5, 5))


def test_noise_like_is_seeded_and_in_the_box():
    x = torch.zeros(2, 1, 4, 4)
    a, b, c = noise_like(x, 0), noise_like(x, 0), noise_like(x, 1)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 1


# --- the three visualisations ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eval", "train"])
def test_feature_visualization_raises_the_unit(tiny, mode):
    model, x = tiny
    model.train(mode == "train")
    x0 = torch.cat([x[:2], noise_like(x[:2], seed=0)])   # test images and noise seeds
    before = full_state(model)
    out = feature_visualization(model, x0, 5, **PGD)
    assert_unchanged(before, model)
    model.eval()
    assert out.maximize and out.objective.shape == (STEPS + 1, 4)
    assert bool(out.improved().all())
    assert_in_ball(out.images, x0)
    assert torch.allclose(out.objective[-1], representation(model, out.images)[:, 5], atol=1e-5)
    assert torch.allclose(out.objective[0], representation(model, x0)[:, 5], atol=1e-5)


def test_feature_visualization_one_unit_per_example_is_deterministic(tiny):
    model, x = tiny
    x0 = x[:1].expand(3, -1, -1, -1)                     # one seed, three units (Figure 3)
    a = feature_visualization(model, x0, [0, 7, 255], **PGD)
    b = feature_visualization(model, x0, torch.tensor([0, 7, 255]), **PGD)
    assert torch.equal(a.images, b.images) and torch.equal(a.objective, b.objective)
    rep = representation(model, a.images)
    assert torch.allclose(a.objective[-1], rep[torch.arange(3), torch.tensor([0, 7, 255])])


def test_feature_visualization_on_preact_resnet18():
    torch.manual_seed(0)
    model = models.build("preact_resnet18", "cifar10", base_width=4).eval()
    x0 = noise_like(torch.empty(1, 3, 32, 32), seed=3)
    before = full_state(model)                  # .grad is None: no parameter gradients appear
    out = feature_visualization(model, x0, 3, eps=1.0, steps=3, step_size=0.3)
    assert_unchanged(before, model)
    assert bool(out.improved().all())
    assert_in_ball(out.images, x0, eps=1.0)


def test_interpolation_moves_towards_the_interpolated_representation(tiny):
    model, x = tiny
    x_a, x_b = x[:2], x[2:]
    lambdas = [0.0, 0.5, 1.0]
    before = full_state(model)
    out = interpolation(model, x_a, x_b, lambdas, **PGD)
    assert_unchanged(before, model)
    assert not out.maximize
    assert out.images.shape == (3, *x_a.shape) and out.objective.shape == (STEPS + 1, 3, 2)
    for j in range(3):
        assert_in_ball(out.images[j], x_a)
    # lambda = 0: the goal is R(x_a) itself, the start; it stays there.
    r_a, r_b = representation(model, x_a), representation(model, x_b)
    assert float((representation(model, out.images[0]) - r_a).norm(dim=1).max()) <= 1e-4
    assert float(out.objective[:, 0].abs().max()) <= 1e-4
    assert torch.equal(out.images[0], x_a)  # the image itself does not wander (no steps)
    # lambda > 0: closer to the goal than the start was; the start's distance is lambda * |.|.
    assert bool(out.improved()[1:].all())
    gap = (r_b - r_a).norm(dim=1)
    assert torch.allclose(out.objective[0, 1], 0.5 * gap, rtol=1e-4)
    assert torch.allclose(out.objective[0, 2], gap, rtol=1e-4)
    goal = 0.5 * r_a + 0.5 * r_b
    final = (representation(model, out.images[1]) - goal).norm(dim=1)
    assert torch.allclose(out.objective[-1, 1], final, atol=1e-5)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_targeted_perturbation_raises_the_target_probability(tiny, mode):
    model, x = tiny
    model.eval()
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 10            # a class other than the prediction
    model.train(mode == "train")
    before = full_state(model)
    out = targeted_perturbation(model, x, target, **PGD)
    assert_unchanged(before, model)
    model.eval()
    assert not out.maximize and bool(out.improved().all())
    assert_in_ball(out.images, x)
    with torch.no_grad():
        p_before = F.softmax(model(x), 1).gather(1, target[:, None])
        p_after = F.softmax(model(out.images), 1).gather(1, target[:, None])
        assert bool((p_after > p_before).all())
        ce = F.cross_entropy(model(out.images), target, reduction="none")
    assert torch.allclose(out.objective[-1], ce, atol=1e-5)
    again = targeted_perturbation(model, x, target, **PGD)
    assert torch.equal(out.images, again.images)


# --- bad inputs -----------------------------------------------------------------------------

def _x():
    return torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("call, match", [
    (lambda m: feature_visualization(m, _x(), 0, eps=0.0, steps=2, step_size=0.1),
     r"eps must be > 0"),
    (lambda m: feature_visualization(m, _x(), 0, eps=-1, steps=2, step_size=0.1),
     r"eps must be > 0"),
    (lambda m: targeted_perturbation(m, _x(), 0, eps=1.0, steps=0, step_size=0.1),
     r"steps must be an integer >= 1"),
    (lambda m: targeted_perturbation(m, _x(), 0, eps=1.0, steps=2, step_size=0),
     r"step_size must be > 0"),
    (lambda m: feature_visualization(m, _x(), 256, eps=1.0, steps=2, step_size=0.1),
     r"unit must be in \[0, 255\]"),
    (lambda m: feature_visualization(m, _x(), -1, eps=1.0, steps=2, step_size=0.1),
     r"unit must be in \[0, 255\]"),
    (lambda m: feature_visualization(m, _x(), [1, 2, 3], eps=1.0, steps=2, step_size=0.1),
     r"one per example"),
    (lambda m: targeted_perturbation(m, _x(), 10, eps=1.0, steps=2, step_size=0.1),
     r"target must be in \[0, 9\]"),
    (lambda m: targeted_perturbation(m, 255 * _x(), 1, eps=1.0, steps=2, step_size=0.1),
     r"x must be images in \[0, 1\]"),
    (lambda m: feature_visualization(m, _x() - 0.5, 1, eps=1.0, steps=2, step_size=0.1),
     r"x0 must be images in \[0, 1\]"),
    (lambda m: targeted_perturbation(m, (255 * _x()).to(torch.uint8), 1, eps=1.0, steps=2,
                                     step_size=0.1), r"to_float"),
    (lambda m: interpolation(m, _x(), _x()[:1], [0.5], eps=1.0, steps=2, step_size=0.1),
     r"same shape"),
    (lambda m: interpolation(m, _x(), _x(), [0.5, 1.5], eps=1.0, steps=2, step_size=0.1),
     r"lambdas must be .* in \[0, 1\]"),
    (lambda m: interpolation(m, _x(), _x(), [], eps=1.0, steps=2, step_size=0.1),
     r"non-empty"),
])
def test_bad_inputs_are_refused(tiny, call, match):
    model, _ = tiny
    with pytest.raises(ValueError, match=match):
        call(model)

