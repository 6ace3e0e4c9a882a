"""What the golgooni2021 pages of the book share: the paper's Table 1 with its spreads, the
record-scale records each row reads, the claims, and the analyses of its Figures 1 and 2.

Golgooni, Saberi, Eskandar and Rohban, "ZeroGrad: mitigating and explaining catastrophic
overfitting in FGSM adversarial training" (2021). Their explanation (§2.1): input-gradient
entries that are zero at x but not at x + delta make the FGSM perturbation jump when the
weights move near a minimum, and the weights then take a huge step at the collapse. Their
evidence: a huge weight update (Fig. 1) and a jump of a fixed minibatch's perturbation
(Fig. 2) in the epoch of the collapse. Their remedies: ZeroGrad (zero the q-quantile smallest
gradient entries, Alg. 1) and MultiGrad (keep only the entries whose sign N random starts
agree on, Alg. 2).

The CIFAR-10 runs are records of the record queue at the book's record scale (PreAct
ResNet-18 width 16, all 50,000 images): the rows of Table 1 that andriushchenko2020 also
trains (FGSM-RS, GradAlign, PGD-2, PGD-10 at 8/255, 30 epochs, cyclic lr 0.2) read that
chapter's records; ZeroGrad and MultiGrad have their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from fatlib import attacks, chapter, claims, plots, verdicts
from fatlib.claims import Claim
from fatlib.threat import ThreatModel

EPS = 8 / 255
ARTIFACT = "golgooni2021 Table 1"
PREVENTS = "golgooni2021 claim: ZeroGrad and MultiGrad prevent catastrophic overfitting"
COSTS = "golgooni2021 claim: ZeroGrad costs what FGSM-RS costs"


@dataclass(frozen=True)
class Row:
    """One row of Table 1: the paper's standard and PGD-50-10 accuracy, mean and sd over its
    2 seeds (%), and the record-scale records of the row's seeds (data/record_queue.json)."""

    name: str
    clean: float
    clean_sd: float
    pgd: float
    pgd_sd: float
    records: tuple


def _rs16(tag: str, paper: str = "andriushchenko2020") -> tuple:
    return tuple(f"rs16_{paper}_{tag}_eps8_s{seed}" for seed in (0, 1))


TABLE1 = (
    Row("ZeroGrad (q = 0.35)", 81.61, 0.24, 47.55, 0.05, _rs16("zerograd", "golgooni2021")),
    Row("MultiGrad (N = 3)", 81.38, 0.30, 47.85, 0.28, _rs16("multigrad", "golgooni2021")),
    Row("FGSM-RS (alpha = 1.25 eps)", 84.32, 0.08, 45.10, 0.56, _rs16("fgsmrs")),
    Row("GradAlign", 81.00, 0.37, 47.58, 0.24, _rs16("gradalign")),
    Row("PGD-2", 82.15, 0.48, 48.43, 0.40, _rs16("pgd2")),
    Row("PGD-10", 81.88, 0.37, 50.04, 0.79, _rs16("pgd10")),
)
ROWS = {row.name: row for row in TABLE1}
ZEROGRAD, MULTIGRAD, FGSM_RS, GRADALIGN, PGD2, PGD10 = ROWS
RECORDS = {row.name: row.records for row in TABLE1}
# The TrainConfig fields of the two new methods (the authors' code: ZeroGrad alpha = 2 eps
# from a random start, MultiGrad alpha = eps from x itself).
METHODS = {ZEROGRAD: dict(method="zerograd", zg_q=0.35, alpha=2 * EPS),
           MULTIGRAD: dict(method="multigrad", mg_n=3, alpha=EPS)}

# Figures 1 and 2 use wong2020's setting (15 epochs, cyclic lr 0.2) with FGSM-RS at alpha = 2
# eps: the record of wong2020 Table 1's alpha = 16/255 row, its early-stopped twin (the weights
# before the collapse), and ZeroGrad (q = 0.35) in the same setting.
FIGURE_RECORDS = {"FGSM-RS, alpha = 2 eps": "rs16_wong2020_fgsmrs_a16_s0",
                  "ZeroGrad (q = 0.35), alpha = 2 eps": "rs16_golgooni2021_zerograd_fig2_s0"}
BEFORE_COLLAPSE = "rs16_wong2020_fgsmrs_a16_es_s0"

