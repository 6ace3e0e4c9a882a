"""What the wong2020 pages of the book share: the paper's Table 1, the recipes of their
CIFAR-10 runs, the records of the record queue that each row reads, and the claims.

Wong, Rice and Kolter, "Fast is better than free: revisiting adversarial training" (ICLR
2020). A page declares its runs with :func:`config` (one recipe per profile, so that the
pages share their runs through the run cache), states the paper's qualitative claims as
fatlib.claims.Claim objects, and turns them into verdicts with fatlib.claims.check (runs of
this execution) or :func:`check_records` (the record-scale records of Table 1, or a queued
row while a record is not made yet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fatlib import claims, runs, verdicts
from fatlib.claims import Claim, check, model_text, scale_text  # noqa: F401 (the pages use them)
from fatlib.train import TrainConfig

EPS = 8 / 255
FREE_M = 8
ARTIFACT = "wong2020 Table 1"

# The CIFAR-10 profiles of the pages (each page adds its own values): quick and smoke train
# a single-layer CNN (reduced scale); paper is Appendix A's PreAct ResNet-18.
CIFAR = {
    "smoke": dict(model="cnn1", n_filters=4, n_train=128, epochs=1, n_eval=32, pgd_steps=3,
                  pgd_restarts=1, seeds=[0, 1]),
    "quick": dict(model="cnn1", n_filters=16, n_train=10000, epochs=10, n_eval=1000,
                  pgd_steps=20, pgd_restarts=1, seeds=[0, 1]),
    "paper": dict(model="preact_resnet18", n_filters=None, n_train=50000, epochs=30, n_eval=1000,
                  pgd_steps=50, pgd_restarts=10, seeds=[0]),
}
# Appendix A: PGD and free train for 400 epochs with a piecewise schedule (drops not given:
# by 10 at 50% and 75%); FGSM for 30 epochs with a cyclic one (max 0.05).
APPENDIX_A = {"pgd": dict(epochs=400, lr_schedule="piecewise", lr_max=0.1, lr_drops=(200, 300)),
              "free": dict(epochs=400, lr_schedule="piecewise", lr_max=0.05, lr_drops=(200, 300))}


@dataclass(frozen=True)
class Row:
    """One row of Table 1: the paper's standard and PGD-50-10 accuracy (%), the method's
    TrainConfig fields, and the record-scale records of its seeds (data/record_queue.json)."""

    name: str
    clean: float
    pgd: float
    method: dict
    records: tuple

    @property
    def collapses(self) -> bool:
        """The paper's finding for this row: catastrophic overfitting (0% PGD accuracy)."""
        return self.pgd < 1.0

    @property
    def claim(self) -> "Claim":
        """The row's claim: it collapses, or it does not."""
        word = "collapses" if self.collapses else "does not collapse"
        return Claim(f"{self.name} {word}", **{"collapse" if self.collapses else "survive":
                                                (self.name,)})


def _fgsm(init: str, alpha_255: int) -> dict:
    return dict(method="fgsm", fgsm_init=init, alpha=alpha_255 / 255)


TABLE1 = (
    Row("FGSM, zero init", 81.48, 0.00, _fgsm("zero", 8),
        ("rs16_wong2020_fgsm_zero_s0", "rs16_wong2020_fgsm_zero_s1")),
    Row("FGSM, previous init", 85.60, 42.32, _fgsm("previous", 8), ("rs16_wong2020_fgsm_prev_s0",)),
    Row("FGSM-RS, alpha 8/255", 84.38, 43.78, _fgsm("random", 8), ("rs16_wong2020_fgsmrs_a8_s0",)),
    Row("FGSM-RS, alpha 10/255", 83.25, 46.25, _fgsm("random", 10),
        ("scale_preact18_w16_fgsm_rs_8", "rs16_wong2020_fgsmrs_a10_s1")),
    Row("FGSM-RS, alpha 16/255", 85.39, 0.00, _fgsm("random", 16),
        ("rs16_wong2020_fgsmrs_a16_s0", "rs16_wong2020_fgsmrs_a16_s1")),
    Row("free (m = 8)", 83.80, 46.78, dict(method="free", free_m=FREE_M),
        ("rs16_wong2020_free_m8_s0",)),
    Row("PGD-7", 83.04, 44.56, dict(method="pgd", pgd_steps=7, pgd_alpha=2 / 255),
        ("rs16_wong2020_pgd7_s0",)),
)
ROWS = {row.name: row for row in TABLE1}
ZERO, PREVIOUS, A8, A10, A16, FREE, PGD7 = ROWS
A16_ES = "FGSM-RS, alpha 16/255, early stopping"
RECORDS = {**{row.name: row.records for row in TABLE1},
           A16_ES: ("rs16_wong2020_fgsmrs_a16_es_s0",)}


# The likely reason of a claim that fails, by the scale kind of the runs it was tested on.
REASONS = {
    "smoke": "the smoke profile trains for seconds on a few images: it tests the code, not "
             "the claim",
    "quick": "the reduced scale: a single-layer CNN (not a PreAct ResNet-18) trained with Adam "
             "on fewer images for fewer epochs",
    "reduced scale": "the parameters of this execution differ from the paper's (run card)",
    "paper scale": "this execution's data (the JPEG mirror of CIFAR-10), precision and seeds",
    "record scale": "the record scale: a PreAct ResNet-18 of a quarter of the paper's width, "
                    "trained with the record queue's cyclic schedules (not Appendix A's)",
}


