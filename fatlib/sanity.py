"""Sanity checks of an evaluation: signs that an attack, a model or a pipeline is broken.

Each check returns ``Check(name, passed, message)``: what it found and what that means.
``run_cheap`` runs the cheap ones (``CHEAP_CHECKS``: seconds on ~100 examples of a small
model, for every final evaluation); ``run_all`` runs all of ``CHECKS`` (adds long PGD runs,
Square, a transfer attack and a full AutoAttack). They follow the checklist for adversarial
evaluations of Carlini et al. 2019, "On evaluating adversarial robustness": stronger
attacks are not weaker, more steps change little, accuracy falls with eps to chance and to
0 when the ball holds the whole box, random noise, black-box and transfer attacks are
weaker than white-box PGD, autograd agrees with finite differences, the model is
deterministic, outputs logits in fp32 with finite, non-zero input gradients and no batch
statistics in eval mode; the reference AutoAttack's own flags (pyautoattack's ``checks``:
``autoattack_preflight`` cheaply, ``autoattack_flags`` from a full run or from
``autoattack_check(result)`` of an evaluation's run); and fatlib's own contracts: attacks
leave the model unchanged, perturbations are valid, re-scoring agrees with the attack, and
evaluation runs every module in eval mode.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fatlib import attacks, evaluate
from fatlib.evaluate import accuracy, as_float_images, evaluation_mode, predict_correct
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
        num_classes = num_classes or _num_classes(model, x)
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


def check_clean_accuracy(model, x, y, threat=None, *, num_classes: int | None = None) -> Check:
    """Clean accuracy is above chance (else labels, preprocessing or the model are wrong)."""
    with evaluation_mode(model):
        clean = accuracy(predict_correct(model, x, y))
        chance = 100.0 / (num_classes or _num_classes(model, x))
    tol = slack(len(y))
    return Check("clean_accuracy", clean > chance + tol,
                 f"clean accuracy {clean:.1f}% vs chance {chance:.1f}% (must exceed it by "
                 f"{tol:.1f} points): robust accuracy means nothing for a model at chance")


def check_eval_mode(model, x=None, y=None, threat=None) -> Check:
    """Evaluation puts every module in eval mode (a module stuck in train mode is refused)."""
    before = [m.training for m in model.modules()]
    with evaluation_mode(model):
        stuck = [name or type(m).__name__ for name, m in model.named_modules() if m.training]
    restored = [m.training for m in model.modules()] == before
    names = ", ".join(stuck[:4]) + (f" and {len(stuck) - 4} more" if len(stuck) > 4 else "")
    found = (f"{len(stuck)} modules still in train mode during evaluation ({names}): "
             "train-mode numbers would be reported" if stuck
             else "every module in eval mode during evaluation")
    return Check("eval_mode", not stuck and restored,
                 f"{found}; mode restored afterwards: {restored}")


def check_batch_independence(model, x, y=None, threat=None, *, n: int = 8) -> Check:
    """An example's logits are the same alone as in the batch (no batch statistics in eval)."""
    with evaluation_mode(model), torch.no_grad():
        batch = model(x).float()[:n]
        alone = torch.cat([model(x[i:i + 1]).float() for i in range(min(n, len(x)))])
    diff = float((batch - alone).abs().max())
    scale = float(batch.abs().max()) + 1e-12
    return Check("batch_independence", diff <= 1e-4 * scale + 1e-5,
                 f"max |logit difference| alone vs in a batch of {len(x)}: {diff:.3g} "
                 f"(logits up to {scale:.3g}); a difference means batch statistics in eval mode "
                 "(BatchNorm without running stats): train-mode evaluation")


