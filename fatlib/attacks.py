"""Adversarial attacks as pure functions: ``attack(model, x, y, threat, **kw) -> delta``.

Every attack returns a detached perturbation ``delta`` (same shape as ``x``) with
``||delta|| <= threat.eps`` and ``x + delta`` in [0, 1], except ``nfgsm``, which by design is
not projected back to the eps ball (``||delta||_inf <= k eps + alpha``). Attacks run the model in
whatever mode the caller set (training attacks in train mode, as in the papers;
evaluation in eval mode) and never change the model: its mode and its BatchNorm
running statistics are the same after the call as before (``preserved_state``).

Gradients are taken with respect to ``delta`` only (``torch.autograd.grad``), so no
parameter gradients are computed or accumulated, and attacks work under the
caller's autocast: the loss is computed in fp32 from ``logits.float()``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fatlib.threat import ThreatModel, clip_to_box

GradTransform = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def preserved_state(model: nn.Module):
    """Restore every module's train/eval flag and every buffer (BN running stats) on exit.

    A forward pass in train mode updates BatchNorm's running mean, variance and batch
    counter; attacks and regularizers wrap their forwards in this so that they stay pure.
    Args:
        model: any nn.Module.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield model
    finally:
        # Through .data: a train-mode BatchNorm graph saves its running stats, and a tracked
        # in-place copy would bump their version and break a later (double) backward. Train-mode
        # backward uses the batch statistics, so the restored values do not affect gradients.
        with torch.no_grad():
            for buf, saved in buffers:
                buf.data.copy_(saved)
        for module, training in modes:
            module.training = training


def _fp32(logits: torch.Tensor) -> torch.Tensor:
    """Logits in at least fp32 (bf16/fp16 autocast outputs are upcast; fp64 stays fp64)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _sum_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, *,
                   loss_fn: Callable | None = None, create_graph: bool = False):
    """Gradient of the summed loss at x + delta with respect to delta only.

    No parameter gradients are computed (``torch.autograd.grad`` w.r.t. delta). The loss
    is computed in fp32 from ``logits.float()``, so this works under bf16/fp16 autocast.
    A model whose output does not depend on its input gets an all-zero gradient.
    Args:
        model: classifier returning logits [B, K].
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        delta: perturbation, [B, C, H, W].
        loss_fn: ``loss_fn(logits_fp32, y) -> scalar``; default summed cross-entropy.
        create_graph: keep the graph of the gradient for double backprop (GradAlign).
    Returns:
        (grad [B, C, H, W], logits [B, K]); both detached unless create_graph.
    """
    delta = delta.detach().requires_grad_(True)
    logits = model(x + delta)
    loss = (loss_fn or _sum_cross_entropy)(_fp32(logits), y)
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss, delta, create_graph=create_graph, allow_unused=True)
    else:
        grad = None
    if grad is None:
        grad = torch.zeros_like(delta)
    if not create_graph:
        grad, logits = grad.detach(), logits.detach()
    return grad, logits


def _initial_delta(init, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """The starting perturbation: 'zero', 'random' (uniform in the ball) or a given tensor."""
    if isinstance(init, torch.Tensor):
        if init.dim() != x.dim() or init.shape[1:] != x.shape[1:] or init.shape[0] < x.shape[0]:
            raise ValueError(f"init tensor must have shape [>= {x.shape[0]}, "
                             f"{', '.join(map(str, x.shape[1:]))}] (a previous minibatch's delta), "
                             f"got {list(init.shape)}")
        return threat.project(init[: x.shape[0]].detach().to(x.dtype), x)
    if init == "zero":
        return torch.zeros_like(x)
    if init == "random":
        return threat.random_init(x)
    raise ValueError(f"init must be 'zero', 'random' or a tensor of a previous delta, got {init!r}")


def _check_alpha(alpha, default: float) -> float:
    alpha = default if alpha is None else float(alpha)
    if not alpha > 0:
        raise ValueError(f"step size alpha must be > 0 (pixel units), got {alpha}")
    return alpha


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
         alpha: float | None = None, init="zero",
         grad_transform: GradTransform | None = None) -> torch.Tensor:
    """One signed (l-inf) or normalised (l2) gradient step from an initial point, projected.

    Implements: wong2020 Alg. 3 (FGSM-RS with init='random'), andriushchenko2020 eq. 3;
    init=tensor is wong2020's "previous minibatch" initialisation.
    Args:
        model: classifier returning logits; its mode is used as is.
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        threat: ThreatModel (norm, eps).
        alpha: step size in pixel units; default eps.
        init: 'zero', 'random' (uniform in the ball) or a tensor [>= B, C, H, W] (previous delta).
        grad_transform: applied to the input gradient before the step (ZeroGrad uses it).
    Returns:
        delta, [B, C, H, W], with ||delta|| <= eps and x + delta in [0, 1].
    """
    return fgsm_and_gradient(model, x, y, threat, alpha=alpha, init=init,
                             grad_transform=grad_transform)[0]


def fgsm_and_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                      alpha: float | None = None, init="zero",
                      grad_transform: GradTransform | None = None):
    """``fgsm`` that also returns the input gradient it used (before ``grad_transform``).

    With init='zero' that gradient is grad_x l(x, y), which GradAlign needs too: pass it
    as ``regularizers.grad_align(..., grad_at_x=grad)`` to save a forward-backward pass.
    Args: as in ``fgsm``.
    Returns:
        (delta [B, C, H, W], grad [B, C, H, W] at x + initial delta).
    """
    alpha = _check_alpha(alpha, threat.eps)
    with preserved_state(model):
        delta = _initial_delta(init, x, threat)
        grad, _ = input_gradient(model, x, y, delta)
    step_grad = grad if grad_transform is None else grad_transform(grad)
    return threat.project(threat.step(delta, step_grad, alpha), x).detach(), grad


def per_example_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each example's entries (linear interpolation, as torch.quantile).

    Args:
        values: [B, ...] tensor.
        q: quantile in [0, 1].
    Returns:
        [B] tensor of quantiles.
    """
    flat = values.flatten(1).sort(dim=1).values
    pos = q * (flat.shape[1] - 1)
    lo = int(pos)
    hi = min(lo + 1, flat.shape[1] - 1)
    frac = pos - lo
    return flat[:, lo] + frac * (flat[:, hi] - flat[:, lo])


