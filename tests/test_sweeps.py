"""fatlib.sweeps: the andriushchenko2020 sweeps' configs equal the records', the two sources
(reduced-scale sweep, record-scale queue) answer claims through one verdict function, and
the history rules. Seconds: no training (record_or_run is replaced where a sweep is built)."""

import math
import re
from types import SimpleNamespace

import pytest
import torch

from fatlib import runs, sweeps, verdicts
from fatlib.models import build

QUICK = sweeps.RunSettings.of(sweeps.RUNS["quick"])
NAME = re.compile(r"andriushchenko2020_cnn1_(.+)_eps(\d+)_s(\d+)(_es)?")


def _records():
    folder = runs.records_dir()
    return sorted(p.name for p in folder.iterdir() if NAME.fullmatch(p.name)
                  and (p / "config.json").exists()) if folder.exists() else []


def _run(pgd, clean=30.0, fgsm=None, history=None):
    metrics = {"pgd_acc": pgd, "clean_acc": clean, "fgsm_acc": fgsm or pgd, "n": 500,
               "train_source": "test data", "events": []}
    return SimpleNamespace(metrics=metrics, history=history or [{"epoch": 0, "pgd_acc": pgd}])


def _history(*pgd, step=0.5, fgsm_gap=1.0):
    return [{"epoch": i * step, "iteration": i, "pgd_acc": p, "fgsm_acc": p + fgsm_gap}
            for i, p in enumerate(pgd)]


# --------------------------------------------------------------------------- declarations

def test_the_reduced_scale_records_hold_the_configs_the_pages_declare():
    names = _records()
    if not names:
        pytest.skip("no andriushchenko2020 records in data/records")
    for name in names:
        tag, eps, seed, es = NAME.fullmatch(name).groups()
        assert sweeps.record_name(tag, int(eps), int(seed), bool(es)) == name
        assert sweeps.config(tag, int(eps), int(seed), QUICK, early_stop=bool(es)) == \
            runs.load_record(name).config, name


def test_the_paper_setting_of_the_single_layer_cnn_is_its_records_config():
    full = sweeps.RunSettings(model="cnn1", n_train=None, epochs=30, batch_size=128, n_eval=256,
                              eval_every=50, final_n_eval=1000)
    queue = {e.name: e.config for e in runs.load_queue()}
    assert sweeps.config("fgsm", 10, 0, full) == queue["andriushchenko2020_cnn1_eps10_paper"]


def test_method_fields_follow_the_papers_steps_and_reject_unknowns():
    eps = 8 / 255
    assert sweeps.method_fields("fgsmrs", eps, QUICK)["alpha"] == pytest.approx(1.25 * eps)
    assert sweeps.method_fields("pgd2", eps, QUICK)["pgd_alpha"] == pytest.approx(eps / 2)
    assert sweeps.method_fields("gradalign", eps, QUICK)["ga_lambda"] == 0.2
    resnet = sweeps.RunSettings.of(sweeps.RUNS["paper"])
    assert sweeps.method_fields("gradalign", eps, resnet)["lr_max"] == 0.3     # authors' lr
    assert sweeps.method_fields("free", eps, resnet)["epochs"] == 96           # the paper's 96
    assert sweeps.method_fields("free", eps, QUICK)["epochs"] == 3 * QUICK.epochs
    with pytest.raises(ValueError, match="lambda"):
        sweeps.method_fields("gradalign", 20 / 255, QUICK)
    with pytest.raises(ValueError, match="unknown method"):
        sweeps.method_fields("fgsm2", eps, QUICK)
    with pytest.raises(ValueError, match="unknown run settings"):
        sweeps.RunSettings.of({"epoch": 3})
    assert QUICK.text == "cnn1 (4 filters), 5,000 CIFAR-10 images, 8 epochs, PGD-50-10 on 500 " \
                         "test images"


def test_cost_configs_time_the_first_batches_without_evaluation():
    configs = sweeps.cost_configs("cnn1", ["fgsm", "gradalign"], batch=16, steps=3)
    assert list(configs) == ["FGSM", "FGSM + GradAlign"]
    for c in configs.values():
        assert (c.n_train, c.batch_size, c.n_eval, c.final_n_eval, c.augment) == (64, 16, 0, 0,
                                                                                  False)


# --------------------------------------------------------------------------- sources

def test_a_sweep_adds_a_second_seed_only_where_its_record_holds_the_config(monkeypatch):
    made = []

    def fake_record_or_run(config, name, use_record=True):
        made.append(name)
        return _run(12.0), f"record {name}"

    monkeypatch.setattr(sweeps.runs, "record_or_run", fake_record_or_run)
    monkeypatch.setattr(sweeps.runs, "record_with_config",
                        lambda name, cfg: name.endswith("fgsm_eps16_s1"))
    sweep = sweeps.sweep(["fgsm", "pgd10"], [16], [0], QUICK, profile="quick")
    assert made == [f"andriushchenko2020_cnn1_{n}" for n in ("fgsm_eps16_s0", "fgsm_eps16_s1",
                                                              "pgd10_eps16_s0")]
    assert sweep.values("fgsm", 16) == [12.0, 12.0] and len(sweep.runs("pgd10", 16)) == 1
    assert sweep.scale.startswith("reduced scale: cnn1 (4 filters)")
    with pytest.raises(sweeps.Missing, match="FGSM-RS 16/255"):
        sweep.runs("fgsmrs", 16)


def _sweep(**pgd):
    items = [sweeps.Item(tag, 16, 0, False, _run(acc), "record x") for tag, acc in pgd.items()]
    return sweeps.Sweep(items, QUICK, "quick")


