"""Robustness evaluation: per-example correctness under clean, FGSM, PGD-K-R and AutoAttack.

AutoAttack is the reference implementation of Croce & Hein (PyPI ``pyautoattack``):
``run_autoattack`` returns its perturbations with its log and its flags, ``autoattack``
only the perturbations (an attack for ``evaluate``); ``square`` is its Square Attack alone.

Every function returns per-example boolean tensors, so worst cases over attacks are an
AND (``clean & pgd & autoattack``) and ``accuracy`` turns them into percentages.
Evaluation always runs the model in eval mode and fp32 (autocast off), and restores the
model's mode afterwards. Attacked correctness is the model's prediction at x + delta
(as in the papers' code); AND it with 'clean' for "correct at every point of the ball".
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from dataclasses import dataclass
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


AUTOATTACK_VERSIONS = ("standard", "plus", "rand")
_REFERENCE_NORMS = {"linf": "Linf", "l2": "L2"}
_REFERENCE_LOGGER = "auto-attack"


@dataclass
class AutoAttackResult:
    """One run of the reference AutoAttack: perturbations, correctness, its log and its flags.

    Args:
        delta: perturbations, [B, C, H, W], with ||delta|| <= eps and x + delta in [0, 1].
        correct: bool [B] (CPU): model(x + delta) classifies example i correctly (re-scored).
        log: every line the reference logged (version and attacks, clean accuracy, robust
            accuracy after each attack, final perturbation norms), in order.
        flags: the lines it logged as warnings, without repeats: its ``checks`` module (a
            randomised defence, softmax outputs, a dynamic defence, too many target classes,
            points with zero gradient, Square more successful than the gradient attacks).
        version: 'standard', 'plus' or 'rand'.
        seed: the seed given to the reference (it seeds torch with it before each attack).
    """

    delta: torch.Tensor
    correct: torch.Tensor
    log: list
    flags: list
    version: str
    seed: int


class _Records(logging.Handler):
    """A logging handler that keeps every record it receives."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def _captured_log(name: str):
    """Capture every record of logger ``name`` (DEBUG and up) without passing it to the root."""
    logger, handler = logging.getLogger(name), _Records()
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def _reference_run(model: nn.Module, x: torch.Tensor):
    """Eval mode and fp32; model state and torch's RNG restored; the reference's log captured.

    The reference seeds torch's global RNG before each attack: forking it leaves the caller's
    stream untouched. Its dynamic-defence check counts calls in global counters that are
    never reset: they are zeroed first, so one model's flag does not carry over to the next;
    it also traces a forward with ``sys.settrace`` and then clears the trace function, so a
    tracer already set (coverage, a debugger) is put back.
    """
    from pyautoattack import checks

    checks.funcs.update(dict.fromkeys(checks.funcs, 0))
    devices = [x.device.index or 0] if x.is_cuda else []
    tracer = sys.gettrace()
    try:
        with evaluation_mode(model), attacks.preserved_state(model), \
                torch.random.fork_rng(devices=devices), \
                _captured_log(_REFERENCE_LOGGER) as records:
            yield records
    finally:
        sys.settrace(tracer)


def _reference_autoattack(model: nn.Module, x: torch.Tensor, threat: ThreatModel, version: str,
                          seed: int):
    from pyautoattack import AutoAttack

    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {AUTOATTACK_VERSIONS}, got {version!r}")
    return AutoAttack(model, norm=_REFERENCE_NORMS[threat.norm], eps=threat.eps,
                      version=version, seed=seed, device=x.device)


def _warnings(records) -> list:
    return list(dict.fromkeys(r.getMessage() for r in records if r.levelno >= logging.WARNING))


