"""The theory of andriushchenko2020, computed: Lemma 1, Lemma 2, eq. 6, single-layer-CNN analyses.

Lemma 1 bounds the expected l2 norm of the FGSM-RS perturbation (closed form next to a
Monte-Carlo estimate); Lemma 2 lower-bounds gradient alignment of a single-layer CNN at
initialisation; eq. 6 is the gradient alignment of a single-filter CNN on non-overlapping
patches. The remaining functions inspect a trained ``cnn1`` model (``fatlib.models``):
its filters in pixel space, feature maps, filter and outgoing-weight norms, ReLU sign flips
and the noise gain under uniform noise, and copies with some filters zeroed (§4, Figs 5-7);
(catastrophic overfitting in a run's history is ``fatlib.overfitting``; its
``collapse_point`` is importable from here too). The last section builds what the
andriushchenko2020 pages show of these: Fig. 2, the image-box check, the alignment of fresh
models, the eq. 6 check, a trained cnn1's analysis (:func:`analyse_cnn1`) and Figs 5-7.
Everything is in pixel units: images in [0, 1], eps and alpha as 8/255.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fatlib.models import SingleLayerCNN, build
from fatlib.overfitting import collapse_point  # noqa: F401  (the one definition)
from fatlib.threat import ThreatModel

# Discrete Laplace kernels (4- and 8-neighbour), the "edge detector" of andriushchenko2020 Fig. 5.
LAPLACE_KERNELS = {
    "4": ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0)),
    "8": ((1.0, 1.0, 1.0), (1.0, -8.0, 1.0), (1.0, 1.0, 1.0)),
}


# --- Lemma 1: the expected l2 norm of FGSM-RS ---

def _check_alpha_eps(alpha: np.ndarray, eps: float) -> None:
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (pixel units, e.g. 8/255); got {eps}")
    if np.any(alpha < 0) or np.any(alpha > 2 * eps * (1 + 1e-12)):
        raise ValueError(f"Lemma 1 holds for 0 <= alpha <= 2 eps; got alpha/eps in "
                         f"[{alpha.min() / eps:.3g}, {alpha.max() / eps:.3g}]")


def lemma1_bound(alpha, eps: float, d: int):
    """Closed-form upper bound sqrt(E||delta_FGSM-RS||_2^2) on E||delta_FGSM-RS||_2.

    Implements: andriushchenko2020 Lemma 1, eq. 4 (projection onto [0, 1]^d ignored):
    sqrt(d) * sqrt(-alpha^3 / (6 eps) + alpha^2 / 2 + eps^2 / 3).
    With d = 1 this is the FGSM step size with the same expected l2 norm (1.25 eps -> 0.89 eps).
    Args:
        alpha: FGSM-RS step size(s) in pixel units, 0 <= alpha <= 2 eps (float or array).
        eps: l-inf radius in pixel units.
        d: input dimension (3072 for CIFAR-10).
    Returns:
        the bound, a float (or an array shaped like alpha), in pixel units.
    """
    a = np.asarray(alpha, dtype=np.float64)
    eps = float(eps)
    _check_alpha_eps(a, eps)
    if int(d) < 1:
        raise ValueError(f"d must be a positive integer (input dimension); got {d}")
    second_moment = -a ** 3 / (6 * eps) + a ** 2 / 2 + eps ** 2 / 3
    out = np.sqrt(int(d) * second_moment)
    return float(out) if out.ndim == 0 else out


def lemma1_monte_carlo(alpha, eps: float, d: int, *, n_samples: int = 1000,
                       generator: torch.Generator | None = None, max_elements: int = 2 ** 22):
    """Monte-Carlo estimate of E_eta ||delta_FGSM-RS(eta)||_2 with a fixed gradient sign.

    Implements: andriushchenko2020 Fig. 2 (1,000 samples of eta ~ U([-eps, eps]^d));
    delta = clip(eta + alpha * sign(g), -eps, eps) per coordinate, where by symmetry of eta
    the fixed sign(g) can be taken as +1.
    Args:
        alpha: step size(s) in pixel units, 0 <= alpha <= 2 eps (float or array).
        eps: l-inf radius in pixel units.
        d: input dimension.
        n_samples: number of samples of eta per alpha.
        generator: optional torch.Generator (torch's global RNG otherwise).
        max_elements: samples are drawn in chunks of at most this many numbers.
    Returns:
        the mean l2 norm, a float (or an array shaped like alpha).
    """
    a = np.asarray(alpha, dtype=np.float64)
    eps, d = float(eps), int(d)
    _check_alpha_eps(a, eps)
    if d < 1 or int(n_samples) < 1:
        raise ValueError(f"d and n_samples must be positive integers; got d={d}, "
                         f"n_samples={n_samples}")
    chunk = max(1, min(int(n_samples), int(max_elements) // d))
    out = np.empty(a.shape, dtype=np.float64)
    for idx, a_i in np.ndenumerate(a):
        total, left = 0.0, int(n_samples)
        while left:
            n = min(chunk, left)
            eta = (2 * torch.rand(n, d, generator=generator, dtype=torch.float64) - 1) * eps
            delta = (eta + float(a_i)).clamp(max=eps)
            total += float(delta.norm(dim=1).sum())
            left -= n
        out[idx] = total / n_samples
    return float(out) if out.ndim == 0 else out


# --- Appendix C.1: the linear approximation error against the l2 norm ---

def linearization_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        deltas) -> list[torch.Tensor]:
    """Per image, how far the loss at x + delta is from its first-order Taylor expansion at x.

    Implements: andriushchenko2020 §3 and Appendix C.1, |f(x + delta) - f(x) -
    <grad_x f(x), delta>| with f the cross-entropy loss of one image, in eval mode and fp32
    (the model's mode and buffers are restored).
    Args:
        model: classifier returning logits.
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        deltas: perturbations, each [B, C, H, W].
    Returns:
        one [B] tensor of errors per delta.
    """
    from fatlib.evaluate import evaluation_mode

    with evaluation_mode(model):
        loss, grad = _loss_and_gradient(model, x, y)
        return _taylor_errors(model, x, y, loss, grad, deltas)


def _loss_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple:
    """(per-image cross-entropy loss [B] in fp32, its input gradient) at x."""
    from fatlib.attacks import input_gradient

    grad, logits = input_gradient(model, x, y, torch.zeros_like(x))
    return F.cross_entropy(logits.float(), y, reduction="none").detach(), grad


def _taylor_errors(model, x, y, loss, grad, deltas) -> list[torch.Tensor]:
    """|f(x + delta) - loss - <grad, delta>| per image, for each delta (no gradients)."""
    with torch.no_grad():
        return [(F.cross_entropy(model(x + d).float(), y, reduction="none") - loss
                 - (grad * d).flatten(1).sum(1)).abs() for d in deltas]


def shortened_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, shares, *,
                   seed: int = 0) -> list[torch.Tensor]:
    """FGSM perturbations of l-inf norm eps that move only a share of the coordinates.

    Implements: the family of andriushchenko2020 §3's statement, perturbations of the same
    l-inf norm eps and a smaller l2 norm: delta_p = eps sign(grad_x f(x)) on a random share p
    of each image's coordinates (the same random order for every p, so the sets are nested)
    and 0 elsewhere, clipped to the image box; its l2 norm is at most eps sqrt(p d).
    Args:
        model: classifier returning logits.
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        eps: l-inf radius in pixel units.
        shares: fractions in (0, 1] of the coordinates that move.
        seed: seed of the random order of the coordinates.
    Returns:
        one perturbation [B, C, H, W] per share.
    Raises:
        ValueError: a share outside (0, 1].
    """
    from fatlib.evaluate import evaluation_mode

    _check_shares(shares)
    with evaluation_mode(model):
        _, grad = _loss_and_gradient(model, x, y)
    return _sign_on_shares(grad, x, eps, shares, seed)


def _check_shares(shares) -> None:
    """ValueError unless every share of moved coordinates lies in (0, 1]."""
    if any(not 0 < p <= 1 for p in shares):
        raise ValueError(f"shares must lie in (0, 1] (a fraction of the coordinates), got {shares}")


def _sign_on_shares(grad, x, eps, shares, seed) -> list[torch.Tensor]:
    """eps sign(grad) on nested random shares of each image's coordinates, clipped to the box."""
    from fatlib.threat import clip_to_box

    generator = torch.Generator().manual_seed(seed)
    rank = torch.rand(grad.flatten(1).shape, generator=generator).argsort(1).argsort(1)
    rank = rank.to(grad.device)
    step = eps * grad.sign().flatten(1)
    d = step.shape[1]
    return [clip_to_box((step * (rank < round(p * d))).reshape(x.shape), x) for p in shares]


# --- Lemma 2: gradient alignment at initialisation ---

def lemma2_bound(eps, *, p: int = 27, n_samples: int = 200_000,
                 generator: torch.Generator | None = None):
    """Lower bound on gradient alignment of a single-layer CNN at initialisation.

    Implements: andriushchenko2020 Lemma 2:
    max{1 - sqrt(2) * E_{w,z}[exp(-<w / ||w||_2, z>^2 / eps^2)]^(1/2), 0.5}, with
    w ~ N(0, I_p) and z ~ U([0, 1]^p), the expectation estimated by Monte Carlo.
    Args:
        eps: l-inf radius(es) in pixel units, > 0 (float or array).
        p: patch size (3 x 3 x 3 = 27 for CIFAR-10 3x3 filters), >= 2.
        n_samples: samples of (w, z); the same samples serve every eps.
        generator: optional torch.Generator (torch's global RNG otherwise).
    Returns:
        the bound in [0.5, 1], a float (or an array shaped like eps).
    """
    e = np.asarray(eps, dtype=np.float64)
    if np.any(~(e > 0)):
        raise ValueError(f"eps must be > 0 (pixel units); got {eps}")
    if int(p) < 2:
        raise ValueError(f"Lemma 2 needs patches of size p >= 2; got p={p}")
    w = torch.randn(int(n_samples), int(p), generator=generator, dtype=torch.float64)
    z = torch.rand(int(n_samples), int(p), generator=generator, dtype=torch.float64)
    t2 = ((w / w.norm(dim=1, keepdim=True)) * z).sum(dim=1).square().numpy()
    out = np.empty(e.shape, dtype=np.float64)
    for idx, e_i in np.ndenumerate(e):
        expectation = np.exp(-t2 / e_i ** 2).mean()
        out[idx] = max(1 - math.sqrt(2) * math.sqrt(expectation), 0.5)
    return float(out) if out.ndim == 0 else out


def lemma2_model(n_filters: int, dataset: str = "cifar10", *, sigma_w: float | None = None,
                 sigma_u: float | None = None,
                 generator: torch.Generator | None = None) -> nn.Module:
    """A ``cnn1`` model initialised as Lemma 2 assumes: Gaussian weights, zero biases, no
    normalisation.

    Implements: andriushchenko2020 Lemma 2 set-up (w ~ N(0, s_w^2 I), u ~ N(0, s_u^2 I), b = 0)
    on fatlib's single-layer CNN (3x3 filters, stride 1, so its patches overlap, unlike the
    lemma's), which has no normalisation layer: patches are pixel values in [0, 1] as in the
    lemma.
    Args:
        n_filters: number of filters m.
        dataset: a fatlib.data dataset name (shapes only).
        sigma_w, sigma_u: standard deviations; default He (sqrt(2 / fan_in)).
        generator: optional torch.Generator.
    Returns:
        the SingleLayerCNN, in eval mode.
    """
    model = build("cnn1", dataset, n_filters=n_filters)
    conv, linear = model.conv, model.linear
    s_w = math.sqrt(2.0 / conv.weight[0].numel()) if sigma_w is None else float(sigma_w)
    s_u = math.sqrt(2.0 / linear.in_features) if sigma_u is None else float(sigma_u)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * s_w)
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * s_u)
        conv.bias.zero_()
        linear.bias.zero_()
    return model.eval()


