"""The eps x method x seed sweeps of the andriushchenko2020 pages, declared once.

The pages on the random step, the training dynamics and GradAlign (and the single-layer-CNN
page) train the same methods with the same recipe. This module declares them: the methods
(:data:`TAGS`, :func:`method_fields`), GradAlign's lambda per eps (:data:`LAMBDA`), the run
settings of each profile (:data:`RUNS`, :class:`RunSettings`), the configs (:func:`config`)
and names (:func:`record_name`) of the reduced-scale records
(``data/records/andriushchenko2020_cnn1_*``), and two sources of runs that answer the same
questions:

- :class:`Sweep` (made by :func:`sweep`): the runs of a page's settings, each taken from its
  record when the record holds exactly that config (``runs.record_or_run``), else trained or
  loaded from the run cache;
- :class:`RecordScale`: the record-scale runs queued in ``data/record_queue.json``
  (``rs16_andriushchenko2020_<tag>_eps<e>_s<seed>``: PreAct ResNet-18 width 16, all of
  CIFAR-10, 30 epochs), each read when its record exists with the queue's config.

A page states a claim once, as a rule over a source (``lambda v: v.collapses("fgsm", 16)``),
and :func:`verdict` turns it into a row of the closing table at either scale: the checked
claim (``fatlib.verdicts.check``), ``fatlib.chapter.queued`` while a record-scale run is not
made yet, or ``fatlib.verdicts.not_run`` when the page's parameters leave out a run the claim
needs. Catastrophic overfitting is ``fatlib.overfitting``'s; costs are ``fatlib.bench``'s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from fatlib import attacks, chapter, evaluate, overfitting, plots, runs, verdicts
from fatlib.threat import ThreatModel
from fatlib.train import TrainConfig

TAGS = {"standard": "standard", "fgsm": "FGSM", "fgsm0.89": "FGSM, alpha = 0.888 eps",
        "fgsmrs": "FGSM-RS", "gradalign": "FGSM + GradAlign", "free": "free (m=8)",
        "pgd2": "PGD-2", "pgd10": "PGD-10", "pgd10corners": "PGD-10 on the corners",
        "zerograd": "ZeroGrad (q = 0.35)", "multigrad": "MultiGrad (N = 3)"}
# GradAlign's lambda per eps (/255), from the authors' scripts (andriushchenko2020 §5).
LAMBDA = {1: 0.027, 2: 0.036, 3: 0.047, 4: 0.063, 5: 0.084, 6: 0.112, 7: 0.150, 8: 0.200,
          9: 0.267, 10: 0.356, 11: 0.474, 12: 0.632, 13: 0.843, 14: 1.124, 15: 1.500, 16: 2.000}
# Lemma 1: the FGSM step (in units of eps) whose length is FGSM-RS's expected length at
# alpha = 1.25 eps (fatlib.theory.lemma1_bound(1.25 eps, eps, 1) / eps = 0.8883).
REDUCED_ALPHA = 0.8883
CNN1 = dict(model="cnn1", model_kw={"n_filters": 4}, optimizer="adam", lr_max=0.003)
RESNET = dict(model="preact_resnet18", optimizer="sgd", lr_max=0.2, precision="auto",
              channels_last=True)
RECORD_PREFIX = "rs16_andriushchenko2020"
RECORD_SCALE = ("record scale: PreAct ResNet-18 width 16, 50,000 CIFAR-10 images (JPEG mirror), "
                "30 epochs, PGD-50-10 on 1,000 test images")


@dataclass(frozen=True)
class RunSettings:
    """How a page trains: the model ('cnn1': 4 filters, Adam; 'preact_resnet18': SGD), the
    first n_train training images (None: all), epochs, batch size, the history's test images
    and interval (eval_every iterations, 0: every epoch) and the final PGD-50-10's images."""

    model: str = "cnn1"
    n_train: int | None = 5000
    epochs: int = 8
    batch_size: int = 64
    n_eval: int = 200
    eval_every: int = 40
    final_n_eval: int = 500

    def __post_init__(self):
        if self.model not in ("cnn1", "preact_resnet18"):
            raise ValueError(f"model must be 'cnn1' or 'preact_resnet18', got {self.model!r}")

    @classmethod
    def of(cls, values: dict) -> "RunSettings":
        """From a dict of these fields (a page's ``runs`` parameter); unknown keys raise."""
        known = {f.name for f in fields(cls)}
        if set(values) - known:
            raise ValueError(f"unknown run settings {sorted(set(values) - known)}; known: "
                             f"{sorted(known)}")
        return cls(**values)

    @property
    def training(self) -> str:
        """'cnn1 (4 filters), 5,000 CIFAR-10 images, 8 epochs'."""
        model = "cnn1 (4 filters)" if self.model == "cnn1" else "PreAct ResNet-18"
        images = f"{self.n_train:,}" if self.n_train else "50,000"
        return f"{model}, {images} CIFAR-10 images, {self.epochs} epochs"

    @property
    def text(self) -> str:
        """The training and the final evaluation ('..., PGD-50-10 on 500 test images')."""
        return f"{self.training}, PGD-50-10 on {self.final_n_eval:,} test images"


