"""Sanity checks of an evaluation: signs that an attack, a model or a pipeline is broken.

Each check returns ``Check(name, passed, message)``; ``run_all`` runs them all on a
small batch (about 100-200 examples). They follow the usual checklist for adversarial
evaluations (Carlini et al. 2019, "On evaluating adversarial robustness"): stronger
attacks are not weaker, accuracy falls with eps to chance, random noise is weaker than
PGD, the model is deterministic, outputs logits, has non-zero input gradients; and
fatlib's own contracts: attacks leave the model unchanged, perturbations are valid, and
re-scoring the adversarial inputs agrees with what the attack reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fatlib import attacks
from fatlib.evaluate import accuracy, evaluation_mode, predict_correct
from fatlib.threat import ThreatModel


@dataclass(frozen=True)
class Check:
    """The outcome of one sanity check.

    Args:
        name: short identifier, e.g. 'attack_order'.
        passed: True if nothing suspicious was found.
        message: the numbers behind the verdict.
    """

    name: str
    passed: bool
    message: str


def slack(n: int) -> float:
    """Accuracy noise tolerated between two attacks on n examples: max(2, 3% of n) examples, in points."""
    return 100.0 * max(2, math.ceil(0.03 * n)) / n


def _pgd_accuracy(model, x, y, threat, *, steps=10, restarts=1) -> float:
    delta = attacks.pgd(model, x, y, threat, alpha=threat.eps / 4, steps=steps, restarts=restarts)
    return accuracy(predict_correct(model, x, y, delta))


def _large_eps(threat: ThreatModel, x: torch.Tensor) -> float:
    """A radius whose ball around any image in [0, 1] contains the mid-grey image."""
    return 0.5 if threat.norm == "linf" else 0.5 * math.sqrt(x[0].numel())


def check_attack_order(model, x, y, threat, *, steps: int = 20) -> Check:
    """PGD accuracy <= FGSM accuracy <= clean accuracy (within ``slack``)."""
    with evaluation_mode(model):
        clean = accuracy(predict_correct(model, x, y))
        fgsm = accuracy(predict_correct(model, x, y, attacks.fgsm(model, x, y, threat)))
        pgd = _pgd_accuracy(model, x, y, threat, steps=steps)
    tol = slack(len(y))
    passed = pgd <= fgsm + tol and fgsm <= clean + tol
    return Check("attack_order", passed, f"clean {clean:.1f}% >= FGSM {fgsm:.1f}% >= "
                 f"PGD-{steps} {pgd:.1f}% expected (slack {tol:.1f} points)")


def check_eps_monotone(model, x, y, threat, *, factors=(0.25, 0.5, 1.0, 2.0),
                       num_classes: int | None = None) -> Check:
    """PGD accuracy does not increase with eps and is near or below chance at a huge eps."""
    with evaluation_mode(model):
        if num_classes is None:
            with torch.no_grad():
                num_classes = int(model(x[:1]).shape[1])
        big = _large_eps(threat, x)
        radii = sorted({min(threat.eps * f, big) for f in factors} | {big})
        accs = [_pgd_accuracy(model, x, y, ThreatModel(threat.norm, e)) for e in radii]
    tol = slack(len(y))
    chance = 100.0 / num_classes
    monotone = all(b <= a + tol for a, b in zip(accs, accs[1:]))
    near_chance = accs[-1] <= chance + max(tol, 0.5 * chance)
    table = ", ".join(f"eps {e:.4g}: {a:.1f}%" for e, a in zip(radii, accs))
    return Check("eps_monotone", monotone and near_chance,
                 f"{table}; non-increasing: {monotone}; at eps {big:.3g} (ball holds mid-grey) "
                 f"{accs[-1]:.1f}% vs chance {chance:.1f}%: near or below: {near_chance}")


def check_more_iterations(model, x, y, threat, *, steps: int = 10) -> Check:
    """4x more PGD steps, or 3 restarts, do not raise accuracy beyond ``slack``."""
    with evaluation_mode(model):
        base = _pgd_accuracy(model, x, y, threat, steps=steps)
        longer = _pgd_accuracy(model, x, y, threat, steps=4 * steps)
        restarted = _pgd_accuracy(model, x, y, threat, steps=steps, restarts=3)
    tol = slack(len(y))
    passed = longer <= base + tol and restarted <= base + tol
    return Check("more_iterations", passed,
                 f"PGD-{steps} {base:.1f}%, PGD-{4 * steps} {longer:.1f}%, "
                 f"PGD-{steps}-3 {restarted:.1f}% (slack {tol:.1f} points)")


def check_noise_weaker(model, x, y, threat, *, draws: int = 3) -> Check:
    """Uniform noise in the same ball (worst of a few draws) is weaker than PGD."""
    with evaluation_mode(model):
        noise = predict_correct(model, x, y)
        for _ in range(draws):
            noise &= predict_correct(model, x, y, threat.random_init(x))
        noise_acc = accuracy(noise)
        pgd = _pgd_accuracy(model, x, y, threat)
    tol = slack(len(y))
    return Check("noise_weaker", noise_acc >= pgd - tol,
                 f"uniform noise (worst of {draws}) {noise_acc:.1f}% >= PGD-10 {pgd:.1f}% expected")


def check_deterministic(model, x, y=None, threat=None) -> Check:
    """Two forward passes in eval mode give the same outputs."""
    with evaluation_mode(model), torch.no_grad():
        a, b = model(x).float(), model(x).float()
    diff = float((a - b).abs().max())
    return Check("deterministic", bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6)),
                 f"max |difference| between two eval-mode forwards: {diff:.3g}")


def check_logits(model, x, y=None, threat=None) -> Check:
    """Outputs are logits, not probabilities (non-negative rows summing to 1 fail)."""
    with evaluation_mode(model), torch.no_grad():
        out = model(x).float()
    sums = out.sum(dim=1)
    probabilities = bool((out >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums),
                                                                   atol=1e-3))
    return Check("logits", not probabilities,
                 f"outputs in [{float(out.min()):.3g}, {float(out.max()):.3g}], row sums in "
                 f"[{float(sums.min()):.3g}, {float(sums.max()):.3g}]"
                 + ("; looks like softmax probabilities: attacks need logits" if probabilities else ""))


def check_input_gradients(model, x, y, threat=None, *, max_zero_fraction: float = 0.1) -> Check:
    """Few examples have an exactly zero input gradient (else gradient masking / detach)."""
    with evaluation_mode(model):
        grad, _ = attacks.input_gradient(model, x, y, torch.zeros_like(x))
    zero = float((grad.flatten(1).abs().amax(dim=1) == 0).float().mean())
    return Check("input_gradients", zero <= max_zero_fraction,
                 f"{100 * zero:.1f}% of examples have a zero input gradient "
                 f"(at most {100 * max_zero_fraction:.0f}% allowed)")


def _state(model: nn.Module):
    return ([m.training for m in model.modules()], [b.detach().clone() for b in model.buffers()])


def _same_state(a, b) -> bool:
    return a[0] == b[0] and all(torch.equal(u, v) for u, v in zip(a[1], b[1]))


def _training_attacks(threat):
    return {
        "fgsm_rs": lambda m, x, y: attacks.fgsm(m, x, y, threat, init="random"),
        "pgd": lambda m, x, y: attacks.pgd(m, x, y, threat, alpha=threat.eps / 4, steps=3,
                                           restarts=2),
    }


def check_attack_purity(model, x, y, threat) -> Check:
    """Attacks leave the model's mode and buffers (BN running stats) unchanged, in train and eval."""
    changed = []
    before_all = _state(model)
    try:
        for mode in (True, False):
            model.train(mode)
            for name, attack in _training_attacks(threat).items():
                before = _state(model)
                attack(model, x, y)
                if not _same_state(before, _state(model)):
                    changed.append(f"{name} in {'train' if mode else 'eval'} mode")
    finally:
        for module, training in zip(model.modules(), before_all[0]):
            module.training = training
    return Check("attack_purity", not changed,
                 "changed the model: " + ", ".join(changed) if changed
                 else "mode and buffers unchanged by FGSM-RS and PGD in train and eval mode")