# --- eq. 6: a single filter on non-overlapping patches ---

def image_patches(x: torch.Tensor, patch: int = 3) -> torch.Tensor:
    """Non-overlapping patches z_j(x) of an image batch.

    Implements: andriushchenko2020 §4 (Z in R^{p x k}, x = vec(Z)).
    Args:
        x: images, [B, C, H, W] with H and W divisible by patch.
        patch: patch side length.
    Returns:
        patches [B, k, p], k = (H / patch) * (W / patch), p = C * patch^2.
    """
    if x.dim() != 4 or x.shape[2] % patch or x.shape[3] % patch:
        raise ValueError(f"image_patches needs [B, C, H, W] with H and W divisible by "
                         f"patch={patch}; got shape {list(x.shape)}")
    return F.unfold(x, kernel_size=patch, stride=patch).transpose(1, 2)


def single_filter_cnn(x: torch.Tensor, w: torch.Tensor, b: float, u: torch.Tensor,
                      patch: int = 3) -> torch.Tensor:
    """Output f(x) = sum_j u_j max(<w, z_j(x)> + b, 0) of a single-filter CNN.

    Implements: andriushchenko2020 §4 model with m = 1 filter on non-overlapping patches.
    Args:
        x: images in [0, 1], [B, C, H, W].
        w: filter, [p] (or [C, patch, patch]).
        b: bias.
        u: output weights, [k].
        patch: patch side length.
    Returns:
        f(x), [B].
    """
    z = image_patches(x, patch)
    return (F.relu(z @ w.reshape(-1) + b) * u).sum(dim=1)