# The run settings of the profiles of the sweep pages (random_step, training_dynamics,
# gradalign): the quick ones are those of the reduced-scale records.
RUNS = {"smoke": dict(model="cnn1", n_train=256, epochs=1, batch_size=64, n_eval=32,
                      eval_every=2, final_n_eval=32),
        "quick": dict(model="cnn1", n_train=5000, epochs=8, batch_size=64, n_eval=200,
                      eval_every=40, final_n_eval=500),
        "paper": dict(model="preact_resnet18", n_train=None, epochs=30, batch_size=128,
                      n_eval=1000, eval_every=0, final_n_eval=1000)}


def method_fields(tag: str, eps: float, settings: RunSettings) -> dict:
    """TrainConfig fields of a method at eps (pixel units), with the recipe's exceptions.

    Implements: andriushchenko2020 §3 and §5 steps (FGSM from zero with alpha = eps, reduced
    step 0.888 eps, FGSM-RS 1.25 eps, PGD-2 eps/2, PGD-10 2 eps/10, corners, free m = 8,
    GradAlign with the authors' lambda) and golgooni2021's ZeroGrad and MultiGrad; free AT trains 3x the epochs (the paper's 96 / 30)
    at a lower learning rate, GradAlign on the ResNet at the authors' lr 0.3.
    Raises:
        ValueError: an unknown tag, or GradAlign at an eps without a lambda.
    """
    adam = settings.model == "cnn1"
    table = {"standard": dict(method="standard"),
             "fgsm": dict(method="fgsm", fgsm_init="zero"),
             "fgsm0.89": dict(method="fgsm", fgsm_init="zero", alpha=float(REDUCED_ALPHA * eps)),
             "fgsmrs": dict(method="fgsm", fgsm_init="random", alpha=1.25 * eps),
             "free": dict(method="free", free_m=8, epochs=3 * settings.epochs if adam else
                          round(settings.epochs * 96 / 30), lr_max=0.001 if adam else 0.04),
             "pgd2": dict(method="pgd", pgd_steps=2, pgd_alpha=eps / 2),
             "pgd10": dict(method="pgd", pgd_steps=10),
             "pgd10corners": dict(method="pgd", pgd_steps=10, pgd_corners=True),
             # golgooni2021's CIFAR-10 settings (their code): alpha 2 eps from a random start,
             # MultiGrad alpha eps from x
             "zerograd": dict(method="zerograd", zg_q=0.35, alpha=2 * eps),
             "multigrad": dict(method="multigrad", mg_n=3, alpha=eps)}
    if tag == "gradalign":
        if round(eps * 255) not in LAMBDA:
            raise ValueError(f"GradAlign's lambda is known for eps in {sorted(LAMBDA)}/255, "
                             f"not {eps * 255:g}/255")
        return dict(method="gradalign", fgsm_init="zero", ga_lambda=LAMBDA[round(eps * 255)],
                    **({} if adam else dict(lr_max=0.3)))
    if tag not in table:
        raise ValueError(f"unknown method tag {tag!r}; tags: {sorted(TAGS)}")
    return table[tag]