def _seed(seed: int | None) -> int:
    return int(torch.randint(0, 2**31 - 1, ())) if seed is None else int(seed)


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                   version: str = "standard", seed: int | None = None,
                   batch_size: int = 250) -> AutoAttackResult:
    """The reference AutoAttack (PyPI ``pyautoattack``), with its log and its flags.

    Implements: Croce & Hein 2020; version='standard' is APGD-CE (100 iterations, no
    restarts), APGD-T (9 target classes), FAB-T (9 target classes) and Square (5,000
    queries), each run on the examples the previous ones did not break; 'rand' is APGD-CE
    and APGD-DLR with EOT over 20 draws (for randomised defences); 'plus' adds restarts and
    the untargeted versions. Used by golgooni2021 Table 5. Runs in eval mode and fp32; the
    model's mode, its buffers and torch's global RNG are the same afterwards.
    Args:
        model: classifier returning logits; inputs in [0, 1] (normalisation inside).
        x: images in [0, 1] (or uint8), [B, C, H, W].
        y: labels, int64 [B].
        threat: ThreatModel; 'linf' -> norm='Linf', 'l2' -> norm='L2'; eps in pixel units.
        version: 'standard', 'plus' or 'rand'.
        seed: the reference's seed; default drawn from torch's global RNG (deterministic
            given torch.manual_seed). The same seed gives the same result.
        batch_size: examples per attack call inside the reference.
    Returns:
        AutoAttackResult (delta, correct, log, flags, version, seed).
    """
    x, seed = as_float_images(x), _seed(seed)
    with _reference_run(model, x) as records:
        adversary = _reference_autoattack(model, x, threat, version, seed)
        x_adv, _ = adversary.run_standard_evaluation(x, y.to(x.device), batch_size=batch_size)
    delta = threat.project(x_adv.detach() - x, x)
    return AutoAttackResult(delta, predict_correct(model, x, y, delta),
                            [r.getMessage() for r in records], _warnings(records), version, seed)


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
               seed: int | None = None, version: str = "standard") -> torch.Tensor:
    """The reference AutoAttack as an attack: ``run_autoattack(...).delta``.

    Implements: Croce & Hein 2020 (see ``run_autoattack``, which also returns the log and
    the flags); this form plugs into ``evaluate(..., attacks=("autoattack",))``.
    Args:
        model, x, y, threat, seed, version: as in ``run_autoattack``.
    Returns:
        delta, [B, C, H, W], with ||delta|| <= eps and x + delta in [0, 1].
    """
    return run_autoattack(model, x, y, threat, version=version, seed=seed).delta


def autoattack_preflight(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         threat: ThreatModel, *, version: str = "standard") -> list:
    """The reference AutoAttack's checks that need no attack, run alone (a few forwards).

    Implements: the checks ``run_standard_evaluation`` runs before attacking (pyautoattack's
    ``checks``: randomised outputs over 5 forwards, except for version='rand'; outputs that
    are probabilities; a forward that calls autograd (dynamic defence); more target classes
    than the model has). The checks that need the attacks (zero gradients, Square's success)
    come with ``run_autoattack``.
    Args:
        model: classifier returning logits (eval mode and fp32 inside; state restored).
        x: images in [0, 1] (or uint8), [B, C, H, W].
        y: labels, int64 [B].
        threat: ThreatModel of the evaluation.
        version: 'standard', 'plus' or 'rand'.
    Returns:
        list of the reference's warning lines (empty: nothing flagged).
    """
    from pyautoattack import checks

    x = as_float_images(x)
    with _reference_run(model, x) as records:
        adversary = _reference_autoattack(model, x, threat, version, seed=0)
        log = adversary.logger
        if version != "rand":
            checks.check_randomized(adversary.get_logits, x, y.to(x.device), bs=len(x), logger=log)
        n_classes = checks.check_range_output(adversary.get_logits, x, logger=log)
        checks.check_dynamic(model, x, False, logger=log)
        checks.check_n_classes(n_classes, adversary.attacks_to_run,
                               adversary.apgd_targeted.n_target_classes,
                               adversary.fab.n_target_classes, logger=log)
    return _warnings(records)


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
           queries: int = 5000, seed: int | None = None) -> torch.Tensor:
    """The reference Square Attack alone: a black-box attack that only queries the model's outputs.

    Implements: Andriushchenko et al. 2020 (Square Attack), with AutoAttack's settings
    (margin loss, p_init 0.8, one restart); eval mode and fp32, model state and torch's RNG
    restored.
    Args:
        model: classifier returning logits.
        x: images in [0, 1] (or uint8), [B, C, H, W].
        y: labels, int64 [B].
        threat: ThreatModel ('linf' or 'l2', eps in pixel units).
        queries: queries per example (AutoAttack: 5,000).
        seed: the reference's seed; default drawn from torch's global RNG.
    Returns:
        delta, [B, C, H, W], with ||delta|| <= eps and x + delta in [0, 1].
    """
    from pyautoattack.square import SquareAttack

    x, seed = as_float_images(x), _seed(seed)
    with _reference_run(model, x):
        adversary = SquareAttack(model, p_init=0.8, n_queries=int(queries), eps=threat.eps,
                                 norm=_REFERENCE_NORMS[threat.norm], n_restarts=1, seed=seed,
                                 verbose=False, device=x.device, resc_schedule=False)
        x_adv = adversary.perturb(x, y.to(x.device))
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
