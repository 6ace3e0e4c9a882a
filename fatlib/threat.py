"""Threat models: the set of allowed perturbations, an l-inf or l2 ball of radius eps.

A ``ThreatModel`` knows everything that differs between norms (random start,
projection, step direction, norm), so attacks in ``fatlib.attacks`` are written
once for both. Every perturbation ``delta`` lives in pixel space: the attacked
input is ``x + delta`` with ``x`` in [0, 1] and eps in pixel units (8/255).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NORMS = ("linf", "l2")


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-example vector [B] so that it broadcasts against ``like`` [B, ...]."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def _l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-example l2 norm [B] of a tensor [B, ...], computed in fp32."""
    return t.float().flatten(1).norm(p=2, dim=1)


def clip_to_box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Clip delta so that x + delta lies in [0, 1]; only ever shrinks |delta|.

    Args:
        delta: perturbations, [B, C, H, W].
        x: images in [0, 1], [B, C, H, W].
    Returns:
        delta with -x <= delta <= 1 - x (elementwise).
    """
    return torch.maximum(torch.minimum(delta, 1 - x), -x)


@dataclass(frozen=True)
class ThreatModel:
    """The ball {delta : ||delta||_p <= eps} intersected with the image box [0, 1].

    Implements: wong2020 Alg. 1-3 (l-inf clipping), l2fast eq. 11-13 (l2 ball).
    Args:
        norm: 'linf' or 'l2'.
        eps: radius in pixel units (e.g. 8/255 for l-inf CIFAR-10, 0.5 or 1.0 for l2).
    """

    norm: str
    eps: float

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"ThreatModel norm must be one of {NORMS}, got {self.norm!r}")
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ValueError(f"ThreatModel eps must be a number, got {self.eps!r}") from None
        if not eps > 0 or not math.isfinite(eps):
            raise ValueError(f"ThreatModel eps must be > 0 and finite (pixel units, e.g. 8/255), "
                             f"got {self.eps!r}")
        if self.norm == "linf" and eps > 1:
            raise ValueError(f"l-inf eps is in pixel units and must be <= 1 (did you pass "
                             f"{eps:g} instead of {eps:g}/255?)")
        object.__setattr__(self, "eps", eps)

    def random_init(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random start uniform in the ball, then clipped so that x + delta is in [0, 1].

        Implements: wong2020 Alg. 3 (U([-eps, eps]^d)); l2fast eq. 11 (uniform in the l2 ball:
        a Gaussian direction normalised, radius eps * U^(1/d)).
        Args:
            x: images in [0, 1], [B, C, H, W].
            generator: optional torch.Generator; torch's global RNG otherwise.
        Returns:
            delta, same shape, dtype and memory format as x, in the ball and the box.
        """
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (2 * u - 1) * self.eps
        else:
            direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            d = x[0].numel()
            u = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype)
            radius = self.eps * u.pow(1.0 / d)
            norms = _l2_norms(direction).clamp_min(1e-12).to(x.dtype)
            delta = direction * _per_example(radius / norms, x)
        delta = delta.contiguous(memory_format=_memory_format(x))
        return clip_to_box(delta, x)

    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project delta into the ball, then clip so that x + delta is in [0, 1].

        Clipping to the box only shrinks entries towards 0, so the result stays in the ball.
        Args:
            delta: perturbations, [B, C, H, W].
            x: images in [0, 1], [B, C, H, W].
        Returns:
            delta with ||delta|| <= eps and x + delta in [0, 1].
        """
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = _l2_norms(delta)
            factor = (self.eps / norms.clamp_min(1e-12)).clamp(max=1.0).to(delta.dtype)
            delta = delta * _per_example(factor, delta)
        return clip_to_box(delta, x)

    def step(self, delta: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        """One ascent step, not projected.

        Implements: sign step for l-inf (wong2020 Alg. 1); normalised-gradient step for l2
        (l2fast eq. 12). Examples with an all-zero gradient do not move.
        Args:
            delta: current perturbations, [B, C, H, W].
            grad: input gradient of the loss at x + delta, [B, C, H, W].
            alpha: step size in pixel units.
        Returns:
            delta + alpha * sign(grad) (l-inf) or delta + alpha * grad / ||grad||_2 (l2).
        """
        if self.norm == "linf":
            return delta + alpha * grad.sign()
        norms = _l2_norms(grad)
        scale = torch.where(norms > 0, alpha / norms.clamp_min(1e-30), torch.zeros_like(norms))
        return delta + grad * _per_example(scale.to(grad.dtype), grad)

    def norms(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-example norm of the perturbations in this threat model's norm.

        Args:
            delta: perturbations, [B, C, H, W].
        Returns:
            [B] float tensor of ||delta_i||_inf or ||delta_i||_2.
        """
        if self.norm == "linf":
            return delta.float().flatten(1).abs().amax(dim=1)
        return _l2_norms(delta)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last if x is a 4-d channels_last tensor, else contiguous."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