def config(tag: str, eps_255: int, seed: int, settings: RunSettings, *,
           early_stop: bool = False) -> TrainConfig:
    """The TrainConfig of one run of a sweep.

    Args:
        tag: a key of TAGS. eps_255: the training (and evaluation) eps in 1/255 units.
        seed: the run's seed. settings: the page's RunSettings.
        early_stop: the authors' early stopping (train on, keep the weights with the best
            PGD-10 accuracy on the first training images, checked at every history record).
    Returns:
        TrainConfig (equal to the record's config for the reduced-scale records).
    """
    eps = eps_255 / 255
    base = dict(dataset="cifar10", n_train=settings.n_train, epochs=settings.epochs,
                batch_size=settings.batch_size, weight_decay=5e-4, n_eval=settings.n_eval,
                eval_every=settings.eval_every, final_n_eval=settings.final_n_eval,
                fgsm_init="zero", eps=eps, seed=seed,
                **(CNN1 if settings.model == "cnn1" else RESNET))
    stop = dict(early_stop=True, early_stop_rule="best") if early_stop else {}
    return TrainConfig(**{**base, **method_fields(tag, eps, settings), **stop})


def record_name(tag: str, eps_255: int, seed: int, early_stop: bool = False) -> str:
    """The reduced-scale record that may hold a run (andriushchenko2020_cnn1_<tag>_eps<e>_s<n>)."""
    return f"andriushchenko2020_cnn1_{tag}_eps{eps_255}_s{seed}" + ("_es" if early_stop else "")


def model_of(run) -> torch.nn.Module:
    """The trained model of a Run, Record or TrainResult (eval mode)."""
    return (run.model() if isinstance(run, runs.Record) else run.model).eval()


# --------------------------------------------------------------------------- sources

class Missing(Exception):
    """A claim needs runs that a source does not have; ``need`` says which."""

    def __init__(self, need: str):
        super().__init__(need)
        self.need = need


class Queued(Missing):
    """A record-scale record the claim needs is queued but not made (``record``: its name)."""

    def __init__(self, record: str):
        super().__init__(f"the record {record}")
        self.record = record


def label(tag: str, eps_255: int, es: bool = False) -> str:
    """'FGSM-RS 16/255' (+ ' + early stopping')."""
    return f"{TAGS[tag]} {eps_255}/255" + (" + early stopping" if es else "")


class Source:
    """Runs by (tag, eps, early stopping), with the rule shortcuts the pages' claims use.

    Subclasses set ``n`` (test images of the final PGD-50-10), ``n_eval`` (of the history),
    ``scale`` (a fatlib.verdicts scale text) and ``why`` (the likely reason a claim fails
    there), and implement :meth:`runs`.
    """

    n: int
    n_eval: int
    scale: str
    why: str

    def runs(self, tag: str, eps_255: int, es: bool = False) -> list:
        raise NotImplementedError

    def values(self, tag: str, eps_255: int, key: str = "pgd_acc", es: bool = False) -> list:
        """Per-seed final metric `key` (PGD-50-10 accuracy by default)."""
        return [r.metrics[key] for r in self.runs(tag, eps_255, es)]

    def map(self, tag: str, eps_255: int, fn, es: bool = False) -> list:
        """Per-seed fn(run), e.g. a number read from the history."""
        return [fn(r) for r in self.runs(tag, eps_255, es)]

    def collapses(self, tag: str, eps_255: int, es: bool = False) -> verdicts.RuleResult:
        """fatlib.verdicts.collapses on the final PGD-50-10 accuracies of every seed."""
        return verdicts.collapses(self.values(tag, eps_255, es=es), self.n,
                                  name=label(tag, eps_255, es))

    def survives(self, tag: str, eps_255: int, es: bool = False) -> verdicts.RuleResult:
        """fatlib.verdicts.survives on the final PGD-50-10 accuracies of every seed."""
        return verdicts.survives(self.values(tag, eps_255, es=es), self.n,
                                 name=label(tag, eps_255, es))

    def greater(self, a: tuple, b: tuple, key: str = "pgd_acc") -> verdicts.RuleResult:
        """fatlib.verdicts.greater of runs a = (tag, eps[, es]) over runs b, on metric `key`."""
        what = "" if key == "pgd_acc" else f" ({key.replace('_acc', '')})"
        return verdicts.greater(self.values(*a[:2], key=key, es=a[2:] == (True,)),
                                self.values(*b[:2], key=key, es=b[2:] == (True,)), self.n,
                                names=(label(*a) + what, label(*b) + what))


