"""fatlib.wong2020 (what the wong2020 pages share) and fatlib.chapter.made_record."""

import json
from types import SimpleNamespace

import pytest
import torch

from fatlib import chapter, claims, runs, verdicts, wong2020
from fatlib.book import resolve_profile
from fatlib.threat import ThreatModel


def _params(profile, **overrides):
    profiles = {name: dict(values) for name, values in wong2020.CIFAR.items()}
    return resolve_profile(profiles, profile, overrides=overrides)


def _run(pgd, n=1000, seed=0):
    return SimpleNamespace(metrics={"pgd_acc": pgd, "n": n}, config=SimpleNamespace(seed=seed))


def test_every_profile_has_the_same_keys():
    keys = {frozenset(values) for values in wong2020.CIFAR.values()}
    assert len(keys) == 1


def test_the_reduced_recipe_is_shared_and_free_makes_whole_passes():
    P = _params("quick")
    fgsm = wong2020.config(P, 0, wong2020.ROWS[wong2020.A10].method)
    assert (fgsm.model, fgsm.model_kw, fgsm.optimizer, fgsm.epochs) == ("cnn1", {"n_filters": 16},
                                                                         "adam", P.epochs)
    assert fgsm.final_n_eval == P.n_eval >= 1000 and fgsm.alpha == pytest.approx(10 / 255)
    assert fgsm == wong2020.config(P, 0, dict(method="fgsm", fgsm_init="random", alpha=10 / 255))
    free = wong2020.config(P, 0, wong2020.ROWS[wong2020.FREE].method)
    assert free.epochs % wong2020.FREE_M == 0 and free.epochs >= P.epochs
    assert wong2020.config(P, 0, dict(method="free", free_m=2), epochs=2).epochs == 2
    assert wong2020.config(P, 1, {"method": "standard"}).seed == 1


def test_the_paper_profile_follows_appendix_a():
    P = _params("paper")
    pgd = wong2020.config(P, 0, wong2020.ROWS[wong2020.PGD7].method)
    assert (pgd.epochs, pgd.lr_schedule, pgd.lr_max) == (400, "piecewise", 0.1)
    fgsm = wong2020.config(P, 0, wong2020.ROWS[wong2020.A8].method)
    assert (fgsm.epochs, fgsm.lr_schedule, fgsm.lr_max, fgsm.optimizer) == (30, "cyclic", 0.05,
                                                                             "sgd")
    figure2 = wong2020.config(P, 0, wong2020.ROWS[wong2020.PGD7].method, epochs=15, lr_max=0.21)
    assert (figure2.epochs, figure2.lr_schedule, figure2.lr_max) == (15, "cyclic", 0.21)


def test_scale_texts():
    P = _params("quick")
    text = wong2020.scale_text(wong2020.scale_kind(P), wong2020.config(P, 0, {"method": "fgsm"}))
    assert text == ("quick: cnn1 with 16 filters, 10,000 training images, 10 epochs, PGD-20-1 "
                    "on 1,000 test images")
    assert verdicts.scale_kind(text) == "quick"
    assert wong2020.scale_kind(_params("paper")) == verdicts.PAPER_SCALE
    assert wong2020.scale_kind(_params("paper", epochs=5)) == verdicts.REDUCED_SCALE
    record = runs.queue_entry("rs16_wong2020_fgsm_zero_s0").config
    assert wong2020.scale_text("record scale", record).startswith(
        "record scale: PreAct ResNet-18 width 16, 50,000 training images, 15 epochs")


def test_the_table1_records_are_queued_with_their_rows_methods():
    for name, records in wong2020.RECORDS.items():
        method = wong2020.ROWS[wong2020.A16 if name == wong2020.A16_ES else name].method
        for seed, record in enumerate(records):
            config = runs.queue_entry(record).config
            assert all(getattr(config, k) == (pytest.approx(v) if isinstance(v, float) else v)
                       for k, v in method.items()), record
            assert config.seed == seed and config.early_stop == (name == wong2020.A16_ES)
    with pytest.raises(ValueError, match="not in the record queue"):
        runs.queue_entry("no_such_record")


