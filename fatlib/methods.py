"""Training methods as callables: what the loop calls to perturb a minibatch, and the
schedule of the attack's eps and step size.

A method is a small set of callables built by ``make_method(config)``: a ``perturb``
(model, x, y, state) -> delta made from ``fatlib.attacks``, an optional regularizer
(``fatlib.regularizers``), and a number of minibatch replays (free AT); the loop
itself never branches on the method's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from fatlib import attacks, regularizers, schedules
from fatlib.config import TrainConfig
from fatlib.threat import ThreatModel

@dataclass
class AttackState:
    """What a perturb callable may read and keep between steps.

    threat: the current threat model (eps after warm-up); alpha: current step size;
    q: current ZeroGrad quantile (changed by roll-back); delta: previous / persistent
    perturbation (FGSM 'previous' init, free AT), or None; elle: ELLE-A's adaptive lambda
    (made by its regularizer at the first step), or None.
    """

    threat: ThreatModel
    alpha: float
    q: float
    delta: torch.Tensor | None = None
    elle: regularizers.AdaptiveLambda | None = None


@dataclass
class Method:
    """A training method as callables for the loop.

    perturb(model, x, y, state) -> delta (detached); regularizer(model, x, y, state) ->
    scalar added to the loss (or None); on_delta_grad(state, x, delta, grad), if set, gets
    the input gradient of the training loss (free AT updates its persistent delta with it);
    replays: optimizer steps per minibatch; probe: the perturbation recorded on a fixed
    training minibatch (golgooni2021 Fig. 2).
    """

    perturb: Callable
    regularizer: Callable | None = None
    on_delta_grad: Callable | None = None
    replays: int = 1
    probe: Callable | None = None

    def __post_init__(self):
        self.probe = self.probe or self.perturb


def _stored_delta(state: AttackState, x: torch.Tensor) -> torch.Tensor | None:
    """The kept perturbation for this minibatch (first B rows), projected for x, or None."""
    d = state.delta
    if d is None or d.shape[1:] != x.shape[1:] or d.shape[0] < x.shape[0]:
        return None
    return state.threat.project(d[: x.shape[0]], x)


def _keep_delta(state: AttackState, delta: torch.Tensor) -> None:
    """Store delta as the kept perturbation (writing into the first rows if larger)."""
    if state.delta is not None and state.delta.shape[1:] == delta.shape[1:] \
            and state.delta.shape[0] > delta.shape[0]:
        state.delta = state.delta.clone()
        state.delta[: delta.shape[0]] = delta
    else:
        state.delta = delta.detach().clone()


def _fgsm_perturb(init: str) -> Callable:
    def perturb(model, x, y, s: AttackState):
        start = init
        if init == "previous":
            start = _stored_delta(s, x)
            start = "zero" if start is None else start
        delta = attacks.fgsm(model, x, y, s.threat, alpha=s.alpha, init=start)
        if init == "previous":
            _keep_delta(s, delta)
        return delta
    return perturb


def _fgsm_unclipped_start(model, x, y, s: AttackState):
    """FGSM-RS whose random start is NOT clipped to the image box (only the result is).

    Implements: wong2020's MNIST code (train_mnist.py), where delta ~ U([-eps, eps]^d) is
    used as is for the gradient and only the final delta is clipped (the authors call
    the unclipped start an oversight). On MNIST it matters: most pixels are exactly 0 or
    1, and there a clipped start followed by a step of 1.25 eps always lands on a corner,
    i.e. FGSM-RS degenerates to plain FGSM.
    """
    eps = s.threat.eps
    delta = (2 * torch.rand_like(x) - 1) * eps
    with attacks.preserved_state(model):
        grad, _ = attacks.input_gradient(model, x, y, delta)
    return s.threat.project(s.threat.step(delta, grad, s.alpha), x)


def _plain_fgsm(model, x, y, s: AttackState):
    return attacks.fgsm(model, x, y, s.threat, alpha=s.threat.eps, init="zero")


def _free_perturb(model, x, y, s: AttackState):
    start = _stored_delta(s, x)
    return torch.zeros_like(x) if start is None else start


def _free_update(s: AttackState, x, delta, grad):
    """Free AT's persistent delta takes a signed step on the training loss's input gradient.

    A non-finite gradient is the GradScaler's overflow (fp16): the scaler skips that
    optimizer step, and the delta keeps its value too (wong2020's code steps both together).
    """
    if not torch.isfinite(grad).all():
        return
    _keep_delta(s, attacks.free_update(delta.detach(), grad, s.threat, x, alpha=s.alpha))


def _zero_perturb(model, x, y, s):
    return torch.zeros_like(x)


def _mean_over_processes(value: torch.Tensor) -> float:
    """A per-process scalar averaged over the DDP processes (itself in one process)."""
    dist, value = torch.distributed, value.detach()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def _elle_regularizer(c: TrainConfig) -> Callable:
    """ELLE with the constant lambda elle_lambda, or ELLE-A (elle_adaptive) with lambda_max.

    Implements: Abad Rocamora et al. 2024 (regularizers.elle, regularizers.AdaptiveLambda).
    ELLE-A weights a step's penalty with the lambda from before its error, then updates lambda
    with that error averaged over the DDP processes (so that every process uses the same
    lambda). While lambda is 0 the error is computed without a graph: the parameter update
    is the same and the backward pass through the 3B points is saved. ELLE-A's state
    (AttackState.elle) is saved in the run's checkpoints (fatlib.checkpoints), so a resumed
    run continues the rule where it was.
    """
    if not c.elle_adaptive:
        return lambda m, x, y, s: c.elle_lambda * regularizers.elle(m, x, y, s.threat.eps)

    def adaptive(model, x, y, s: AttackState):
        if s.elle is None:
            s.elle = regularizers.AdaptiveLambda(c.elle_lambda)
        lam = s.elle.value
        err = regularizers.elle(model, x, y, s.threat.eps, create_graph=lam > 0)
        s.elle.update(_mean_over_processes(err))
        return lam * err
    return adaptive


def make_method(c: TrainConfig) -> Method:
    """Map a config to its Method (perturb / regularizer / replays), built from fatlib.attacks.

    Implements: wong2020 Alg. 1-3, andriushchenko2020 eq. 7 (GradAlign), golgooni2021
    Alg. 1-2 (ZeroGrad, MultiGrad), l2fast (one step from a random start in the l2 ball),
    de Jorge et al. 2022 (N-FGSM); elle_lambda > 0 adds the ELLE / ELLE-A regularizer
    (Abad Rocamora et al. 2024) to method 'fgsm' or 'nfgsm'.
    """
    if c.fgsm_init == "random_unclipped":
        fgsm = _fgsm_unclipped_start
    else:
        fgsm = _fgsm_perturb(c.fgsm_init)
    builders = {
        "standard": lambda: Method(_zero_perturb, probe=_plain_fgsm),
        "fgsm": lambda: Method(fgsm),
        "gradalign": lambda: Method(fgsm, regularizer=lambda m, x, y, s: c.ga_lambda
                                    * regularizers.grad_align(m, x, y, s.threat.eps)),
        "free": lambda: Method(_free_perturb, on_delta_grad=_free_update, replays=c.free_m,
                               probe=_plain_fgsm),
        "pgd": lambda: Method(lambda m, x, y, s: attacks.pgd(
            m, x, y, s.threat, alpha=s.alpha, steps=c.pgd_steps, restarts=1,
            random_start=c.pgd_random_start, corners=c.pgd_corners, early_stop=False)),
        "zerograd": lambda: Method(lambda m, x, y, s: attacks.zerograd(
            m, x, y, s.threat, q=s.q, alpha=s.alpha)),
        "multigrad": lambda: Method(lambda m, x, y, s: attacks.multigrad(
            m, x, y, s.threat, n=c.mg_n, alpha=s.alpha)),
        "l2fast": lambda: Method(lambda m, x, y, s: attacks.l2fast(
            m, x, y, s.threat, alpha=s.alpha)),
        "nfgsm": lambda: Method(lambda m, x, y, s: attacks.nfgsm(
            m, x, y, s.threat, alpha=s.alpha, noise_factor=c.nfgsm_k)),
    }
    method = builders[c.method]()
    if c.elle_lambda > 0:  # config validation allows it for 'fgsm' and 'nfgsm' only
        method.regularizer = _elle_regularizer(c)
    return method


def attack_schedule(c: TrainConfig, step: int, steps_per_epoch: float) -> tuple[float, float]:
    """(eps, alpha) of the training attack at an optimizer step, with the warm-ups.

    Implements the authors' warm-ups (andriushchenko2020's train.py, golgooni2021 on SVHN):
    eps_warmup_epochs grows eps linearly from 0; alpha_warmup_epochs grows alpha linearly
    from 0 to alpha_value. Without an alpha warm-up, PGD keeps its absolute step
    (pgd_alpha) while eps warms up, and the other methods keep alpha / eps fixed (alpha
    grows with eps). With an alpha warm-up, alpha follows it alone, so alpha never grows
    as t^2 when both warm-ups are on.
    Args:
        c: the config; step: optimizer steps taken; steps_per_epoch: optimizer steps per
            cost-equivalent epoch.
    Returns:
        (eps, alpha) in pixel units.
    """
    eps = schedules.linear_warmup(step, round(c.eps_warmup_epochs * steps_per_epoch), c.eps)
    if c.alpha_warmup_epochs:
        alpha = schedules.linear_warmup(step, round(c.alpha_warmup_epochs * steps_per_epoch),
                                        c.alpha_value)
    elif c.method == "pgd":
        alpha = c.alpha_value
    else:
        alpha = c.alpha_value * eps / c.eps
    return eps, alpha

