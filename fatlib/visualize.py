"""What a robust model's features look like: l2fast Figures 3-5 as pure functions.

Three visualisations of l2fast §IV-C, each an l2 PGD in pixel space on a different objective,
written once (``_pgd``) with ``fatlib.threat.ThreatModel('l2', eps)`` for the step
(normalised gradient), the projection to the l2 ball around the start and the [0, 1] box:

* ``feature_visualization``: maximise one unit of the representation (Figure 3);
* ``interpolation``: match an interpolated representation (eq. 14, Figure 4);
* ``targeted_perturbation``: a large targeted l2 perturbation (Figure 5).

The representation R(x) is the input of the model's last ``nn.Linear`` (the penultimate layer),
found with a forward hook (``representation``). Every function runs the model in eval mode and
restores its modes and buffers afterwards (``attacks.preserved_state``); gradients are taken
with respect to the input only, so the parameters, their ``.grad`` and ``requires_grad`` are
never touched. Nothing is random: the same inputs give the same images (``noise_like`` makes a
seeded noise image for a seed-from-noise visualisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fatlib.attacks import preserved_state
from fatlib.threat import ThreatModel


@dataclass(frozen=True)
class Visualization:
    """Images found by one visualisation and the objective at every iterate.

    Implements: the data behind l2fast Figures 3-5 (the images) and a check that each PGD
    converged (the trace).
    Args:
        images: the result, detached, in [0, 1]; [B, C, H, W] (interpolation: [L, B, C, H, W],
            one batch per lambda).
        objective: per-example objective at the start and after each step, float,
            [steps + 1, B] (interpolation: [steps + 1, L, B]); objective[-1] is its value at
            ``images``.
        maximize: True if higher objective is better (feature visualisation), False otherwise
            (interpolation: representation distance; targeted: cross-entropy to the target).
    """

    images: torch.Tensor
    objective: torch.Tensor
    maximize: bool

    def improved(self) -> torch.Tensor:
        """Per example, whether the final objective is strictly better than the initial one.

        Returns:
            bool tensor, the shape of ``objective[0]``.
        """
        first, last = self.objective[0], self.objective[-1]
        return last > first if self.maximize else last < first


# --- validation -------------------------------------------------------------------------------

def _check_images(x, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        got = f"a {x.dtype} tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor) \
            else type(x).__name__
        raise ValueError(f"{what} must be a float tensor of images [B, C, H, W] in [0, 1], got "
                         f"{got}; convert uint8 images with fatlib.data.to_float")
    if x.numel() == 0:
        raise ValueError(f"{what} is empty (shape {list(x.shape)}); pass at least one image")
    lo, hi = float(x.min()), float(x.max())
    if not (0 <= lo and hi <= 1):   # also catches NaN
        raise ValueError(f"{what} must be images in [0, 1] (pixel units), got values in "
                         f"[{lo:.4g}, {hi:.4g}]; convert uint8 images with fatlib.data.to_float "
                         f"and pass un-normalised images (the model normalises them itself)")


def _positive(value, name: str, hint: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number > 0 ({hint}), got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be > 0 and finite ({hint}), got {value!r}")
    return v


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (the number of PGD steps), "
                         f"got {steps!r}")
    return steps


def _indices(value, n: int, size: int, name: str, what: str, device) -> torch.Tensor:
    """An int or one int per example as an int64 tensor [n], each in [0, size)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer index of a {what} or one per example, "
                         f"got {value!r}")
    if isinstance(value, int):
        idx = torch.full((n,), value, dtype=torch.int64)
    else:
        idx = torch.as_tensor(value)
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool \
                or idx.dim() != 1 or idx.numel() != n:
            raise ValueError(f"{name} must be an integer or {n} integers (one per example), "
                             f"got {value!r}")
        idx = idx.to(torch.int64)
    if bool(((idx < 0) | (idx >= size)).any()):
        raise ValueError(f"{name} must be in [0, {size - 1}] (the model has {size} {what}s), "
                         f"got {value!r}")
    return idx.to(device)


# --- representation ---------------------------------------------------------------------------

def _forward(model: nn.Module, x: torch.Tensor):
    """(representation [B, D], logits) of one forward; R is the input of the last nn.Linear run."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer, so it has no "
                         f"penultimate-layer representation (the input of its last nn.Linear); "
                         f"use a classifier whose last layer is an nn.Linear")
    seen = []
    hooks = [m.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
             for m in linears]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise ValueError(f"{type(model).__name__} has nn.Linear layers but none ran in its "
                         f"forward, so there is no penultimate-layer representation")
    return seen[-1].flatten(1).float(), logits


def representation(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The penultimate-layer representation R(x): the input of the model's last nn.Linear.

    Implements: l2fast §II-C, eq. 7 ("the penultimate layer of a neural network"), found with a
    forward hook on every nn.Linear (the last one to run), so it works for any fatlib.models
    classifier (PreActResNet18: the pooled features; mnist_net: the fc-100 activations;
    SingleLayerCNN: the flattened ReLU(conv) maps). The model runs in eval mode; its modes and
    buffers are restored.
    Args:
        model: classifier whose last layer is an nn.Linear, on images in [0, 1].
        x: images in [0, 1], [B, C, H, W].
    Returns:
        R(x), detached fp32, [B, D] (D = in_features of the last nn.Linear).
    Raises:
        ValueError: x not images in [0, 1], or the model has no nn.Linear.
    """
    _check_images(x)
    with preserved_state(model), torch.no_grad():
        model.eval()
        rep, _ = _forward(model, x)
    return rep.detach()