def single_filter_input_gradient(x: torch.Tensor, w: torch.Tensor, b: float, u: torch.Tensor,
                                 patch: int = 3) -> torch.Tensor:
    """Input gradient of the logistic loss softplus(-f(x)) of a single-filter CNN (autograd).

    Implements: the gradient whose cosine andriushchenko2020 eq. 6 gives in closed form.
    Args:
        x: images in [0, 1], [B, C, H, W].
        w, b, u, patch: the single-filter CNN of ``single_filter_cnn``.
    Returns:
        grad_x, flattened, [B, C*H*W].
    """
    x = x.detach().clone().requires_grad_(True)
    loss = F.softplus(-single_filter_cnn(x, w, b, u, patch)).sum()
    return torch.autograd.grad(loss, x)[0].flatten(1)


def eq6_cosine(w: torch.Tensor, b: float, u: torch.Tensor, z: torch.Tensor,
               eta: torch.Tensor) -> torch.Tensor:
    """cos(grad_x f(x), grad_x f(x + eta)) of a single-filter CNN from its activation patterns.

    Implements: andriushchenko2020 eq. 6:
    sum_i u_i^2 a_i a'_i / sqrt(sum_i u_i^2 a_i * sum_i u_i^2 a'_i), a_i = 1[<w, z_i> + b >= 0],
    a'_i = 1[<w, z_i + eta_i> + b >= 0]. Equals the cosine of loss gradients when the loss
    derivative has the same sign at both points (e.g. the logistic loss).
    Args:
        w: filter, [p].
        b: bias.
        u: output weights, [k].
        z: patches of x, [B, k, p] (``image_patches``).
        eta: patches of the perturbation, [B, k, p].
    Returns:
        [B] cosines; nan where a gradient is zero (no active unit).
    """
    w = w.reshape(-1)
    active = (z @ w + b >= 0).to(u.dtype)
    active_noisy = ((z + eta) @ w + b >= 0).to(u.dtype)
    u2 = u.square()
    num = (u2 * active * active_noisy).sum(dim=1)
    return num / ((u2 * active).sum(dim=1) * (u2 * active_noisy).sum(dim=1)).sqrt()


