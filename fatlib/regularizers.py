"""Regularizers added to the training loss: pure functions returning a scalar tensor.

The caller multiplies by its coefficient (``loss + lam * grad_align(...)``). Like the
attacks, regularizers leave the model's mode and BatchNorm running statistics unchanged.
``AdaptiveLambda`` is the one piece of state: ELLE-A's schedule of its coefficient.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fatlib.attacks import _fp32, input_gradient, preserved_state
from fatlib.threat import _memory_format

# ELLE-A (Abad Rocamora et al. 2024), the authors' code (LIONS-EPFL/ELLE, --lambda_schedule
# onoff): lambda decays by ELLE_A_DECAY each step (--decay_rate 0.99) unless the error exceeds
# its running mean by ELLE_A_SENSITIVITY standard deviations (--sensitivity 2), which needs at
# least ELLE_A_MIN_HISTORY earlier errors (their `len(values) > 2`); their CIFAR-10 scripts
# use lambda_max = ELLE_A_LAMBDA_MAX at every eps (ELLE with a constant lambda: 1000 up to
# eps = 8/255, 5000 up to 20/255, 10000 above).
ELLE_A_DECAY = 0.99
ELLE_A_SENSITIVITY = 2.0
ELLE_A_MIN_HISTORY = 3
ELLE_A_LAMBDA_MAX = 4000.0


def uniform_linf_noise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """eta ~ U([-eps, eps]^d), same shape as x, not clipped to the image box (as the authors).

    Args:
        x: images, [B, C, H, W] (only the shape, dtype and device are used).
        eps: l-inf radius in pixel units.
    Returns:
        eta, [B, C, H, W].
    """
    return (2 * torch.rand_like(x) - 1) * eps


def gradient_cosines(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                     create_graph: bool = False,
                     grad_at_x: torch.Tensor | None = None) -> torch.Tensor:
    """cos(grad_x l(x, y), grad_x l(x + eta, y)) for the examples whose two gradients are non-zero.

    Implements: andriushchenko2020 eq. 5 / eq. 7 inner term, as in the authors' code: the
    first gradient is a constant, the second (at x + eta, eta ~ U([-eps, eps]^d), not clipped
    to [0, 1]) keeps its graph if ``create_graph`` (double backprop).
    Args:
        model: classifier returning logits; its mode is used as is.
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        eps: l-inf radius in pixel units.
        create_graph: make the result differentiable w.r.t. the parameters.
        grad_at_x: grad_x l(x, y) if already computed (e.g. by ``attacks.fgsm_and_gradient``
            with zero init, in the same mode and autocast), else computed here.
    Returns:
        [B'] cosines, B' <= B (examples with a zero gradient at either point are skipped).
    """
    with preserved_state(model):
        if grad_at_x is None:
            grad1, _ = input_gradient(model, x, y, torch.zeros_like(x))
        else:
            grad1 = grad_at_x.detach()
        grad2, _ = input_gradient(model, x, y, uniform_linf_noise(x, eps),
                                  create_graph=create_graph)
    g1, g2 = grad1.float().flatten(1), grad2.float().flatten(1)
    n1, n2 = g1.norm(dim=1), g2.norm(dim=1)
    nonzero = (n1 != 0) & (n2 != 0)
    g1, g2, n1, n2 = g1[nonzero], g2[nonzero], n1[nonzero], n2[nonzero]
    return (g1 * g2).sum(dim=1) / (n1 * n2)


def grad_align(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
               create_graph: bool = True, grad_at_x: torch.Tensor | None = None) -> torch.Tensor:
    """The GradAlign penalty 1 - mean cos(grad_x l(x), grad_x l(x + eta)), eta ~ U(l-inf ball).

    Implements: andriushchenko2020 eq. 7 (the authors' code: double backprop through the
    second gradient only; examples with a zero gradient skipped; lambda applied by the caller).
    Args:
        model: classifier returning logits; train mode during training, as in the paper.
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        eps: l-inf radius in pixel units.
        create_graph: keep the graph for the parameter update (False: a detached value).
        grad_at_x: grad_x l(x, y) if already computed: FGSM + GradAlign training can take it
            from ``attacks.fgsm_and_gradient(..., init='zero')`` and save one pass.
    Returns:
        scalar tensor in [0, 2]; 0 (no graph) if every example has a zero gradient.
    """
    cos = gradient_cosines(model, x, y, eps, create_graph=create_graph, grad_at_x=grad_at_x)
    if cos.numel() == 0:
        return torch.zeros((), device=x.device)
    return 1.0 - cos.mean()


# --- ELLE / ELLE-A (Abad Rocamora et al., ICLR 2024) -----------------------------------------

def elle_points(x: torch.Tensor, eps: float, *,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ELLE's three points per example: x_a, x_b uniform in the l-inf ball, x_c between them.

    Implements: Abad Rocamora et al. 2024 §4 as in the authors' code: x_a, x_b = x + eta with
    eta ~ U([-eps, eps]^d) (not clipped to the image box, as theirs and GradAlign's noise),
    a ~ U[0, 1] per example, x_c = (1 - a) x_a + a x_b. The noise for x_a and x_b is drawn
    first (one [2B, ...] draw), then a.
    Args:
        x: images in [0, 1], [B, C, H, W].
        eps: l-inf radius in pixel units.
        generator: torch.Generator; torch's global RNG otherwise.
    Returns:
        (points [3B, C, H, W] = x_a, x_b, x_c stacked in that order, a [B]).
    """
    b = x.shape[0]
    u = torch.rand((2 * b, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
    ends = x.repeat(2, *([1] * (x.dim() - 1))) + (2 * u - 1) * eps
    a = torch.rand(b, generator=generator, device=x.device, dtype=x.dtype)
    a_ = a.reshape(-1, *([1] * (x.dim() - 1)))
    x_c = (1 - a_) * ends[:b] + a_ * ends[b:]
    return torch.cat([ends, x_c]).contiguous(memory_format=_memory_format(x)), a


def _per_example_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def elle(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
         create_graph: bool = True, generator: torch.Generator | None = None,
         loss_fn: Callable | None = None) -> torch.Tensor:
    """The ELLE penalty: mean over the batch of (L(x_c) - ((1 - a) L(x_a) + a L(x_b)))^2.

    Implements: Abad Rocamora et al. 2024 (ICLR), the local linear approximation error E_lin
    of the loss on the segment between two points of the eps ball (points: ``elle_points``),
    as in the authors' code: per-example cross-entropy losses from one forward pass of the
    3B points (BatchNorm in train mode sees the 3B batch), the mean squared error over the
    B examples, one triplet per example, lambda applied by the caller. No double backprop:
    its gradient costs one backward pass through that forward. The model's mode and buffers
    are unchanged (``preserved_state``).
    Args:
        model: classifier returning logits; train mode during training, as in the paper.
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        eps: l-inf radius in pixel units.
        create_graph: keep the graph for the parameter update (False: a detached value,
            computed without a graph).
        generator: torch.Generator for the points; torch's global RNG otherwise.
        loss_fn: ``loss_fn(logits_fp32, y) -> [n]`` per-example losses; default cross-entropy.
    Returns:
        scalar tensor >= 0 (fp32, or fp64 for an fp64 model); 0 where the loss is affine in x.
    """
    points, a = elle_points(x, eps, generator=generator)
    grad_mode = contextlib.nullcontext() if create_graph else torch.no_grad()
    with preserved_state(model), grad_mode:
        logits = _fp32(model(points))
        losses = (loss_fn or _per_example_cross_entropy)(logits, y.repeat(3))
        l_a, l_b, l_c = losses.split(x.shape[0])
        a = a.to(losses.dtype)
        return (l_c - ((1 - a) * l_a + a * l_b)).pow(2).mean()


@dataclass
class AdaptiveLambda:
    """ELLE-A's coefficient: lambda_max after a jump of the linearity error, else a decay.

    Implements: Abad Rocamora et al. 2024 §4 (ELLE-A), as in the authors' code
    (--lambda_schedule onoff): lambda starts at 0; after each step with error E_t,
    lambda <- lambda_max if E_t > mean + sensitivity * std of all earlier errors (population
    std, over the whole run, once there are at least ELLE_A_MIN_HISTORY of them), else
    lambda <- decay * lambda; E_t then joins the earlier errors. The step's own penalty is
    weighted with the lambda from before its error (``value`` when it is computed). Mean and
    std are running (Welford), so the state is six numbers: ``dataclasses.asdict`` of it is
    what a checkpoint needs to keep. A non-finite error is not recorded (the training loop
    stops on a non-finite loss anyway).
    Args:
        lambda_max: the coefficient after a jump (> 0; the authors: ELLE_A_LAMBDA_MAX).
        decay: factor per step otherwise, in (0, 1] (ELLE_A_DECAY).
        sensitivity: standard deviations above the mean that count as a jump, >= 0
            (ELLE_A_SENSITIVITY).
    Raises:
        ValueError: lambda_max, decay or sensitivity out of range.
    """

    lambda_max: float
    decay: float = ELLE_A_DECAY
    sensitivity: float = ELLE_A_SENSITIVITY
    value: float = 0.0      # lambda for the next step's penalty
    count: int = 0          # errors recorded
    mean: float = 0.0       # their mean
    m2: float = 0.0         # their summed squared deviations from the mean

    def __post_init__(self):
        if not (self.lambda_max > 0 and math.isfinite(self.lambda_max)):
            raise ValueError(f"ELLE-A lambda_max must be > 0 and finite, got {self.lambda_max}")
        if not 0 < self.decay <= 1:
            raise ValueError(f"ELLE-A decay must be in (0, 1], got {self.decay}")
        if not (self.sensitivity >= 0 and math.isfinite(self.sensitivity)):
            raise ValueError(f"ELLE-A sensitivity must be >= 0 and finite, got {self.sensitivity}")

    @property
    def std(self) -> float:
        """Population standard deviation of the recorded errors (numpy's np.std); 0 if none."""
        return math.sqrt(max(self.m2, 0.0) / self.count) if self.count else 0.0

    def jumped(self, err: float) -> bool:
        """Whether err is a jump: above mean + sensitivity * std of enough earlier errors."""
        return self.count >= ELLE_A_MIN_HISTORY and err > self.mean + self.sensitivity * self.std

    def update(self, err: float) -> float:
        """Record one step's linearity error; return the lambda for the next step.

        Args:
            err: the step's ELLE error (``elle(...)`` before lambda), a float.
        Returns:
            the new ``value``.
        """
        err = float(err)
        if not math.isfinite(err):
            return self.value
        self.value = self.lambda_max if self.jumped(err) else self.value * self.decay
        self.count += 1
        delta = err - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (err - self.mean)
        return self.value
