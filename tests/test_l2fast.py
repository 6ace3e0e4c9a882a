"""fatlib.l2fast: the paper's settings and Table I, the lower-bound model of Figure 1, the
timings (one PGD execution, 1 and 2 processes under torchrun), accuracy against the l2
radius (Figure 2), the measures of Figures 3-5 and the closing rows on fabricated numbers
and fake bench.Timing objects. Properties only: no assertion depends on how fast this
machine is."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from fatlib import bench, data, evaluate, models, runs, train, verdicts, visualize
from fatlib import l2fast as L
from fatlib.config import TrainConfig

from helpers import assert_same_state, model_state

NONE, ONE, SEVEN = L.NONE, L.ONE, L.SEVEN
SCALE = "reduced scale: PreAct ResNet-18 width 8, batch 16, 3 rounds"
FIG3, FIG4, FIG5 = (f"{L.PAPER} Figure {k}" for k in (3, 4, 5))


@pytest.fixture(autouse=True)
def _queue_read_once(monkeypatch):
    """The record queue as data/record_queue.json holds it, read (and validated) once: every
    queued row looks its record up, and each reading builds the queue's models."""
    if not hasattr(_queue_read_once, "entries"):
        _queue_read_once.entries = runs.load_queue()
    real = runs.load_queue
    monkeypatch.setattr(runs, "load_queue", lambda path=None: (
        _queue_read_once.entries if path is None else real(path)))


def _cnn(seed=0):
    torch.manual_seed(seed)
    return models.build("cnn1", "cifar10", n_filters=4)


def _cifar(n=16):
    x, y = data.load("cifar10", "test", n=n)
    return data.to_float(x), y


# --------------------------------------------------------------------------- settings, Table I

def test_paper_ratio_reads_table1s_printed_hours():
    assert L.paper_ratio(SEVEN, ONE, 2) == pytest.approx(9.1 / 2.9)
    assert L.paper_ratio(ONE, NONE, 2) == pytest.approx(2.9 / 1.2)
    assert L.paper_ratio(SEVEN, NONE, 2) == pytest.approx(9.1 / 1.2)
    assert L.paper_ratio(SEVEN, ONE, 8) == pytest.approx(3.0 / 1.1)
    assert L.paper_ratio(ONE, NONE, 8) == pytest.approx(1.1 / 0.7)
    ri = "Restricted ImageNet"
    assert L.paper_ratio(SEVEN, ONE, 2, ri) == pytest.approx(127.5 / 39.8)
    assert L.paper_ratio(ONE, NONE, 8, ri) == pytest.approx(12.9 / 8.4)
    assert L.paper_ratio(ONE, ONE, 8) == 1.0
    # the printed relative numbers are relative to 2 GPUs without PGD
    for dataset in L.TABLE1_LAST:
        assert L.TABLE1_LAST[dataset][NONE][0][1] == 1.0
    with pytest.raises(KeyError):
        L.paper_ratio(SEVEN, ONE, 4)


def test_method_fields_give_the_papers_step_sizes_and_valid_configs():
    for eps in (L.EPS, 0.5):
        fields = L.method_fields(eps)
        assert list(fields) == list(L.MODELS)
        cfg = {name: TrainConfig(**f) for name, f in fields.items()}
        assert all(c.norm == "l2" and c.eps == pytest.approx(eps) for c in cfg.values())
        assert cfg[NONE].method == "standard"
        assert cfg[ONE].method == "l2fast"
        assert cfg[ONE].alpha_value == pytest.approx(L.ONE_STEP_ALPHA * eps)   # alpha = 1.5 eps
        assert (cfg[SEVEN].method, cfg[SEVEN].pgd_steps) == ("pgd", 7)
        assert cfg[SEVEN].alpha_value == pytest.approx(2.5 * eps / 7)         # 2.5 eps / K


def test_the_records_and_timed_steps_train_the_three_models():
    for records, eps in ((L.RECORDS, L.EPS), (L.RECORDS_HALF, L.EPS_HALF)):
        for name, record in records.items():
            c = runs.queue_entry(record).config
            for key, value in L.method_fields(eps)[name].items():
                assert getattr(c, key) == pytest.approx(value), (record, key)
    for name, key in L.BENCH_METHODS.items():
        f = bench.METHODS[key].fields
        want = L.method_fields()[name]
        assert f["method"] == want["method"]
        assert f.get("pgd_steps", 1) == want.get("pgd_steps", 1)   # the cost: steps per attack


