"""The training config: every field that defines a run, its defaults and its validation.

A ``TrainConfig`` is frozen; its canonical JSON is saved with every checkpoint and record
and its hash names the run folder (``fatlib.runs``). The tables here are the methods,
initialisations, optimizers, precisions and early-stop rules a config may name, and the
papers' default step sizes (alpha / eps) of each method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field

from fatlib import data, models, schedules
from fatlib.threat import NORMS

METHODS = ("standard", "fgsm", "free", "pgd", "gradalign", "zerograd", "multigrad", "l2fast",
           "nfgsm")
# methods that take the ELLE / ELLE-A regularizer (elle_lambda > 0): Abad Rocamora et al. 2024
# train it with FGSM and with N-FGSM
ELLE_METHODS = ("fgsm", "nfgsm")
FGSM_INITS = ("zero", "random", "previous", "random_unclipped")
OPTIMIZERS = ("sgd", "adam")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
EARLY_STOP_RULES = ("drop", "best")
# Fields added after the first records: left out of the hashed JSON while at these defaults,
# so that the run folders of older configs keep their names.
LATE_FIELD_DEFAULTS = {"early_stop_rule": "drop", "nfgsm_k": 2.0, "elle_lambda": 0.0,
                       "elle_adaptive": False}
# alpha / eps when alpha is None, the papers' settings: FGSM from a zero start alpha = eps, from a
# random start 1.25 eps (wong2020, andriushchenko2020's fgsm_alpha); free AT eps (wong2020
# Alg. 2); ZeroGrad 2 eps from a random start, MultiGrad eps (golgooni2021's code); l2 fast
# AT 1.5 eps (l2fast); N-FGSM eps from its noise (de Jorge et al. 2022). PGD's default is
# pgd_alpha_ratio.
FGSM_RS_ALPHA_RATIO = 1.25
DEFAULT_ALPHA_RATIO = {"standard": 1.0, "fgsm": 1.0, "free": 1.0, "pgd": 1.0, "gradalign": 1.0,
                       "zerograd": 2.0, "multigrad": 1.0, "l2fast": 1.5, "nfgsm": 1.0}
# fgsm_init when None: GradAlign is FGSM from a zero start plus the regulariser
# (andriushchenko2020 §5), and so is FGSM + ELLE(-A) (ELLE_FGSM_INIT: the ELLE authors' code
# runs FGSM from x with alpha = eps); every other method starts FGSM from a random point
# (wong2020).
DEFAULT_FGSM_INIT = {"gradalign": "zero"}
ELLE_FGSM_INIT = "zero"
MAX_STEP_TO_EPS = 4.0  # a step size above 4 eps is legal but almost always a units mistake

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
    nfgsm_k: float = 2.0                  # N-FGSM: noise U([-k eps, k eps]^d), no projection
    elle_lambda: float = 0.0              # ELLE on 'fgsm' / 'nfgsm': its lambda (0: off), or
    elle_adaptive: bool = False           # with elle_adaptive (ELLE-A) lambda_max (authors 4000)
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
                                          # PGD-10 on the first guards.BEST_GUARD_N unaugmented
                                          # training images at every history record, train on,
                                          # keep the weights with the best guard accuracy
    # final evaluation (metrics.json); final_n_eval 0: use the last history record
    final_n_eval: int = 0
    final_pgd_steps: int = 50
    final_pgd_restarts: int = 10
    final_pgd_alpha: float | None = None  # None: eps / 4

    def __post_init__(self):
        object.__setattr__(self, "model_kw", dict(self.model_kw))
        for name in ("rollback_qs", "lr_drops"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        for name in ("eps", "lr_max", "nfgsm_k", "elle_lambda"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.fgsm_init is None:
            object.__setattr__(self, "fgsm_init", _default_fgsm_init(self))
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
            if self.pgd_alpha is not None:
                return self.pgd_alpha
            return pgd_alpha_ratio(self.pgd_steps) * self.eps
        if self.alpha is not None:
            return self.alpha
        random_start = self.method in ("fgsm", "gradalign") and self.fgsm_init != "zero"
        ratio = FGSM_RS_ALPHA_RATIO if random_start else DEFAULT_ALPHA_RATIO[self.method]
        return ratio * self.eps

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


def _default_fgsm_init(c: TrainConfig) -> str:
    """fgsm_init when None: DEFAULT_FGSM_INIT, ELLE_FGSM_INIT for FGSM + ELLE, else 'random'."""
    if c.method == "fgsm" and c.elle_lambda > 0:
        return ELLE_FGSM_INIT
    return DEFAULT_FGSM_INIT.get(c.method, "random")


def pgd_alpha_ratio(steps: int) -> float:
    """Default PGD training step / eps: 1/2 for PGD-2, else 2 / steps.

    Implements: andriushchenko2020's scripts (PGD-2 with alpha eps/2, PGD-10 with eps/5).
    wong2020's PGD-7 used 2/255 at 8/255 (2 eps / 7 would be 2.3/255): give pgd_alpha for it.
    """
    return 0.5 if steps == 2 else 2.0 / steps


def _check_step_sizes(c: TrainConfig, bad) -> None:
    """Step sizes are in pixel units: reject those outside (0, 1], warn above MAX_STEP_TO_EPS
    eps."""
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
            warnings.warn(f"{name} = {v:.4g} is {v / c.eps:.1f} times eps = {c.eps:.4g}; steps are "
                          f"in pixel units like eps (8/255, not 8): is that intended?",
                          stacklevel=4)


def _check_nfgsm_and_elle(c: TrainConfig, bad) -> None:
    """N-FGSM's noise factor and the ELLE / ELLE-A options (see ELLE_METHODS)."""
    if not (c.nfgsm_k >= 0 and math.isfinite(c.nfgsm_k)):
        bad(f"nfgsm_k (N-FGSM noise radius in multiples of eps) must be >= 0 and finite; "
            f"got {c.nfgsm_k}")
    if c.method == "nfgsm":
        if c.norm != "linf":
            bad("method 'nfgsm' is defined for norm='linf' (de Jorge et al. 2022)")
        if c.nfgsm_k * c.eps > 1:
            bad(f"nfgsm_k * eps = {c.nfgsm_k * c.eps:.4g} is more than the pixel range 1 "
                f"(the paper: nfgsm_k = 2)")
    if not (c.elle_lambda >= 0 and math.isfinite(c.elle_lambda)):
        bad(f"elle_lambda must be >= 0 and finite (0: no ELLE); got {c.elle_lambda}")
    if not isinstance(c.elle_adaptive, bool):
        bad(f"elle_adaptive must be True or False; got {c.elle_adaptive!r}")
    if c.elle_lambda > 0 and c.method not in ELLE_METHODS:
        bad(f"elle_lambda (the ELLE regularizer) is for method {' or '.join(map(repr, ELLE_METHODS))}"
            f", got method {c.method!r}; set elle_lambda=0 or change the method")
    if c.elle_lambda > 0 and c.norm != "linf":
        bad("ELLE (elle_lambda > 0) samples its points in the l-inf ball: it needs norm='linf'")
    if c.elle_adaptive and not c.elle_lambda > 0:
        bad("elle_adaptive (ELLE-A) raises lambda to elle_lambda: set elle_lambda > 0 as its "
            "lambda_max (the authors use 4000)")


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
    if c.channels_last and c.model == "preact_resnet18" and c.model_kw.get("base_width", 64) < 8:
        bad(f"channels_last with preact_resnet18 base_width {c.model_kw['base_width']} < 8: torch "
            f"2.14's CPU kernels corrupt the heap (a crash, not an error) in the backward pass of a "
            f"1x1 stride-2 convolution with fewer than 8 input channels in channels_last (seen on "
            f"an AVX2-only AMD EPYC); use base_width >= 8 or channels_last=False")
    if c.method == "gradalign" and c.norm != "linf":
        bad("method 'gradalign' is defined for norm='linf' (andriushchenko2020 eq. 7)")
    _check_nfgsm_and_elle(c, bad)
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
        bad(f"need lr_max > 0, 0 < lr_peak < 1, lr_factor > 0; got {c.lr_max}, {c.lr_peak}, "
            f"{c.lr_factor}")
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