def zero_small_gradients(grad: torch.Tensor, q: float) -> torch.Tensor:
    """Set to 0 the entries whose |grad| is below the example's q-quantile of |grad|.

    Implements: golgooni2021 Alg. 1, line "grad[|grad| < quantile(|grad|, q)] = 0".
    Args:
        grad: input gradient, [B, C, H, W].
        q: quantile in [0, 1]; q = 0 keeps every entry.
    Returns:
        masked gradient, [B, C, H, W].
    """
    magnitude = grad.abs()
    threshold = per_example_quantile(magnitude, q).reshape(-1, *([1] * (grad.dim() - 1)))
    return torch.where(magnitude < threshold, torch.zeros_like(grad), grad)


def zerograd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
             q: float, alpha: float | None = None, init="random") -> torch.Tensor:
    """FGSM whose small input-gradient entries (below the per-example q-quantile) are zeroed.

    Implements: golgooni2021 Alg. 1 (ZeroGrad); the authors' code uses alpha = 2 eps from a
    random start. With q = 0 it is FGSM with the same init and alpha.
    Args:
        model, x, y, threat: as in ``fgsm``.
        q: quantile in [0, 1] (paper: 0.35 CIFAR-10, 0.45 CIFAR-100, 0.7 SVHN).
        alpha: step size in pixel units; default 2 * eps.
        init: as in ``fgsm``; default 'random'.
    Returns:
        delta, [B, C, H, W], with ||delta|| <= eps and x + delta in [0, 1].
    """
    if not 0 <= q <= 1:
        raise ValueError(f"ZeroGrad quantile q must be in [0, 1], got {q}")
    return fgsm(model, x, y, threat, alpha=_check_alpha(alpha, 2 * threat.eps), init=init,
                grad_transform=lambda g: zero_small_gradients(g, q))


def multigrad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
              n: int, alpha: float | None = None) -> torch.Tensor:
    """One step from x along the first random start's gradient, kept where N starts agree in sign.

    Implements: golgooni2021 Alg. 2 (MultiGrad): gradients at N random starts x + delta_j;
    entries whose gradient sign is the same (and non-zero) for all N keep grad_1, the others
    are zeroed; then delta = alpha * sign(grad) from x itself, projected.
    Args:
        model, x, y, threat: as in ``fgsm``.
        n: number of random starts N >= 1 (paper: 3).
        alpha: step size in pixel units; default eps.
    Returns:
        delta, [B, C, H, W], with ||delta|| <= eps and x + delta in [0, 1].
    """
    alpha = _check_alpha(alpha, threat.eps)
    grad = multigrad_gradient(model, x, y, threat, n=n)
    return threat.project(threat.step(torch.zeros_like(x), grad, alpha), x).detach()