# --------------------------------------------------------------------------- Figure 1's bound

def _executions(b):
    return 150 * math.ceil(50_000 / b) + 30 * math.ceil(10_000 / b)


@pytest.mark.parametrize("batch, seconds", [(256, 0.5), (128, 0.3), (100, 2.0), (1, 0.01)])
def test_lower_bound_is_the_papers_count_of_pgd_executions(batch, seconds):
    assert L.lower_bound_hours(seconds, batch) == pytest.approx(
        _executions(batch) * seconds / 3600)
    assert L.lower_bound_hours(0.0, batch) == 0.0


def test_lower_bound_counts_epochs_and_validations_as_asked():
    # 10 epochs validated every 5: 10 passes over the training data, 2 over the validation set
    assert L.lower_bound_hours(1.0, 256, epochs=10) == pytest.approx(
        (10 * 196 + 2 * 40) / 3600)
    assert L.lower_bound_hours(1.0, 10, epochs=1, val_every=1, n_train=100, n_val=20) == \
        pytest.approx((10 + 2) / 3600)


def test_lower_bound_falls_with_the_batch_when_an_execution_has_a_fixed_cost():
    batches = [16, 32, 64, 128, 256]
    # t(B) = overhead + c B (a GPU's diminishing returns): larger batches, fewer executions
    hours = [L.lower_bound_hours(0.01 + 0.001 * b, b) for b in batches]
    assert all(a > b for a, b in zip(hours, hours[1:]))
    # t(B) proportional to B: the bound is the cost of 150 + 30 passes example by example,
    # plus at most one partial batch per pass
    flat = [L.lower_bound_hours(0.001 * b, b) for b in batches]
    exact = 0.001 * (150 * 50_000 + 30 * 10_000) / 3600
    assert all(exact <= h <= exact + 0.001 * b * 180 / 3600 for h, b in zip(flat, batches))


@pytest.mark.parametrize("seconds, batch", [(1.0, 0), (1.0, -4), (-0.1, 256)])
def test_lower_bound_refuses_bad_input(seconds, batch):
    with pytest.raises(ValueError, match="batch >= 1 and seconds >= 0"):
        L.lower_bound_hours(seconds, batch)