# --- analyses of a trained single-layer CNN (cnn1) ---

def _cnn1_parts(model: nn.Module):
    """(Normalize or None, conv, linear) of a cnn1 model, bare or inside
    nn.Sequential(normalize, net)."""
    if isinstance(model, SingleLayerCNN):
        return None, model.conv, model.linear
    net = getattr(model, "net", None)
    if isinstance(net, SingleLayerCNN):
        return getattr(model, "normalize", None), net.conv, net.linear
    raise ValueError(f"expected a cnn1 model (fatlib.models.build('cnn1', ...)); "
                     f"got {type(model).__name__}")


def pixel_filters(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The filters and biases of a cnn1 model acting on pixels in [0, 1].

    Implements: andriushchenko2020 Fig. 5 (the learned filters). fatlib's cnn1, like the
    authors', has no normalisation layer, so these are its own weights; a cnn1 wrapped as
    nn.Sequential(normalize=Normalize((x - m) / s), net=...) has the filter w / s and the
    bias b - <w / s, m> as seen by pixels (exact away from the zero-padded border).
    Args:
        model: a cnn1 model.
    Returns:
        (weights [m, C, 3, 3], biases [m]), detached fp32.
    """
    normalize, conv, _ = _cnn1_parts(model)
    w = conv.weight.detach().float()
    b = conv.bias.detach().float() if conv.bias is not None else torch.zeros(w.shape[0])
    if normalize is None:
        return w.clone(), b.clone()
    w = w / normalize.std.float()
    return w, b - (w * normalize.mean.float()).sum(dim=(1, 2, 3))


def preactivations(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Feature maps x * w_i + b_i of a cnn1 model before the ReLU.

    Implements: andriushchenko2020 Fig. 7.
    Args:
        model: a cnn1 model.
        x: images in [0, 1], [B, C, H, W].
    Returns:
        [B, m, H, W], detached.
    """
    normalize, conv, _ = _cnn1_parts(model)
    with torch.no_grad():
        return conv(normalize(x) if normalize is not None else x)


def filter_norms(model: nn.Module) -> dict:
    """l2 norms of each filter (in pixel space) and of its outgoing linear weights.

    Implements: andriushchenko2020 Fig. 6 (||w_i||_2 and ||u_i||_2 over training).
    Args:
        model: a cnn1 model.
    Returns:
        dict filter=[m], outgoing=[m] float tensors.
    """
    _, conv, linear = _cnn1_parts(model)
    w, _ = pixel_filters(model)
    m = conv.out_channels
    outgoing = linear.weight.detach().float().reshape(linear.out_features, m, -1)
    return {"filter": w.flatten(1).norm(dim=1), "outgoing": outgoing.norm(dim=(0, 2))}


def zero_filters(model: nn.Module, indices, *, bias: bool = False) -> nn.Module:
    """A copy of a cnn1 model with the given filters set to zero.

    Implements: andriushchenko2020 §4 ("if we set w4 to zero, ... gradient alignment
    increases from 0.08 to 0.71"). With bias=False the filter's output is the constant
    relu(b_i), which adds nothing to input gradients.
    Args:
        model: a cnn1 model (left unchanged).
        indices: filter indices to zero (int or iterable of ints).
        bias: also zero the biases of those filters.
    Returns:
        the modified deep copy.
    """
    idx = [int(indices)] if isinstance(indices, (int, np.integer)) else [int(i) for i in indices]
    out = copy.deepcopy(model)
    _, conv, _ = _cnn1_parts(out)
    if any(not 0 <= i < conv.out_channels for i in idx):
        raise ValueError(f"filter indices must be in [0, {conv.out_channels}); got {idx}")
    with torch.no_grad():
        conv.weight[idx] = 0
        if bias and conv.bias is not None:
            conv.bias[idx] = 0
    return out


def activation_flips(model: nn.Module, x: torch.Tensor, eps: float, *,
                     generator: torch.Generator | None = None) -> dict:
    """Per-filter ReLU activity at x and at x + eta, and the fraction that flips.

    Implements: andriushchenko2020 §4 discussion of eq. 6 (the Laplace filter's units are
    mostly off at x, but about half turn on at x + eta). eta ~ U([-eps, eps]^d), clipped so
    that x + eta is in [0, 1] (``ThreatModel.random_init``).
    Args:
        model: a cnn1 model.
        x: images in [0, 1], [B, C, H, W].
        eps: l-inf radius in pixel units.
        generator: optional torch.Generator for eta.
    Returns:
        dict active=[m], active_noisy=[m], flipped=[m] fractions of (image, position) pairs.
    """
    eta = ThreatModel("linf", eps).random_init(x, generator=generator)
    a = preactivations(model, x) >= 0
    a_noisy = preactivations(model, x + eta) >= 0
    dims = (0, 2, 3)
    return {"active": a.float().mean(dim=dims), "active_noisy": a_noisy.float().mean(dim=dims),
            "flipped": (a != a_noisy).float().mean(dim=dims)}


def noise_gain(model: nn.Module, x: torch.Tensor, eps: float, *,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Per filter, how strongly uniform noise moves the feature map compared with the images.

    Implements: the noise amplification of andriushchenko2020 Fig. 7 as a number:
    std((x + eta) * w_i - x * w_i) / std(x * w_i) over images and positions, with
    eta ~ U([-eps, eps]^d) clipped to the image box. A smooth filter has a small gain; a
    high-frequency (Laplace-like) filter a large one.
    Args:
        model: a cnn1 model.
        x: images in [0, 1], [B, C, H, W].
        eps: l-inf radius in pixel units.
        generator: optional torch.Generator for eta.
    Returns:
        [m] ratios.
    """
    eta = ThreatModel("linf", eps).random_init(x, generator=generator)
    clean = preactivations(model, x)
    change = preactivations(model, x + eta) - clean
    dims = (0, 2, 3)
    return change.std(dim=dims) / clean.std(dim=dims).clamp_min(1e-30)


def laplace_cosine(filters: torch.Tensor, kernel: str = "8") -> torch.Tensor:
    """Cosine between each filter and a discrete Laplace kernel repeated over channels.

    Implements: a measure of "a variant of the Laplace filter" (andriushchenko2020 Fig. 5);
    +1 or -1 for an exact (negated) Laplace filter, near 0 for a smooth filter.
    Args:
        filters: [m, C, k, k] with k = 3 (e.g. ``pixel_filters(model)[0]``).
        kernel: '4' or '8' (neighbourhood of the Laplacian).
    Returns:
        [m] signed cosines.
    """
    if kernel not in LAPLACE_KERNELS:
        raise ValueError(f"kernel must be one of {sorted(LAPLACE_KERNELS)}; got {kernel!r}")
    if filters.dim() != 4 or tuple(filters.shape[2:]) != (3, 3):
        raise ValueError(f"filters must be [m, C, 3, 3]; got {list(filters.shape)}")
    lap = torch.tensor(LAPLACE_KERNELS[kernel], dtype=filters.dtype).expand(filters.shape[1:])
    flat = filters.flatten(1)
    lap = lap.reshape(1, -1)
    return (flat * lap).sum(dim=1) / (flat.norm(dim=1) * lap.norm()).clamp_min(1e-30)


# --- what the andriushchenko2020 pages compute with these (tables and figures) ---

def lemma1_ratio(alpha: float, eps: float, d: int, *, n_samples: int = 1000,
                 generator: torch.Generator | None = None) -> float:
    """Monte-Carlo estimate of E||delta_FGSM-RS||_2 over the Lemma 1 bound (1 when tight).

    Implements: the tightness that andriushchenko2020 Fig. 2 shows for high-dimensional inputs.
    """
    return (lemma1_monte_carlo(alpha, eps, d, n_samples=n_samples, generator=generator)
            / lemma1_bound(alpha, eps, d))


def lemma1_figure(dims, eps: float, *, n_alpha: int = 41, n_samples: int = 1000,
                  generator: torch.Generator | None = None):
    """andriushchenko2020 Fig. 2: bound (line) and Monte Carlo (markers) of E||delta_FGSM-RS||_2
    over sqrt(d) eps against alpha / eps in [0, 2], one slider step per input dimension d.

    Args:
        dims: input dimensions d on the slider. eps: radius in pixel units.
        n_alpha: alpha values in [0, 2 eps]. n_samples: draws of eta per point.
        generator: torch.Generator of the Monte-Carlo draws.
    Returns:
        plotly Figure (fatlib.plots.eps_slider_figure), dashed line at alpha = 1.25 eps.
    """
    import plotly.graph_objects as go

    from fatlib import plots

    alphas = np.linspace(0, 2 * eps, n_alpha)
    ratio, panels = alphas / eps, []
    for d in dims:
        scale = math.sqrt(d) * eps
        mc = lemma1_monte_carlo(alphas, eps, d, n_samples=n_samples, generator=generator)
        panels.append([(go.Scatter(x=ratio, y=lemma1_bound(alphas, eps, d) / scale,
                                   name="Lemma 1 bound", mode="lines"), 1, 1),
                       (go.Scatter(x=ratio, y=mc / scale, name=f"Monte Carlo ({n_samples} draws)",
                                   mode="markers"), 1, 1)])
    static = [(go.Scatter(x=[0, 2], y=[1, 1], name="FGSM: sqrt(d) eps", mode="lines",
                          line=dict(color="grey", dash="dot")), 1, 1)]
    fig = plots.eps_slider_figure(dims, panels, static=static, label="d", height=460,
                                  value_labels=[f"{d:,}" for d in dims], active=len(dims) - 1,
                                  step_titles=[f"Expected l2 norm of FGSM-RS, d = {d:,}"
                                               for d in dims])
    fig.add_vline(x=1.25, line_dash="dash", annotation_text="alpha = 1.25 eps (wong2020)")
    fig.update_xaxes(title="alpha / eps")
    return fig.update_yaxes(title="E ||delta||_2 / (sqrt(d) eps)", range=[0.4, 1.05])


def lemma1_box_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> list:
    """Mean l2 norms of fatlib's FGSM and FGSM-RS perturbations of images (with the image box)
    next to the norms Lemma 1 gives without the box, as table rows.

    Implements: the projection onto [0, 1]^d that andriushchenko2020 §3 ignores, measured.
    """
    from fatlib import attacks, metrics

    threat, d, rows = ThreatModel("linf", eps), x[0].numel(), []
    for name, init, k in (("FGSM (alpha = eps)", "zero", 1.0),
                          ("FGSM-RS (alpha = 1.25 eps)", "random", 1.25),
                          ("FGSM-RS (alpha = 2 eps)", "random", 2.0)):
        delta = attacks.fgsm(model, x, y, threat, init=init, alpha=k * eps)
        measured = metrics.perturbation_norms(delta)["l2"]
        free = lemma1_bound(k * eps, eps, d) if init == "random" else math.sqrt(d) * eps
        rows.append({"attack": name, "mean ||delta||_2 (with the box)": f"{measured:.3f}",
                     "without the box (Lemma 1 / FGSM)": f"{free:.3f}",
                     "ratio": f"{measured / free:.3f}"})
    return rows


def linearity_by_length(models: dict, x: torch.Tensor, y: torch.Tensor, shares, *,
                        seed: int = 0) -> dict:
    """The linear approximation error of :func:`shortened_fgsm` perturbations, per model.

    Implements: andriushchenko2020 Appendix C.1 as a measurement: for each model and each
    share p of moved coordinates, the per-image :func:`linearization_error` of delta_p and the
    mean l2 norm of delta_p.
    Args:
        models: name -> (model, eps), eps the model's l-inf training radius.
        x, y: test images in [0, 1] and labels.
        shares: fractions of the coordinates that move (see :func:`shortened_fgsm`).
        seed: seed of the random order of the coordinates.
    Returns:
        name -> {"errors": [B] tensor per share, "l2": mean l2 norm per share}.
    """
    from fatlib.evaluate import evaluation_mode

    _check_shares(shares)
    out = {}
    for name, (model, eps) in models.items():
        with evaluation_mode(model):  # one input gradient serves the steps and the expansion
            loss, grad = _loss_and_gradient(model, x, y)
            deltas = _sign_on_shares(grad, x, eps, shares, seed)
            out[name] = {"errors": _taylor_errors(model, x, y, loss, grad, deltas),
                         "l2": [float(d.flatten(1).norm(dim=1).mean()) for d in deltas]}
    return out


def linearity_verdict(name: str, measured: dict, shares, *, scale: str):
    """The closing row of Appendix C.1 for one model of :func:`linearity_by_length`.

    Implements: the claim as an ordering, with the book's rule (``verdicts.greater`` on the
    per-image errors, images as the repeats): the mean error at each share is above the mean
    error at the next smaller share.
    Args:
        name: the model's name ('cnn1, FGSM-RS at 16/255'); its text up to ' (' names it.
        measured: the model's entry of :func:`linearity_by_length`.
        shares: the shares it was measured at, increasing.
        scale: the scale text of the measurement.
    Returns:
        fatlib.verdicts.Verdict.
    """
    from fatlib import verdicts

    errors = [e.tolist() for e in measured["errors"]]
    rule = verdicts.all_of(*(
        verdicts.greater(errors[j + 1], errors[j], None, accuracy=False, digits=4,
                         names=(f"p = {shares[j + 1]}", f"p = {shares[j]}"), repeats="image")
        for j in range(len(shares) - 1)))
    return verdicts.check("andriushchenko2020 Appendix C.1", "the linear approximation error "
                          f"grows with the l2 norm at a fixed l-inf norm ({name.split(' (')[0]})",
                          rule, paper="smaller for a smaller ||delta||_2, also in ReLU networks",
                          scale=scale, reason="the error of a ReLU network need not grow with "
                                              "the length of the perturbation")


def alignment_at_init(make, x: torch.Tensor, y: torch.Tensor, eps_values, *, n_inits: int = 1,
                      seed: int = 0) -> np.ndarray:
    """Mean gradient alignment (eq. 5) of freshly initialised models, for each eps.

    Args:
        make: generator -> model (e.g. ``lambda g: lemma2_model(4, generator=g)``).
        x, y: images in [0, 1] and labels. eps_values: radii in pixel units.
        n_inits: initialisations averaged (seeds seed, seed + 1, ...).
    Returns:
        [len(eps_values)] array.
    """
    from fatlib import metrics

    out = np.zeros(len(eps_values))
    for k in range(n_inits):
        torch.manual_seed(seed + k)
        model = make(torch.Generator().manual_seed(seed + k)).eval()
        out += [metrics.gradient_alignment(model, x, y, e) for e in eps_values]
    return out / n_inits


EQ6_FILTERS = {"smooth (box) filter": torch.ones(27, dtype=torch.float64) / 27,
               "Laplace filter": torch.tensor(LAPLACE_KERNELS["8"], dtype=torch.float64)
               .expand(3, 3, 3).reshape(-1) / 16}


def eq6_check(x: torch.Tensor, eps: float, *, actives=(0.5, 0.1, 0.02),
              generator: torch.Generator | None = None) -> tuple[list, float]:
    """Eq. 6 against autograd for single-filter CNNs on image patches, in float64.

    Implements: andriushchenko2020 eq. 6 on images cropped to a multiple of 3 pixels, for a
    smooth and a Laplace filter (EQ6_FILTERS) with the bias set so that a given fraction of
    the units is active at the clean images (between two pre-activations, nudged by 1e-9 so
    that no unit sits at the ReLU's kink, where autograd takes relu'(0) = 0).
    Args:
        x: images in [0, 1], [B, C, H, W]. eps: radius of the uniform noise eta.
        actives: fractions of active units. generator: for eta and the output weights u.
    Returns:
        (table rows, the largest |eq. 6 - autograd| over all cases).
    """
    h, w_ = x.shape[2] // 3 * 3, x.shape[3] // 3 * 3
    x = x[:, :, :h, :w_].double()
    eta = (2 * torch.rand(x.shape, generator=generator, dtype=torch.float64) - 1) * eps
    z, z_eta = image_patches(x), image_patches(eta)
    u = torch.randn(z.shape[1], generator=generator, dtype=torch.float64)
    rows, worst = [], 0.0
    for name, w in EQ6_FILTERS.items():
        ranked = (z @ w).flatten().sort(descending=True).values
        for active in actives:
            k = max(1, int(active * ranked.numel()))
            b = -float(ranked[k - 1] + ranked[k]) / 2 + 1e-9
            row, diff = _eq6_row(name, x, eta, z, z_eta, w, b, u)
            rows.append(row)
            worst = max(worst, diff)
    return rows, worst


def _eq6_row(name, x, eta, z, z_eta, w, b, u) -> tuple[dict, float]:
    from fatlib import metrics

    cos6 = eq6_cosine(w, b, u, z, z_eta)
    cos_ad = metrics.cosine(single_filter_input_gradient(x, w, b, u),
                            single_filter_input_gradient(x + eta, w, b, u))
    ok = ~torch.isnan(cos6)
    diff = float((cos6[ok] - cos_ad[ok]).abs().max())
    return ({"filter": name, "active at x": f"{float((z @ w + b >= 0).double().mean()):.3f}",
             "active at x + eta": f"{float(((z + z_eta) @ w + b >= 0).double().mean()):.3f}",
             "eq. 6 (mean)": f"{float(cos6[ok].mean()):.3f}",
             "autograd (mean)": f"{float(cos_ad[ok].mean()):.3f}",
             "max |difference|": f"{diff:.1e}"}, diff)


def initial_model(config) -> nn.Module:
    """The model of a TrainConfig at initialisation, as fatlib.train builds it (same seed).

    Implements: the start point of andriushchenko2020 Fig. 6 (filter norms and directions at
    initialisation) for a run or record whose final weights are all that is kept.
    """
    torch.manual_seed(config.seed)
    return build(config.model, config.dataset, **config.model_kw).eval()



@dataclass(frozen=True)
class Cnn1Analysis:
    """What andriushchenko2020 §4 inspects in a trained 4-filter CNN (:func:`analyse_cnn1`).

    Fields: ``alignment`` (eq. 5 of the model), ``zeroed`` (its alignment with each filter set
    to zero), ``offending`` (the filter whose removal raises the alignment most), ``regular``
    (the filter whose removal changes it least), ``gain`` (noise gain per filter),
    ``laplace`` (cosine to the 8-neighbour Laplace kernel), ``norms`` (filter and outgoing
    norms), ``flips`` (ReLU activity at x and x + eta), ``loud`` (filters with noise gain > 1)
    and ``zeroed_loud`` (alignment with all of those zeroed, or None).
    """

    alignment: float
    zeroed: list
    offending: int
    regular: int
    gain: torch.Tensor
    laplace: torch.Tensor
    norms: dict
    flips: dict
    loud: list
    zeroed_loud: float | None


def analyse_cnn1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                 seed: int = 0) -> Cnn1Analysis:
    """Gradient alignment with each filter zeroed, noise gains, Laplace cosines, norms, flips.

    Implements: andriushchenko2020 §4 (Figs 5-7, "setting w4 to zero"); the offending filter
    is found without looking at it, as the one whose removal raises the alignment most. Every
    alignment uses the same noise (torch seeded with `seed`).
    Args:
        model: a trained cnn1. x, y: test images in [0, 1] and labels. eps: radius (pixels).
    Returns:
        Cnn1Analysis.
    """
    from fatlib import metrics

    def alignment(m):
        torch.manual_seed(seed)
        return metrics.gradient_alignment(m, x, y, eps)

    m = _cnn1_parts(model)[1].out_channels
    base = alignment(model)
    zeroed = [alignment(zero_filters(model, i)) for i in range(m)]
    gain = noise_gain(model, x, eps, generator=torch.Generator().manual_seed(seed))
    loud = [i for i in range(m) if float(gain[i]) > 1]
    return Cnn1Analysis(
        alignment=base, zeroed=zeroed, offending=int(np.argmax(zeroed)),
        regular=int(np.argmin([abs(z - base) for z in zeroed])), gain=gain,
        laplace=laplace_cosine(pixel_filters(model)[0]), norms=filter_norms(model),
        flips=activation_flips(model, x, eps, generator=torch.Generator().manual_seed(seed)),
        loud=loud, zeroed_loud=alignment(zero_filters(model, loud)) if loud else None)


def filter_rows(a: Cnn1Analysis, initial: nn.Module | None = None) -> list:
    """Table rows of a Cnn1Analysis, one per filter (+ growth since `initial` if given)."""
    grown = filter_norms(initial) if initial is not None else None
    rows = []
    for i in range(len(a.zeroed)):
        row = {"filter": f"w{i + 1}" + (" (offending)" if i == a.offending else ""),
               "noise gain": f"{float(a.gain[i]):.2f}",
               "Laplace cos": f"{float(a.laplace[i]):+.2f}",
               "ReLU on at x / x + eta": f"{float(a.flips['active'][i]):.2f} / "
                                         f"{float(a.flips['active_noisy'][i]):.2f}",
               "switched by eta": f"{float(a.flips['flipped'][i]):.2f}",
               "alignment with it zeroed": f"{a.zeroed[i]:.3f}"}
        if grown is not None:
            row["||w|| / ||u||, growth since init"] = (
                f"{float(a.norms['filter'][i] / grown['filter'][i]):.1f}x / "
                f"{float(a.norms['outgoing'][i] / grown['outgoing'][i]):.1f}x")
        rows.append(row)
    return rows + [{"filter": "none zeroed", "alignment with it zeroed": f"{a.alignment:.3f}"}]


def filter_image(w: torch.Tensor, zoom: int = 20) -> np.ndarray:
    """A [C, 3, 3] filter as an RGB uint8 image, scaled to its own range (grey = 0)."""
    w = w.permute(1, 2, 0).numpy()
    top = max(float(np.abs(w).max()), 1e-12)
    return np.round(255 * (0.5 + 0.5 * w / top)).astype(np.uint8).repeat(zoom, 0).repeat(zoom, 1)


def filters_figure(models_: dict, offending: int):
    """andriushchenko2020 Fig. 5: the pixel-space filters of several models (one row each).

    Args:
        models_: row title (e.g. 'initialisation', 'end of training') -> cnn1 model.
        offending: the index marked with '*'.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    m = len(pixel_filters(next(iter(models_.values())))[0])
    fig = make_subplots(rows=len(models_), cols=m, vertical_spacing=0.12,
                        subplot_titles=[f"w{i + 1}{'*' if i == offending else ''}, {t}"
                                        for t in models_ for i in range(m)])
    for r, model in enumerate(models_.values(), 1):
        for i, w in enumerate(pixel_filters(model)[0]):
            fig.add_trace(go.Image(z=filter_image(w), hoverinfo="skip"), row=r, col=i + 1)
    fig.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    return fig.update_layout(height=240 * len(models_), margin=dict(t=90),
                             title="Pixel-space filters; * the offending filter")


def growth_figure(initial: nn.Module, final: nn.Module, offending: int):
    """andriushchenko2020 Fig. 6, start and end: each filter's pixel-space norm and outgoing
    norm at initialisation and at the end, and the cosine between its two directions."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from fatlib import metrics

    start, end = filter_norms(initial), filter_norms(final)
    w0, w1 = pixel_filters(initial)[0], pixel_filters(final)[0]
    names = [f"w{i + 1}" + ("*" if i == offending else "") for i in range(len(w0))]
    fig = make_subplots(rows=1, cols=3, subplot_titles=["||w_i||_2 (pixel space)",
                                                        "||u_i||_2 (outgoing)",
                                                        "cos(w_i at init, w_i at the end)"])
    for col, key in ((1, "filter"), (2, "outgoing")):
        for when, norms in (("initialisation", start), ("end", end)):
            fig.add_trace(go.Bar(x=names, y=norms[key].tolist(), name=when,
                                 showlegend=col == 1, legendgroup=when), row=1, col=col)
    fig.add_trace(go.Bar(x=names, y=metrics.cosine(w0, w1).tolist(), showlegend=False),
                  row=1, col=3)
    return fig.update_layout(height=360, template="plotly_white", barmode="group")


def feature_maps_figure(model: nn.Module, x0: torch.Tensor, eps: float, regular: int,
                        offending: int, *, seed: int = 0):
    """andriushchenko2020 Fig. 7: an image and its feature maps x * w_i + b_i (before the ReLU)
    for a regular and the offending filter, without and with uniform noise eta (blue < 0)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    eta = ThreatModel("linf", eps).random_init(x0, generator=torch.Generator().manual_seed(seed))
    inputs = {"x": x0, "x + eta": (x0 + eta).clamp(0, 1)}
    maps = {k: preactivations(model, v)[0] for k, v in inputs.items()}
    fig = make_subplots(rows=2, cols=3, horizontal_spacing=0.08, vertical_spacing=0.1,
                        subplot_titles=[f"{k}{t}" for k in inputs for t in
                                        ("", f" * w{regular + 1} (regular)",
                                         f" * w{offending + 1} (offending)")])
    for r, (name, inp) in enumerate(inputs.items(), 1):
        image = np.round(inp[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        fig.add_trace(go.Image(z=image), row=r, col=1)
        for c, i in ((2, regular), (3, offending)):
            lim = float(maps["x + eta"][i].abs().max())
            fig.add_trace(go.Heatmap(z=maps[name][i].numpy()[::-1], zmid=0, zmin=-lim, zmax=lim,
                                     colorscale="RdBu_r", showscale=False), row=r, col=c)
    fig.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    return fig.update_layout(height=560, template="plotly_white",
                             title=f"Feature maps of a test image, eps = {eps * 255:.3g}/255")
