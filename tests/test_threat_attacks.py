"""Properties of fatlib.threat, fatlib.attacks, fatlib.regularizers and fatlib.metrics."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fatlib import attacks, metrics, regularizers
from fatlib.threat import ThreatModel

from helpers import (Counting, TinyConvNet, TinyMLP, assert_same_state, model_state,
                     random_images, trained_mnist_model)

TOL = 1e-6
LINF = ThreatModel("linf", 0.1)
L2 = ThreatModel("l2", 1.5)


@pytest.fixture(scope="module")
def mnist_model():
    """A TinyConvNet (with BatchNorm) trained on 2,000 MNIST images, and 64 test images."""
    model, x, y = trained_mnist_model(n_train=2000, n_test=64, epochs=3)
    return model, x, y


def interior(n=16, shape=(1, 12, 12), seed=0):
    """Random images in [0.2, 0.8]: small perturbations never touch the box."""
    return random_images(n, shape, seed=seed, low=0.2, high=0.8)


def assert_valid(delta, x, threat):
    assert delta.shape == x.shape and not delta.requires_grad
    assert float(threat.norms(delta).max()) <= threat.eps + TOL
    assert float((x + delta).min()) >= -TOL and float((x + delta).max()) <= 1 + TOL


# --- ThreatModel ------------------------------------------------------------------------------

@pytest.mark.parametrize("norm, eps", [("l1", 0.1), ("linf", 0.0), ("linf", -1.0), ("linf", 8.0),
                                       ("l2", float("nan"))])
def test_threat_model_rejects_bad_input(norm, eps):
    with pytest.raises(ValueError):
        ThreatModel(norm, eps)


@pytest.mark.parametrize("threat", [LINF, L2], ids=["linf", "l2"])
def test_random_init_and_project_stay_in_ball_and_box(threat):
    torch.manual_seed(0)
    x, _ = random_images(64, (3, 8, 8))
    delta = threat.random_init(x)
    assert_valid(delta, x, threat)
    assert float(threat.norms(delta).min()) > 0
    big = 10 * torch.randn_like(x)
    projected = threat.project(big, x)
    assert_valid(projected, x, threat)
    assert torch.equal(threat.project(projected, x), projected)


def test_l2_random_init_is_uniform_in_the_ball():
    # In d = 2 (a disk), P(radius < eps/2) = 1/4 and the direction is isotropic.
    torch.manual_seed(0)
    threat = ThreatModel("l2", 0.1)
    x = torch.full((20000, 1, 1, 2), 0.5)
    delta = threat.random_init(x)
    radius = threat.norms(delta)
    assert float(radius.max()) <= 0.1 + TOL
    assert abs(float((radius < 0.05).float().mean()) - 0.25) < 0.02
    assert float(delta.flatten(1).mean(0).abs().max()) < 0.002


def test_linf_random_init_is_uniform():
    torch.manual_seed(0)
    x = torch.full((2000, 1, 4, 4), 0.5)
    delta = LINF.random_init(x)
    assert abs(float(delta.mean())) < 0.002
    assert abs(float(delta.pow(2).mean()) - 0.1 ** 2 / 3) < 1e-4


def test_step_directions_and_zero_gradient_guard():
    delta = torch.zeros(2, 1, 2, 2)
    grad = torch.tensor([[3.0, -4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    linf = LINF.step(delta, grad, 0.05)
    assert torch.equal(linf, 0.05 * grad.sign())
    l2 = L2.step(delta, grad, 0.5)
    assert torch.allclose(l2[0].flatten(), torch.tensor([0.3, -0.4, 0.0, 0.0]))
    assert torch.equal(l2[1], torch.zeros(1, 2, 2))


# --- every attack: validity, purity, determinism, strength ------------------------------------

ATTACKS = {
    "fgsm": lambda m, x, y, t: attacks.fgsm(m, x, y, t),
    "fgsm_rs": lambda m, x, y, t: attacks.fgsm(m, x, y, t, alpha=1.25 * t.eps, init="random"),
    "fgsm_prev": lambda m, x, y, t: attacks.fgsm(m, x, y, t, init=t.random_init(x)),
    "zerograd": lambda m, x, y, t: attacks.zerograd(m, x, y, t, q=0.35),
    "multigrad": lambda m, x, y, t: attacks.multigrad(m, x, y, t, n=3),
    "pgd": lambda m, x, y, t: attacks.pgd(m, x, y, t, alpha=t.eps / 4, steps=5, restarts=2),
    "pgd_plain": lambda m, x, y, t: attacks.pgd(m, x, y, t, alpha=t.eps / 4, steps=5,
                                                early_stop=False),
    "pgd_corners": lambda m, x, y, t: attacks.pgd(m, x, y, t, alpha=t.eps / 4, steps=5,
                                                  corners=True),
    "l2fast": lambda m, x, y, t: attacks.l2fast(m, x, y, t),
}
NOT_FOR = {"pgd_corners": "l2", "l2fast": "linf"}


def mean_loss(model, x, y, delta=None):
    with attacks.preserved_state(model), torch.no_grad():
        return float(F.cross_entropy(model(x if delta is None else x + delta), y))


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("threat", [LINF, L2], ids=["linf", "l2"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_properties(mnist_model, name, threat, train_mode):
    if NOT_FOR.get(name) == threat.norm:
        pytest.skip(f"{name} is not defined for {threat.norm}")
    model, x, y = mnist_model
    model.train(train_mode)
    try:
        before = model_state(model)
        torch.manual_seed(1)
        delta = ATTACKS[name](model, x, y, threat)
        assert_same_state(before, model_state(model))
        assert_valid(delta, x, threat)
        torch.manual_seed(1)
        assert torch.equal(ATTACKS[name](model, x, y, threat), delta), "same seed, same delta"
        assert mean_loss(model, x, y, delta) > mean_loss(model, x, y)
    finally:
        model.eval()


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.15), ThreatModel("l2", 2.0)],
                         ids=["linf", "l2"])
def test_pgd_is_at_least_as_strong_as_fgsm(mnist_model, threat):
    model, x, y = mnist_model
    torch.manual_seed(0)

    def acc(delta):
        with torch.no_grad():
            return float((model(x + delta).argmax(1) == y).float().mean())

    fgsm = acc(attacks.fgsm(model, x, y, threat))
    pgd = acc(attacks.pgd(model, x, y, threat, alpha=threat.eps / 4, steps=10))
    assert pgd <= fgsm < acc(torch.zeros_like(x))


def test_attacks_compute_no_parameter_gradients_and_work_under_bf16_autocast():
    torch.manual_seed(0)
    model = TinyConvNet().train()
    x, y = random_images(16, (1, 12, 12))
    before = model_state(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta = attacks.fgsm(model, x, y, LINF, init="random")
        reg = regularizers.grad_align(model, x, y, LINF.eps)
    assert delta.dtype == torch.float32
    assert_valid(delta, x, LINF)
    assert all(p.grad is None for p in model.parameters())
    assert_same_state(before, model_state(model))
    assert reg.requires_grad and 0 <= float(reg.detach()) <= 2


# --- exact identities -------------------------------------------------------------------------

def plain_input_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.05), ThreatModel("l2", 0.5)],
                         ids=["linf", "l2"])
def test_fgsm_zero_init_is_the_gradient_step(threat):
    torch.manual_seed(0)
    model = TinyMLP().eval()
    x, y = interior()
    grad = plain_input_gradient(model, x, y)
    delta = attacks.fgsm(model, x, y, threat)
    if threat.norm == "linf":
        expected = threat.eps * grad.sign()
    else:
        expected = threat.eps * grad / grad.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    assert torch.allclose(delta, expected, atol=1e-7, rtol=0)
    if threat.norm == "linf":
        assert torch.equal(delta, expected)


def test_fgsm_is_box_clipped_and_accepts_a_previous_delta():
    torch.manual_seed(0)
    model = TinyMLP().eval()
    x, y = random_images(8, (1, 12, 12))
    x[:, :, :6] = 0.0
    delta = attacks.fgsm(model, x, y, LINF)
    assert_valid(delta, x, LINF)
    assert float(delta[:, :, :6].min()) >= 0
    previous = LINF.random_init(torch.full((10, 1, 12, 12), 0.5))
    assert_valid(attacks.fgsm(model, x, y, LINF, init=previous), x, LINF)
    with pytest.raises(ValueError):
        attacks.fgsm(model, x, y, LINF, init=previous[:4])
    with pytest.raises(ValueError):
        attacks.fgsm(model, x, y, LINF, init="uniform")


@pytest.mark.parametrize("threat", [LINF, L2], ids=["linf", "l2"])
def test_zerograd_with_q0_is_fgsm_rs(threat):
    model = TinyMLP().eval()
    x, y = random_images(16)
    torch.manual_seed(3)
    zg = attacks.zerograd(model, x, y, threat, q=0.0, alpha=1.7 * threat.eps)
    torch.manual_seed(3)
    rs = attacks.fgsm(model, x, y, threat, alpha=1.7 * threat.eps, init="random")
    assert torch.equal(zg, rs)


def test_zero_small_gradients_zeroes_the_q_quantile():
    torch.manual_seed(0)
    grad = torch.randn(4, 3, 8, 8)
    q = 0.35
    assert torch.allclose(attacks.per_example_quantile(grad.abs(), q),
                          torch.quantile(grad.abs().flatten(1), q, dim=1))
    masked = attacks.zero_small_gradients(grad, q)
    zero_fraction = (masked == 0).flatten(1).float().mean(1)
    assert torch.allclose(zero_fraction, torch.full((4,), q), atol=1 / 192)
    kept = masked != 0
    assert torch.equal(masked[kept], grad[kept])
    assert torch.equal(attacks.zero_small_gradients(grad, 0.0), grad)


def test_multigrad_with_one_start_steps_from_x_along_the_random_start_gradient():
    model = TinyMLP().eval()
    x, y = random_images(16)
    torch.manual_seed(5)
    mg = attacks.multigrad(model, x, y, LINF, n=1)
    torch.manual_seed(5)
    grad, _ = attacks.input_gradient(model, x, y, LINF.random_init(x))
    assert torch.equal(mg, LINF.project(LINF.eps * grad.sign(), x))


def test_multigrad_equals_fgsm_from_x_when_the_gradient_sign_is_constant():
    # A 2-class linear model: sign(grad_x CE) = sign(w_other - w_y) at every point, so every
    # random start agrees and MultiGrad (any N) is FGSM with zero init.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 2)).eval()
    x, y = random_images(16, num_classes=2)
    for n in (1, 3):
        assert torch.equal(attacks.multigrad(model, x, y, LINF, n=n), attacks.fgsm(model, x, y, LINF))


def test_multigrad_keeps_fewer_entries_with_more_starts(mnist_model):
    model, x, y = mnist_model
    torch.manual_seed(0)
    nonzero = [int((attacks.multigrad(model, x, y, LINF, n=n) != 0).sum()) for n in (1, 3, 6)]
    assert nonzero[0] > nonzero[1] > nonzero[2] > 0


def test_free_update_and_l2fast():
    torch.manual_seed(0)
    model = TinyMLP().eval()
    x, y = interior()
    delta = LINF.random_init(x)
    grad = torch.randn_like(x)
    expected = (delta + LINF.eps * grad.sign()).clamp(-LINF.eps, LINF.eps)
    assert torch.allclose(attacks.free_update(delta, grad, LINF, x), expected, atol=1e-7)
    torch.manual_seed(1)
    fast = attacks.l2fast(model, x, y, L2)
    torch.manual_seed(1)
    assert torch.equal(fast, attacks.fgsm(model, x, y, L2, alpha=1.5 * L2.eps, init="random"))
    with pytest.raises(ValueError):
        attacks.l2fast(model, x, y, LINF)


def test_pgd_corners_puts_every_entry_on_a_corner():
    torch.manual_seed(0)
    model = TinyMLP().eval()
    x, y = interior()
    threat = ThreatModel("linf", 0.05)
    delta = attacks.pgd(model, x, y, threat, alpha=0.01, steps=3, corners=True, early_stop=False)
    assert torch.allclose(delta.abs(), torch.full_like(delta, 0.05))
    with pytest.raises(ValueError):
        attacks.pgd(model, x, y, L2, alpha=0.1, steps=3, corners=True)


def test_pgd_corners_projects_only_the_final_perturbation():
    """andriushchenko2020 §3: the iterates are plain PGD iterates; only the result goes to a corner."""
    model = TinyMLP().eval()
    x, y = interior()
    threat = ThreatModel("linf", 0.05)
    torch.manual_seed(3)
    plain = attacks.pgd(model, x, y, threat, alpha=0.01, steps=4, early_stop=False)
    torch.manual_seed(3)
    corners = attacks.pgd(model, x, y, threat, alpha=0.01, steps=4, corners=True, early_stop=False)
    assert torch.equal(corners, threat.project(threat.eps * plain.sign(), x))
    # a per-iterate projection could never leave the starting corner with a step of eps / 5
    torch.manual_seed(3)
    start = threat.project(threat.eps * threat.random_init(x).sign(), x)
    assert not torch.equal(corners, start)


# --- fast (early-stopping) PGD == the full computation ----------------------------------------

def reference_pgd(model, x, y, threat, *, alpha, steps, restarts):
    """Every restart on every example, every row in every forward; an example stops moving
    while it is misclassified; worst case = first misclassifying restart, else highest loss."""
    best = torch.zeros_like(x)
    broken = torch.zeros(len(y), dtype=torch.bool)
    best_loss = torch.full((len(y),), -float("inf"), dtype=x.dtype)
    for _ in range(restarts):
        delta = threat.random_init(x)
        for _ in range(steps):
            grad, logits = attacks.input_gradient(model, x, y, delta)
            correct = (logits.argmax(1) == y).reshape(-1, 1, 1, 1)
            delta = torch.where(correct, threat.project(threat.step(delta, grad, alpha), x), delta)
        with torch.no_grad():
            logits = model(x + delta)
        wrong = logits.argmax(1) != y
        loss = F.cross_entropy(logits, y, reduction="none")
        better = ~broken & (wrong | (loss > best_loss))
        best[better], best_loss[better], broken[better] = delta[better], loss[better], wrong[better]
    return best, broken


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.08), ThreatModel("l2", 1.2)],
                         ids=["linf", "l2"])
def test_fast_pgd_equals_the_full_computation(mnist_model, threat):
    model, x, y = mnist_model
    model64 = TinyConvNet().double()
    model64.load_state_dict(model.state_dict())
    model64.eval()
    x64 = x.double()
    kw = dict(alpha=threat.eps / 4, steps=8, restarts=3)
    torch.manual_seed(0)
    ref, ref_broken = reference_pgd(model64, x64, y, threat, **kw)
    torch.manual_seed(0)
    fast, fast_broken = attacks.pgd_search(model64, x64, y, threat, **kw)
    assert 0 < int(fast_broken.sum()) < len(y), "want a mix of broken and robust examples"
    assert torch.equal(fast_broken, ref_broken)
    # Forwards on a subset of the rows round differently (~1e-16 in fp64); sign steps hide it.
    assert torch.allclose(fast, ref, rtol=0, atol=1e-12)
    if threat.norm == "linf":
        assert torch.equal(fast, ref)
    torch.manual_seed(0)
    assert torch.equal(attacks.pgd(model64, x64, y, threat, **kw), fast)


def test_fast_pgd_equals_the_full_computation_in_fp32_train_mode_without_batchnorm():
    torch.manual_seed(0)
    model = TinyMLP(hidden=64).train()
    x, y = random_images(48)
    threat = ThreatModel("linf", 0.1)
    torch.manual_seed(1)
    ref, ref_broken = reference_pgd(model, x, y, threat, alpha=0.02, steps=6, restarts=3)
    torch.manual_seed(1)
    fast, fast_broken = attacks.pgd_search(model, x, y, threat, alpha=0.02, steps=6, restarts=3)
    assert torch.equal(fast_broken, ref_broken)
    assert torch.allclose(fast, ref, atol=1e-6)


def test_fast_pgd_does_less_work_when_examples_are_already_broken(mnist_model):
    model, x, y = mnist_model
    counted = Counting(model)
    kw = dict(alpha=1e-4, steps=10, restarts=3)
    tiny = ThreatModel("linf", 4e-4)     # too small to break anything
    with torch.no_grad():
        y = model(x).argmax(1)           # every example correct ...
    y_half = y.clone()
    y_half[::2] = (y_half[::2] + 1) % 10  # ... or half of them misclassified from the start

    def rows(labels, early_stop):
        counted.rows = 0
        torch.manual_seed(0)
        attacks.pgd(counted, x, labels, tiny, early_stop=early_stop, **kw)
        return counted.rows

    plain = rows(y, early_stop=False)
    assert plain == 3 * 11 * len(y)       # 10 steps + 1 scoring forward, per restart
    assert rows(y, early_stop=True) == plain
    assert rows(y_half, early_stop=False) == plain
    half = rows(y_half, early_stop=True)
    assert half <= 0.5 * plain + len(y)   # the broken half is seen once, then never again


def test_pgd_with_one_restart_skips_the_scoring_forward():
    model = Counting(TinyMLP().eval())
    x, y = random_images(8)
    attacks.pgd(model, x, y, LINF, alpha=0.02, steps=7, early_stop=False)
    assert model.calls == 7


def test_bf16_step_pgd_stays_valid_scores_in_fp32_and_is_about_as_strong(mnist_model):
    model, x, y = mnist_model
    model.eval()
    before = model_state(model)
    threat = ThreatModel("linf", 0.1)
    kw = dict(alpha=0.025, steps=10, restarts=3)
    torch.manual_seed(0)
    fp32, broken32 = attacks.pgd_search(model, x, y, threat, **kw)
    torch.manual_seed(0)
    bf16, broken16 = attacks.pgd_search(model, x, y, threat, precision="bf16", **kw)
    assert_valid(bf16, x, threat)
    assert bf16.dtype == torch.float32
    assert_same_state(before, model_state(model))
    with torch.no_grad():  # what the attack reports broken is what fp32 sees
        assert torch.equal(broken16, model(x + bf16).argmax(1) != y)
    assert not torch.equal(bf16, fp32)  # the steps did run in bf16
    assert abs(int(broken16.sum()) - int(broken32.sum())) <= 0.1 * len(y)
    with pytest.raises(ValueError, match="precision must be one of"):
        attacks.pgd(model, x, y, threat, precision="fp16", **kw)


# --- GradAlign and metrics --------------------------------------------------------------------

def test_grad_align_is_a_differentiable_penalty_that_leaves_the_model_unchanged(mnist_model):
    model, x, y = mnist_model
    model.train()
    try:
        before = model_state(model)
        torch.manual_seed(0)
        reg = regularizers.grad_align(model, x, y, 0.1)
        assert_same_state(before, model_state(model))
        assert 0 < float(reg.detach()) < 2
        reg.backward()
        assert all(p.grad is not None for p in model.parameters())
        model.zero_grad(set_to_none=True)
    finally:
        model.eval()
    inside = 0.2 + 0.6 * x  # x + eta stays in [0, 1]: the metric's clipping is inactive
    torch.manual_seed(0)
    value = float(regularizers.grad_align(model, inside, y, 0.1, create_graph=False))
    torch.manual_seed(0)
    assert metrics.gradient_alignment(model, inside, y, 0.1) == pytest.approx(1 - value, abs=1e-6)


def test_gradient_alignment_clips_the_noisy_point_to_the_image_box(mnist_model):
    model, x, y = mnist_model
    torch.manual_seed(0)
    eta = (2 * torch.rand_like(x) - 1) * 0.3
    g1, _ = attacks.input_gradient(model, x, y, torch.zeros_like(x))
    g2, _ = attacks.input_gradient(model, x, y, (x + eta).clamp(0, 1) - x)
    expected = metrics.cosine(g1.double(), g2.double()).mean().item()
    torch.manual_seed(0)
    assert metrics.gradient_alignment(model, x, y, 0.3) == pytest.approx(expected, abs=1e-6)


def test_grad_align_can_reuse_the_fgsm_gradient_at_x(mnist_model):
    model, x, y = mnist_model
    delta, grad_x = attacks.fgsm_and_gradient(model, x, y, LINF)
    assert torch.equal(delta, attacks.fgsm(model, x, y, LINF))
    torch.manual_seed(0)
    shared = regularizers.grad_align(model, x, y, 0.1, grad_at_x=grad_x, create_graph=False)
    torch.manual_seed(0)
    assert torch.equal(shared, regularizers.grad_align(model, x, y, 0.1, create_graph=False))


def test_gradient_alignment_is_one_for_a_linear_model_and_for_zero_gradients():
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(144, 2)).eval()
    x, y = random_images(16, num_classes=2)
    assert metrics.gradient_alignment(linear, x, y, 0.1) == pytest.approx(1.0, abs=1e-5)
    assert float(regularizers.grad_align(linear, x, y, 0.1, create_graph=False)) == pytest.approx(
        0.0, abs=1e-5)
    constant = nn.Sequential(nn.Flatten(), nn.Linear(144, 3))
    nn.init.zeros_(constant[1].weight)
    assert float(regularizers.grad_align(constant, x, y, 0.1)) == 0.0
    # the authors' metric: a zero gradient (a dead network) counts as cosine 1, not nan
    assert metrics.gradient_alignment(constant, x, y, 0.1) == 1.0


def test_cosine_norms_and_sign_disagreement():
    a = torch.tensor([[1.0, 2.0, 0.0, -1.0], [1.0, 0.0, 0.0, 0.0]]).reshape(2, 1, 2, 2)
    assert torch.allclose(metrics.cosine(a, a), torch.ones(2))
    assert torch.allclose(metrics.cosine(a, -a), -torch.ones(2))
    assert torch.equal(metrics.cosine(a, torch.zeros_like(a)), torch.zeros(2))
    norms = metrics.perturbation_norms(a)
    assert norms["l1"] == pytest.approx(2.5) and norms["linf"] == pytest.approx(1.5)
    assert norms["l2"] == pytest.approx((6 ** 0.5 + 1) / 2)
    assert norms["mean_abs"] == pytest.approx(2.5 / 4)
    b = torch.tensor([[1.0, -2.0, 3.0, 0.0], [-1.0, 0.0, 1.0, 0.0]]).reshape(2, 1, 2, 2)
    assert metrics.sign_disagreement(a, b) == pytest.approx(2 / 8)
    with pytest.raises(ValueError):
        metrics.cosine(a, a[:1])
