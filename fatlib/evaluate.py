"""Robustness evaluation: per-example correctness under clean, FGSM, PGD-K-R and AutoAttack.

Every function returns per-example boolean tensors, so worst cases over attacks are an
AND (``clean & pgd & autoattack``) and ``accuracy`` turns them into percentages.
Evaluation always runs the model in eval mode and fp32 (autocast off), and restores the
model's mode afterwards. Attacked correctness is the model's prediction at x + delta
(as in the papers' code); AND it with 'clean' for "correct at every point of the ball".
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
from torch import nn

from fatlib import attacks
from fatlib.threat import ThreatModel

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
ATTACK_NAMES = ("clean", "fgsm", "pgd", "autoattack")


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Eval mode, autocast off (fp32) and gradients enabled inside; the mode is restored after.

    Args:
        model: any nn.Module.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with contextlib.ExitStack() as stack:
            for device_type in ("cpu", "cuda"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            stack.enter_context(torch.enable_grad())
            yield model
    finally:
        for module, training in modes:
            module.training = training


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> fp32 in [0, 1]; float images are checked to lie in [0, 1].

    Args:
        images: uint8 [N, C, H, W] (as ``fatlib.data.load`` returns) or float in [0, 1].
    Returns:
        fp32 images in [0, 1].
    """
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError("float images must lie in [0, 1] (pixel space; normalisation is the "
                         f"model's first layer); got values in [{float(images.min()):.3g}, "
                         f"{float(images.max()):.3g}]")
    return images.float()


def _batches(n: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


def predict_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    delta: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
    """Whether the model classifies x + delta correctly, in eval mode and fp32.

    Args:
        model: classifier returning logits.
        x: images in [0, 1] (or uint8), [N, C, H, W].
        y: labels, int64 [N].
        delta: optional perturbations, [N, C, H, W].
        batch_size: examples per forward pass.
    Returns:
        bool [N] on the CPU.
    """
    x = as_float_images(x)
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    with evaluation_mode(model), torch.no_grad():
        for sl in _batches(x.shape[0], batch_size):
            xb = x[sl] if delta is None else x[sl] + delta[sl].float()
            out[sl] = (model(xb).argmax(1) == y[sl]).cpu()
    return out


def attack_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Attack, *,
                   batch_size: int = 256, progress: bool = False, desc: str = "attack") -> torch.Tensor:
    """Whether the model still classifies each example correctly after the attack.

    The attack runs per batch in eval mode and fp32; its delta is re-scored by a forward pass.
    Args:
        model: classifier returning logits.
        x: images in [0, 1] (or uint8), [N, C, H, W].
        y: labels, int64 [N].
        attack: ``attack(model, xb, yb) -> delta``, e.g. ``functools.partial(pgd, threat=t,
            alpha=eps / 4, steps=50, restarts=10)``.
        batch_size: examples per attack call.
        progress: show a tqdm bar (examples done).
        desc: label of the progress bar.
    Returns:
        bool [N] on the CPU.
    """
    x = as_float_images(x)
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    with evaluation_mode(model), _progress(x.shape[0], desc, progress) as bar:
        for sl in _batches(x.shape[0], batch_size):
            delta = attack(model, x[sl], y[sl])
            with torch.no_grad():
                out[sl] = (model(x[sl] + delta).argmax(1) == y[sl]).cpu()
            bar.update(sl.stop - sl.start)
    return out


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
               seed: int | None = None) -> torch.Tensor:
    """AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square) via torchattacks, as a delta.

    Implements: Croce & Hein 2020, used by golgooni2021 Table 5; torchattacks expects
    inputs in [0, 1] and a model that normalises, which fatlib models do.
    Args:
        model: classifier returning logits (torchattacks puts it in eval mode).
        x: images in [0, 1], [B, C, H, W].
        y: labels, int64 [B].
        threat: ThreatModel; 'linf' -> norm='Linf', 'l2' -> norm='L2'.
        seed: AutoAttack's seed; default drawn from torch's global RNG (deterministic
            given torch.manual_seed).
    Returns:
        delta, [B, C, H, W], with ||delta|| <= eps and x + delta in [0, 1].
    """
    import torchattacks

    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, ()))
    norm = {"linf": "Linf", "l2": "L2"}[threat.norm]
    attack = torchattacks.AutoAttack(model, norm=norm, eps=threat.eps, version="standard",
                                     n_classes=_num_classes(model, x), seed=seed)
    # torchattacks re-seeds torch's global RNG; fork it so the caller's stream is untouched.
    devices = [x.device.index or 0] if x.is_cuda else []
    with attacks.preserved_state(model), torch.random.fork_rng(devices=devices):
        x_adv = attack(x, y)
    return threat.project(x_adv.detach() - x, x)


