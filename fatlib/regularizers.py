"""Regularizers added to the training loss: pure functions returning a scalar tensor.

The caller multiplies by its coefficient (``loss + lam * grad_align(...)``). Like the
attacks, regularizers leave the model's mode and BatchNorm running statistics unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from fatlib.attacks import input_gradient, preserved_state


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
