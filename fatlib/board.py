"""The cost board: every fast-AT method of the book at 8/255 and 16/255 on CIFAR-10 at record
scale, with its accuracy (clean, PGD-50-10, AutoAttack), its collapses over seeds and its
training cost, read from the record queue's records (the page only reads them).

A cell of the board is a method at one eps; its records are the record-scale runs of the
chapters (andriushchenko2020's eps sweep, golgooni2021's Table 1 and 16/255 setting) plus the
board's own (N-FGSM, ELLE-A, the missing second seeds), all on the same schedule: 30
epochs of a cyclic learning rate up to 0.2 (free: 96 cost-equivalent epochs), width 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

import plotly.graph_objects as go

from fatlib import bench, claims, overfitting, plots, runs
from fatlib.claims import Claim

EPS = (8, 16)        # eps of the board, in 1/255
SEEDS = (0, 1)
AUTOATTACK = runs.AUTOATTACK_1000


@dataclass(frozen=True)
class Method:
    """A row of the board: its name, the bench.METHODS key of its step (its cost) and the
    record name of each eps (1/255) and seed."""

    name: str
    step: str
    pattern: str            # record name with {eps} and {seed}
    eps16: str | None = None  # another pattern at 16/255 (a paper's own setting there)

    def record(self, eps: int, seed: int) -> str:
        pattern = self.eps16 if eps == 16 and self.eps16 else self.pattern
        return pattern.format(eps=eps, seed=seed)


_A = "rs16_andriushchenko2020_{}_eps{{eps}}_s{{seed}}"
METHODS = (
    Method("FGSM (zero init)", "fgsm_rs", _A.format("fgsm")),
    Method("FGSM-RS (alpha 1.25 eps)", "fgsm_rs", _A.format("fgsmrs")),
    Method("free (m = 8)", "free", _A.format("free")),
    Method("PGD-2", "pgd2", _A.format("pgd2")),
    Method("PGD-10", "pgd10", _A.format("pgd10")),
    Method("GradAlign", "gradalign", _A.format("gradalign")),
    Method("ZeroGrad", "zerograd", "rs16_golgooni2021_zerograd_eps{eps}_s{seed}",
           eps16="rs16_golgooni2021_zerograd_a1.5_q60_eps{eps}_s{seed}"),
    Method("MultiGrad", "multigrad", "rs16_golgooni2021_multigrad_eps{eps}_s{seed}"),
    Method("N-FGSM", "nfgsm", "rs16_board_nfgsm_eps{eps}_s{seed}"),
    Method("ELLE-A", "elle_a", "rs16_board_ellea_eps{eps}_s{seed}"),
)
BY_NAME = {m.name: m for m in METHODS}


def record_names() -> list:
    """Every record the board reads, in board order."""
    return [m.record(e, s) for m in METHODS for e in EPS for s in SEEDS]


def made_records() -> dict:
    """record name -> the Record the queue has made with its entry's config, for every record
    of the board that exists (the queue file is read once)."""
    entries = {e.name: e for e in runs.load_queue()}
    found = {name: runs.record_with_config(name, entries[name].config) for name in record_names()}
    return {name: r for name, r in found.items() if r is not None}


def made(method: Method, eps: int, records: dict) -> list:
    """The made records of a cell (records: :func:`made_records`)."""
    return [records[n] for n in (method.record(eps, s) for s in SEEDS) if n in records]


def _mean(values, digits: int = 1) -> str:
    return f"{fmean(values):.{digits}f}" if values else "-"


def cell_row(method: Method, eps: int, cost, records: dict) -> dict:
    """One row of the board: what the cell's made records show, and its step's cost.

    Args:
        method, eps: the cell.
        cost: bench.Timing of the steps (keys bench.METHODS keys, baseline 'standard').
        records: :func:`made_records`.
    Returns:
        dict of texts: method, eps, seeds made, clean, PGD-50-10, AutoAttack (seeds with it),
        collapsed seeds, cost per step (x standard), floor, training minutes.
    """
    records = made(method, eps, records)
    aa = [e["accuracy"]["autoattack"] for e in (runs.record_evaluation(r.name, **AUTOATTACK)
                                        for r in records) if e]
    collapsed = sum(overfitting.diagnose(r).collapsed for r in records)
    minutes = [r.provenance["wall_time_s"]["train"] / 60 for r in records
               if r.provenance["wall_time_s"].get("train")]
    return {"method": method.name, "eps": f"{eps}/255", "seeds made": f"{len(records)} of {len(SEEDS)}",
            "clean (%)": _mean([r.metrics["clean_acc"] for r in records]),
            "PGD-50-10 (%)": _mean([r.metrics["pgd_acc"] for r in records]),
            "AutoAttack (%)": _mean(aa) + (f" ({len(aa)} seeds)" if aa else ""),
            "collapsed seeds": f"{collapsed} of {len(records)}" if records else "-",
            "step cost (x standard)": f"{cost.ratio(method.step, 'standard'):.2f}",
            "floor (x standard)": f"{bench.METHODS[method.step].floor_ratio:.2f}",
            "training (min, mean)": _mean(minutes, 0)}


def rows(cost, records: dict) -> list:
    """The whole board, method by method and eps by eps (:func:`cell_row`)."""
    return [cell_row(m, e, cost, records) for m in METHODS for e in EPS]


def pareto_figure(cost, records: dict) -> go.Figure:
    """Robust accuracy against the step's cost, a point per made record, a slider over eps:
    AutoAttack where the record has it, else PGD-50-10 (an open marker)."""
    panels = []
    for eps in EPS:
        panel = []
        for m in METHODS:
            for r in made(m, eps, records):
                aa = runs.record_evaluation(r.name, **AUTOATTACK)
                y = aa["accuracy"]["autoattack"] if aa else r.metrics["pgd_acc"]
                panel.append((go.Scatter(x=[cost.ratio(m.step, "standard")], y=[y], name=m.name,
                                         mode="markers", text=[r.name],
                                         marker=dict(size=11, symbol="circle" if aa else "circle-open")),
                              1, 1))
        if not panel:  # keep the slider step: an empty, labelled trace
            panel.append((go.Scatter(x=[], y=[], name="no record made yet"), 1, 1))
        panels.append(panel)
    fig = plots.eps_slider_figure(EPS, panels, value_labels=[f"{e}/255" for e in EPS],
                                  title="Robust accuracy against training cost (filled: "
                                        "AutoAttack; open: PGD-50-10 while AutoAttack is queued)")
    fig.update_xaxes(title="cost of a training step (x a standard step)")
    return fig.update_yaxes(title="robust accuracy (%)", range=[0, 60])


# The board's own claim, from the papers after 2021 (de Jorge et al. 2022; Abad Rocamora et
# al. 2024): at 16/255, where FGSM-RS collapses (andriushchenko2020 Fig. 1), N-FGSM and
# ELLE-A do not.
LARGE_EPS = Claim("at 16/255 FGSM-RS collapses, N-FGSM and ELLE-A do not",
                  collapse=("FGSM-RS",), survive=("N-FGSM", "ELLE-A"))
LARGE_EPS_PAPER = ("de Jorge et al. 2022 (N-FGSM) and Abad Rocamora et al. 2024 (ELLE-A) train "
                   "PreAct ResNet-18 at 16/255 without catastrophic overfitting; FGSM-RS "
                   "collapses there (andriushchenko2020 Fig. 1)")


def large_eps_verdict():
    """:data:`LARGE_EPS` on the 16/255 records (a queued row while one is missing)."""
    names = {"FGSM-RS": "FGSM-RS (alpha 1.25 eps)", "N-FGSM": "N-FGSM", "ELLE-A": "ELLE-A"}
    records = {row: [BY_NAME[m].record(16, s) for s in SEEDS] for row, m in names.items()}
    return claims.check_records("cost board: methods after 2021", LARGE_EPS, records,
                                paper=LARGE_EPS_PAPER,
                                reason="at width 16 and 30 epochs the collapse pattern differs "
                                       "from the papers' width-64 networks")


def time_to(record, target: float) -> dict:
    """When a record's history first reached ``target`` % PGD accuracy: the epoch and the
    training minutes by then (None for both when it never did), and its best PGD accuracy."""
    hit = next((h for h in record.history if (h.get("pgd_acc") or 0) >= target), None)
    best = max((h.get("pgd_acc") or 0) for h in record.history)
    return {"epoch": hit["epoch"] if hit else None,
            "minutes": (hit["time_attack"] + hit["time_update"]) / 60 if hit else None,
            "best": best}


# --------------------------------------------------------------------------- the CPU headline

HEADLINE = {"target": 45.0, "minutes": 60, "cores": 2}  # 45% PGD-50-10 at 8/255 in 60 min


def linf8_records() -> list:
    """Every made queue record of a PreAct ResNet-18 (any width) trained on CIFAR-10 at linf
    8/255: the candidates for the CPU headline, in queue order."""
    found = []
    for entry in runs.load_queue():
        c = entry.config
        if (isinstance(entry, runs.QueueEntry) and c.dataset == "cifar10" and c.norm == "linf"
                and c.model == "preact_resnet18" and abs(c.eps - 8 / 255) < 1e-9):
            record = runs.record_with_config(entry.name, c)
            if record is not None:
                found.append(record)
    return found


def _minutes(h: dict) -> float:
    """Training minutes (attack + update, no evaluation) by a history entry."""
    return (h["time_attack"] + h["time_update"]) / 60


def _precision(record) -> str:
    """The precision a record trained in ('auto' resolved by its machine's bf16 support)."""
    if record.config.precision != "auto":
        return record.config.precision
    return "bf16" if record.provenance["machine"].get("native_bf16") else "fp32"


def time_to_rows(records: list, targets=(35.0, 40.0, 45.0)) -> list:
    """One row per record, best final PGD-50-10 first: its width, epochs, machine, threads
    and precision, the training minutes by which its history (PGD-10 on 500 test images)
    first reached each target % (- when it never did), its final clean and PGD-50-10
    accuracy (1,000 test images) and its training minutes."""
    rows = []
    for r in sorted(records, key=lambda r: -r.metrics["pgd_acc"]):
        machine = r.provenance["machine"]
        row = {"record": r.name, "width": r.config.model_kw.get("base_width", 64),
               "epochs": r.config.epochs, "machine": machine["cpu"],
               "threads": machine.get("torch_threads"), "precision": _precision(r)}
        for target in targets:
            hit = time_to(r, target)
            row[f"min to {target:g}%"] = "-" if hit["minutes"] is None else f"{hit['minutes']:.0f}"
        row.update({"clean (%)": f"{r.metrics['clean_acc']:.1f}",
                    "PGD-50-10 (%)": f"{r.metrics['pgd_acc']:.1f}",
                    "training (min)": f"{_minutes(r.history[-1]):.0f}"})
        rows.append(row)
    return rows


def time_to_figure(records: list) -> go.Figure:
    """PGD-10 accuracy (500 test images) of every record's history against its training
    minutes, with the headline's target and time budget marked."""
    fig = go.Figure()
    for r in records:
        hist = [h for h in r.history if h.get("pgd_acc") is not None]
        fig.add_trace(go.Scatter(x=[_minutes(h) for h in hist], y=[h["pgd_acc"] for h in hist],
                                 name=r.name, mode="lines+markers"))
    fig.add_hline(y=HEADLINE["target"], line_dash="dash", line_color="grey",
                  annotation_text=f"{HEADLINE['target']:g}%")
    fig.add_vline(x=HEADLINE["minutes"], line_dash="dash", line_color="grey",
                  annotation_text=f"{HEADLINE['minutes']} min")
    fig.update_xaxes(title="training minutes (attack + update, on the record's machine)")
    fig.update_yaxes(title="PGD-10 accuracy, 500 test images (%)", range=[0, 60])
    return fig.update_layout(title="Time to robust accuracy: the CIFAR-10 8/255 records",
                             height=420, legend=dict(orientation="h", y=-0.25))


def _threads(record) -> str:
    """'1 thread' or 'n threads': the torch threads a record trained with."""
    n = record.provenance["machine"].get("torch_threads")
    return f"{n} thread" + ("" if n == 1 else "s")


def headline_text(records: list) -> str:
    """What the records show of the headline: the fastest record to the target (within the
    headline's minutes or over them), or the best final PGD-50-10 with its training time
    when none reached it."""
    if not records:
        return "no CIFAR-10 8/255 record is made yet."
    target = HEADLINE["target"]
    reached = [r for r in records if r.metrics["pgd_acc"] >= target]
    if reached:
        best = min(reached, key=lambda r: _minutes(r.history[-1]))
        minutes = _minutes(best.history[-1])
        budget = HEADLINE["minutes"]
        return (f"the fastest record to {target:g}% PGD-50-10 is {best.name} "
                f"({best.metrics['pgd_acc']:.1f}% after {minutes:.0f} min of training with "
                f"{_threads(best)} on {best.provenance['machine']['cpu']}), "
                f"{'within' if minutes <= budget else 'over'} the headline's {budget} minutes.")
    best = max(records, key=lambda r: r.metrics["pgd_acc"])
    return (f"no record reached {target:g}% PGD-50-10; the best of {len(records)} is {best.name} "
            f"at {best.metrics['pgd_acc']:.1f}% (width "
            f"{best.config.model_kw.get('base_width', 64)}, {best.config.epochs} epochs, "
            f"{_minutes(best.history[-1]):.0f} min of training with {_threads(best)} on "
            f"{best.provenance['machine']['cpu']}).")
