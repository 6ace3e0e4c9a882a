"""One training loop for every method: standard, FGSM(-RS), free, PGD, GradAlign, ZeroGrad,
MultiGrad and l2 fast AT, on 1 or N processes (DDP), with checkpoints, exact resume,
early stopping (wong2020 App. B) and ZeroGrad's q roll-back (golgooni2021 §5.2).

A method is a small set of callables built by ``make_method(config)``: a ``perturb``
(model, x, y, state) -> delta made from ``fatlib.attacks``, an optional regularizer
(``fatlib.regularizers``), and a number of minibatch replays (free AT); the loop
itself never branches on the method's name.

This module is the one to import (``from fatlib.train import TrainConfig, train``); the
code lives in modules named for what they hold:

- ``fatlib.config``: TrainConfig, its validation, and the tables of methods and defaults;
- ``fatlib.methods``: make_method (Method, AttackState) and attack_schedule (warm-ups);
- ``fatlib.devices``: resolve_device, DDP (init_distributed, Dist), precision
  (resolve_precision, autocast, native_bf16_cpu, $FATLIB_AUTO_PRECISION), derived seeds;
- ``fatlib.checkpoints``: save_checkpoint, load_checkpoint, load_model;
- ``fatlib.history``: the history records (their keys are listed there) and
  final_evaluation;
- ``fatlib.guards``: early stopping and roll-back (COLLAPSE_DROP, BEST_GUARD_N);
- ``fatlib.loop``: train, TrainResult, NonFiniteLoss and the run state.
"""

# the modules the old single-file fatlib.train imported, still reachable as its attributes
from fatlib import (attacks, data, evaluate, metrics, models, regularizers,  # noqa: F401
                    sanity, schedules)
from fatlib.checkpoints import CHECKPOINT, load_checkpoint, load_model, save_checkpoint
from fatlib.config import (DEFAULT_ALPHA_RATIO, DEFAULT_FGSM_INIT, EARLY_STOP_RULES,
                           FGSM_INITS, FGSM_RS_ALPHA_RATIO, LATE_FIELD_DEFAULTS, MAX_STEP_TO_EPS,
                           METHODS, OPTIMIZERS, PRECISIONS, TrainConfig, pgd_alpha_ratio)
from fatlib.devices import (AUTO_PRECISION_ENV, Dist, autocast, derived_seed, init_distributed,
                            native_bf16_cpu, resolve_device, resolve_precision)
from fatlib.guards import BEST_GUARD_N, COLLAPSE_DROP
from fatlib.history import SANITY_N, final_evaluation, sanity_checks
from fatlib.loop import NonFiniteLoss, TrainResult, _Run, train  # noqa: F401 (_Run: tests)
from fatlib.methods import AttackState, Method, attack_schedule, make_method
from fatlib.threat import NORMS, ThreatModel  # noqa: F401

__all__ = [
    "AUTO_PRECISION_ENV", "AttackState", "BEST_GUARD_N", "CHECKPOINT", "COLLAPSE_DROP",
    "DEFAULT_ALPHA_RATIO", "DEFAULT_FGSM_INIT", "Dist", "EARLY_STOP_RULES", "FGSM_INITS",
    "FGSM_RS_ALPHA_RATIO", "LATE_FIELD_DEFAULTS", "MAX_STEP_TO_EPS", "METHODS", "Method",
    "NonFiniteLoss", "OPTIMIZERS", "PRECISIONS", "SANITY_N", "TrainConfig", "TrainResult",
    "attack_schedule", "autocast", "derived_seed", "final_evaluation", "init_distributed",
    "load_checkpoint", "load_model", "make_method", "native_bf16_cpu", "pgd_alpha_ratio",
    "resolve_device", "resolve_precision", "sanity_checks", "save_checkpoint", "train",
]