@dataclass(frozen=True)
class Item:
    """One run of a sweep and where it came from ('record <name>' / 'this execution ...')."""

    tag: str
    eps_255: int
    seed: int
    early_stop: bool
    run: object
    source: str


class Sweep(Source):
    """The runs of a page's settings (see :func:`sweep`)."""

    def __init__(self, items: list, settings: RunSettings, profile: str):
        self.items, self.settings, self.profile = list(items), settings, profile
        self.n, self.n_eval = settings.final_n_eval, settings.n_eval

    def runs(self, tag, eps_255, es=False):
        key = (tag, eps_255, es)
        found = [i.run for i in self.items if (i.tag, i.eps_255, i.early_stop) == key]
        if not found:
            raise Missing(f"the runs of {label(tag, eps_255, es)} (add them to the page's "
                          f"parameters)")
        return found

    def __add__(self, other: "Sweep") -> "Sweep":
        return Sweep(self.items + other.items, self.settings, self.profile)

    @property
    def from_records(self) -> bool:
        return all(i.source.startswith("record") for i in self.items)

    @property
    def scale(self) -> str:
        """'reduced scale: ...' when every run is a record, else the profile's kind."""
        seeds = sorted({i.seed for i in self.items})
        kind = (verdicts.PAPER_SCALE if self.profile == "paper" else verdicts.REDUCED_SCALE
                if self.from_records else self.profile)
        return f"{kind}: {self.settings.text}, seeds {', '.join(map(str, seeds))}"

    @property
    def why(self) -> str:
        if self.settings.model != "cnn1":
            return "one execution of the paper's setting (see the run card)"
        return (f"{self.settings.training} instead of the paper's PreAct ResNet-18 on 50,000 "
                f"images for 30 epochs: a small model, trained for few iterations, whose robust "
                f"accuracy stays low (the 4-filter CNN overfits catastrophically on all 50,000 "
                f"images, see the single-layer-CNN page); one or two seeds, n = {self.n:,}")

    def card(self) -> dict:
        """Keyword arguments of fatlib.book.run_card: data sources, sizes, notes, sanity."""
        made = sum(i.source.startswith("record") for i in self.items)
        return dict(data=sorted({i.run.metrics["train_source"] for i in self.items}),
                    sizes={"runs": len(self.items), "test images (final PGD-50-10)": self.n},
                    notes=f"{made} runs from records (data/records/andriushchenko2020_cnn1_*), "
                          f"{len(self.items) - made} from this execution",
                    sanity=runs.sanity_summary([i.run for i in self.items]))


def sweep(tags, eps_list, seeds, settings: RunSettings, *, profile: str,
          use_records: bool = True, early_stop: bool = False, extra_seeds=(1,)) -> Sweep:
    """The runs of every (tag, eps, seed), from records where they hold exactly the config.

    Args:
        tags: keys of TAGS. eps_list: eps values (1/255). seeds: the seeds to run.
        settings: RunSettings. profile: the page's profile (for the scale text).
        use_records: take records that hold the config (else train / load the run cache).
        early_stop: the authors' early stopping (record names end in '_es').
        extra_seeds: seeds added only where their record exists with the config.
    Returns:
        Sweep.
    """
    items = []
    for eps_255 in eps_list:
        for tag in tags:
            for seed in sorted(set(seeds) | set(extra_seeds)):
                cfg = config(tag, eps_255, seed, settings, early_stop=early_stop)
                name = record_name(tag, eps_255, seed, early_stop)
                if seed not in seeds and not (use_records and runs.record_with_config(name, cfg)):
                    continue
                run, source = runs.record_or_run(cfg, name, use_record=use_records)
                items.append(Item(tag, eps_255, seed, early_stop, run, source))
    return Sweep(items, settings, profile)


