"""Diagnostics of fast adversarial training: gradient alignment, cosines, perturbation sizes.

All return plain Python floats (or per-example tensors) and change nothing in the model.
"""

from __future__ import annotations

import torch
from torch import nn

from fatlib.attacks import input_gradient, preserved_state
from fatlib.regularizers import uniform_linf_noise


def gradient_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                       batch_size: int = 256) -> float:
    """E cos(grad_x l(x, y), grad_x l(clip(x + eta), y)), eta ~ U([-eps, eps]^d).

    Implements: andriushchenko2020 eq. 5 as the authors' metric code computes it
    (utils.get_grad_np and avg_cos_np): x + eta is clipped to the image box [0, 1], and an
    example whose gradient is zero at either point counts as cosine 1 (their 0/0 -> 1), so
    a dead network reads as aligned, not as nan. The GradAlign regulariser
    (fatlib.regularizers.grad_align) keeps the authors' training form instead (eta not
    clipped, zero-gradient examples skipped). The model is used in its current mode: put it
    in eval mode for test-set statistics.
    Args:
        model: classifier returning logits.
        x: images in [0, 1], [N, C, H, W].
        y: labels, int64 [N].
        eps: l-inf radius in pixel units.
        batch_size: examples per forward pass.
    Returns:
        mean cosine over all N examples.
    """
    total = 0.0
    with preserved_state(model):
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            noisy = (xb + uniform_linf_noise(xb, eps)).clamp(0, 1) - xb
            g1, _ = input_gradient(model, xb, yb, torch.zeros_like(xb))
            g2, _ = input_gradient(model, xb, yb, noisy)
            dead = (g1.flatten(1).norm(dim=1) == 0) | (g2.flatten(1).norm(dim=1) == 0)
            cos = torch.where(dead, torch.ones_like(dead, dtype=torch.float64), cosine(g1.double(), g2))
            total += float(cos.sum())
    return total / x.shape[0] if x.shape[0] else float("nan")


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example cosine of two tensors flattened beyond the batch dimension.

    Args:
        a, b: [B, ...] tensors of the same shape (e.g. delta_FGSM and delta_PGD).
    Returns:
        [B] cosines in fp32 (float64 when either input is float64); 0 where either vector
        is zero.
    """
    if a.shape != b.shape:
        raise ValueError(f"cosine needs tensors of the same shape, got {list(a.shape)} and "
                         f"{list(b.shape)}")
    dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    a, b = a.to(dtype).flatten(1), b.to(dtype).flatten(1)
    denom = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denom > 0, (a * b).sum(dim=1) / denom.clamp_min(1e-30),
                       torch.zeros_like(denom))


def perturbation_norms(delta: torch.Tensor) -> dict:
    """Mean l1, l2 and l-inf norms of a batch of perturbations, and the mean |entry|.

    Implements: golgooni2021 Table 4, which reports ``mean_abs * 255`` (the l1 norm divided
    by the input dimension, in /255 units).
    Args:
        delta: perturbations in pixel units, [B, C, H, W].
    Returns:
        dict l1, l2, linf (means over the batch of per-example norms) and mean_abs.
    """
    flat = delta.detach().float().flatten(1)
    l1 = flat.abs().sum(dim=1)
    return {
        "l1": float(l1.mean()),
        "l2": float(flat.norm(dim=1).mean()),
        "linf": float(flat.abs().amax(dim=1).mean()),
        "mean_abs": float(l1.mean() / flat.shape[1]),
    }


def sign_disagreement(delta_a: torch.Tensor, delta_b: torch.Tensor) -> float:
    """Fraction of entries where both perturbations are non-zero and of opposite sign.

    Implements: golgooni2021 Table 10 ("the number of non-zero perturbation features that
    are of different signs with the PGD perturbation divided by the number of all of the
    features"); multiply by 100 for the table's percentages.
    Args:
        delta_a, delta_b: perturbations of the same shape, e.g. delta_method and delta_PGD10.
    Returns:
        fraction in [0, 1].
    """
    if delta_a.shape != delta_b.shape:
        raise ValueError(f"sign_disagreement needs tensors of the same shape, got "
                         f"{list(delta_a.shape)} and {list(delta_b.shape)}")
    sa, sb = delta_a.sign(), delta_b.sign()
    differ = (sa != 0) & (sb != 0) & (sa != sb)
    return float(differ.float().mean())