def check_perturbation_bounds(model, x, y, threat, *, tol: float = 1e-6) -> Check:
    """Every adversarial input lies in [0, 1] and within eps of its image."""
    problems = []
    with evaluation_mode(model):
        for name, attack in _training_attacks(threat).items():
            delta = attack(model, x, y)
            x_adv = x + delta
            worst_norm = float(threat.norms(delta).max())
            if worst_norm > threat.eps * (1 + tol) + tol:
                problems.append(f"{name}: norm {worst_norm:.6g} > eps {threat.eps:.6g}")
            if float(x_adv.min()) < -tol or float(x_adv.max()) > 1 + tol:
                problems.append(f"{name}: x + delta in [{float(x_adv.min()):.6g}, "
                                f"{float(x_adv.max()):.6g}]")
    return Check("perturbation_bounds", not problems,
                 "; ".join(problems) or f"all perturbations within {threat.norm} eps "
                 f"{threat.eps:.4g} and inside [0, 1]")


def check_rescoring(model, x, y, threat) -> Check:
    """Re-scoring model(x + delta) (whole batch, and in small batches) agrees with the attack."""
    with evaluation_mode(model):
        delta, broken = attacks.pgd_search(model, x, y, threat, alpha=threat.eps / 4, steps=10,
                                           restarts=2)
        reported = (~broken).cpu()
        whole = predict_correct(model, x, y, delta, batch_size=len(y))
        small = predict_correct(model, x, y, delta, batch_size=max(1, len(y) // 3))
    passed = torch.equal(reported, whole) and torch.equal(reported, small)
    return Check("rescoring", passed,
                 f"attack reported {accuracy(reported):.1f}%, re-scored {accuracy(whole):.1f}% "
                 f"(one batch) and {accuracy(small):.1f}% (small batches); "
                 f"{int((reported != whole).sum())} examples disagree")


CHECKS = (check_deterministic, check_logits, check_input_gradients, check_attack_purity,
          check_perturbation_bounds, check_rescoring, check_attack_order, check_eps_monotone,
          check_more_iterations, check_noise_weaker)


def run_all(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> list:
    """Run every sanity check on a small batch.

    Args:
        model: classifier returning logits (its mode is restored afterwards).
        x: images in [0, 1], [B, C, H, W] (about 100-200 examples).
        y: labels, int64 [B].
        threat: ThreatModel (norm, eps) of the evaluation.
    Returns:
        list of Check, in the order of ``CHECKS``.
    """
    x = x.float()
    return [check(model, x, y, threat) for check in CHECKS]