def test_workers_share_the_global_batch():
    measured = {256: 1.0, 128: 0.6, 64: 0.4, 32: 0.3}
    got = L.workers_lower_bound(measured, [1, 2, 4, 8])
    assert list(got) == [1, 2, 4, 8]
    for w, hours in got.items():
        # each worker runs PGD on 256 / w examples; the steps are those of batch 256
        assert hours == pytest.approx(measured[256 // w] * _executions(256) / 3600)
        assert hours == pytest.approx(L.lower_bound_hours(measured[256 // w], 256))
    assert got[1] > got[2] > got[4] > got[8]
    assert L.workers_lower_bound({64: 1.0}, [2], global_batch=128, epochs=10)[2] == \
        pytest.approx((10 * 391 + 2 * 79) / 3600)


def test_workers_need_the_time_at_their_batch():
    with pytest.raises(ValueError, match="batch 16"):
        L.workers_lower_bound({256: 1.0, 128: 0.6}, [1, 16])
    with pytest.raises(ValueError, match="batch 85"):
        L.workers_lower_bound({256: 1.0, 128: 0.6}, [3])


# --------------------------------------------------------------------------- speed rows

def _timing(seven_one, one_none, rounds=3, jitter=(1.0, 1.02, 0.99)):
    """A fake bench.Timing: every round's ratios are the given ones (a tight spread)."""
    none = [1.0 * jitter[i % len(jitter)] for i in range(rounds)]
    one = [one_none * s for s in none]
    return bench.Timing(seconds={NONE: none, ONE: one, SEVEN: [seven_one * s for s in one]},
                        baseline=NONE)


@pytest.mark.parametrize("seven_one, one_none", [(3.0, 2.0), (2.55, 1.55), (3.45, 2.45)])
def test_speed_ratios_within_half_a_unit_are_reproduced_at_reduced_scale(seven_one, one_none):
    rows = L.speed_verdicts(_timing(seven_one, one_none), scale=SCALE)
    assert [r.verdict for r in rows] == [verdicts.REDUCED] * 2
    assert all(isinstance(r, verdicts.Verdict) and r.scale == SCALE for r in rows)
    assert "3x" in rows[0].claim and "2x" in rows[1].claim
    assert f"{9.1 / 2.9:.2f}" in rows[0].paper and f"{2.9 / 1.2:.2f}" in rows[1].paper
    assert f"{seven_one:.2f}" in rows[0].ours and f"{one_none:.2f}" in rows[1].ours


@pytest.mark.parametrize("seven_one, one_none, wrong", [(4.0, 2.0, [True, False]),
                                                        (2.4, 2.0, [True, False]),
                                                        (3.0, 2.6, [False, True]),
                                                        (3.0, 1.2, [False, True]),
                                                        (7.0, 1.0, [True, True])])
def test_speed_ratios_outside_the_stated_factor_differ(seven_one, one_none, wrong):
    rows = L.speed_verdicts(_timing(seven_one, one_none), scale=SCALE)
    assert [r.verdict == verdicts.DIFFERS for r in rows] == wrong
    assert all("likely reason" in r.detail for r, w in zip(rows, wrong) if w)


def test_an_untrusted_timing_differs_even_at_the_papers_factors():
    rows = L.speed_verdicts(_timing(3.0, 2.0, rounds=2), scale=SCALE)
    assert [r.verdict for r in rows] == [verdicts.DIFFERS] * 2
    assert all("not trusted" in r.detail and "fewer than" in r.detail for r in rows)
    # 4 rounds whose ratios disagree by far more than bench.MAX_SPREAD
    one = [2.0, 2.0, 2.0, 2.0]
    wild = bench.Timing(seconds={NONE: [1.0] * 4, ONE: one,
                                 SEVEN: [o * r for o, r in zip(one, (2.0, 4.0, 2.0, 4.0))]},
                        baseline=NONE)
    rows = L.speed_verdicts(wild, scale=SCALE)
    assert rows[0].verdict == verdicts.DIFFERS and "spread" in rows[0].detail
    assert rows[1].verdict == verdicts.REDUCED


def test_speed_rows_at_paper_scale_are_reproduced():
    rows = L.speed_verdicts(_timing(3.0, 2.0), scale="paper scale: ResNet-50 on 2 V100s")
    assert [r.verdict for r in rows] == [verdicts.REPRODUCED] * 2


# --------------------------------------------------------------------------- Figure 2 rows

EPS_GRID = (0.0, 0.25, 0.5, 1.0)


STANDARD = (92.0, 30.0, 5.0, 0.0)
ONE_STEP = (80.0, 66.0, 50.0, 25.0)   # below standard at eps 0, which the claim leaves out
SEVEN_STEP = (78.0, 64.0, 50.0, 36.0)


def test_one_step_far_above_standard_is_reproduced_at_reduced_scale():
    curves = {NONE: dict(zip(EPS_GRID, STANDARD)), ONE: dict(zip(EPS_GRID, ONE_STEP)),
              SEVEN: dict(zip(EPS_GRID, SEVEN_STEP))}
    rule = L.robustness_rule(curves, 1000)
    assert rule.passed and rule.ours.count("1-step at") == 3    # eps 0.25, 0.5, 1 (not 0)
    rows = L.robustness_verdicts(curves, 1000, scale=SCALE)
    assert [r.verdict for r in rows] == [verdicts.REDUCED] * 2
    assert all(r.artifact == f"{L.PAPER} Figure 2" for r in rows)
    assert "7-step at 1" in rows[1].ours     # the largest eps


def test_one_step_not_above_standard_at_one_eps_differs():
    weak = (80.0, 31.0, 50.0, 25.0)  # within the binomial error of standard at eps 0.25
    curves = {NONE: dict(zip(EPS_GRID, STANDARD)), ONE: dict(zip(EPS_GRID, weak))}
    assert not L.robustness_rule(curves, 1000).passed
    rows = L.robustness_verdicts(curves, 1000, scale=SCALE)
    assert rows[0].verdict == verdicts.DIFFERS and "likely reason" in rows[0].detail
    # the same gap on 1,000 images passes, on 50 it is within the error
    close = {NONE: {0.5: 40.0}, ONE: {0.5: 50.0}}
    assert L.robustness_rule(close, 1000).passed and not L.robustness_rule(close, 50).passed


def test_seven_step_is_compared_with_one_step_at_the_largest_eps():
    above_at_small = (78.0, 75.0, 60.0, 20.0)   # above 1-step except at eps 1
    curves = {NONE: dict(zip(EPS_GRID, STANDARD)), ONE: dict(zip(EPS_GRID, ONE_STEP)),
              SEVEN: dict(zip(EPS_GRID, above_at_small))}
    assert L.robustness_verdicts(curves, 1000, scale=SCALE)[1].verdict == verdicts.DIFFERS
    below_at_small = (70.0, 50.0, 40.0, 36.0)   # below 1-step except at eps 1
    curves[SEVEN] = dict(zip(EPS_GRID, below_at_small))
    assert L.robustness_verdicts(curves, 1000, scale=SCALE)[1].verdict == verdicts.REDUCED


def test_robustness_rows_wait_for_the_queued_records():
    only_standard = {NONE: dict(zip(EPS_GRID, STANDARD))}
    assert L.robustness_rule(only_standard, 1000) is None
    rows = L.robustness_verdicts(only_standard, 1000, scale=SCALE)
    assert [r.verdict for r in rows] == [verdicts.NOT_RUN] * 2
    assert L.RECORDS[ONE] == "rs16_l2fast_1step_s0" and L.RECORDS[ONE] in rows[0].detail
    assert "queued" in rows[1].detail
    only_one = {ONE: dict(zip(EPS_GRID, ONE_STEP))}
    rows = L.robustness_verdicts(only_one, 1000, scale=SCALE)
    assert rows[0].verdict == verdicts.NOT_RUN and L.RECORDS[NONE] in rows[0].detail
    assert rows[1].verdict == verdicts.NOT_RUN and L.RECORDS[SEVEN] in rows[1].detail


def test_the_queued_seven_step_row_names_the_missing_record():
    curves = {NONE: dict(zip(EPS_GRID, STANDARD)), SEVEN: dict(zip(EPS_GRID, SEVEN_STEP))}
    rows = L.robustness_verdicts(curves, 1000, scale=SCALE)
    assert rows[1].verdict == verdicts.NOT_RUN
    assert L.RECORDS[ONE] in rows[1].detail and L.RECORDS[SEVEN] not in rows[1].detail


def test_rows_of_the_second_training_eps_say_so_and_name_its_records():
    rows = L.robustness_verdicts({NONE: dict(zip(EPS_GRID, STANDARD))}, 1000, scale=SCALE,
                                 eps_train=L.EPS_HALF, records=L.RECORDS_HALF)
    assert all("trained at eps 0.5" in r.artifact for r in rows)
    assert L.RECORDS_HALF[ONE] in rows[0].detail and L.RECORDS[ONE] not in rows[0].detail
    first = L.robustness_verdicts({NONE: dict(zip(EPS_GRID, STANDARD))}, 1000, scale=SCALE)
    assert [r.claim for r in rows] == [r.claim for r in first]
    assert all(r.artifact == "l2fast Figure 2" for r in first)


def test_a_figure2_row_keeps_its_claim_when_its_record_arrives():
    waiting = L.robustness_verdicts({NONE: dict(zip(EPS_GRID, STANDARD))}, 1000, scale=SCALE)
    made = L.robustness_verdicts({NONE: dict(zip(EPS_GRID, STANDARD)),
                                  ONE: dict(zip(EPS_GRID, ONE_STEP)),
                                  SEVEN: dict(zip(EPS_GRID, SEVEN_STEP))}, 1000, scale=SCALE)
    assert [r.claim for r in waiting] == [r.claim for r in made]


# --------------------------------------------------------------------------- Figures 3-5 rows

def _measures(robust_better=True, *, drop=(), fig4=None):
    """Fabricated measures: per-unit cosines (Fig. 3), per-pair ratios (Fig. 4), one rate (5)."""
    aligned = {FIG3: [0.81, 0.86, 0.9, 0.78, 0.84], FIG4: [0.42, 0.5, 0.38, 0.47],
               FIG5: [62.0]}
    noise = {FIG3: [0.02, -0.03, 0.05, 0.0, -0.01], FIG4: [0.97, 0.99, 0.98, 1.0],
             FIG5: [8.0]}
    robust, standard = (aligned, noise) if robust_better else (noise, aligned)
    out = {a: {NONE: standard[a], ONE: robust[a], SEVEN: robust[a]} for a in (FIG3, FIG4, FIG5)}
    if fig4 is not None:
        out[FIG4] = {NONE: noise[FIG4], ONE: fig4, SEVEN: aligned[FIG4]}
    for artifact, name in drop:
        del out[artifact][name]
    return out


COUNTS = {FIG5: 200}


def test_more_aligned_features_are_reproduced_for_both_robust_models():
    rows = L.feature_verdicts(_measures(), COUNTS, scale=SCALE)
    assert [r.artifact for r in rows] == [FIG3, FIG3, FIG4, FIG4, FIG5, FIG5]
    assert [r.claim.split(" model")[0] for r in rows] == [ONE, SEVEN] * 3
    assert [r.verdict for r in rows] == [verdicts.REDUCED] * 6
    # Figure 4: a smaller ratio is more aligned, so the standard model is the larger one
    assert L.feature_rule(FIG4, _measures(), COUNTS, ONE).ours.startswith(NONE)
    assert L.feature_rule(FIG3, _measures(), COUNTS, ONE).ours.startswith(ONE)
    assert "n = 200" in L.feature_rule(FIG5, _measures(), COUNTS, ONE).ours


def test_less_aligned_features_differ():
    rows = L.feature_verdicts(_measures(robust_better=False), COUNTS, scale=SCALE)
    assert [r.verdict for r in rows] == [verdicts.DIFFERS] * 6
    assert all("likely reason" in r.detail for r in rows)
    for artifact in (FIG3, FIG4, FIG5):
        assert not L.feature_rule(artifact, _measures(robust_better=False), COUNTS, ONE).passed


def test_a_figure5_rate_is_an_accuracy_on_its_images():
    close = {FIG5: {NONE: [50.0], ONE: [58.0]}}
    assert L.feature_rule(FIG5, close, {FIG5: 2000}, ONE).passed
    assert not L.feature_rule(FIG5, close, {FIG5: 100}, ONE).passed


def test_feature_rows_wait_for_missing_models():
    assert L.feature_rule(FIG3, {}, COUNTS, ONE) is None
    rows = L.feature_verdicts(_measures(drop=[(a, SEVEN) for a in (FIG3, FIG4, FIG5)]),
                              COUNTS, scale=SCALE)
    assert [r.verdict for r in rows] == [verdicts.REDUCED, verdicts.NOT_RUN] * 3
    assert all(L.RECORDS[SEVEN] in r.detail for r in rows[1::2])
    rows = L.feature_verdicts(_measures(drop=[(FIG4, NONE)]), COUNTS, scale=SCALE)
    assert [r.verdict for r in rows[2:4]] == [verdicts.NOT_RUN] * 2
    assert all(L.RECORDS[NONE] in r.detail for r in rows[2:4])
    assert all(r.verdict == verdicts.NOT_RUN for r in L.feature_verdicts({}, {}, scale=SCALE))


def _all_curves():
    return {NONE: dict(zip(EPS_GRID, STANDARD)), ONE: dict(zip(EPS_GRID, ONE_STEP)),
            SEVEN: dict(zip(EPS_GRID, SEVEN_STEP))}


def test_human_aligned_claim_needs_every_rule_at_once():
    v = L.human_aligned_verdict(_all_curves(), 1000, _measures(), COUNTS, scale=SCALE)
    assert v.verdict == verdicts.REDUCED and v.artifact.startswith(f"{L.PAPER} claim:")
    # one figure in the wrong direction (1-step's inversions as far as standard's) fails it
    bad = _measures(fig4=[0.99, 0.98, 1.0, 0.97])
    assert L.human_aligned_verdict(_all_curves(), 1000, bad, COUNTS,
                                   scale=SCALE).verdict == verdicts.DIFFERS
    # robustness not above standard fails it too
    curves = _all_curves()
    curves[ONE] = dict(curves[NONE])
    assert L.human_aligned_verdict(curves, 1000, _measures(), COUNTS,
                                   scale=SCALE).verdict == verdicts.DIFFERS
    # the 7-step model does not enter the 1-step claim
    assert L.human_aligned_verdict(_all_curves(), 1000, _measures(drop=[(FIG3, SEVEN)]), COUNTS,
                                   scale=SCALE).verdict == verdicts.REDUCED


def test_human_aligned_claim_waits_for_the_queued_records():
    curves = _all_curves()
    del curves[ONE]
    v = L.human_aligned_verdict(curves, 1000, _measures(drop=[(a, ONE) for a in
                                                              (FIG3, FIG4, FIG5)]),
                                COUNTS, scale=SCALE)
    assert v.verdict == verdicts.NOT_RUN and L.RECORDS[ONE] in v.detail
    curves = _all_curves()
    del curves[NONE]
    v = L.human_aligned_verdict(curves, 1000, _measures(), COUNTS, scale=SCALE)
    assert v.verdict == verdicts.NOT_RUN and L.RECORDS[NONE] in v.detail


# --------------------------------------------------------------------------- Figure 2 curves

def test_accuracy_vs_eps_starts_at_clean_accuracy_and_never_rises_above_it():
    torch.manual_seed(0)
    model = models.build("preact_resnet18", "cifar10", base_width=8)
    x, _ = _cifar(16)
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:4] = (pred[:4] + 1) % 10            # 12 of 16 correct: clean accuracy 75%
    model.train()
    before = model_state(model)
    eps = [0.0, 0.25, 2.0]
    acc = L.accuracy_vs_eps(model, x, y, eps, steps=3, restarts=2)
    assert_same_state(before, model_state(model))          # train mode and BN stats kept
    assert model.training
    assert list(acc) == eps
    assert acc[0.0] == evaluate.accuracy(evaluate.predict_correct(model, x, y)) == 75.0
    assert all(0.0 <= acc[e] <= acc[0.0] for e in eps)
    assert acc[2.0] < acc[0.0]              # an l2 radius of 2 breaks an untrained network
    assert L.accuracy_vs_eps(model, x, y, eps, steps=3, restarts=2) == acc   # same seed


# --------------------------------------------------------------------------- Figures 3-5 measures

def test_unit_consistency_gives_one_cosine_per_unit():
    model = _cnn()
    x, _ = _cifar(2)
    starts = torch.cat([visualize.noise_like(x[:1], seed=1), visualize.noise_like(x[:1], seed=2)])
    before = model_state(model)
    cos = L.unit_consistency(model, [0, 100, 2000], starts, eps=2.0, steps=3, step_size=0.5)
    assert_same_state(before, model_state(model))
    assert len(cos) == 3 and all(-1.0 <= c <= 1.0 for c in cos)
    rep = visualize.representation(model, starts[:1])[0]
    live = [int(i) for i in torch.nonzero(rep > 0).flatten()[:2]]   # units with a gradient
    same = torch.cat([starts[:1], starts[:1]])
    assert L.unit_consistency(model, live, same, eps=2.0, steps=3, step_size=0.5) == \
        pytest.approx([1.0, 1.0], abs=1e-4)


@pytest.mark.parametrize("count", [1, 3])
def test_unit_consistency_needs_two_starts(count):
    with pytest.raises(ValueError, match="two seed images"):
        L.unit_consistency(_cnn(), [0], torch.rand(count, 3, 32, 32), eps=1.0, steps=1,
                           step_size=0.5)


def test_inversion_distance_is_one_ratio_per_pair_within_the_ball():
    model = _cnn()
    x, _ = _cifar(6)
    x_a, x_b = x[:3], x[3:]
    eps = 0.5
    ratios = L.inversion_distance(model, x_a, x_b, eps=eps, steps=3, step_size=0.25)
    assert len(ratios) == 3 and all(r >= 0 for r in ratios)
    # x_1 is within eps of x_a, so by the triangle inequality the ratio is 1 -/+ eps / ||x_a - x_b||
    gap = (x_a - x_b).flatten(1).norm(dim=1)
    for r, g in zip(ratios, gap.tolist()):
        assert 1 - eps / g - 1e-5 <= r <= 1 + eps / g + 1e-5
    # a large ball lets the image move towards x_b
    far = L.inversion_distance(model, x_a, x_b, eps=50.0, steps=10, step_size=2.0)
    assert len(far) == 3 and all(r >= 0 for r in far) and min(far) < min(ratios)


def test_observer_target_rate_is_the_share_classified_as_the_target():
    model = _cnn().train()
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        pred = model(images).argmax(1)
    targets = pred.clone()
    targets[:3] = (pred[:3] + 1) % 10
    model.train()
    rate = L.observer_target_rate(model, images, targets)
    assert rate == pytest.approx(100 * 5 / 8)
    model.eval()
    with torch.no_grad():
        assert rate == pytest.approx(100 * (model(images).argmax(1) == targets).float().mean().item())
    assert L.observer_target_rate(model, images, pred) == 100.0


# --------------------------------------------------------------------------- timings

@pytest.mark.parametrize("mode", ["eval", "train"])
def test_pgd_execution_seconds_times_every_batch_in_train_mode(mode):
    model = _cnn()
    getattr(model, mode)()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    out = L.pgd_execution_seconds(model, [2, 4], steps=2, rounds=3)
    assert model.training is (mode == "train")                   # mode restored
    assert seen and all(seen)                                     # timed as during training
    assert set(out) == {"pgd", "forward", "timing"}
    for part in ("pgd", "forward"):
        assert list(out[part]) == [2, 4]
        assert all(s > 0 and math.isfinite(s) for s in out[part].values())
    t = out["timing"]
    assert isinstance(t, bench.Timing) and t.rounds == 3
    assert set(t.seconds) == {(p, b) for p in ("pgd", "forward") for b in (2, 4)}
    assert out["pgd"][4] == t.median[("pgd", 4)]


TORCHRUN = Path(sys.executable).with_name("torchrun")


def _tiny_step_config():
    return bench.step_config("l2_1", precision="fp32", layout="nchw", model="cnn1", batch=8)


@pytest.mark.slow
def test_process_step_seconds_times_one_and_two_processes():
    if not TORCHRUN.exists():
        pytest.skip(f"torchrun not found next to {sys.executable}")
    cfg = _tiny_step_config()
    for nproc in (1, 2):
        s = L.process_step_seconds(cfg, nproc, steps=2, timeout=300)
        assert s > 0 and math.isfinite(s), nproc


class _UnbuildableConfig:
    """A config whose JSON names a dataset that fatlib cannot build (it fails in the child)."""

    def __init__(self, cfg):
        self.cfg, self.batch_size = cfg, cfg.batch_size

    def replace(self, **kw):
        return _UnbuildableConfig(self.cfg.replace(**kw))

    def to_dict(self):
        return dict(self.cfg.to_dict(), dataset="no_such_dataset")


def test_a_failed_timing_run_raises_with_its_output():
    with pytest.raises(RuntimeError, match="1-process timing run failed") as e:
        L.process_step_seconds(_UnbuildableConfig(_tiny_step_config()), 1, steps=1,
                               timeout=300)
    assert "no_such_dataset" in str(e.value)


def test_a_timing_run_records_from_iteration_zero():
    # what process_step_seconds reads: the loop records at iteration 0 (nothing spent), then
    # every eval_every = warmup steps
    cfg = _tiny_step_config()
    history = train.train(cfg.replace(n_train=8 * 3, epochs=1, n_eval=0, final_n_eval=0,
                                      eval_every=1)).history
    assert [h["iteration"] for h in history] == [0, 1, 2, 3]
    assert history[0]["time_attack"] + history[0]["time_update"] == 0.0


def test_process_step_seconds_leaves_out_the_warm_up(monkeypatch):
    warm, per_step = 10.0, 1.0

    def fake_run(args, *, env, **kw):
        """The child's run, in this process: the real loop's records, with known timers."""
        cfg = TrainConfig.from_dict(json.loads(Path(args[args.index("--config") + 1]).read_text()))
        history = train.train(cfg).history
        for h in history:
            i = h["iteration"]
            h["time_attack"], h["time_update"] = (0.0, 0.0) if i == 0 else (
                warm + per_step * (i - 1), 0.0)
        folder = Path(env["FATLIB_RUNS_DIR"], cfg.hash())
        folder.mkdir()
        (folder / "history.json").write_text(json.dumps(history))
        return L.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(L.subprocess, "run", fake_run)
    assert L.process_step_seconds(_tiny_step_config(), 1, steps=3, warmup=1) == \
        pytest.approx(per_step)