def test_verdict_checks_a_claim_or_says_what_is_missing():
    sweep = _sweep(fgsm=1.0, fgsmrs=40.0)
    ok = sweeps.verdict("T1", "FGSM collapses, FGSM-RS does not", lambda v: verdicts.all_of(
        v.collapses("fgsm", 16), v.survives("fgsmrs", 16)), source=sweep, paper="0% vs 40%")
    assert ok.verdict == verdicts.REDUCED and "FGSM 16/255 1.0%" in ok.ours
    bad = sweeps.verdict("T1", "FGSM-RS collapses", lambda v: v.collapses("fgsmrs", 16),
                         source=sweep, paper="0%")
    assert bad.verdict == verdicts.DIFFERS and bad.detail.endswith(sweep.why)
    missing = sweeps.verdict("T1", "PGD-10 survives", lambda v: v.survives("pgd10", 16),
                             source=sweep, paper="50%")
    assert missing.verdict == verdicts.NOT_RUN and "PGD-10 16/255" in missing.detail
    order = sweeps.verdict("T1", "FGSM-RS above FGSM", lambda v: v.greater(("fgsmrs", 16),
                                                                           ("fgsm", 16)),
                           source=sweep, paper="46% vs 0%")
    assert order.verdict == verdicts.REDUCED


def test_record_scale_reads_queued_records_with_the_queues_config(monkeypatch):
    scale = sweeps.RecordScale()
    assert scale.names("fgsm", 8) == ["rs16_andriushchenko2020_fgsm_eps8_s0",
                                      "rs16_andriushchenko2020_fgsm_eps8_s1"]
    assert scale.names("pgd2", 16) == ["rs16_andriushchenko2020_pgd2_eps16_s0",
                                       "rs16_andriushchenko2020_pgd2_eps16_s1"]
    assert scale.names("pgd2", 4) == ["rs16_andriushchenko2020_pgd2_eps4_s0"]
    rule = lambda v: v.collapses("fgsm", 8)  # noqa: E731
    monkeypatch.setattr(sweeps.runs, "load_record", lambda name: (_ for _ in ()).throw(
        FileNotFoundError(name)))
    queued = sweeps.verdict("Fig. 1", "FGSM collapses", rule, source=scale, paper="0%")
    assert queued.verdict == verdicts.NOT_RUN
    assert "rs16_andriushchenko2020_fgsm_eps8_s0" in queued.detail
    assert queued.scale.startswith("record scale: PreAct ResNet-18 width 16")

    def made(name):  # a record of the queue's config; s1 of another config
        config = scale.entries[name].config
        return SimpleNamespace(config=config if name.endswith("s0") else config.replace(seed=7),
                               metrics={"pgd_acc": 0.0}, history=[])

    fresh = sweeps.RecordScale()
    monkeypatch.setattr(sweeps.runs, "load_record", made)
    other = sweeps.verdict("Fig. 1", "FGSM collapses", rule, source=fresh, paper="0%")
    assert other.verdict == verdicts.NOT_RUN and "fgsm_eps8_s1" in other.detail
    monkeypatch.setattr(sweeps.runs, "load_record", lambda name: SimpleNamespace(
        config=scale.entries[name].config, metrics={"pgd_acc": 0.0}, history=[]))
    done = sweeps.verdict("Fig. 1", "FGSM collapses", rule, source=sweeps.RecordScale(),
                          paper="0%")
    assert done.verdict == verdicts.REDUCED and "n = 1,000" in done.ours
    none = sweeps.verdict("Fig. 1", "corners", lambda v: v.survives("pgd10corners", 8),
                          source=scale, paper="50%")
    assert none.verdict == verdicts.NOT_RUN and "none is queued" in none.detail


# --------------------------------------------------------------------------- history rules

def test_after_best_and_the_largest_value_before_the_collapse():
    h = _history(10, 20, 25, 15, 2, 1)          # best 25 at epoch 1.0, then it falls
    assert sweeps.after_best(h)["epoch"] == 2.0 and sweeps.after_best(h)["pgd_acc"] == 2
    for r, ratio in zip(h, (1.0, 1.01, 1.02, 1.03, 3.0, 5.0)):
        r["pgd_fgsm_loss_ratio"] = ratio
    assert sweeps.max_before_collapse(h, "pgd_fgsm_loss_ratio") == 1.03  # collapse at pgd 2
    flat = _history(10, 12, 14)                  # no collapse: the whole run, the last record
    assert sweeps.after_best(flat) == flat[-1]
    assert math.isnan(sweeps.max_before_collapse(flat, "missing"))


def test_sudden_drop_needs_robustness_first_and_its_loss_within_an_epoch():
    fast = _history(30, 40, 38, 1, 0, 0)         # 40% at epoch 0.5, 0% at epoch 2.0
    slow = _history(30, 40, 35, 30, 20, 9, step=0.5)
    never = _history(5, 6, 2, 0)                 # never above 10%: nothing to lose
    assert sweeps.sudden_drop([fast], 256).passed
    assert not sweeps.sudden_drop([slow], 256).passed
    assert not sweeps.sudden_drop([never], 256).passed
    assert not sweeps.sudden_drop([fast, slow], 256).passed     # every seed must drop


def test_corners_projects_only_the_final_perturbation():
    torch.manual_seed(0)
    model = build("cnn1", "cifar10", n_filters=4).eval()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    assert sweeps.corners_final_only(model, x, y, 8 / 255)


def test_run_table_says_what_overfitting_finds():
    item = sweeps.Item("fgsm", 16, 0, False, _run(1.0, history=_history(30, 35, 2)), "record x")
    table = sweeps.run_table([item])
    assert table.rows[0][1] == "FGSM" and table.rows[0][5].startswith("collapsed at epoch 1.0")
