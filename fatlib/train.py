"""One training loop for every method: standard, FGSM(-RS), free, PGD, GradAlign, ZeroGrad,
MultiGrad and l2 fast AT, on 1 or N processes (DDP), with checkpoints, exact resume,
early stopping (wong2020 App. B) and ZeroGrad's q roll-back (golgooni2021 §5.2).

A method is a small set of callables built by ``make_method(config)``: a ``perturb``
(model, x, y, state) -> delta made from ``fatlib.attacks``, an optional regularizer
(``fatlib.regularizers``), and a number of minibatch replays (free AT); the loop
itself never branches on the method's name.

History: ``train`` returns (and ``fatlib.runs`` saves as history.json) a list of dicts,
one per record: at iteration 0, every ``eval_every`` optimizer steps (or at the end of
every epoch when eval_every is 0) and at the end. Keys:

- iteration, epoch (passes over the data, float), lr / eps / alpha (of the last step),
  q (ZeroGrad quantile), rollbacks (roll-backs so far);
- train_loss, train_acc (%), delta_l1, delta_l2, delta_linf: means over the training
  minibatches since the previous record (adversarial examples of the method);
- clean_acc, fgsm_acc, pgd_acc (%) and clean_loss, fgsm_loss, pgd_loss on the first
  n_eval test images (eval mode, fp32; FGSM from zero with alpha = eps; PGD with
  eval_pgd_steps / eval_pgd_restarts / eval_alpha);
- grad_alignment (andriushchenko2020 eq. 5, on the same images; None for l2),
  cos_fgsm_pgd (mean cosine of FGSM and plain-PGD perturbations, first 256 images);
- weight_update_l2 (l2 norm of the change of all parameters since the previous
  record) and weight_update_mse (per weight tensor, golgooni2021 Fig. 1);
- probe_delta_mse: MSE between this and the previous record's training perturbation
  of a fixed training minibatch (the first batch_size training images, same noise
  seed each time; golgooni2021 Fig. 2);
- time_attack, time_update, time_eval: cumulative wall seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fatlib import attacks, data, evaluate, metrics, models, regularizers, sanity, schedules
from fatlib.threat import NORMS, ThreatModel

METHODS = ("standard", "fgsm", "free", "pgd", "gradalign", "zerograd", "multigrad", "l2fast")
FGSM_INITS = ("zero", "random", "previous", "random_unclipped")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
EARLY_STOP_RULES = ("drop", "best")
AUTO_PRECISION_ENV = "FATLIB_AUTO_PRECISION"  # 'fp32': precision 'auto' resolves to fp32 on a CPU
# Fields added after the first records: left out of the hashed JSON while at these defaults,
# so that the run folders of older configs keep their names.
LATE_FIELD_DEFAULTS = {"early_stop_rule": "drop"}
CHECKPOINT = "checkpoint.pt"
# alpha / eps when alpha is None, the papers' settings: FGSM from a zero start alpha = eps, from a
# random start 1.25 eps (wong2020, andriushchenko2020's fgsm_alpha); free AT eps (wong2020
# Alg. 2); ZeroGrad 2 eps from a random start, MultiGrad eps (golgooni2021's code); l2 fast
# AT 1.5 eps (l2fast). PGD's default is pgd_alpha_ratio.
FGSM_RS_ALPHA_RATIO = 1.25
DEFAULT_ALPHA_RATIO = {"standard": 1.0, "fgsm": 1.0, "free": 1.0, "pgd": 1.0, "gradalign": 1.0,
                       "zerograd": 2.0, "multigrad": 1.0, "l2fast": 1.5}
# fgsm_init when None: GradAlign is FGSM from a zero start plus the regulariser
# (andriushchenko2020 §5); every other method starts FGSM from a random point (wong2020).
DEFAULT_FGSM_INIT = {"gradalign": "zero"}
MAX_STEP_TO_EPS = 4.0  # a step size above 4 eps is legal but almost always a units mistake
COLLAPSE_DROP = 20.0  # percentage points of PGD accuracy lost in one epoch (wong2020 App. B: 0.2)
BEST_GUARD_N = 256    # 'best' rule: fixed training images checked (andriushchenko2020's code)
SANITY_N = 100        # test images of the cheap sanity checks after every final evaluation


# ----------------------------------------------------------------------------- config

@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; its JSON hash names the run folder.

    eps, alpha and pgd_alpha are in pixel units (8/255). alpha=None means the method's
    default multiple of eps (DEFAULT_ALPHA_RATIO); epochs count cost-equivalent epochs
    (free AT makes ceil(epochs / free_m) passes over the data, each minibatch replayed
    free_m times, as in wong2020 Alg. 2).
    """

    # data and model
    dataset: str = "cifar10"
    n_train: int | None = None            # first n training examples (None: all)
    n_eval: int = 500                     # first n test examples for the metric history (0: none)
    model: str = "preact_resnet18"
    model_kw: dict = field(default_factory=dict)  # e.g. {"n_filters": 4} for cnn1
    # method
    method: str = "fgsm"
    norm: str = "linf"
    eps: float = 8 / 255
    alpha: float | None = None
    fgsm_init: str | None = None          # fgsm / gradalign: 'zero' | 'random' | 'previous' |
                                          # 'random_unclipped' (wong2020's MNIST code, see below);
                                          # None: 'zero' for gradalign, else 'random'

    free_m: int = 8
    pgd_steps: int = 10
    pgd_alpha: float | None = None        # None: pgd_alpha_ratio(pgd_steps) * eps
    pgd_random_start: bool = True
    pgd_corners: bool = False
    ga_lambda: float = 0.2
    zg_q: float = 0.35
    rollback_qs: tuple = ()               # ZeroGrad: next q values after each detected collapse
    mg_n: int = 3
    # optimisation
    epochs: int = 30
    batch_size: int = 128
    augment: bool = True
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    lr_max: float = 0.2
    lr_schedule: str = "cyclic"
    lr_peak: float = 0.4                  # cyclic: fraction of training at the peak
    lr_drops: tuple = ()                  # piecewise: epochs of the drops
    lr_factor: float = 0.1
    weight_decay: float = 5e-4
    eps_warmup_epochs: float = 0.0
    alpha_warmup_epochs: float = 0.0
    grad_clip: float | None = None        # golgooni2021 App. C.5
    grad_clip_mode: str = "norm"          # 'norm' (clip_grad_norm_) | 'value'
    precision: str = "fp32"
    channels_last: bool = False
    seed: int = 0
    device: str = "auto"
    # monitoring and guards
    eval_every: int = 0                   # iterations between history records (0: every epoch)
    eval_pgd_steps: int = 10
    eval_pgd_restarts: int = 1
    eval_pgd_alpha: float | None = None   # None: eps / 4
    early_stop: bool = False              # guard against catastrophic overfitting:
    early_stop_rule: str = "drop"         # 'drop': wong2020 App. B, PGD-5 on the epoch's first
                                          # minibatch, stop (and restore the last epoch) at a
                                          # 20-point drop; 'best': andriushchenko2020's code,
                                          # PGD-10 on the first BEST_GUARD_N unaugmented training
                                          # images at every history record, train on, keep the
                                          # weights with the best guard accuracy
    # final evaluation (metrics.json); final_n_eval 0: use the last history record
    final_n_eval: int = 0
    final_pgd_steps: int = 50
    final_pgd_restarts: int = 10
    final_pgd_alpha: float | None = None  # None: eps / 4

    def __post_init__(self):
        object.__setattr__(self, "model_kw", dict(self.model_kw))
        if self.fgsm_init is None:
            object.__setattr__(self, "fgsm_init", DEFAULT_FGSM_INIT.get(self.method, "random"))
        for name in ("rollback_qs", "lr_drops"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("eps", "lr_max"):
            object.__setattr__(self, name, float(getattr(self, name)))
        _validate(self)

    # --- serialisation
    def to_dict(self) -> dict:
        """Plain JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        d["rollback_qs"], d["lr_drops"] = list(self.rollback_qs), list(self.lr_drops)
        return d

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces) without LATE_FIELD_DEFAULTS: the text hashed."""
        d = {k: v for k, v in self.to_dict().items()
             if not (k in LATE_FIELD_DEFAULTS and v == LATE_FIELD_DEFAULTS[k])}
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        """Short sha256 (12 hex digits) of the canonical JSON; names the run folder."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of to_dict; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        return cls.from_dict(json.loads(text))

    def __hash__(self):
        return int(self.hash(), 16)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # --- derived values
    @property
    def alpha_value(self) -> float:
        """Step size of the training attack in pixel units (pgd_alpha for 'pgd').

        Defaults (alpha or pgd_alpha None) are the papers': see DEFAULT_ALPHA_RATIO,
        FGSM_RS_ALPHA_RATIO (FGSM and GradAlign from a random start) and pgd_alpha_ratio.
        """
        if self.method == "pgd":
            return self.pgd_alpha if self.pgd_alpha is not None else pgd_alpha_ratio(self.pgd_steps) * self.eps
        if self.alpha is not None:
            return self.alpha
        random_start = self.method in ("fgsm", "gradalign") and self.fgsm_init != "zero"
        return (FGSM_RS_ALPHA_RATIO if random_start else DEFAULT_ALPHA_RATIO[self.method]) * self.eps

    @property
    def replays(self) -> int:
        """Optimizer steps per minibatch (free_m for free AT, else 1)."""
        return self.free_m if self.method == "free" else 1

    @property
    def passes(self) -> int:
        """Passes over the training data: ceil(epochs / replays)."""
        return math.ceil(self.epochs / self.replays)

    @property
    def eval_alpha(self) -> float:
        return self.eval_pgd_alpha if self.eval_pgd_alpha is not None else self.eps / 4


def pgd_alpha_ratio(steps: int) -> float:
    """Default PGD training step / eps: 1/2 for PGD-2, else 2 / steps.

    Implements: andriushchenko2020's scripts (PGD-2 with alpha eps/2, PGD-10 with eps/5).
    wong2020's PGD-7 used 2/255 at 8/255 (2 eps / 7 would be 2.3/255): give pgd_alpha for it.
    """
    return 0.5 if steps == 2 else 2.0 / steps


def _check_step_sizes(c: TrainConfig, bad) -> None:
    """Step sizes are in pixel units: reject those outside (0, 1], warn above MAX_STEP_TO_EPS eps."""
    for name in ("alpha", "pgd_alpha", "eval_pgd_alpha", "final_pgd_alpha"):
        v = getattr(c, name)
        if v is None:
            continue
        if not (v > 0 and math.isfinite(v)):
            bad(f"{name} must be > 0 (or None for the default); got {v}")
        if c.norm == "linf" and v > 1:
            bad(f"{name} = {v} is more than the whole pixel range: step sizes are in pixel units "
                f"(10/255 = {10 / 255:.4f}, not 10); use e.g. {name}={min(v, 255) / 255:.4f}")
        if v > MAX_STEP_TO_EPS * c.eps:
            warnings.warn(f"{name} = {v:.4g} is {v / c.eps:.1f} times eps = {c.eps:.4g}; steps are in "
                          f"pixel units like eps (8/255, not 8): is that intended?", stacklevel=4)


def _validate(c: TrainConfig) -> None:
    def bad(msg):
        raise ValueError(f"bad TrainConfig: {msg}")

    if c.method not in METHODS:
        bad(f"unknown method {c.method!r}; known methods: {', '.join(METHODS)}")
    if c.model not in models.MODEL_NAMES:
        bad(f"unknown model {c.model!r}; known models: {', '.join(models.MODEL_NAMES)}")
    if c.dataset not in data.DATASETS:
        bad(f"unknown dataset {c.dataset!r}; known datasets: {', '.join(sorted(data.DATASETS))}")
    if c.norm not in NORMS:
        bad(f"unknown norm {c.norm!r}; use one of {NORMS}")
    if not (c.eps > 0 and (c.eps <= 1 or c.norm == "l2") and math.isfinite(c.eps)):
        bad(f"eps must be in (0, 1] (pixel units, e.g. 8/255); got {c.eps}")
    _check_step_sizes(c, bad)
    if c.grad_clip is not None and not c.grad_clip > 0:
        bad(f"grad_clip must be > 0 (or None for no clipping); got {c.grad_clip}")
    if c.fgsm_init not in FGSM_INITS:
        bad(f"fgsm_init must be one of {FGSM_INITS}; got {c.fgsm_init!r}")
    if c.fgsm_init == "random_unclipped" and c.norm != "linf":
        bad("fgsm_init 'random_unclipped' is defined for norm='linf'")
    if c.method == "l2fast" and c.norm != "l2":
        bad("method 'l2fast' needs norm='l2'")
    if c.method == "gradalign" and c.norm != "linf":
        bad("method 'gradalign' is defined for norm='linf' (andriushchenko2020 eq. 7)")
    qs = (c.zg_q,) + c.rollback_qs
    if any(not 0 <= q < 1 for q in qs):
        bad(f"ZeroGrad q must be in [0, 1); got zg_q={c.zg_q}, rollback_qs={c.rollback_qs}")
    if c.rollback_qs and (c.method != "zerograd" or list(qs) != sorted(set(qs))):
        bad("rollback_qs is for method 'zerograd' and must be increasing values above zg_q")
    def is_int(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    for name in ("free_m", "pgd_steps", "mg_n", "epochs", "batch_size", "eval_pgd_steps",
                 "eval_pgd_restarts", "final_pgd_steps", "final_pgd_restarts"):
        if not is_int(getattr(c, name), 1):
            bad(f"{name} must be an integer >= 1; got {getattr(c, name)!r}")
    for name in ("n_eval", "eval_every", "final_n_eval", "seed"):
        if not is_int(getattr(c, name), 0):
            bad(f"{name} must be an integer >= 0; got {getattr(c, name)!r}")
    if c.n_train is not None and not is_int(c.n_train, 1):
        bad(f"n_train must be None (all) or an integer >= 1; got {c.n_train!r}")
    if c.optimizer not in OPTIMIZERS:
        bad(f"optimizer must be one of {OPTIMIZERS}; got {c.optimizer!r}")
    if not 0 <= c.momentum < 1:
        bad(f"momentum must be in [0, 1); got {c.momentum}")
    if c.lr_schedule not in schedules.LR_SCHEDULES:
        bad(f"lr_schedule must be one of {schedules.LR_SCHEDULES}; got {c.lr_schedule!r}")
    if not c.lr_max > 0 or not 0 < c.lr_peak < 1 or not c.lr_factor > 0:
        bad(f"need lr_max > 0, 0 < lr_peak < 1, lr_factor > 0; got {c.lr_max}, {c.lr_peak}, {c.lr_factor}")
    for name in ("weight_decay", "ga_lambda", "eps_warmup_epochs", "alpha_warmup_epochs"):
        if not getattr(c, name) >= 0:
            bad(f"{name} must be >= 0; got {getattr(c, name)}")
    if c.grad_clip_mode not in ("norm", "value"):
        bad(f"grad_clip_mode must be 'norm' or 'value'; got {c.grad_clip_mode!r}")
    if c.early_stop_rule not in EARLY_STOP_RULES:
        bad(f"early_stop_rule must be one of {EARLY_STOP_RULES}; got {c.early_stop_rule!r}")
    if c.precision not in PRECISIONS:
        bad(f"precision must be one of {PRECISIONS}; got {c.precision!r}")
    if not (c.device in ("auto", "cpu", "cuda") or c.device.startswith("cuda:")):
        bad(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {c.device!r}")
    try:
        models.build(c.model, c.dataset, **c.model_kw) if c.model_kw else None
    except ValueError as e:
        bad(str(e))


# ----------------------------------------------------------------------------- methods

@dataclass
class AttackState:
    """What a perturb callable may read and keep between steps.

    threat: the current threat model (eps after warm-up); alpha: current step size;
    q: current ZeroGrad quantile (changed by roll-back); delta: previous / persistent
    perturbation (FGSM 'previous' init, free AT), or None.
    """

    threat: ThreatModel
    alpha: float
    q: float
    delta: torch.Tensor | None = None


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


def make_method(c: TrainConfig) -> Method:
    """Map a config to its Method (perturb / regularizer / replays), built from fatlib.attacks.

    Implements: wong2020 Alg. 1-3, andriushchenko2020 eq. 7 (GradAlign), golgooni2021
    Alg. 1-2 (ZeroGrad, MultiGrad), l2fast (one step from a random start in the l2 ball).
    """
    fgsm = _fgsm_unclipped_start if c.fgsm_init == "random_unclipped" else _fgsm_perturb(c.fgsm_init)
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
        "l2fast": lambda: Method(lambda m, x, y, s: attacks.l2fast(m, x, y, s.threat, alpha=s.alpha)),
    }
    return builders[c.method]()


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
        alpha = schedules.linear_warmup(step, round(c.alpha_warmup_epochs * steps_per_epoch), c.alpha_value)
    elif c.method == "pgd":
        alpha = c.alpha_value
    else:
        alpha = c.alpha_value * eps / c.eps
    return eps, alpha


# ----------------------------------------------------------------------------- devices, DDP

def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda (this rank's GPU under DDP) if available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return torch.device(name)


@dataclass
class Dist:
    """Process group facts: rank, world size; world 1 means no DDP."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def from_main(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.broadcast(t, 0)
        return t

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order (a list of one on a single process)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def slice(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch."""
        return x if self.world == 1 else torch.tensor_split(x, self.world)[self.rank]


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 or AMX in oneDNN); emulated bf16 is slow.

    On a CPU without it (e.g. AVX2 only) a bf16-autocast training step is many times slower
    than fp32, so ``precision='auto'`` trains in fp32 there.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run computes in: 'auto' becomes the fast one this device supports.

    Args:
        precision: 'fp32', 'bf16', 'fp16' or 'auto'.
        device: the training device.

    Returns:
        'auto' -> 'bf16' on a CPU with native bf16 (else 'fp32'), 'bf16' on a CUDA GPU that
        supports it (else 'fp16' with a GradScaler); any other value unchanged.
        ``$FATLIB_AUTO_PRECISION=fp32`` makes 'auto' resolve to fp32 on every CPU (the test
        suite's second mode); ``=bf16`` keeps bf16 where it is native and fp32 elsewhere.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    forced = os.environ.get(AUTO_PRECISION_ENV, "")
    if forced not in ("", "fp32", "bf16"):
        raise ValueError(f"${AUTO_PRECISION_ENV} must be 'fp32' or 'bf16' (or unset); got {forced!r}")
    # 'bf16' is the default behaviour: bf16 only where native (emulated bf16 is ~13x slower)
    return "bf16" if forced != "fp32" and native_bf16_cpu() else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context of a training precision ('auto' resolved for ``device``)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' on CPU")
    return torch.autocast(device.type, dtype=dtype)


def derived_seed(seed: int, *parts) -> int:
    """A seed of its own for (seed, *parts): independent streams from one run seed."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")


@contextlib.contextmanager
def _seeded(seed: int, *parts):
    """Run a block on its own RNG stream, leaving the training RNG untouched."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derived_seed(seed, *parts))
        yield


# ----------------------------------------------------------------------------- checkpoints

class NonFiniteLoss(RuntimeError):
    """The training loss became nan or inf; the run stopped, its last checkpoint kept."""


def save_checkpoint(path, ckpt: dict) -> None:
    """Write a checkpoint dict atomically (temporary file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """Load a fatlib checkpoint with torch.load(weights_only=True); JSON fields decoded."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt:
        raise ValueError(f"{path} is not a fatlib checkpoint (no 'config'); to load a plain "
                         f"state_dict use fatlib.models.load_weights")
    ckpt = dict(ckpt)
    ckpt["config"] = TrainConfig.from_json(ckpt["config"])
    for key in ("history", "events", "state"):
        ckpt[key] = json.loads(ckpt[key])
    return ckpt


def load_model(path, device="cpu") -> tuple[TrainConfig, nn.Module]:
    """(config, model in eval mode) from a fatlib checkpoint file."""
    ckpt = load_checkpoint(path)
    cfg = ckpt["config"]
    model = models.build(cfg.model, cfg.dataset, **cfg.model_kw)
    models.load_weights(model, ckpt["model"], what=f"checkpoint {path}")
    return cfg, model.to(device).eval()


# ----------------------------------------------------------------------------- training state

@dataclass
class TrainResult:
    """What train returns: the model (eval mode) and everything recorded about the run."""

    config: TrainConfig
    model: nn.Module
    history: list
    metrics: dict | None
    events: list
    complete: bool
    steps_run: int
    run_dir: Path | None = None


class _Run:
    """The mutable state of one training run and the work the loop delegates."""

    def __init__(self, cfg: TrainConfig, device, dist: Dist, progress: bool, on_record):
        self.cfg, self.device, self.dist, self.on_record = cfg, device, dist, on_record
        torch.manual_seed(cfg.seed)
        self.model = models.build(cfg.model, cfg.dataset, **cfg.model_kw).to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net = self.model
        if dist.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.opt = self._optimizer()
        self.precision = resolve_precision(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.method = make_method(cfg)
        self.images, self.labels, self.source = data.load_with_source(cfg.dataset, "train", n=cfg.n_train)
        self.batches_per_pass = math.ceil(len(self.labels) / cfg.batch_size)
        self.total = cfg.passes * self.batches_per_pass * cfg.replays
        self.eval_x = self.eval_y = self.eval_source = None
        if cfg.n_eval:
            imgs, self.eval_y, self.eval_source = data.load_with_source(cfg.dataset, "test", n=cfg.n_eval)
            self.eval_x = data.to_float(imgs)
        n_probe = min(cfg.batch_size, len(self.labels))
        self.probe_x, self.probe_y = data.to_float(self.images[:n_probe]), self.labels[:n_probe]
        n_guard = min(BEST_GUARD_N, len(self.labels))
        self.guard_x, self.guard_y = data.to_float(self.images[:n_guard]), self.labels[:n_guard]
        self.attack = AttackState(ThreatModel(cfg.norm, cfg.eps), cfg.alpha_value, cfg.zg_q)
        # counters and records (all saved in checkpoints)
        self.step, self.passes_done, self.q_index = 0, 0, 0
        self.steps_taken = 0            # optimizer steps run by this call (not restored)
        self.history, self.events = [], []
        self.sums = torch.zeros(6, dtype=torch.float64)  # loss, correct, n, l1, l2, linf
        self.times = {"attack": 0.0, "update": 0.0, "eval": 0.0}
        self.prev_weights = self._weights()
        self.prev_probe = None
        self.prev_probe_acc = None      # guard: PGD-5 accuracy at the last good epoch
        self.stopped_early = False
        self.best_guard = None          # 'best' rule: {"acc", "epoch"} of the kept weights
        self.best_model = None          # ... and those weights (CPU)
        self.complete = False
        self.metrics = None
        self.dirty = True               # model changed since the last history record
        torch.manual_seed(derived_seed(cfg.seed, "train", dist.rank))
        self.bar = None
        if progress and dist.main:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.total, desc=f"{cfg.method} {cfg.model}", unit="it")

    # --- helpers
    def _optimizer(self):
        c, params = self.cfg, self.model.parameters()
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr_max, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr_max, momentum=c.momentum, nesterov=c.nesterov,
                               weight_decay=c.weight_decay)

    def _weights(self) -> dict:
        return {k: p.detach().float().cpu().clone() for k, p in self.model.named_parameters()}

    def _to_device(self, x):
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def lr(self, step: int) -> float:
        c = self.cfg
        kw = {"cyclic": {"peak": c.lr_peak}, "piecewise": {"drops": c.lr_drops, "factor": c.lr_factor},
              "onedrop": {"factor": c.lr_factor}}.get(c.lr_schedule, {})
        return schedules.learning_rate(c.lr_schedule, step, self.total, c.lr_max, epochs=c.epochs, **kw)

    def _schedule_attack(self, step: int) -> None:
        """Set eps, alpha and q for this step (see attack_schedule)."""
        c = self.cfg
        eps, alpha = attack_schedule(c, step, self.total / c.epochs)
        self.attack.threat = ThreatModel(c.norm, eps)
        self.attack.alpha = alpha
        self.attack.q = ((c.zg_q,) + c.rollback_qs)[self.q_index]

    # --- one optimizer step
    def train_step(self, x, y) -> None:
        cfg, s = self.cfg, self.attack
        for group in self.opt.param_groups:
            group["lr"] = self.lr(self.step)
        self._schedule_attack(self.step)
        t0 = time.perf_counter()
        with autocast(self.device, self.precision):
            delta = self.method.perturb(self.model, x, y, s).detach()
        self._sync()
        t1 = time.perf_counter()
        if self.method.on_delta_grad:
            delta.requires_grad_(True)
        with autocast(self.device, self.precision):
            logits = self.net(x + delta)
            loss = F.cross_entropy(logits, y)
            reg = self.method.regularizer(self.model, x, y, s) if self.method.regularizer else None
            total = loss if reg is None else loss + reg
        if not torch.isfinite(total.detach()).all():
            raise NonFiniteLoss(
                f"training loss is {total.item()} at iteration {self.step} (epoch "
                f"{self.passes_done + 1}, lr {self.lr(self.step):.4g}); the run stopped and its "
                f"last good checkpoint (epoch {self.passes_done}) is kept. Lower lr_max, use "
                f"fp32 or grad_clip, then train again (it resumes from that checkpoint).")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.method.on_delta_grad:
            self.method.on_delta_grad(s, x, delta, delta.grad)
        if cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            clip = nn.utils.clip_grad_norm_ if cfg.grad_clip_mode == "norm" else nn.utils.clip_grad_value_
            clip(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self._sync()
        t2 = time.perf_counter()
        norms, n = metrics.perturbation_norms(delta), len(y)
        self.sums += torch.tensor([loss.item() * n, (logits.argmax(1) == y).sum().item(), n,
                                   norms["l1"] * n, norms["l2"] * n, norms["linf"] * n],
                                  dtype=torch.float64)
        self.times["attack"] += t1 - t0
        self.times["update"] += t2 - t1
        self.step += 1
        self.steps_taken += 1
        self.dirty = True
        if self.bar is not None:
            self.bar.update(1)

    def train_pass(self, max_steps: int | None = None):
        """One pass over the training data (each minibatch `replays` times), with its records.

        Returns:
            the pass's first global minibatch (x, y) on the CPU, or None if max_steps
            stopped the pass early.
        """
        cfg, first = self.cfg, None
        for xb, yb in data.batches(self.images, self.labels, cfg.batch_size, shuffle=True,
                                   seed=cfg.seed, epoch=self.passes_done, augment=cfg.augment):
            first = (xb, yb) if first is None else first
            x, y = self._to_device(self.dist.slice(xb)), self.dist.slice(yb).to(self.device)
            for _ in range(self.method.replays):
                if max_steps is not None and self.step >= max_steps:
                    return None
                self.train_step(x, y)
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self.record()
        self.passes_done += 1
        if not cfg.eval_every:
            self.record()
        return first

    # --- history
    def record(self) -> None:
        """Append one history record: train stats since the last record and test-subset metrics."""
        t0 = time.perf_counter()
        cfg = self.cfg
        sums = self.dist.sum(self.sums.clone())
        n = max(sums[2].item(), 1.0)
        last = max(self.step - 1, 0)  # the step just taken: its lr, eps and alpha
        self._schedule_attack(last)
        rec = {"iteration": self.step, "epoch": self.step / (self.batches_per_pass * cfg.replays),
               "lr": self.lr(last), "eps": self.attack.threat.eps,
               "alpha": self.attack.alpha, "q": self.attack.q, "rollbacks": self.q_index,
               "train_loss": sums[0].item() / n if sums[2] else None,
               "train_acc": 100 * sums[1].item() / n if sums[2] else None,
               "delta_l1": sums[3].item() / n if sums[2] else None,
               "delta_l2": sums[4].item() / n if sums[2] else None,
               "delta_linf": sums[5].item() / n if sums[2] else None}
        self.sums.zero_()
        if cfg.early_stop and cfg.early_stop_rule == "best":
            rec.update(self.best_rule_check())
        if self.dist.main:
            rec.update(self._test_metrics())
            rec.update(self._weight_update())
            rec.update(self._probe_change())
        self._sync()
        self.times["eval"] += time.perf_counter() - t0
        rec.update({f"time_{k}": v for k, v in self.times.items()})
        self.history.append(rec)
        self.dirty = False
        if self.bar is not None and rec.get("pgd_acc") is not None:
            self.bar.set_postfix(clean=f"{rec['clean_acc']:.1f}", pgd=f"{rec['pgd_acc']:.1f}")
        if self.on_record and self.dist.main:
            self.on_record(self.history)

    def _test_metrics(self) -> dict:
        """Clean / FGSM / PGD accuracy (percent) and loss, gradient alignment and
        cos(delta_FGSM, delta_PGD) on the fixed test subset, in eval mode and fp32.

        pgd_loss comes from the evaluation PGD, which stops moving an example once it is
        misclassified: a lower bound on plain PGD's loss. pgd_fgsm_loss_ratio (andriushchenko2020
        Fig. 4) uses plain PGD, every example moving every step, on the first 256 examples."""
        if self.eval_x is None:
            return {}
        cfg, model = self.cfg, self.model
        threat = ThreatModel(cfg.norm, cfg.eps)
        names = ("clean", "fgsm", "pgd")
        sums = dict.fromkeys([f"{k}_{v}" for k in names for v in ("acc", "loss")], 0.0)
        n = len(self.eval_y)
        x_all, y_all = self._to_device(self.eval_x), self.eval_y.to(self.device)
        with evaluate.evaluation_mode(model), _seeded(cfg.seed, "eval", self.step):
            for i in range(0, n, 128):
                x, y = x_all[i:i + 128], y_all[i:i + 128]
                deltas = {"clean": torch.zeros_like(x),
                          "fgsm": attacks.fgsm(model, x, y, threat, alpha=cfg.eps, init="zero"),
                          "pgd": attacks.pgd(model, x, y, threat, alpha=cfg.eval_alpha,
                                             steps=cfg.eval_pgd_steps, restarts=cfg.eval_pgd_restarts)}
                with torch.no_grad():
                    for name, d in deltas.items():
                        logits = model(x + d).float()
                        sums[f"{name}_loss"] += F.cross_entropy(logits, y, reduction="sum").item()
                        sums[f"{name}_acc"] += 100.0 * (logits.argmax(1) == y).sum().item()
            # cos(delta_FGSM, delta_PGD) needs PGD directions for every example: plain PGD
            # (no early stop, so misclassified examples move too), on the first 256 examples.
            x, y = x_all[:256], y_all[:256]
            d_pgd = attacks.pgd(model, x, y, threat, alpha=cfg.eval_alpha, steps=cfg.eval_pgd_steps,
                                early_stop=False)
            d_fgsm = attacks.fgsm(model, x, y, threat, alpha=cfg.eps, init="zero")
            cos = metrics.cosine(d_fgsm, d_pgd).mean().item()
            with torch.no_grad():
                ratio = (F.cross_entropy(model(x + d_pgd).float(), y)
                         / F.cross_entropy(model(x + d_fgsm).float(), y)).item()
            ga = metrics.gradient_alignment(model, x_all, y_all, cfg.eps) if cfg.norm == "linf" else None
        return {k: v / n for k, v in sums.items()} | {"grad_alignment": ga, "cos_fgsm_pgd": cos,
                                                      "pgd_fgsm_loss_ratio": ratio}

    def _weight_update(self) -> dict:
        now = self._weights()
        mse = {k: (now[k] - self.prev_weights[k]).pow(2).mean().item() for k in now if now[k].dim() >= 2}
        total = math.sqrt(sum((now[k] - self.prev_weights[k]).pow(2).sum().item() for k in now))
        self.prev_weights = now
        return {"weight_update_l2": total, "weight_update_mse": mse}

    def _probe_change(self) -> dict:
        """MSE between this and the previous record's training perturbation of a fixed minibatch."""
        cfg = self.cfg
        state = AttackState(self.attack.threat, self.attack.alpha, self.attack.q)
        x, y = self._to_device(self.probe_x), self.probe_y.to(self.device)
        with _seeded(cfg.seed, "probe"), autocast(self.device, self.precision):
            delta = self.method.probe(self.model, x, y, state).detach().float().cpu()
        prev, self.prev_probe = self.prev_probe, delta
        same = prev is not None and prev.shape == delta.shape
        return {"probe_delta_mse": (delta - prev).pow(2).mean().item() if same else None}

    # --- catastrophic-overfitting guard (wong2020 App. B, golgooni2021 §5.2)
    def guard_accuracy(self, x, y, steps: int = 5) -> float:
        """PGD-`steps` (1 restart, alpha eps/4) accuracy in percent on training images x, y
        (wong2020 App. B: PGD-5 on a minibatch; the 'best' rule: PGD-10 on fixed images)."""
        cfg, model = self.cfg, self.model
        with evaluate.evaluation_mode(model), _seeded(cfg.seed, "guard", self.step):
            delta = attacks.pgd(model, x, y, ThreatModel(cfg.norm, cfg.eps), alpha=cfg.eps / 4,
                                steps=steps, restarts=1)
            with torch.no_grad():
                acc = (model(x + delta).argmax(1) == y).float().mean() * 100
        return self.dist.from_main(acc.to(self.device)).item()

    def best_rule_check(self) -> dict:
        """'best' rule, at a history record: PGD-10 accuracy on the first BEST_GUARD_N
        unaugmented training images (andriushchenko2020's code), keeping the best weights."""
        x, y = self._to_device(self.guard_x), self.guard_y.to(self.device)
        acc = self.guard_accuracy(x, y, steps=10)
        self.keep_if_best(acc)
        return {"guard_pgd_acc": acc}

    def keep_if_best(self, acc: float) -> None:
        """'best' rule: remember the weights if the guard accuracy is the best so far."""
        if self.best_guard is None or acc > self.best_guard["acc"]:
            self.best_guard = {"acc": acc, "epoch": self.passes_done, "iteration": self.step}
            self.best_model = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def restore_best(self) -> None:
        """'best' rule, end of training: load the kept weights and note it in the events."""
        if self.best_model is None or any(e.get("event") == "best_kept" for e in self.events):
            return
        models.load_weights(self.model, self.best_model, what="best guard checkpoint")
        self.events.append({"event": "best_kept", "epoch": self.best_guard["epoch"],
                            "iteration": self.best_guard["iteration"], "guard_pgd_acc": self.best_guard["acc"],
                            "last_epoch": self.passes_done})

    # --- checkpoint state
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: a dict of tensors and JSON strings."""
        c = self.cfg
        state = {"step": self.step, "passes_done": self.passes_done, "q_index": self.q_index,
                 "times": self.times, "prev_probe_acc": self.prev_probe_acc,
                 "stopped_early": self.stopped_early, "best_guard": self.best_guard,
                 "complete": self.complete,
                 "metrics": self.metrics, "dirty": self.dirty, "train_source": self.source,
                 "total_steps": self.total}
        ckpt = {"config": c.to_json(), "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
                "ranks": self.dist.gather(self._rank_state()),
                "prev_weights": self.prev_weights, "state": json.dumps(state),
                "history": json.dumps(self.history), "events": json.dumps(self.events)}
        if self.prev_probe is not None:
            ckpt["prev_probe"] = self.prev_probe.detach().cpu().clone()
        if self.best_model is not None:
            ckpt["best_model"] = self.best_model
        return ckpt

    def _rank_state(self) -> dict:
        """What differs between DDP ranks: RNG streams, the unreduced sums, the kept delta."""
        state = {"rng_cpu": torch.get_rng_state(), "sums": self.sums.clone()}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.attack.delta is not None:
            state["attack_delta"] = self.attack.delta.detach().cpu().clone()
        return state

    def _load_rank_state(self, ranks: list) -> None:
        """Restore this rank's entry of a checkpoint's 'ranks' (saved with the same world size)."""
        if len(ranks) != self.dist.world:
            raise ValueError(f"the checkpoint was written by {len(ranks)} processes, this run has "
                             f"{self.dist.world}: resume it with --nproc_per_node={len(ranks)}")
        mine = ranks[self.dist.rank]
        torch.set_rng_state(mine["rng_cpu"])
        if "rng_cuda" in mine and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["rng_cuda"], self.device)
        self.sums = mine["sums"].clone()
        delta = mine.get("attack_delta")
        self.attack.delta = None if delta is None else delta.to(self.device)

    def load_state_dict(self, ckpt: dict, *, keep_records: bool = False) -> None:
        """Restore a state_dict (decoded as by load_checkpoint).

        keep_records: keep this run's history, events and timers (roll-back / early stop).
        """
        models.load_weights(self.model, ckpt["model"], what="checkpoint")
        self.opt.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        legacy = {k: ckpt[k] for k in ("rng_cpu", "rng_cuda", "sums", "attack_delta") if k in ckpt}
        self._load_rank_state(ckpt.get("ranks") or [legacy] * self.dist.world)  # before per-rank state
        st = ckpt["state"]
        self.step, self.passes_done, self.q_index = st["step"], st["passes_done"], st["q_index"]
        self.prev_probe_acc, self.stopped_early = st["prev_probe_acc"], st["stopped_early"]
        self.complete, self.metrics = st["complete"], st["metrics"]
        self.best_guard, self.best_model = st.get("best_guard"), ckpt.get("best_model")
        self.prev_weights = {k: v.clone() for k, v in ckpt["prev_weights"].items()}
        self.prev_probe = ckpt.get("prev_probe")
        if not keep_records:
            self.history, self.events, self.times = ckpt["history"], ckpt["events"], st["times"]
            self.dirty = st["dirty"]
        else:
            self.dirty = True


def _decoded(ckpt: dict) -> dict:
    """An in-memory state_dict in the decoded form load_checkpoint returns."""
    out = dict(ckpt)
    for key in ("history", "events", "state"):
        out[key] = json.loads(out[key])
    return out


def _snapshot(run: _Run) -> dict:
    """A deep copy of the run's state (the 'last good' state for early stop / roll-back)."""
    import copy
    return _decoded(copy.deepcopy(run.state_dict()))


def final_evaluation(model: nn.Module, cfg: TrainConfig, *, device=None, progress=False) -> dict:
    """Clean / FGSM / PGD-K-R accuracy of a trained model on the first final_n_eval test images,
    and the cheap sanity checks of that evaluation.

    Uses fatlib.evaluate.evaluate (eval mode, fp32) with the config's eps and final PGD
    settings, then fatlib.sanity.run_cheap on the first SANITY_N of the same images.
    Returns:
        dict with clean_acc, fgsm_acc, pgd_acc (percent), n, the attack description, source,
        and sanity (a list of {name, passed, message}).
    """
    device = device or next(model.parameters()).device
    images, labels, source = data.load_with_source(cfg.dataset, "test", n=cfg.final_n_eval)
    alpha = cfg.final_pgd_alpha if cfg.final_pgd_alpha is not None else cfg.eps / 4
    t0 = time.perf_counter()
    with _seeded(cfg.seed, "final"):
        correct = evaluate.evaluate(model, data.to_float(images).to(device), labels.to(device),
                                    ThreatModel(cfg.norm, cfg.eps), attacks=("clean", "fgsm", "pgd"),
                                    pgd_steps=cfg.final_pgd_steps, pgd_restarts=cfg.final_pgd_restarts,
                                    pgd_alpha=alpha, progress=progress)
    out = {f"{k}_acc": evaluate.accuracy(v) for k, v in correct.items()}
    out.update(n=len(labels), eps=cfg.eps, norm=cfg.norm, pgd_steps=cfg.final_pgd_steps,
               pgd_restarts=cfg.final_pgd_restarts, pgd_alpha=alpha, source=source,
               attack=f"PGD-{cfg.final_pgd_steps}-{cfg.final_pgd_restarts} (alpha {alpha:.4g})",
               seconds=time.perf_counter() - t0)
    out["sanity"] = sanity_checks(model, cfg, images[:SANITY_N], labels[:SANITY_N], device)
    return out


def sanity_checks(model: nn.Module, cfg: TrainConfig, images, labels, device=None) -> list:
    """fatlib.sanity.run_cheap on test images at the config's threat model, as JSON-able dicts.

    Args:
        model: the trained model; cfg: its config; images, labels: uint8 test images [N, C, H, W]
            and labels [N] (about SANITY_N); device: where to compute (default: the model's).
    Returns:
        list of {"name", "passed", "message"}, in the order of fatlib.sanity.CHEAP_CHECKS.
    """
    device = device or next(model.parameters()).device
    with _seeded(cfg.seed, "sanity"):
        checks = sanity.run_cheap(model, data.to_float(images).to(device), labels.to(device),
                                  ThreatModel(cfg.norm, cfg.eps))
    return [dataclasses.asdict(c) for c in checks]


# ----------------------------------------------------------------------------- the loop

def train(config: TrainConfig, run_dir=None, *, progress: bool = False, until_epoch: int | None = None,
          max_steps: int | None = None, on_record: Callable | None = None,
          device: str | None = None) -> TrainResult:
    """Train a model as `config` says, resuming from run_dir/checkpoint.pt if it exists.

    Implements: wong2020 Alg. 1-3 (+ App. B early stopping), andriushchenko2020 §5
    (GradAlign), golgooni2021 Alg. 1-2 (+ §5.2 roll-back of q), l2fast Alg. 1, with DDP
    when started by torchrun (WORLD_SIZE > 1; each rank takes its slice of the global batch).
    Args:
        config: the TrainConfig.
        run_dir: folder for checkpoint.pt (written every epoch by rank 0); None: no files.
        progress: show a tqdm bar.
        until_epoch: stop (with a checkpoint) after this many passes; train again to go on.
        max_steps: stop after this many optimizer steps in total (no checkpoint is written
            mid-epoch; used to re-run the first steps of a record).
        on_record: callback(history) after each new history record (rank 0).
        device: overrides config.device ('cpu', 'cuda', ...).
    Returns:
        TrainResult(config, model (eval mode), history, metrics, events, complete, steps_run).
    Raises:
        ValueError: the checkpoint in run_dir belongs to another config or architecture.
        NonFiniteLoss: the loss became nan/inf (the last good checkpoint is kept).
    """
    cfg = config
    dev = resolve_device(device or cfg.device)
    dist = init_distributed(dev)
    run = _Run(cfg, dev, dist, progress, on_record)
    path = Path(run_dir) / CHECKPOINT if run_dir is not None else None
    if path is not None and path.exists():
        ckpt = load_checkpoint(path)
        if ckpt["config"] != cfg:
            raise ValueError(f"checkpoint {path} was written for config {ckpt['config'].hash()}, "
                             f"not {cfg.hash()}; use another run_dir or delete the checkpoint")
        run.load_state_dict(ckpt)
        if run.bar is not None:
            run.bar.update(run.step)

    def save():
        if path is not None:
            ckpt = run.state_dict()  # every rank: its RNG, sums and delta are gathered
            if dist.main:
                save_checkpoint(path, ckpt)

    guard = cfg.early_stop or bool(cfg.rollback_qs)
    good = _snapshot(run) if guard else None
    run.model.train()
    if not run.history:
        run.record()
    last = cfg.passes if until_epoch is None else min(cfg.passes, until_epoch)
    while not run.complete and run.passes_done < last:
        first = run.train_pass(max_steps)
        if first is None:  # max_steps reached inside the pass
            break
        if not guard:
            if run.passes_done < cfg.passes:
                save()
            continue
        if cfg.early_stop and cfg.early_stop_rule == "best":  # checked at each history record
            if run.passes_done < cfg.passes:
                save()
            continue
        acc = run.guard_accuracy(run._to_device(first[0]), first[1].to(dev))
        prev = run.prev_probe_acc
        if prev is None or acc >= prev - COLLAPSE_DROP:
            run.prev_probe_acc = acc
            good = _snapshot(run)
            if run.passes_done < cfg.passes:
                save()
            continue
        # catastrophic overfitting detected: roll back with the next q, stop early, or note it
        event = {"iteration": run.step, "epoch": run.passes_done, "guard_pgd_acc": acc,
                 "previous_guard_pgd_acc": prev}
        if run.q_index < len(cfg.rollback_qs) or cfg.early_stop:
            run.load_state_dict(good, keep_records=True)
            event["restored_epoch"] = run.passes_done
        if run.q_index < len(cfg.rollback_qs):
            run.q_index += 1
            run.events.append({**event, "event": "rollback", "q": cfg.rollback_qs[run.q_index - 1]})
            good = _snapshot(run)
            save()
        elif cfg.early_stop:
            run.stopped_early = True
            run.events.append({**event, "event": "early_stop"})
            break
        else:
            run.events.append({**event, "event": "collapse"})
            if run.passes_done < cfg.passes:
                save()
    if not run.complete and (run.passes_done >= cfg.passes or run.stopped_early):
        if run.dirty:
            run.record()
        run.complete = True
        run.restore_best()
        run.model.eval()
        if dist.main:
            run.metrics = (final_evaluation(run.model, cfg, device=dev, progress=progress)
                           if cfg.final_n_eval else _last_record_metrics(run.history))
            run.metrics.update(stopped_early=run.stopped_early, events=run.events,
                               steps=run.step, precision=run.precision, train_source=run.source,
                               history_source=run.eval_source,
                               time_train_s=run.times["attack"] + run.times["update"],
                               time_eval_s=run.times["eval"])
        save()
    if run.bar is not None:
        run.bar.close()
    run.model.eval()
    return TrainResult(cfg, run.model, run.history, run.metrics, run.events, run.complete,
                       run.steps_taken, Path(run_dir) if run_dir is not None else None)


def _last_record_metrics(history: list) -> dict:
    last = history[-1]
    keys = ("clean_acc", "fgsm_acc", "pgd_acc", "clean_loss", "pgd_loss")
    return {k: last.get(k) for k in keys} | {"from": "last history record"}