def multigrad_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                       n: int) -> torch.Tensor:
    """The gradient MultiGrad steps along: the first random start's, zeroed where the N starts
    disagree in sign (or it is zero).

    Implements: golgooni2021 Alg. 2, lines 1-5 (:func:`multigrad` takes the step).
    Args:
        model, x, y, threat: as in ``fgsm``.
        n: number of random starts N >= 1.
    Returns:
        grad, [B, C, H, W], detached.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"MultiGrad needs an integer number of random starts n >= 1, got {n}")
    with preserved_state(model):
        first, _ = input_gradient(model, x, y, threat.random_init(x))
        sign = first.sign()
        agree = sign != 0
        for _ in range(int(n) - 1):
            grad, _ = input_gradient(model, x, y, threat.random_init(x))
            agree &= grad.sign() == sign
    return torch.where(agree, first, torch.zeros_like(first)).detach()


def free_update(delta: torch.Tensor, grad: torch.Tensor, threat: ThreatModel, x: torch.Tensor,
                alpha: float | None = None) -> torch.Tensor:
    """The replay update of "free" adversarial training: one step from the kept delta.

    Implements: wong2020 Alg. 2 (delta = clip(delta + eps * sign(grad_delta))), with the
    image box as in the authors' code. The training loop computes grad together with the
    parameter gradients in one backward pass and calls this.
    Args:
        delta: perturbation kept from the previous replay, [B, C, H, W].
        grad: gradient of the loss w.r.t. the input at x + delta, [B, C, H, W].
        threat: ThreatModel (norm, eps).
        x: images in [0, 1], [B, C, H, W].
        alpha: step size in pixel units; default eps.
    Returns:
        delta, [B, C, H, W], with ||delta|| <= eps and x + delta in [0, 1].
    """
    alpha = _check_alpha(alpha, threat.eps)
    return threat.project(threat.step(delta.detach(), grad.detach(), alpha), x).detach()


def l2fast(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
           alpha: float | None = None) -> torch.Tensor:
    """One normalised-gradient l2 step from a random start uniform in the l2 ball.

    Implements: l2fast eq. 11-13 (alpha = 1.5 eps in the paper).
    Args:
        model, x, y: as in ``fgsm``.
        threat: an l2 ThreatModel.
        alpha: step size in pixel units; default 1.5 * eps.
    Returns:
        delta, [B, C, H, W], with ||delta||_2 <= eps and x + delta in [0, 1].
    """
    if threat.norm != "l2":
        raise ValueError("l2fast needs an l2 ThreatModel; for l-inf use fgsm(..., init='random')")
    return fgsm(model, x, y, threat, alpha=_check_alpha(alpha, 1.5 * threat.eps), init="random")


def _uniform_box_start(x: torch.Tensor, radius: float,
                       generator: torch.Generator | None) -> torch.Tensor:
    """eta ~ U([-radius, radius]^d), then clipped so that x + eta is in [0, 1]; 0 for radius 0."""
    if radius == 0:
        return torch.zeros_like(x)
    return ThreatModel("linf", radius).random_init(x, generator=generator)


def nfgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
          alpha: float | None = None, noise_factor: float = 2.0,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """One signed gradient step from a large random start, NOT projected back to the eps ball.

    Implements: de Jorge et al. 2022 (N-FGSM, NeurIPS), Alg. 1: eta ~ U([-k eps, k eps]^d),
    delta = eta + alpha * sign(grad_x l(x + eta, y)). As in the authors' code
    (pdejorge/N-FGSM train.py, default --clip -1), eta and delta are clipped to the image box
    only, never to the eps ball: ||delta||_inf <= k eps + alpha (3 eps at the paper's k = 2,
    alpha = eps). One forward-backward pass for the attack, the cost of FGSM-RS.
    Args:
        model: classifier returning logits; its mode is used as is (train mode in training).
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        threat: an l-inf ThreatModel; its eps scales the noise and the default step.
        alpha: step size in pixel units; default eps (the paper's).
        noise_factor: k >= 0, the noise radius in multiples of eps (paper: 2); k = 0 is FGSM
            from x without projection.
        generator: torch.Generator for the noise; torch's global RNG otherwise.
    Returns:
        delta, [B, C, H, W], with ||delta||_inf <= noise_factor * eps + alpha and x + delta in
        [0, 1] (in general outside the eps ball).
    Raises:
        ValueError: an l2 threat, noise_factor < 0 or not finite, a noise radius
            noise_factor * eps above 1 (pixel units), or alpha <= 0.
    """
    if threat.norm != "linf":
        raise ValueError("nfgsm is defined for an l-inf ThreatModel (de Jorge et al. 2022)")
    k = float(noise_factor)
    if not (k >= 0 and math.isfinite(k)):
        raise ValueError(f"N-FGSM noise_factor k must be >= 0 and finite, got {noise_factor}")
    if k * threat.eps > 1:
        raise ValueError(f"N-FGSM noise radius k * eps = {k * threat.eps:.4g} is more than the "
                         f"pixel range 1: eps and k * eps are in pixel units (8/255)")
    alpha = _check_alpha(alpha, threat.eps)
    with preserved_state(model):
        eta = _uniform_box_start(x, k * threat.eps, generator)
        grad, _ = input_gradient(model, x, y, eta)
    return clip_to_box(threat.step(eta, grad, alpha), x).detach()


# --- PGD -------------------------------------------------------------------------------------

def _to_corners(delta: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Move every entry to -eps or +eps by its sign (0 stays 0), then clip to the box."""
    return threat.project(threat.eps * delta.sign(), x)


def _score_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs: the precision in which restarts' losses are compared."""
    return torch.promote_types(x.dtype, torch.float32)


def _ce_of_correct(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the rows still classified correctly (early-stopping PGD)."""
    ok = logits.argmax(1) == y
    return F.cross_entropy(logits[ok], y[ok], reduction="sum")


PGD_PRECISIONS = ("fp32", "bf16")


def _gradient_precision(precision: str, device: torch.device):
    """The context of PGD's gradient steps: nothing for fp32, bf16 autocast for 'bf16'."""
    if precision not in PGD_PRECISIONS:
        raise ValueError(f"PGD precision must be one of {PGD_PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _pgd_restart(model, x, y, threat, delta, *, alpha, steps, corners, early_stop, final,
                 precision="fp32"):
    """One PGD run from ``delta`` on every row of x.

    With early_stop, a row misclassified at its current delta is frozen there and
    dropped from later forwards (the model only sees the rows still moving).
    Returns (delta, wrong, loss); wrong/loss are scored at the final delta if ``final``
    (else None). Rows frozen early have wrong=True and loss=+inf (wrong takes precedence).
    With precision 'bf16' the steps' gradients (and the freezing) come from bf16 autocast,
    and every row's final delta is scored again in fp32.
    """
    n = x.shape[0]
    wrong = torch.zeros(n, dtype=torch.bool, device=x.device)
    loss = torch.full((n,), float("inf"), device=x.device, dtype=_score_dtype(x))
    rows = torch.arange(n, device=x.device)   # rows still moving
    for _ in range(steps):
        whole = rows.numel() == n
        xr, yr, dr = (x, y, delta) if whole else (x[rows], y[rows], delta[rows])
        with _gradient_precision(precision, x.device):
            grad, logits = input_gradient(model, xr, yr, dr,
                                          loss_fn=_ce_of_correct if early_stop else None)
        moved = threat.project(threat.step(dr, grad, alpha), xr)
        if early_stop:
            keep = logits.argmax(1) == yr
            if not bool(keep.all()):
                wrong[rows[~keep]] = True
                rows, moved, whole = rows[keep], moved[keep], False
        delta = moved if whole else delta.index_copy(0, rows, moved)
        if rows.numel() == 0:
            break
    if corners:  # only the attack's result goes to the corners (andriushchenko2020 §3)
        delta = _to_corners(delta, x, threat)
    if corners or precision != "fp32":  # every row moved, or was frozen by bf16 logits:
        rows = torch.arange(n, device=x.device)  # score them all again, in fp32
        wrong.zero_()
    if not final:
        return delta, None, None
    if rows.numel() > 0:
        whole = rows.numel() == n
        xr, yr, dr = (x, y, delta) if whole else (x[rows], y[rows], delta[rows])
        with torch.no_grad():
            logits = _fp32(model(xr + dr))
        wrong[rows] = logits.argmax(1) != yr
        loss[rows] = F.cross_entropy(logits, yr, reduction="none").to(loss.dtype)
    return delta, wrong, loss


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
        alpha: float, steps: int, restarts: int = 1, random_start: bool = True,
        corners: bool = False, early_stop: bool = True, precision: str = "fp32") -> torch.Tensor:
    """Projected gradient ascent with restarts; the per-example worst case is returned.

    Implements: wong2020 Alg. 1 (PGD-K with random start, R restarts, evaluation as in
    their code); andriushchenko2020 section 3 (corners=True: the final perturbation of each
    restart is moved to +-eps entry by entry by its sign, then clipped to the box; the
    iterates themselves are ordinary PGD iterates, as in the authors' code).
    Worst case over restarts: the first restart whose final delta is misclassified; for
    examples never misclassified, the restart with the highest final loss.
    early_stop=True (evaluation): an example misclassified at its current delta stops moving
    and is no longer run through the model; later restarts only attack examples still
    robust. The result equals running every restart on every example with the same stop
    rule and the same random draws (each restart draws its random start for the full batch),
    as long as the model's output for an example does not depend on the rest of the batch
    (eval mode); the cost falls with the fraction already broken.
    early_stop=False: plain (Madry) PGD, every example moves for every step (training).
    Args:
        model: classifier returning logits; its mode is used as is (eval for evaluation).
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        threat: ThreatModel (norm, eps).
        alpha: step size in pixel units (papers: eps/4 for PGD-50-10 evaluation).
        steps: iterations K >= 1 per restart.
        restarts: R >= 1 random restarts.
        random_start: start each restart uniformly in the ball (else from delta = 0).
        corners: project each restart's final perturbation to the corners {-eps, eps}^d
            (l-inf only).
        early_stop: see above.
        precision: 'fp32', or 'bf16': the gradient steps under bf16 autocast (issue 17's
            low-precision evaluation, for CPUs that compute bf16 natively and GPUs), every
            restart's final perturbations scored in fp32, so the worst case over restarts is
            an fp32 judgement (attack_correct scores the returned delta in fp32 again). A
            weaker attack than fp32 where bf16 gradients mislead; bench.low_precision_pgd
            measures how much.
    Returns:
        delta, [B, C, H, W], with ||delta|| <= eps and x + delta in [0, 1].
    """
    return pgd_search(model, x, y, threat, alpha=alpha, steps=steps, restarts=restarts,
                      random_start=random_start, corners=corners, early_stop=early_stop,
                      precision=precision)[0]


def pgd_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
               alpha: float, steps: int, restarts: int = 1, random_start: bool = True,
               corners: bool = False, early_stop: bool = True, precision: str = "fp32"):
    """``pgd`` that also reports which examples it found misclassified.

    Args: as in ``pgd``.
    Returns:
        (delta [B, C, H, W], broken bool [B] or None): broken[i] is True if the attack saw
        example i misclassified at its returned delta; None when restarts == 1 (the last
        iterate is then never scored, which saves one forward pass).
    """
    alpha = _check_alpha(alpha, threat.eps)
    _gradient_precision(precision, x.device)  # an unknown precision fails before any work
    if int(steps) != steps or steps < 1 or int(restarts) != restarts or restarts < 1:
        raise ValueError(f"PGD needs integer steps >= 1 and restarts >= 1, "
                         f"got steps={steps}, restarts={restarts}")
    if corners and threat.norm != "linf":
        raise ValueError("corners=True projects to {-eps, eps}^d and needs an l-inf ThreatModel")
    score = restarts > 1
    best = torch.zeros_like(x)
    broken = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device, dtype=_score_dtype(x))
    with preserved_state(model):
        for _ in range(int(restarts)):
            # Draw for the full batch so that the random stream does not depend on early stops.
            init = threat.random_init(x) if random_start else torch.zeros_like(x)
            rows = (~broken).nonzero().squeeze(1) if early_stop else None
            if rows is not None and rows.numel() == 0:
                continue
            xr, yr, ir = (x, y, init) if rows is None else (x[rows], y[rows], init[rows])
            delta, wrong, loss = _pgd_restart(model, xr, yr, threat, ir, alpha=alpha,
                                              steps=int(steps), corners=corners,
                                              early_stop=early_stop, final=score,
                                              precision=precision)
            if not score:
                best = delta
                break
            if rows is None:
                rows = torch.arange(x.shape[0], device=x.device)
            better = ~broken[rows] & (wrong | (loss > best_loss[rows]))
            take = rows[better]
            best[take] = delta[better]
            best_loss[take] = loss[better]
            broken[take] = wrong[better]
    return best.detach(), (broken if score else None)