TABLE1_CLAIMS = (
    Claim("ZeroGrad and MultiGrad do not collapse at 8/255", survive=(ZEROGRAD, MULTIGRAD)),
    Claim("ZeroGrad and MultiGrad are more robust than FGSM-RS (alpha = 1.25 eps)",
          above=((ZEROGRAD, FGSM_RS), (MULTIGRAD, FGSM_RS))),
)
REASON = ("the record scale: a PreAct ResNet-18 of a quarter of the paper's width on the JPEG "
          "mirror of CIFAR-10, and fewer seeds")


def paper_text(names) -> str:
    """'Table 1, PGD-50: ZeroGrad (q = 0.35) 47.55 ± 0.05%; ...' (mean ± sd of 2 seeds)."""
    return "Table 1, PGD-50: " + "; ".join(f"{n} {ROWS[n].pgd:.2f} ± {ROWS[n].pgd_sd:.2f}%"
                                           for n in names)


def check_records(claim: Claim, artifact: str = ARTIFACT) -> verdicts.Verdict:
    """fatlib.claims.check_records of a Table 1 claim on the rows' records."""
    return claims.check_records(artifact, claim, RECORDS, paper=paper_text(claim.rows),
                                reason=REASON)


def _ours(records: list, key: str) -> str:
    values = ", ".join(f"{r.metrics[key]:.1f}" for r in records)
    return f"{values}%" if records else ""


def table1_rows() -> list:
    """Table 1 beside the records made so far: the paper's mean ± sd, ours per seed."""
    out = []
    for row in TABLE1:
        made = [r for r in map(chapter.made_record, row.records) if r]
        out.append({"method": row.name,
                    "paper: standard": f"{row.clean:.2f} ± {row.clean_sd:.2f}%",
                    "paper: PGD-50": f"{row.pgd:.2f} ± {row.pgd_sd:.2f}%",
                    "ours: standard": _ours(made, "clean_acc"),
                    "ours: PGD-50-10": _ours(made, "pgd_acc"),
                    "records": f"{len(made)} of {len(row.records)} made"})
    return out


# --------------------------------------------------------------------------- Figures 1 and 2

def _epoch_of_largest(history: list, value) -> float:
    """The epoch of the history record where value(record) is largest (None values skipped)."""
    scored = [(value(h), h["epoch"]) for h in history if value(h) is not None]
    return max(scored)[1]


def largest_drop_epoch(history: list, key: str = "pgd_acc") -> float:
    """The epoch of the record whose `key` fell most since the previous record."""
    falls = [{"epoch": b["epoch"], "fall": a[key] - b[key]} for a, b in zip(history, history[1:])]
    return _epoch_of_largest(falls, lambda h: h["fall"])


def coincides_with_the_drop(history: list, value, *, name: str) -> verdicts.RuleResult:
    """The rule of Figs. 1 and 2: the record where value(record) is largest is the record of
    the largest fall of PGD accuracy (epoch offset 0, fatlib.verdicts.within)."""
    offset = _epoch_of_largest(history[1:], value) - largest_drop_epoch(history)
    return verdicts.within([offset], lo=0, hi=0, name=f"epoch of {name} - epoch of the PGD drop",
                           digits=0)


def conv_kernels(history: list, k: int = 3) -> list:
    """The names of k convolution weights of the run's weight_update_mse: first, middle, last."""
    names = [n for n in next(h["weight_update_mse"] for h in history if h.get("weight_update_mse"))
             if "conv" in n]
    return [names[round(i * (len(names) - 1) / (k - 1))] for i in range(k)]


def _with_pgd(history: list, traces: list, title: str, ytitle: str) -> go.Figure:
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for trace in traces:
        fig.add_trace(trace, secondary_y=False)
    fig.add_trace(go.Scatter(x=[h["epoch"] for h in history], y=[h["pgd_acc"] for h in history],
                             name="PGD-10 accuracy (%)", line=dict(color="#d62728")),
                  secondary_y=True)
    fig.update_yaxes(title_text=ytitle, type="log", secondary_y=False)
    fig.update_yaxes(title_text="PGD-10 accuracy (%)", range=[0, 100], secondary_y=True)
    fig.update_layout(template="plotly_white", height=380, title=title, xaxis_title="epoch")
    return fig


def weight_update_figure(history: list, kernels: list, title: str) -> go.Figure:
    """Fig. 1: MSE of each kernel's weight change per epoch (log scale), with PGD accuracy."""
    rows = history[1:]
    traces = [go.Scatter(x=[h["epoch"] for h in rows], y=[h["weight_update_mse"][k] for h in rows],
                         name=k, mode="lines+markers") for k in kernels]
    return _with_pgd(history, traces, title, "MSE of the weight change")