class RecordScale(Source):
    """The record-scale runs of the queue, read when their records exist (see module doc)."""

    scale = RECORD_SCALE
    why = ("PreAct ResNet-18 at width 16 (the paper's is 64), one or two seeds (the paper's "
           "five)")

    def __init__(self, prefix: str = RECORD_PREFIX):
        self.prefix = prefix
        self.entries = {e.name: e for e in runs.load_queue() if e.name.startswith(prefix + "_")}
        first = next(iter(self.entries.values()), None)   # the test images of every entry
        self.n = first.config.final_n_eval if first else 1000
        self.n_eval = first.config.n_eval if first else 500

    def names(self, tag: str, eps_255: int) -> list:
        """The queued records of (tag, eps), one per seed."""
        stem = f"{self.prefix}_{tag}_eps{eps_255}_s"
        return sorted(n for n in self.entries if n.startswith(stem))

    def runs(self, tag, eps_255, es=False):
        names = [] if es else self.names(tag, eps_255)
        if not names:
            raise Missing(f"record-scale runs of {label(tag, eps_255, es)}: none is queued")
        return [self._record(name) for name in names]

    @functools.lru_cache(maxsize=None)
    def _record(self, name: str):
        record = chapter.made_record(name)
        if record is None:
            raise Queued(name)
        return record


def verdict(artifact: str, claim: str, rule, *, source: Source, paper: str,
            reason: str | None = None) -> verdicts.Verdict:
    """The closing-table row of a claim, tested by ``rule(source)`` on the source's runs.

    Args:
        artifact, claim, paper: as in fatlib.verdicts.check.
        rule: source -> RuleResult (e.g. ``lambda v: v.collapses("fgsm", 16)``).
        source: a Sweep or a RecordScale.
        reason: the likely reason should the claim fail (default: the source's ``why``).
    Returns:
        fatlib.verdicts.check's Verdict; chapter.queued while a record it needs is queued;
        fatlib.verdicts.not_run when the source lacks the runs.
    """
    try:
        result = rule(source)
    except Queued as q:
        return chapter.queued(artifact, claim, paper=paper, record=q.record, scale=source.scale)
    except Missing as m:
        return verdicts.not_run(artifact, claim, paper=paper, need=m.need, scale=source.scale)
    return verdicts.check(artifact, claim, result, paper=paper, scale=source.scale,
                          reason=reason or source.why)


# --------------------------------------------------------------------------- history

def after_best(history: list, epochs: float = 1.0) -> dict:
    """The history record `epochs` after the best PGD record before the collapse (or the last).

    Implements: "a sudden drop within an epoch" (andriushchenko2020 §4) as a lookup: the best
    record is fatlib.overfitting.best_before_collapse's.
    """
    best = overfitting.best_before_collapse(history) or history[-1]
    return next((h for h in history if h["epoch"] >= best["epoch"] + epochs), history[-1])


def sudden_drop(histories: list, n: int, name: str = "FGSM",
                epochs: float = 1.0) -> verdicts.RuleResult:
    """Rule for "the robustness drops within an epoch" (andriushchenko2020 §4, Fig. 4).

    Every run's best PGD record before the collapse survives (fatlib.verdicts.survives: its
    95% lower bound above 10%) and its record `epochs` later collapses (upper bound below
    10%), on the n test images of the history.
    Args:
        histories: one metric history per seed. n: the history's test images.
        name: what ran. epochs: how soon after the best record.
    Returns:
        fatlib.verdicts.all_of of the two rules.
    """
    best = [(overfitting.best_before_collapse(h) or h[-1])["pgd_acc"] for h in histories]
    after = [after_best(h, epochs)["pgd_acc"] for h in histories]
    return verdicts.all_of(verdicts.survives(best, n, name=f"{name}, best PGD-10 record"),
                           verdicts.collapses(after, n, name=f"{name}, PGD-10 {epochs:g} "
                                                             f"epoch after it"))


def max_before_collapse(history: list, key: str) -> float:
    """The largest `key` in the records before the collapse point (the whole run if none)."""
    best = overfitting.best_before_collapse(history, key)
    return best[key] if best is not None else float("nan")


# --------------------------------------------------------------------------- tables, figures