def make_attack(name: str, threat: ThreatModel, *, pgd_steps: int = 50, pgd_restarts: int = 10,
                pgd_alpha: float | None = None) -> Attack:
    """The evaluation attack called ``name``: 'fgsm' (zero init, alpha = eps), 'pgd' or 'autoattack'.

    Args:
        name: one of 'fgsm', 'pgd', 'autoattack'.
        threat: ThreatModel.
        pgd_steps, pgd_restarts: K and R of PGD-K-R (papers: PGD-50-10).
        pgd_alpha: PGD step size in pixel units; default eps / 4 (andriushchenko2020).
    Returns:
        ``attack(model, x, y) -> delta``.
    """
    if name == "fgsm":
        return functools.partial(attacks.fgsm, threat=threat, init="zero")
    if name == "pgd":
        alpha = threat.eps / 4 if pgd_alpha is None else pgd_alpha
        return functools.partial(attacks.pgd, threat=threat, alpha=alpha, steps=pgd_steps,
                                 restarts=pgd_restarts, early_stop=True)
    if name == "autoattack":
        return functools.partial(autoattack, threat=threat)
    raise ValueError(f"unknown attack {name!r}; use one of {ATTACK_NAMES} or a (name, callable) pair")


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, *,
             attacks=("clean", "fgsm", "pgd"), pgd_steps: int = 50, pgd_restarts: int = 10,
             pgd_alpha: float | None = None, batch_size: int = 256,
             progress: bool = False) -> dict:
    """Per-example correctness of the model under each attack, in eval mode and fp32.

    Implements: the papers' evaluation (wong2020, andriushchenko2020: PGD-50-10 with
    alpha = eps/4 on the first 1,000 test points; golgooni2021 Table 5: AutoAttack).
    Args:
        model: classifier returning logits (its mode is restored afterwards).
        images: uint8 [N, C, H, W] or float in [0, 1].
        labels: int64 [N].
        threat: ThreatModel (norm, eps in pixel units).
        attacks: names from 'clean', 'fgsm', 'pgd', 'autoattack', or (name, callable) pairs
            with ``callable(model, x, y) -> delta``.
        pgd_steps, pgd_restarts, pgd_alpha: PGD-K-R settings (alpha default eps / 4).
        batch_size: examples per attack call.
        progress: tqdm progress bars.
    Returns:
        dict name -> bool [N] (CPU); combine worst cases with &, report with ``accuracy``.
    """
    x = as_float_images(images)
    results = {}
    for entry in attacks:
        name, attack = entry if isinstance(entry, tuple) else (entry, None)
        if name == "clean" and attack is None:
            results[name] = predict_correct(model, x, labels, batch_size=batch_size)
            continue
        if attack is None:
            attack = make_attack(name, threat, pgd_steps=pgd_steps, pgd_restarts=pgd_restarts,
                                 pgd_alpha=pgd_alpha)
        results[name] = attack_correct(model, x, labels, attack, batch_size=batch_size,
                                       progress=progress, desc=name)
    return results


def accuracy(correct: torch.Tensor) -> float:
    """Percentage of True entries of a per-example correctness tensor.

    Args:
        correct: bool [N], N >= 1.
    Returns:
        accuracy in percent.
    """
    if correct.numel() == 0:
        raise ValueError("accuracy of an empty set of examples is undefined; evaluate at least one")
    return 100.0 * float(correct.float().mean())