def test_a_claim_tests_collapse_survival_and_order():
    claim = wong2020.Claim("A collapses, B does not, B above C", collapse=("A",),
                           survive=("B",), above=(("B", "C"),))
    assert claim.rows == ("A", "B", "C")
    assert claim.rule({"A": [1.0, 0.5], "B": [40.0, 42.0], "C": [20.0, 21.0]}, 1000).passed
    assert not claim.rule({"A": [12.0], "B": [40.0], "C": [20.0]}, 1000).passed
    row = wong2020.ROWS[wong2020.ZERO]
    assert row.collapses and row.claim.collapse == (wong2020.ZERO,)
    assert wong2020.ROWS[wong2020.A10].claim.survive == (wong2020.A10,)


@pytest.mark.parametrize("norm, eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_in_threat_set_passes_a_projected_delta_and_fails_one_outside_ball_or_box(norm, eps):
    threat = ThreatModel(norm, eps)
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    inside = threat.project(3 * eps * torch.randn_like(x), x)
    assert claims.in_threat_set([(threat, x, inside)]).passed
    assert claims.in_threat_set([(threat, x[:1], inside[0])]).passed  # one image, [C, H, W]
    assert not claims.in_threat_set([(threat, x, inside), (threat, x, 1.01 * inside)]).passed
    below_box = torch.zeros_like(x)
    below_box[:, 0, 0, 0] = -eps / 2  # in the ball, but pushes a black pixel below 0
    outside = claims.in_threat_set([(threat, torch.zeros_like(x), below_box)], name="d")
    assert not outside.passed and "smallest and largest entry of x + d" in outside.detail
    with pytest.raises(ValueError, match="at least one"):
        claims.in_threat_set([])


def test_check_gives_the_verdict_of_the_rule_on_runs():
    claim = wong2020.ROWS[wong2020.A16].claim
    results = {wong2020.A16: [_run(0.4), _run(1.0, seed=1)]}
    scale = "quick: cnn1 with 16 filters, 10,000 training images, 10 epochs"
    ok = wong2020.check("wong2020 Table 1", claim, results, paper="0.00%", scale=scale,
                        reason="r")
    assert ok.verdict == verdicts.REDUCED and "0.4, 1.0%" in ok.ours
    bad = wong2020.check("wong2020 Table 1", claim, {wong2020.A16: [_run(30.0)]}, paper="0.00%",
                         scale=scale, reason="the reduced scale")
    assert bad.verdict == verdicts.DIFFERS and "the reduced scale" in bad.detail
    assert "FGSM-RS, alpha 16/255 0.00%" in wong2020.paper_text([wong2020.A16])


def _fake_record(root, name, config, pgd):
    folder = root / name
    folder.mkdir(parents=True)
    for file, content in (("config.json", config.to_dict()), ("history.json", []),
                          ("metrics.json", {"pgd_acc": pgd, "n": 1000}), ("provenance.json", {})):
        (folder / file).write_text(json.dumps(content))


def test_check_records_waits_for_a_missing_record_and_reads_a_made_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FATLIB_RECORDS_DIR", str(tmp_path))
    claim = wong2020.ROWS[wong2020.ZERO].claim
    waiting = wong2020.check_records("wong2020 Table 1", claim, paper="0.00%", reason="r")
    assert waiting.verdict == verdicts.NOT_RUN and "rs16_wong2020_fgsm_zero_s0" in waiting.detail
    assert waiting.scale.startswith("record scale: PreAct ResNet-18 width 16")
    zero = wong2020.ROWS[wong2020.ZERO].records
    _fake_record(tmp_path, zero[0], runs.queue_entry(zero[0]).config, 0.0)
    _fake_record(tmp_path, zero[1], runs.queue_entry(zero[0]).config, 0.0)  # another seed's config
    assert chapter.made_record(zero[1]) is None and chapter.made_record(zero[0]) is not None
    made = wong2020.check_records("wong2020 Table 1", claim, paper="0.00%", reason="r")
    assert made.verdict == verdicts.REDUCED and "(n = 1,000 each)" in made.ours
    assert made.scale.startswith("record scale: ")


def test_made_record_refuses_a_name_that_is_not_queued():
    with pytest.raises(ValueError, match="not in the record queue"):
        chapter.made_record("no_such_record")
    assert isinstance(runs.load_queue(), list)