def run_table(items) -> plots.Table:
    """One row per run: eps, method, seed, clean and PGD-50-10 accuracy, what
    fatlib.overfitting says of it (or which early-stopped epoch was kept), its source."""
    rows = []
    for i in items:
        kept = next((e for e in i.run.metrics.get("events", []) if e["event"] == "best_kept"), None)
        what = (f"kept epoch {kept['epoch']} of {kept['last_epoch']}" if kept else
                overfitting.diagnose(i.run).text)
        rows.append({"eps": f"{i.eps_255}/255",
                     "method": TAGS[i.tag] + (" + early stopping" if i.early_stop else ""),
                     "seed": i.seed, "clean": f"{i.run.metrics['clean_acc']:.1f}%",
                     "PGD-50-10": f"{i.run.metrics['pgd_acc']:.1f}%",
                     "catastrophic overfitting": what, "source": i.source})
    return plots.table(rows)


def mean(values: list) -> float:
    return sum(values) / len(values) if values else float("nan")


def accuracy_figure(sweep_: Sweep, tags, eps_list, early: Sweep | None = None) -> go.Figure:
    """Figure 8 of andriushchenko2020 from a sweep: mean PGD-50-10 (solid) and clean (dashed)
    accuracy at the training eps, over the seeds each (tag, eps) has; early-stopped runs
    (`early`) as crosses."""
    curves, dash = {}, {}
    for tag in tags:
        for key, what in (("pgd_acc", "PGD-50-10"), ("clean_acc", "clean")):
            curves[f"{TAGS[tag]}: {what}"] = [mean(values_if_run(sweep_, tag, e, key))
                                              for e in eps_list]
        dash[f"{TAGS[tag]}: clean"] = "dash"
    fig = plots.line_figure(eps_list, curves, xlabel="training and evaluation eps (/255)",
                            ylabel="accuracy (%)", dash=dash, yrange=[0, 101], height=480,
                            x_labels=[f"{e}/255" for e in eps_list],
                            title=f"{sweep_.settings.text}: final accuracy at the training eps")
    for i in (early.items if early is not None else []):
        fig.add_trace(go.Scatter(x=[i.eps_255], y=[i.run.metrics["pgd_acc"]], mode="markers",
                                 marker=dict(symbol="x", size=12),
                                 name=f"{TAGS[i.tag]} + early stopping: PGD-50-10"))
    return fig


def corners_final_only(model, x, y, eps: float, *, seed: int = 0) -> bool:
    """Whether fatlib.attacks.pgd(corners=True) projects only PGD-10's final perturbation
    onto the corners {-eps, eps}^d (andriushchenko2020 §3 and the authors' code), i.e. equals
    the corner projection of plain PGD-10 from the same random start."""
    threat, deltas = ThreatModel("linf", eps), []
    for corners in (True, False):
        torch.manual_seed(seed)
        deltas.append(attacks.pgd(model, x, y, threat, alpha=2 * eps / 10, steps=10,
                                  corners=corners, early_stop=False))
    return torch.equal(deltas[0], threat.project(eps * deltas[1].sign(), x))


def values_if_run(source: Source, tag: str, eps_255: int, key: str = "pgd_acc") -> list:
    """Source.values, or [] when the source lacks those runs (for figures and texts)."""
    try:
        return source.values(tag, eps_255, key=key)
    except Missing:
        return []


def curves_slider(sweep_: Sweep, tags, eps_list) -> go.Figure:
    """PGD-10 test accuracy and gradient alignment over training (first seed of each method),
    one slider step per training eps, against the fraction of training done."""
    panels = []
    for e in eps_list:
        panel = []
        for k, tag in enumerate(tags):
            found = [i.run.history for i in sweep_.items if (i.tag, i.eps_255, i.early_stop)
                     == (tag, e, False)]
            if found:
                panel += _progress_traces(found[0], TAGS[tag], plots_colour(k))
        panels.append(panel)
    fig = plots.eps_slider_figure(eps_list, panels, rows=1, cols=2, label="eps",
                                  value_labels=[f"{e}/255" for e in eps_list],
                                  subplot_titles=["PGD-10 test accuracy (%)", "gradient alignment"],
                                  step_titles=[f"Training curves at eps = {e}/255"
                                               for e in eps_list],
                                  active=len(eps_list) - 1, height=460)
    fig.update_xaxes(title="fraction of training")
    return fig.update_yaxes(range=[0, 1.02], row=1, col=2)


PALETTE = ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#1f77b4", "#17becf"]


def plots_colour(k: int) -> str:
    return PALETTE[k % len(PALETTE)]