def check_fp32(model, x, y=None, threat=None) -> Check:
    """Evaluation computes in fp32 even inside a caller's autocast (bf16 logits fail)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16), evaluation_mode(model), \
            torch.no_grad():
        dtype = model(x[:2]).dtype
    return Check("fp32", dtype in (torch.float32, torch.float64),
                 f"logits computed as {dtype} inside evaluation under a bf16 autocast; "
                 "scores must be fp32 (the model must not cast itself down)")


def check_finite_gradients(model, x, y, threat) -> Check:
    """Logits and input gradients are finite at the images and at random points in the ball."""
    bad = []
    with evaluation_mode(model):
        for where, delta in (("clean", torch.zeros_like(x)), ("noise", threat.random_init(x))):
            grad, logits = attacks.input_gradient(model, x, y, delta)
            for what, t in (("logits", logits), ("input gradient", grad)):
                rows = int((~torch.isfinite(t.flatten(1)).all(1)).sum())
                if rows:
                    bad.append(f"{what} at {where}: {rows} examples not finite")
    return Check("finite_gradients", not bad,
                 "; ".join(bad) or "logits and input gradients finite at the images and "
                 "at uniform noise in the ball (NaN/inf would silently break attacks)")


def _per_example_loss(model, x, y) -> torch.Tensor:
    return F.cross_entropy(model(x).double(), y, reduction="none")


def _label_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, y[:, None]).squeeze(1)


def check_finite_differences(model, x, y, threat=None, *, n: int = 8, directions: int = 4,
                             h: float = 1e-6, tol: float = 0.05) -> Check:
    """Autograd's directional derivatives of the label's logit agree with finite differences.

    Computed on an fp64 copy of the model, along random unit l2 directions, with central
    differences. Shattered or masked gradients (a round/step function with a
    straight-through or zero backward) disagree. The points are the images moved into
    [0.01, 0.99] plus a little uniform noise, so that steps stay inside the box and flat
    regions (MNIST's background) have no exact ties in max-pooling, where there is a kink.
    """
    model64 = copy.deepcopy(model).double()
    x64 = (0.01 + 0.98 * x[:n]).double()
    x64 = x64 + 0.01 * (torch.rand_like(x64) - 0.5)
    y = y[:n]
    with evaluation_mode(model64):
        grad, _ = attacks.input_gradient(model64, x64, y, torch.zeros_like(x64),
                                         loss_fn=lambda z, t: _label_logit(z, t).sum())
        v = torch.randn((directions, *x64.shape), dtype=x64.dtype, device=x64.device)
        v /= v.flatten(2).norm(dim=2).view(directions, -1, *[1] * (x64.dim() - 1))
        auto = (grad * v).flatten(2).sum(2)
        with torch.no_grad():
            fd = torch.stack([(_label_logit(model64(x64 + h * d), y)
                               - _label_logit(model64(x64 - h * d), y)) / (2 * h) for d in v])
    ok = (auto - fd).abs() <= tol * torch.maximum(auto.abs(), fd.abs()) + 1e-6
    agree, pairs = int(ok.sum()), ok.numel()
    return Check("finite_differences", agree >= 0.9 * pairs,
                 f"autograd and central finite differences (h={h:g}) of the label's logit agree "
                 f"within {100 * tol:.0f}% on {agree} of {pairs} (example, direction) pairs (90% "
                 "needed); disagreement means shattered or masked gradients")


def check_attack_progress(model, x, y, threat, *, steps: int = 10,
                          min_fraction: float = 0.9) -> Check:
    """PGD raises the loss of (or breaks) nearly every correctly classified example."""
    with evaluation_mode(model):
        delta = attacks.pgd(model, x, y, threat, alpha=threat.eps / 4, steps=steps)
        with torch.no_grad():
            clean, adv = _per_example_loss(model, x, y), _per_example_loss(model, x + delta, y)
        correct = predict_correct(model, x, y).to(x.device)
        broken = ~predict_correct(model, x, y, delta).to(x.device)
    progress = (broken | (adv > clean))[correct]
    fraction = float(progress.float().mean()) if progress.numel() else 1.0
    return Check("attack_progress", fraction >= min_fraction,
                 f"PGD-{steps} broke or raised the loss of {100 * fraction:.1f}% of the "
                 f"{progress.numel()} correctly classified examples (at least "
                 f"{100 * min_fraction:.0f}% expected; else the attack is not following the loss)")


def _box_eps(threat: ThreatModel, x: torch.Tensor) -> float:
    """A radius whose ball around any image in [0, 1] holds the whole box."""
    return 1.0 if threat.norm == "linf" else math.sqrt(x[0].numel())


def check_unbounded_attack(model, x, y, threat, *, steps: int = 20) -> Check:
    """PGD with a ball that holds the whole box breaks every example (accuracy ~0)."""
    big = _box_eps(threat, x)
    with evaluation_mode(model):
        acc = _pgd_accuracy(model, x, y, ThreatModel(threat.norm, big), steps=steps)
    tol = slack(len(y))
    return Check("unbounded_attack", acc <= tol,
                 f"PGD-{steps} at eps {big:.3g} (any image in [0, 1] reachable): {acc:.1f}% "
                 f"correct, at most {tol:.1f}% expected; more means the attack is broken or "
                 "the gradients are masked")


def check_pgd_converged(model, x, y, threat, *, steps: int = 10, factor: int = 10) -> Check:
    """PGD with ``factor`` times the steps lowers accuracy by at most ``slack`` (K is enough)."""
    with evaluation_mode(model):
        base = _pgd_accuracy(model, x, y, threat, steps=steps)
        longer = _pgd_accuracy(model, x, y, threat, steps=factor * steps)
    tol = slack(len(y))
    return Check("pgd_converged", base <= longer + tol,
                 f"PGD-{steps} {base:.1f}%, PGD-{factor * steps} {longer:.1f}% (at most "
                 f"{tol:.1f} points lower expected; more means PGD-{steps} has not converged "
                 "and under-reports the attack)")


def check_square_vs_pgd(model, x, y, threat, *, queries: int = 1000, steps: int = 20) -> Check:
    """Black-box Square (the reference's, few queries) is not stronger than white-box PGD."""
    with evaluation_mode(model):
        sq = accuracy(predict_correct(model, x, y, evaluate.square(model, x, y, threat,
                                                                   queries=queries)))
        pgd = _pgd_accuracy(model, x, y, threat, steps=steps)
    tol = slack(len(y))
    return Check("square_vs_pgd", sq >= pgd - tol,
                 f"Square ({queries} queries) {sq:.1f}% >= PGD-{steps} {pgd:.1f}% expected "
                 f"(slack {tol:.1f}); a stronger black-box attack means masked gradients")


def distilled_surrogate(model: nn.Module, x: torch.Tensor, *, hidden: int = 256,
                        steps: int = 300, copies: int = 4) -> nn.Module:
    """A small MLP trained to predict the model's labels on x and noisy copies of it.

    Args:
        model: the classifier to imitate (eval mode inside, state restored).
        x: images in [0, 1], [B, C, H, W].
        hidden: width of the MLP's hidden layer.
        steps: full-batch Adam steps.
        copies: noisy copies (Gaussian, std 0.1, clipped to [0, 1]) added to x.
    Returns:
        the MLP in eval mode (inputs in [0, 1], same shape as x).
    """
    inputs = torch.cat([x] + [(x + 0.1 * torch.randn_like(x)).clamp(0, 1) for _ in range(copies)])
    with evaluation_mode(model), torch.no_grad():
        labels = model(inputs).argmax(1)
        classes = _num_classes(model, x)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), hidden), nn.ReLU(),
                        nn.Linear(hidden, classes)).to(x.device)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    with evaluation_mode(mlp):  # fp32 and gradients on; the MLP has no mode-dependent layer
        for _ in range(steps):
            loss = F.cross_entropy(mlp(inputs), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return mlp.eval()


def check_transfer_weaker(model, x, y, threat, *, surrogate: nn.Module | None = None,
                          steps: int = 20) -> Check:
    """PGD crafted on a surrogate and transferred is not stronger than white-box PGD.

    The default surrogate is ``distilled_surrogate(model, x)``; pass the undefended model
    (e.g. without a non-differentiable preprocessing layer) when there is one.
    """
    surrogate = distilled_surrogate(model, x) if surrogate is None else surrogate
    with evaluation_mode(model), evaluation_mode(surrogate):
        delta = attacks.pgd(surrogate, x, y, threat, alpha=threat.eps / 4, steps=steps)
        transfer = accuracy(predict_correct(model, x, y, delta))
        white = _pgd_accuracy(model, x, y, threat, steps=steps)
    tol = slack(len(y))
    return Check("transfer_weaker", transfer >= white - tol,
                 f"transferred from a surrogate {transfer:.1f}% >= white-box PGD-{steps} "
                 f"{white:.1f}% expected (slack {tol:.1f}); a stronger transfer means masked gradients")


def check_autoattack_preflight(model, x, y, threat) -> Check:
    """The reference AutoAttack's own pre-attack checks raise no flag (cheap: a few forwards)."""
    flags = evaluate.autoattack_preflight(model, x, y, threat)
    return Check("autoattack_preflight", not flags,
                 "; ".join(flags) or "pyautoattack's checks (randomness, softmax outputs, "
                 "dynamic defence, number of classes) raised no flag")


def autoattack_check(result: evaluate.AutoAttackResult) -> Check:
    """A Check from the flags of an AutoAttack run (``evaluate.run_autoattack``).

    Args:
        result: the AutoAttackResult of the evaluation.
    Returns:
        Check 'autoattack_flags': passed if the reference raised no flag.
    """
    head = (f"AutoAttack ({result.version}, seed {result.seed}) robust accuracy "
            f"{accuracy(result.correct):.1f}% on {len(result.correct)} examples")
    return Check("autoattack_flags", not result.flags,
                 f"{head}; flags: " + "; ".join(result.flags) if result.flags
                 else f"{head}; the reference raised no flag (zero gradients, Square success, ...)")


def check_autoattack_flags(model, x, y, threat) -> Check:
    """Standard AutoAttack on the batch raises none of the reference's flags (heavy)."""
    return autoattack_check(evaluate.run_autoattack(model, x, y, threat))


def _num_classes(model, x) -> int:
    with evaluation_mode(model), torch.no_grad():
        return int(model(x[:1]).shape[1])


CHEAP_CHECKS = (check_deterministic, check_logits, check_input_gradients, check_attack_purity,
                check_perturbation_bounds, check_rescoring, check_attack_order, check_noise_weaker,
                check_clean_accuracy, check_eval_mode, check_batch_independence, check_fp32,
                check_finite_gradients, check_finite_differences, check_attack_progress,
                check_unbounded_attack, check_autoattack_preflight)
HEAVY_CHECKS = (check_eps_monotone, check_more_iterations, check_pgd_converged,
                check_square_vs_pgd, check_transfer_weaker, check_autoattack_flags)
CHECKS = CHEAP_CHECKS + HEAVY_CHECKS


def run_all(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
            cheap_only: bool = False) -> list:
    """Run every sanity check (or only the cheap ones) on a small batch.

    Args:
        model: classifier returning logits (its mode and buffers are restored afterwards).
        x: images in [0, 1] (or uint8), [B, C, H, W] (about 100-200 examples).
        y: labels, int64 [B].
        threat: ThreatModel (norm, eps) of the evaluation.
        cheap_only: run only ``CHEAP_CHECKS`` (seconds on ~100 images of a small model);
            else ``CHECKS`` (adds Square, transfer, AutoAttack and long PGD runs).
    Returns:
        list of Check, in the order of ``CHEAP_CHECKS`` or ``CHECKS``.
    """
    x = as_float_images(x)
    return [check(model, x, y, threat) for check in (CHEAP_CHECKS if cheap_only else CHECKS)]


def run_cheap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> list:
    """The cheap sanity checks, for every final evaluation: ``run_all(..., cheap_only=True)``.

    Args:
        model, x, y, threat: as in ``run_all`` (about 100 examples).
    Returns:
        list of Check, in the order of ``CHEAP_CHECKS``.
    """
    return run_all(model, x, y, threat, cheap_only=True)