def noise_like(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A seed image of uniform noise U([0, 1]) with the shape, dtype and device of x.

    Implements: l2fast §IV-C1 ("start from a seed image, x0 (either random noise or a real
    image from the test set)").
    Args:
        x: a tensor whose shape, dtype and device the noise takes, e.g. a batch of test images.
        seed: seed of the torch.Generator (CPU), so the same seed gives the same noise.
    Returns:
        noise in [0, 1], same shape as x.
    """
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device)


# --- the shared PGD ---------------------------------------------------------------------------

def _pgd(model: nn.Module, x0: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor],
         *, eps: float, steps: int, step_size: float, maximize: bool,
         reached: torch.Tensor | None = None) -> Visualization:
    """l2 PGD from x0 (delta = 0) on a per-example objective; the last iterate is returned.

    Each step: delta <- project(delta +- step_size * g / ||g||_2), g the input gradient of the
    summed objective (ThreatModel('l2', eps).step and .project: the l2 ball, then [0, 1]).
    reached: per-example values at or below which a minimised objective is at its optimum;
    those examples do not move (a normalised step would turn the rounding noise of a zero
    objective into a random walk of step_size per step).
    """
    threat = ThreatModel("l2", eps)
    delta = torch.zeros_like(x0)
    trace = []
    with preserved_state(model):
        model.eval()
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            value = objective(x0 + delta)
            trace.append(value.detach())
            if value.requires_grad:
                (grad,) = torch.autograd.grad(value.sum(), delta, allow_unused=True)
            else:
                grad = None
            grad = torch.zeros_like(x0) if grad is None else grad
            if reached is not None:
                grad = grad * (value.detach() > reached).to(grad.dtype).view(-1, *[1] * (grad.dim() - 1))
            delta = threat.project(threat.step(delta.detach(), grad if maximize else -grad,
                                               step_size), x0)
        images = (x0 + delta).clamp(0, 1).detach()
        with torch.no_grad():
            trace.append(objective(images))
    return Visualization(images, torch.stack(trace), maximize)


def _start(x: torch.Tensor, name: str, eps, steps, step_size):
    """Check the images and the PGD settings shared by the three visualisations."""
    _check_images(x, name)
    return (_positive(eps, "eps", "the l2 radius in pixel units; the paper's visualisations use "
                      "a large one, e.g. 40 on CIFAR-10"),
            _check_steps(steps),
            _positive(step_size, "step_size", "the l2 length of one step in pixel units"))


# --- the three visualisations -----------------------------------------------------------------

def feature_visualization(model: nn.Module, x0: torch.Tensor, unit, *, eps: float, steps: int,
                          step_size: float) -> Visualization:
    """The image near a seed x0 that maximises one unit of the representation.

    Implements: l2fast §IV-C1, Figure 3: max_x R_i(x) by PGD (the loss is the activation of
    node i of the penultimate layer), here l2 PGD within ||x - x0||_2 <= eps and [0, 1].
    Args:
        model: classifier whose last layer is an nn.Linear, on images in [0, 1].
        x0: seed images in [0, 1], [B, C, H, W]: test images or ``noise_like(x, seed)``.
        unit: index i of the representation unit, in [0, D); an int, or B ints (one per
            example, e.g. one seed repeated B times for B units, as in Figure 3).
        eps: l2 radius around x0 in pixel units (> 0; large, e.g. 40, is nearly unconstrained).
        steps: number of PGD steps (>= 1).
        step_size: l2 length of each step in pixel units (> 0).
    Returns:
        Visualization(images [B, C, H, W], objective [steps + 1, B] = R_i at each iterate,
        maximize=True).
    Raises:
        ValueError: x0 not images in [0, 1]; eps or step_size not > 0; steps < 1; unit not an
            index in [0, D) (or not B of them); the model has no nn.Linear.
    """
    eps, steps, step_size = _start(x0, "x0", eps, steps, step_size)
    dim = representation(model, x0[:1]).shape[1]
    units = _indices(unit, x0.shape[0], dim, "unit", "representation unit", x0.device)

    def activation(x):
        return _forward(model, x)[0].gather(1, units[:, None]).squeeze(1)

    return _pgd(model, x0, activation, eps=eps, steps=steps, step_size=step_size, maximize=True)


def interpolation(model: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor,
                  lambdas: Sequence[float], *, eps: float, steps: int,
                  step_size: float) -> Visualization:
    """For each lambda, the image near x_a whose representation is closest to an interpolation.

    Implements: l2fast eq. 14, Figure 4: min_x ||((1 - lambda) R(x_a) + lambda R(x_b)) - R(x)||_2
    by l2 PGD from x_a within ||x - x_a||_2 <= eps and [0, 1]. The paper prints
    "lambda f(x1) - (1 - lambda) f(x2)"; the minus sign is read as a misprint for "+" (the text
    says "the linearly interpolated points in representation space"), and (x1, x2) = (x_b, x_a)
    here, so lambda = 0 is x_a's representation and lambda = 1 is x_b's. An image whose
    representation is within 1e-4 (relative) of its goal stops moving, so at lambda = 0 the
    image stays x_a (its distance is rounding noise).
    Args:
        model: classifier whose last layer is an nn.Linear, on images in [0, 1].
        x_a: anchor (and start) images in [0, 1], [B, C, H, W].
        x_b: the other anchor images in [0, 1], same shape as x_a.
        lambdas: L interpolation weights, each in [0, 1].
        eps: l2 radius around x_a in pixel units (> 0).
        steps: number of PGD steps (>= 1).
        step_size: l2 length of each step in pixel units (> 0).
    Returns:
        Visualization(images [L, B, C, H, W] (images[j] for lambdas[j]), objective
        [steps + 1, L, B] = the l2 distance in representation space, maximize=False).
    Raises:
        ValueError: x_a or x_b not images in [0, 1] or of different shapes; lambdas empty or
            outside [0, 1]; eps or step_size not > 0; steps < 1; the model has no nn.Linear.
    """
    eps, steps, step_size = _start(x_a, "x_a", eps, steps, step_size)
    _check_images(x_b, "x_b")
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have the same shape (pairs of anchor images), got "
                         f"{list(x_a.shape)} and {list(x_b.shape)}")
    try:
        lam = torch.as_tensor([float(v) for v in lambdas], dtype=torch.float32)
    except (TypeError, ValueError):
        raise ValueError(f"lambdas must be a sequence of numbers in [0, 1], got {lambdas!r}") \
            from None
    if lam.numel() == 0 or not bool(((lam >= 0) & (lam <= 1)).all()):
        raise ValueError(f"lambdas must be a non-empty sequence of numbers in [0, 1] "
                         f"(0 = x_a, 1 = x_b), got {list(lambdas)!r}")
    n, count = x_a.shape[0], lam.numel()
    r_a, r_b = representation(model, x_a), representation(model, x_b)
    lam = lam.to(r_a.device)[:, None, None]
    goal = ((1 - lam) * r_a + lam * r_b).reshape(count * n, -1)   # [L * B, D]
    start = x_a.unsqueeze(0).expand(count, *x_a.shape).reshape(count * n, *x_a.shape[1:])

    def distance(x):
        return torch.linalg.vector_norm(_forward(model, x)[0] - goal, dim=1)

    out = _pgd(model, start.contiguous(), distance, eps=eps, steps=steps, step_size=step_size,
               maximize=False, reached=1e-4 * goal.norm(dim=1))
    return Visualization(out.images.reshape(count, *x_a.shape),
                         out.objective.reshape(steps + 1, count, n), maximize=False)


def targeted_perturbation(model: nn.Module, x: torch.Tensor, target, *, eps: float, steps: int,
                          step_size: float) -> Visualization:
    """A large l2 perturbation of x towards class ``target``: minimise its cross-entropy.

    Implements: l2fast §IV-C3, Figure 5: min_delta L(f(x + delta), c) by l2 PGD within
    ||delta||_2 <= eps and x + delta in [0, 1] (the paper: large K and eps, e.g. K = 1000).
    Args:
        model: classifier returning logits [B, K], on images in [0, 1].
        x: images in [0, 1], [B, C, H, W].
        target: target class c in [0, K); an int or B ints (one per example).
        eps: l2 radius in pixel units (> 0; large, e.g. 40 on CIFAR-10).
        steps: number of PGD steps (>= 1).
        step_size: l2 length of each step in pixel units (> 0).
    Returns:
        Visualization(images [B, C, H, W], objective [steps + 1, B] = cross-entropy to the
        target at each iterate, maximize=False).
    Raises:
        ValueError: x not images in [0, 1]; eps or step_size not > 0; steps < 1; target not a
            class index in [0, K) (or not B of them).
    """
    eps, steps, step_size = _start(x, "x", eps, steps, step_size)
    with preserved_state(model), torch.no_grad():
        model.eval()
        classes = model(x[:1]).shape[1]
    y = _indices(target, x.shape[0], classes, "target", "class", x.device)

    def cross_entropy(z):
        logits = model(z)
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        return F.cross_entropy(logits, y, reduction="none")

    return _pgd(model, x, cross_entropy, eps=eps, steps=steps, step_size=step_size,
                maximize=False)