def _progress_traces(history: list, name: str, colour: str) -> list:
    end = max(history[-1]["iteration"], 1)
    x = [h["iteration"] / end for h in history]
    style = dict(line=dict(color=colour), legendgroup=name)
    return [(go.Scatter(x=x, y=[h["pgd_acc"] for h in history], name=name, **style), 1, 1),
            (go.Scatter(x=x, y=[h.get("grad_alignment") for h in history], name=name,
                        showlegend=False, **style), 1, 2)]


def dynamics_figure(histories: dict, collapse_epoch: float | None = None) -> go.Figure:
    """Figure 4 of andriushchenko2020: FGSM (dashed) and PGD-10 accuracy, PGD / FGSM loss
    ratio, gradient alignment and cos(delta_FGSM, delta_PGD) over epochs, per run.

    Args:
        histories: label -> history. collapse_epoch: drawn as a grey line (or None).
    """
    keys = [[("pgd_acc", None), ("fgsm_acc", "dash")], [("pgd_fgsm_loss_ratio", None)],
            [("grad_alignment", None)], [("cos_fgsm_pgd", None)]]
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.14,
                        subplot_titles=["FGSM (dashed) and PGD-10 accuracy (%)", "PGD / FGSM loss",
                                        "gradient alignment", "cos(delta_FGSM, delta_PGD)"])
    for k, (name, history) in enumerate(histories.items()):
        for p, panel in enumerate(keys):
            for key, dash in panel:
                pts = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
                fig.add_trace(go.Scatter(x=[a for a, _ in pts], y=[b for _, b in pts], name=name,
                                         line=dict(color=plots_colour(k), dash=dash),
                                         legendgroup=name, showlegend=p == 0 and dash is None),
                              row=p // 2 + 1, col=p % 2 + 1)
    if collapse_epoch is not None:
        fig.add_vline(x=collapse_epoch, line_dash="dot", line_color="grey")
    fig.update_xaxes(title="epoch").update_yaxes(range=[0, 1.02], row=2)
    return fig.update_layout(height=720, template="plotly_white",
                             legend=dict(orientation="h", y=-0.25))


def robustness_curves(models: dict, x, y, eps_list, *, steps: int, restarts: int,
                      seed: int = 0) -> dict:
    """PGD-steps-restarts accuracy (%) of each model at each test eps (1/255), eval mode, fp32.

    Implements: andriushchenko2020 Fig. 3 (models trained at one eps, tested at others).
    """
    out = {}
    for name, model in models.items():
        out[name] = []
        for e in eps_list:
            torch.manual_seed(seed)
            correct = evaluate.evaluate(model, x, y, ThreatModel("linf", e / 255), attacks=("pgd",),
                                        pgd_steps=steps, pgd_restarts=restarts)
            out[name].append(evaluate.accuracy(correct["pgd"]))
    return out


# --------------------------------------------------------------------------- cost

COST_METHODS = ("standard", "fgsm", "fgsmrs", "gradalign", "pgd2", "pgd10")


def cost_configs(model: str, tags, *, batch: int, steps: int, eps_255: int = 8) -> dict:
    """TrainConfigs that time one training step of each method (fatlib.bench.seconds_per_step):
    `steps` batches of the first training images, no history, no augmentation.

    Args:
        model: 'cnn1' or 'preact_resnet18'. tags: keys of TAGS. batch: batch size.
        steps: optimizer steps per timing. eps_255: the eps of the steps.
    Returns:
        label -> TrainConfig.
    """
    settings = RunSettings(model=model, n_train=batch * (steps + 1), epochs=1, batch_size=batch,
                           n_eval=0, eval_every=0, final_n_eval=0)
    return {TAGS[t]: config(t, eps_255, 0, settings).replace(augment=False, epochs=1)
            for t in tags}


def cost_rows(timing: dict, batches: dict) -> list:
    """Rows (model, method, batch, ms per step, relative to FGSM) of timings model -> label -> s."""
    return [{"model": m, "method": k, "batch": batches[m], "ms per step": f"{1000 * t:.0f}",
             "relative to FGSM": f"{t / ts[TAGS['fgsm']]:.2f}"}
            for m, ts in timing.items() for k, t in ts.items()]
