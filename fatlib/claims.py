"""Qualitative claims of a paper about named rows of a table, and their verdicts.

A chapter states a claim of its paper ("FGSM from zero collapses, FGSM-RS does not") as a
:class:`Claim` on the rows it is about, and turns it into a closing-table row with
:func:`check` (runs of this execution) or :func:`check_records` (records of the record
queue, or a queued row while a record is not made yet). The rules are fatlib.verdicts'
collapses / survives / greater; the scale of the evidence is named by :func:`scale_text`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fatlib import chapter, runs, verdicts
from fatlib.train import TrainConfig


def model_text(config: TrainConfig) -> str:
    """'cnn1 with 16 filters' / 'PreAct ResNet-18 width 16' / 'PreAct ResNet-18'."""
    kw = config.model_kw
    if config.model == "cnn1":
        return f"cnn1 with {kw.get('n_filters', 4)} filters"
    if config.model == "preact_resnet18":
        return "PreAct ResNet-18" + (f" width {kw['base_width']}" if "base_width" in kw else "")
    return config.model


def scale_text(kind: str, config: TrainConfig, evaluation: dict | None = None) -> str:
    """A scale text of fatlib.verdicts: '<kind>: <model>, <images>, <epochs>, <final attack>'
    (the final attack: the config's PGD, or the queue evaluation `evaluation` (attack, version, n)."""
    images = config.n_train or {"cifar10": 50000, "mnist": 60000}.get(config.dataset, 0)
    epochs = f"{config.epochs} epoch" + ("s" if config.epochs != 1 else "")
    attack = (f"PGD-{config.final_pgd_steps}-{config.final_pgd_restarts} on "
              f"{config.final_n_eval:,} test images" if evaluation is None else
              f"{_attack_name(evaluation)} on {evaluation['n']:,} test images")
    return f"{kind}: {model_text(config)}, {images:,} training images, {epochs}, {attack}"


def _attack_name(evaluation: dict) -> str:
    """'AutoAttack (standard)' for {"attack": "autoattack", "version": "standard", ...}."""
    name = {"autoattack": "AutoAttack"}.get(evaluation["attack"], evaluation["attack"])
    return f"{name} ({evaluation['version']})"


def record_scale(record: str) -> str:
    """:func:`scale_text` of the record `record` of data/record_queue.json, at record scale."""
    return scale_text("record scale", runs.queue_entry(record).config)


def in_threat_set(cases, *, name: str = "delta", rounding: float = 1e-6) -> verdicts.RuleResult:
    """Rule: every perturbation lies in its threat model's eps ball and keeps the image in [0, 1].

    Implements: the constraint every attack of the four papers states (the ball, then the
    image box), as fatlib.verdicts.within on the largest norm / eps (at most 1 + `rounding`,
    float rounding) and on the smallest and largest entry of x + delta (in [0, 1]).
    Args:
        cases: (ThreatModel, x, delta) triples; delta is reshaped to x's shape (a single
            image's [C, H, W] perturbation with x of [1, C, H, W] is fine).
        name: what the perturbations are ("PGD-7's delta"), for the texts.
        rounding: the tolerance of the ball bound, a fraction of eps.
    Returns:
        fatlib.verdicts.RuleResult of both bounds over all cases.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("in_threat_set needs at least one (ThreatModel, x, delta) case")
    ratios, lows, highs = [], [], []
    for threat, x, delta in cases:
        delta = delta.reshape(x.shape)
        ratios.append(float(threat.norms(delta).max()) / threat.eps)
        lows.append(float((x + delta).min()))
        highs.append(float((x + delta).max()))
    norm = {"linf": "l-inf", "l2": "l2"}[cases[0][0].norm]
    return verdicts.all_of(
        verdicts.within([max(ratios)], hi=1 + rounding, digits=6,
                        name=f"largest {norm} norm of {name} / eps"),
        verdicts.within([min(lows), max(highs)], lo=0, hi=1,
                        name=f"smallest and largest entry of x + {name}"))


@dataclass(frozen=True)
class Claim:
    """A qualitative claim of the paper about named rows, and the rule of fatlib.verdicts that
    tests it on their final PGD accuracies: every row in ``collapse`` collapses, every row
    in ``survive`` does not, and each (higher, lower) pair in ``above`` is ordered."""

    text: str
    collapse: tuple = ()
    survive: tuple = ()
    above: tuple = ()

    @property
    def rows(self) -> tuple:
        """The rows the claim is about, in order, once each."""
        pairs = [name for pair in self.above for name in pair]
        return tuple(dict.fromkeys([*self.collapse, *self.survive, *pairs]))

    def rule(self, pgd: dict, n: int) -> verdicts.RuleResult:
        """all_of(collapses, survives, greater) on pgd = row -> per-seed robust accuracies (PGD,
        or the attack of check_records' evaluation)."""
        parts = [verdicts.collapses(pgd[r], n, name=r) for r in self.collapse]
        parts += [verdicts.survives(pgd[r], n, name=r) for r in self.survive]
        parts += [verdicts.greater(pgd[a], pgd[b], n, names=(a, b)) for a, b in self.above]
        return verdicts.all_of(*parts)


def check(artifact: str, claim: Claim, results: dict, *, paper: str, scale: str,
          reason: str) -> verdicts.Verdict:
    """The verdict on a claim from finished runs or records (row -> list of them).

    Args:
        artifact: the paper's table or figure.
        claim: the Claim; results must hold each of its rows.
        paper: the paper's evidence (see :func:`paper_text`).
        scale: '<kind>: <what>' of the runs.
        reason: the likely reason, should the claim fail here.
    """
    pgd = {r: [item.metrics["pgd_acc"] for item in results[r]] for r in claim.rows}
    n = min(item.metrics["n"] for r in claim.rows for item in results[r])
    return verdicts.check(artifact, claim.text, claim.rule(pgd, n), paper=paper, scale=scale,
                          reason=reason)


def check_records(artifact: str, claim: Claim, records: dict, *, paper: str,
                  reason: str, evaluation: dict | None = None) -> verdicts.Verdict:
    """The verdict on a claim from the record-scale records of its rows.

    Args:
        artifact, claim, paper, reason: as in :func:`check`.
        records: row -> the names of its records in data/record_queue.json, one per seed.
        evaluation: test the claim on the accuracy of a queue evaluation of the records
            (dict attack, version, n, as fatlib.runs.record_evaluation takes; e.g. AutoAttack)
            instead of their final PGD accuracy.
    Returns:
        :func:`check` on the records made so far (with their config), or a queued row
        (fatlib.chapter.queued) while a row of the claim has none; with `evaluation`, on the
        evaluations written so far, or the queued row of a row's first missing evaluation.
    """
    made = {r: [x for x in map(chapter.made_record, records[r]) if x] for r in claim.rows}
    missing = [records[r][0] for r in claim.rows if not made[r]]
    if missing:
        return chapter.queued(artifact, claim.text, paper=paper, record=missing[0],
                              scale=record_scale(missing[0]))
    first = made[claim.rows[0]][0].config
    if evaluation is None:
        return check(artifact, claim, made, paper=paper, scale=scale_text("record scale", first),
                     reason=reason)
    found = {r: [runs.record_evaluation(x.name, **evaluation) for x in made[r]] for r in claim.rows}
    unevaluated = [made[r][0].name for r in claim.rows if not any(found[r])]
    scale = scale_text("record scale", first, evaluation)
    if unevaluated:
        entry = runs.evaluation_entry(unevaluated[0], **evaluation)
        return chapter.queued(artifact, claim.text, paper=paper, record=entry.name, scale=scale)
    values = {r: [e["accuracy"][evaluation["attack"]] for e in found[r] if e] for r in claim.rows}
    return verdicts.check(artifact, claim.text, claim.rule(values, evaluation["n"]), paper=paper,
                          scale=scale, reason=reason)