# --------------------------------------------------------------------------- recipes

def _common(P) -> dict:
    model_kw = {"n_filters": P.n_filters} if P.model == "cnn1" else {}
    return dict(dataset="cifar10", model=P.model, model_kw=model_kw, n_train=P.n_train, eps=EPS,
                batch_size=128, final_n_eval=P.n_eval, final_pgd_steps=P.pgd_steps,
                final_pgd_restarts=P.pgd_restarts, final_pgd_alpha=2 / 255)


def _reduced(P, epochs: int) -> dict:
    every = 2 * (P.n_train // 128 + 1) if epochs > 2 else 0  # a history record every 2 epochs
    return dict(optimizer="adam", weight_decay=0.0, n_eval=min(200, P.n_eval), eval_every=every,
                epochs=epochs, lr_schedule="cyclic", lr_max=3e-3)


def _appendix_a(method: str, epochs: int | None, P) -> dict:
    if epochs is None and method in APPENDIX_A:
        schedule = APPENDIX_A[method]
    else:
        schedule = dict(epochs=epochs or P.epochs, lr_schedule="cyclic", lr_max=0.05)
    return dict(optimizer="sgd", momentum=0.9, weight_decay=5e-4, precision="auto",
                channels_last=True, n_eval=500, **schedule)


def config(P, seed: int, method: dict, *, epochs: int | None = None, **changes) -> TrainConfig:
    """The TrainConfig of one CIFAR-10 run of a wong2020 page, at the scale of P's profile.

    Quick and smoke: the reduced recipe all wong2020 pages share (P.model, Adam, cyclic lr up
    to 3e-3, history every 2 epochs on at most 200 test images); paper: Appendix A (SGD,
    FGSM 30 epochs cyclic lr 0.05, free and PGD 400 epochs piecewise). Free training gets a
    whole number of passes (a multiple of m cost-equivalent epochs).
    Args:
        P: the page's Params (model, n_filters, n_train, epochs, n_eval, pgd_steps, pgd_restarts).
        seed: the run's seed.
        method: TrainConfig fields of the method (a Row's ``method``).
        epochs: the number of epochs (default: P.epochs, or Appendix A's for free / PGD).
        changes: other TrainConfig fields (lr_max, early_stop).
    """
    kind = method["method"]
    if P.profile == "paper":
        recipe = _appendix_a(kind, epochs, P)
    else:
        n, m = epochs or P.epochs, method.get("free_m", FREE_M)
        recipe = _reduced(P, m * math.ceil(n / m) if kind == "free" else n)
    return TrainConfig(seed=seed, **method, **{**_common(P), **recipe, **changes})


def scale_kind(P) -> str:
    """The scale kind of a page's runs: 'paper scale' for the paper profile as it is, the
    profile's name for quick and smoke, 'reduced scale' for a paper profile overridden."""
    if P.profile != "paper":
        return P.profile
    return verdicts.REDUCED_SCALE if P.overridden else verdicts.PAPER_SCALE


# --------------------------------------------------------------------------- claims

def paper_text(names, what: str = "Table 1, PGD-50-10") -> str:
    """The paper's PGD accuracy of Table 1 rows ('Table 1, PGD-50-10: FGSM, zero init 0.00%')."""
    return f"{what}: " + "; ".join(f"{n} {ROWS[n].pgd:.2f}%" for n in names)


def compare_rows(results: dict, *, scale: str, reason: str) -> list:
    """compare() of each Table 1 row in results (name -> runs) with the paper's standard and
    PGD-50-10 accuracy; for runs at paper scale only (fatlib.verdicts refuses any other)."""
    out = []
    for name in (n for n in results if n in ROWS):
        n = min(r.metrics["n"] for r in results[name])
        for key, what, paper in (("pgd_acc", "PGD-50-10", ROWS[name].pgd),
                                 ("clean_acc", "standard", ROWS[name].clean)):
            out.append(verdicts.compare(ARTIFACT, f"{name}: {what} accuracy", paper=paper,
                                        ours=[r.metrics[key] for r in results[name]], n=n,
                                        scale=scale, reason=reason))
    return out


def check_records(artifact: str, claim: Claim, *, paper: str, reason: str,
                  records: dict = RECORDS) -> verdicts.Verdict:
    """fatlib.claims.check_records on the Table 1 records (:data:`RECORDS`)."""
    return claims.check_records(artifact, claim, records, paper=paper, reason=reason)


def run_card(P, results: dict, notes: str = ""):
    """The run card of a page's runs (row -> list of runs): data, sizes, run folders, sanity."""
    from fatlib.book import run_card as card

    items = [r for group in results.values() for r in group]
    first = items[0]
    folders = ", ".join(r.path.name for r in items)
    return card(P, data=[first.metrics["train_source"], first.metrics["source"]],
                sizes={"training images": P.n_train, "runs": len(items),
                       "test images (final evaluation)": first.metrics["n"]},
                notes=f"{model_text(first.config)}; runs {folders} (trained now or loaded from "
                      f"runs/){'; ' + notes if notes else ''}", sanity=runs.sanity_summary(items))