def perturbation_change_figure(history: list, title: str) -> go.Figure:
    """Fig. 2: MSE between a fixed minibatch's training perturbations in consecutive epochs."""
    rows = history[1:]
    traces = [go.Scatter(x=[h["epoch"] for h in rows], y=[h["probe_delta_mse"] for h in rows],
                         name="MSE of the perturbation change", mode="lines+markers")]
    return _with_pgd(history, traces, title, "MSE of the perturbation change")


# --------------------------------------------------------------------------- gradient entries

def relative_gradient_sizes(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|input gradient| of each entry over its example's largest, flattened ([B * C * H * W])."""
    grad, _ = attacks.input_gradient(model, x, y, torch.zeros_like(x))
    size = grad.abs().flatten(1)
    return (size / size.amax(dim=1, keepdim=True).clamp_min(1e-30)).flatten()


def share_below(sizes: torch.Tensor, thresholds) -> list:
    """The share (%) of entries below each threshold (relative sizes, see above)."""
    return [100.0 * (sizes < t).float().mean().item() for t in thresholds]


def size_distribution_figure(sizes: dict, thresholds, title: str) -> go.Figure:
    """The share of gradient entries below t times their example's largest, per model."""
    fig = plots.line_figure(list(thresholds), {name: share_below(s, thresholds)
                                               for name, s in sizes.items()},
                            xlabel="t (share of the example's largest |gradient| entry)",
                            ylabel="entries below t (%)", title=title, yrange=[0, 100])
    return fig.update_xaxes(type="log")


# --------------------------------------------------------------------------- Algorithms 1, 2

def zerograd_view(model, x, y, threat: ThreatModel, q: float, seed: int = 0) -> tuple:
    """(zeroed entries as a 0/1 image, ZeroGrad's delta) for one image batch of size 1;
    the random start is the same for every q (seeded)."""
    torch.manual_seed(seed)
    start = threat.random_init(x)
    grad, _ = attacks.input_gradient(model, x, y, start)
    zeroed = (attacks.zero_small_gradients(grad, q) == 0).float()
    torch.manual_seed(seed)
    return zeroed[0], attacks.zerograd(model, x, y, threat, q=q)[0]


def multigrad_view(model, x, y, threat: ThreatModel, n: int, seed: int = 0) -> tuple:
    """(entries MultiGrad leaves at 0 as a 0/1 image, MultiGrad's delta) for one image."""
    torch.manual_seed(seed)
    delta = attacks.multigrad(model, x, y, threat, n=n)[0]
    return (delta == 0).float(), delta


def algorithm_slider(x, views: list, values: list, *, label: str, what: str) -> go.Figure:
    """A slider over q (or N): the image, the entries left unmoved (white), the perturbation."""
    panels, titles = [], []
    for (mask, delta), value in zip(views, values):
        panels.append([(plots.image_trace(x[0]), 1, 1), (plots.image_trace(mask.mean(0)), 1, 2),
                       (plots.image_trace(plots.magnify(delta)), 1, 3)])
        titles.append(f"{what}, {label} = {value:g}: {100 * mask.mean().item():.0f}% of the "
                      "entries not moved by the step")
    fig = plots.eps_slider_figure(values, panels, cols=3, label=label, step_titles=titles,
                                  value_labels=[f"{v:g}" for v in values], height=330,
                                  subplot_titles=["x", "entries not moved (white)",
                                                  "δ (magnified)"])
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


# --------------------------------------------------------------------------- closing rows

FIG_SCALE = ("record scale: PreAct ResNet-18 width 16, 50,000 training images, wong2020's 15 "
             "epochs (cyclic lr 0.2), eps 8/255, alpha 2 eps, history every epoch")
FIG_REASON = "the width-16 network in this record (one seed; history once per epoch)"


def _queued_or(artifact: str, claim: str, paper: str, names: list):
    """The made records of `names`, or the queued row of the first one missing."""
    made = [chapter.made_record(n) for n in names]
    missing = [n for n, r in zip(names, made) if r is None]
    return made, (chapter.queued(artifact, claim, paper=paper, record=missing[0],
                                 scale=FIG_SCALE) if missing else None)


def figure1_verdict() -> verdicts.Verdict:
    """Fig. 1: the run collapses, and each kernel's largest update is in the epoch of the drop."""
    claim = "the largest weight update of FGSM-RS (alpha = 2 eps) is in the epoch of its collapse"
    paper = "a huge weight update exactly at the epoch of the collapse (Fig. 1, three kernels)"
    (run,), queued = _queued_or("golgooni2021 Figure 1", claim, paper,
                                [FIGURE_RECORDS["FGSM-RS, alpha = 2 eps"]])
    if queued:
        return queued
    parts = [verdicts.collapses([run.metrics["pgd_acc"]], run.metrics["n"], name="FGSM-RS")]
    parts += [coincides_with_the_drop(run.history, lambda h, k=k: h["weight_update_mse"][k],
                                      name=f"the largest update of {k}")
              for k in conv_kernels(run.history)]
    return verdicts.check("golgooni2021 Figure 1", claim, verdicts.all_of(*parts), paper=paper,
                          scale=FIG_SCALE, reason=FIG_REASON)


def figure2_verdict() -> verdicts.Verdict:
    """Fig. 2: FGSM-RS's perturbation changes most at its PGD drop; ZeroGrad does not collapse."""
    claim = ("a fixed minibatch's FGSM-RS perturbation changes most in the epoch of the "
             "collapse; with the 35% smallest entries zeroed the run does not collapse")
    paper = "a jump of the perturbation change at the collapse, none with zeroing (Fig. 2)"
    (rs, zg), queued = _queued_or("golgooni2021 Figure 2", claim, paper,
                                  list(FIGURE_RECORDS.values()))
    if queued:
        return queued
    rule = verdicts.all_of(
        coincides_with_the_drop(rs.history, lambda h: h["probe_delta_mse"],
                                name="the largest perturbation change"),
        verdicts.survives([zg.metrics["pgd_acc"]], zg.metrics["n"], name="ZeroGrad"))
    return verdicts.check("golgooni2021 Figure 2", claim, rule, paper=paper, scale=FIG_SCALE,
                          reason=FIG_REASON)


def sizes_before_and_after(x: torch.Tensor, y: torch.Tensor) -> dict | None:
    """Relative gradient-entry sizes on (x, y) of the FGSM-RS (alpha = 2 eps) network before
    its collapse (the early-stopped record) and after it; None while a record is queued."""
    names = {"before the collapse": BEFORE_COLLAPSE,
             "after the collapse": FIGURE_RECORDS["FGSM-RS, alpha = 2 eps"]}
    made = {k: chapter.made_record(n) for k, n in names.items()}
    if None in made.values():
        return None
    return {k: relative_gradient_sizes(r.model(), x, y) for k, r in made.items()}


def algorithm_verdicts(zerograd_views: list, qs: list, multigrad_views: list, ns: list, *,
                       eps: float, scale: str) -> list:
    """Rows of Algs. 1 and 2 from their views (:func:`zerograd_view`, :func:`multigrad_view`):
    ZeroGrad zeroes a share q of the entries (to one entry), MultiGrad leaves more entries
    unmoved as N grows, and both perturbations stay in the eps ball."""
    d = zerograd_views[0][0].numel()
    zeroed = [100 * (m.mean().item() - q) for (m, _), q in zip(zerograd_views, qs)]
    unmoved = [m.mean().item() for m, _ in multigrad_views]
    sizes = [v[1].abs().max().item() * 255 for v in zerograd_views + multigrad_views]
    ball = verdicts.within(sizes, lo=0, hi=eps * 255 + 1e-4, name="max |delta| (/255)", digits=2)
    return [verdicts.check(
        "golgooni2021 Algorithm 1", "ZeroGrad zeroes the q-quantile smallest gradient entries",
        verdicts.all_of(verdicts.within(zeroed, lo=-100 / d, hi=100 / d, digits=3,
                                        name="share zeroed - q (points)"), ball),
        paper="grad[|grad| < quantile(|grad|, q)] = 0 (Alg. 1)", scale=scale,
        reason="fatlib.attacks.zerograd does not follow Alg. 1"),
        verdicts.check(
        "golgooni2021 Algorithm 2", "MultiGrad moves fewer entries as the number of starts grows",
        verdicts.all_of(verdicts.within([b - a for a, b in zip(unmoved, unmoved[1:])], lo=0,
                                        hi=1, name="growth of the unmoved share", digits=3), ball),
        paper="entries whose sign differs between the N starts are zeroed (Alg. 2)", scale=scale,
        reason="fatlib.attacks.multigrad does not follow Alg. 2")]
