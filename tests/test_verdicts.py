"""The verdict rule (fatlib.verdicts): interval arithmetic on hand-computed cases, the four
verdicts, the qualitative rules, the errors on bad input, and the JSON rows round trip."""

import dataclasses
import json
import math

import pytest

from fatlib import verdicts as V

PAPER = "paper scale: PreAct ResNet-18 width 64, 50,000 images, 15 epochs"
RECORD = "record scale: PreAct ResNet-18 width 16, 50,000 images, 15 epochs"


def binomial_half_width(p_percent, n):
    """The module's binomial rule written out by hand: 1.96 * 100 sqrt(p~(1-p~)/n)."""
    x = n * p_percent / 100
    p = (x + 2) / (n + 4)
    return 1.959963984540054 * 100 * math.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------- interval arithmetic

def test_one_seed_is_the_binomial_interval():
    iv = V.interval([45.0], 1000)
    # p~ = 452/1004 = 0.450199; sqrt(p~(1-p~)/1000) = 0.0157328; x 1.96 = 3.0836 points
    assert iv.se_binomial == pytest.approx(1.57328, abs=1e-4)
    assert iv.half_width == pytest.approx(3.0836, abs=1e-3)
    assert iv.half_width == pytest.approx(binomial_half_width(45.0, 1000), rel=1e-12)
    assert iv.k == 1 and iv.sd_seeds is None and math.isinf(iv.dof)
    assert iv.coverage_factor == pytest.approx(1.959964, abs=1e-6)
    assert (iv.lo, iv.hi) == pytest.approx((45 - 3.0836, 45 + 3.0836), abs=1e-3)
    # the numbers the book page states: 3.1 points at n = 1,000 and 6.9 at n = 200
    assert round(V.interval([45.0], 200).half_width, 1) == 6.9
    assert round(iv.half_width, 1) == 3.1
    assert iv.text() == "45.0 ± 3.1% (1 seed, n = 1,000)"


def test_zero_accuracy_still_has_an_uncertainty_and_is_clipped():
    iv = V.interval([0.0], 1000)
    # p~ = 2/1004: half-width 1.96 * 100 * sqrt(0.001992 * 0.998008 / 1000) = 0.2764
    assert iv.half_width == pytest.approx(0.2764, abs=1e-3)
    assert iv.lo == 0.0 and iv.hi == pytest.approx(0.2764, abs=1e-3)
    assert V.interval([100.0], 1000).hi == 100.0


def test_three_seeds_combine_binomial_and_seed_spread_with_a_t_factor():
    iv = V.interval([40.0, 45.0, 50.0], 1000)
    # mean 45, s = 5; u^2 = 1.57328^2 + 25/3 = 2.47520 + 8.33333 = 10.80853, u = 3.28763
    # nu = u^4 / ((25/3)^2 / 2) = 116.824 / 34.7222 = 3.3645; t_0.975(3.3645) = 2.9960
    assert iv.mean == 45.0 and iv.sd_seeds == pytest.approx(5.0)
    assert iv.std_error == pytest.approx(3.28763, abs=1e-4)
    assert iv.dof == pytest.approx(3.3645, abs=1e-3)
    assert iv.coverage_factor == pytest.approx(2.9960, abs=1e-3)
    assert iv.half_width == pytest.approx(9.8497, abs=2e-3)
    # not the normal 1.96 u (6.44), and the binomial error is not divided by k
    assert iv.half_width > 1.96 * iv.std_error + 3
    # seeds that agree: nu large, t close to 1.96
    close = V.interval([44.0, 45.0, 46.0], 1000)
    assert close.std_error == pytest.approx(math.sqrt(2.47520 + 1 / 3), abs=1e-4)
    assert close.dof == pytest.approx(141.98, abs=0.05)
    assert close.half_width == pytest.approx(3.3129, abs=2e-3)
    assert close.text() == "45.0 ± 3.3% (3 seeds, n = 1,000)"


def test_identical_seeds_give_the_binomial_interval():
    iv = V.interval([45.0, 45.0], 1000)
    assert iv.sd_seeds == 0 and math.isinf(iv.dof)
    assert iv.half_width == pytest.approx(binomial_half_width(45.0, 1000), rel=1e-12)


def test_non_accuracy_uses_the_seed_spread_only():
    iv = V.interval([2.0, 4.0], None, accuracy=False)
    # s = sqrt(2), u = s / sqrt(2) = 1, nu = 1: t_0.975(1) = 12.706
    assert iv.se_binomial is None and iv.dof == pytest.approx(1.0)
    assert iv.half_width == pytest.approx(12.7062, abs=1e-3)
    assert iv.lo == pytest.approx(3 - 12.7062, abs=1e-3)  # not clipped: not an accuracy


# ----------------------------------------------------------------- compare()

def test_paper_value_inside_is_reproduced_outside_differs():
    inside = V.compare("T1", "PGD-50-10 accuracy", paper=47.5, ours=[45.0], n=1000, scale=PAPER)
    assert inside.verdict == V.REPRODUCED
    assert inside.ours == "45.0 ± 3.1% (1 seed, n = 1,000)" and inside.paper == "47.50%"
    assert inside.detail.startswith("ours - paper = -2.5 [-5.6, +0.6]")
    outside = V.compare("T1", "PGD-50-10 accuracy", paper=49.0, ours=[45.0], n=1000,
                        scale=PAPER, reason="fewer epochs")
    assert outside.verdict == V.DIFFERS
    assert "ours - paper = -4.0 [-7.1, -0.9]" in outside.detail
    assert outside.detail.endswith("likely reason: fewer epochs")
    assert outside.paper_value == 49.0 and outside.ours_mean == 45.0
    assert outside.ours_hi == pytest.approx(48.0836, abs=1e-3)


def test_paper_spread_widens_the_interval_and_flips_a_borderline_case():
    # gap 4.0 > our half-width 3.084, but <= 3.084 + 1.96 * 0.5 = 4.064
    args = dict(ours=[45.0], n=1000, scale=PAPER, reason="r")
    assert V.compare("T", "c", paper=49.0, **args).verdict == V.DIFFERS
    widened = V.compare("T", "c", paper=49.0, paper_sd=0.5, **args)
    assert widened.verdict == V.REPRODUCED and widened.paper == "49.00 ± 0.50% (sd)"
    assert "[-8.1, +0.1]" in widened.detail
    # a smaller spread does not reach: 3.084 + 1.96 * 0.4 = 3.868 < 4.0
    assert V.compare("T", "c", paper=49.0, paper_sd=0.4, **args).verdict == V.DIFFERS
    # the paper's seeds: mean 49.0, sd 0.7071 -> 3.084 + 1.386 = 4.47 >= 4.0
    seeds = V.compare("T", "c", paper=None, paper_seeds=[48.5, 49.5], **args)
    assert seeds.verdict == V.REPRODUCED and seeds.paper_value == 49.0
    assert seeds.paper == "49.00 ± 0.71% (sd of 2 seeds)"


def test_more_seeds_that_disagree_widen_our_interval():
    # the same mean 45 and paper 51: one seed differs, three spread-out seeds do not
    one = V.compare("T", "c", paper=51.0, ours=[45.0], n=1000, scale=PAPER, reason="r")
    three = V.compare("T", "c", paper=51.0, ours=[40.0, 45.0, 50.0], n=1000, scale=PAPER)
    assert one.verdict == V.DIFFERS and three.verdict == V.REPRODUCED


def test_differs_requires_a_reason_and_says_the_gap():
    with pytest.raises(ValueError, match=r"reason=.*") as err:
        V.compare("T1", "PGD", paper=60.0, ours=[45.0], n=1000, scale=PAPER)
    assert "-15.0" in str(err.value)
    with pytest.raises(ValueError, match="reason"):
        V.compare("T1", "PGD", paper=60.0, ours=[45.0], n=1000, scale=PAPER, reason="  ")
    # no reason needed when it reproduces
    assert V.compare("T1", "PGD", paper=45.0, ours=[45.0], n=1000, scale=PAPER).verdict \
        == V.REPRODUCED


def test_a_number_at_reduced_scale_is_never_reproduced():
    with pytest.raises(ValueError, match="only at paper scale"):
        V.compare("T1", "PGD", paper=45.0, ours=[45.0], n=1000, scale=RECORD)


# ----------------------------------------------------------------- qualitative rules

def test_greater_uses_the_interval_of_the_difference():
    # se(50%) = 1.5811, se(45%) = 1.5733: h_d = 1.96 * sqrt(2.5000 + 2.4752) = 4.372
    rule = V.greater([50.0], [45.0], 1000, names=("FGSM-RS", "FGSM"))
    assert rule.passed and rule.detail == "FGSM-RS - FGSM = +5.0 [+0.6, +9.4]: above 0"
    assert not V.greater([45.0], [50.0], 1000).passed          # the wrong order
    assert not V.greater([50.0], [45.0], 200).passed            # too few images: [-4.8, +14.8]
    assert "includes 0" in V.greater([50.0], [45.0], 200).detail
    # two intervals that overlap (40.9-47.1 and 46.9-53.1) can still differ significantly:
    # the rule is the difference's interval, not non-overlap
    assert V.greater([50.0], [44.0], 1000).passed
    # seed spread enters through the t factor: seeds 40/60 vs 45/45 do not order
    assert not V.greater([40.0, 60.0], [45.0, 45.0], 1000).passed
    # a timing's measurements are rounds, not seeds, and say so
    timed = V.greater([2.0, 2.1, 2.2], [1.0, 1.1, 1.0], None, accuracy=False, repeats="round")
    assert timed.passed and "(3 rounds)" in timed.ours and "seed" not in timed.ours


def test_collapse_rules_use_the_threshold_and_the_binomial_bound():
    assert V.COLLAPSE_THRESHOLD == 10.0
    assert V.collapses([0.0, 0.3, 0.1], 1000, name="FGSM").passed
    assert not V.collapses([0.0, 35.0], 1000).passed           # one seed survived
    # 7.5% of 1,000: upper bound 7.5 + 1.65 = 9.15 < 10; 8.5%: 8.5 + 1.74 = 10.24 > 10
    assert V.collapses([7.5], 1000).passed
    assert not V.collapses([8.5], 1000).passed
    assert V.survives([44.0, 46.0], 1000, name="FGSM-RS").passed
    assert not V.survives([44.0, 0.0], 1000).passed
    # 11% of 1,000 (bounds 9.05-12.95) is undecided: neither collapsed nor surviving
    assert not V.collapses([11.0], 1000).passed and not V.survives([11.0], 1000).passed


def test_a_chain_of_comparisons_names_each_measurement_once():
    a, b, c = [30.0, 31.0], [20.0, 21.0], [10.0, 11.0]
    chain = V.all_of(V.greater(a, b, 1000, names=("A", "B")),
                     V.greater(b, c, 1000, names=("B", "C")))
    assert chain.passed
    parts = chain.ours.split("; ")
    assert [p.split()[0] for p in parts] == ["A", "B", "C"], chain.ours
    assert chain.detail.count("B") == 2  # each rule still says what it compared


def test_qualitative_claim_passing_and_failing():
    claim = "FGSM collapses, FGSM-RS does not"
    ok = V.all_of(V.collapses([0.0, 0.2], 1000, name="FGSM"),
                  V.survives([44.0, 46.0], 1000, name="FGSM-RS"))
    reduced = V.check("wong2020 Table 1", claim, ok, paper="FGSM 0.00%, FGSM-RS 46.06%",
                      scale=RECORD)
    assert reduced.verdict == V.REDUCED and reduced.scale == RECORD
    assert "FGSM 0.0, 0.2% (n = 1,000 each)" in reduced.ours
    assert V.check("T1", claim, ok, paper="p", scale=PAPER).verdict == V.REPRODUCED
    bad = V.all_of(V.collapses([0.0, 0.2], 1000, name="FGSM"),
                   V.survives([44.0, 0.0], 1000, name="FGSM-RS"))
    assert not bad.passed
    with pytest.raises(ValueError, match="reason"):
        V.check("T1", claim, bad, paper="p", scale=RECORD)
    differs = V.check("T1", claim, bad, paper="p", scale=RECORD, reason="width 16 collapses")
    assert differs.verdict == V.DIFFERS and differs.detail.endswith("width 16 collapses")
    assert "FGSM-RS does not collapse" in differs.detail


def test_within_checks_values_without_a_binomial_error_against_bounds():
    # an exact computation against the paper's printed value: 'about 7/255' is [6.5, 7.5]
    step = V.within([7.1], lo=6.5, hi=7.5, name="FGSM step (/255)", digits=2)
    assert step.passed and step.ours == "FGSM step (/255) 7.10"
    assert step.detail == "FGSM step (/255) in [6.50, 7.50]: so (smallest margin +0.40)"
    assert V.check("Lemma 1", "7/255", step, paper="about 7/255",
                   scale=PAPER).verdict == V.REPRODUCED
    # one-sided bounds, and one bound per value (a measured curve above a computed bound)
    assert V.within([1.03, 1.04], hi=1.05).passed
    ratio = V.within([1.03, 1.07], hi=1.05, name="ratio")
    assert not ratio.passed and ratio.detail == "ratio <= 1.050: not so (smallest margin -0.020)"
    assert V.within([0.9, 0.7], lo=[0.8, 0.6]).passed
    assert not V.within([0.9, 0.5], lo=[0.8, 0.6]).passed
    assert "each within its own bound" in V.within([0.9, 0.7], lo=[0.8, 0.6]).detail
    assert V.within([0.5], lo=0.5, hi=0.5).passed                   # bounds are inclusive
    tiny = V.within([2.2e-16], hi=1e-9, name="max |difference|")      # too small for decimals
    assert tiny.passed and tiny.ours == "max |difference| 2.2e-16"
    assert tiny.detail.startswith("max |difference| <= 1.0e-09: so")
    for bad in (dict(values=[], lo=0), dict(values=[float("nan")], lo=0),
                dict(values=[1.0, 2.0], lo=[0.0]), dict(values=[1.0], lo=2.0, hi=1.0)):
        with pytest.raises(ValueError):
            V.within(**bad)


def test_a_qualitative_claim_needs_a_rule_and_a_named_scale():
    with pytest.raises(ValueError, match="needs a rule"):
        V.check("T1", "A above B", None, paper="p", scale=RECORD)
    with pytest.raises(ValueError, match="needs a rule"):
        V.check("T1", "A above B", True, paper="p", scale=RECORD)
    rule = V.greater([50.0], [40.0], 1000)
    for scale in ("record scale", "record scale:  ", "medium: width 32", ""):
        with pytest.raises(ValueError, match="<kind>: <what>"):
            V.check("T1", "A above B", rule, paper="p", scale=scale)
    with pytest.raises(ValueError, match="rule results"):
        V.all_of()


def test_not_run_requires_what_it_needs():
    v = V.not_run("wong2020 Table 4", "ImageNet top-1", paper="43.43%",
                  need="ImageNet (140 GB) and about 12 GPU hours")
    assert v.verdict == V.NOT_RUN and v.ours == "-"
    assert v.text == "not run here: needs ImageNet (140 GB) and about 12 GPU hours"
    for need in ("", "   ", None):
        with pytest.raises(ValueError, match="need"):
            V.not_run("T4", "top-1", paper="43.43%", need=need)


# ----------------------------------------------------------------- rows and files

def _some_verdicts():
    return [V.compare("T1", "PGD", paper=47.5, ours=[44.0, 46.0], n=1000, scale=PAPER),
            V.compare("T1", "clean", paper=90.0, ours=[80.0], n=1000, scale=PAPER,
                      reason="5 epochs"),
            V.check("T1", "A above B", V.greater([50.0], [40.0], 1000), paper="A > B",
                    scale=RECORD),
            V.not_run("T4", "ImageNet", paper="43.43%", need="ImageNet")]


def test_rows_round_trip_through_json(tmp_path):
    verdicts = _some_verdicts()
    assert [v.verdict for v in verdicts] == [V.REPRODUCED, V.DIFFERS, V.REDUCED, V.NOT_RUN]
    path = V.write_rows(verdicts, tmp_path / "rows" / "chapter.json")
    assert path.exists() and sorted(p.name for p in path.parent.iterdir()) == ["chapter.json"]
    assert json.loads(path.read_text())["format"] == V.ROWS_FORMAT
    assert V.read_rows(path) == verdicts
    # dict rows are accepted and validated; a folder reads its files in name order
    V.write_rows([v.row() for v in verdicts[:1]], tmp_path / "rows" / "a.json")
    assert V.read_rows(tmp_path / "rows") == verdicts[:1] + verdicts
    assert V.read_rows([path, path]) == verdicts + verdicts


def test_rewriting_a_rows_file_replaces_it(tmp_path):
    path = tmp_path / "c.json"
    V.write_rows(_some_verdicts(), path)
    V.write_rows(_some_verdicts()[:1], path)
    assert len(V.read_rows(path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary left behind


def test_bad_rows_are_refused(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([{"verdict": "ok"}]))
    with pytest.raises(ValueError, match="not a verdict rows file"):
        V.read_rows(tmp_path / "x.json")
    row = _some_verdicts()[0].row()
    with pytest.raises(ValueError, match="one of"):
        V.Verdict.from_row({**row, "verdict": "reproduced-ish"})
    with pytest.raises(ValueError, match="unknown keys"):
        V.Verdict.from_row({**row, "colour": "green"})
    with pytest.raises(ValueError, match="detail"):
        V.Verdict.from_row({**row, "verdict": V.DIFFERS, "detail": ""})
    with pytest.raises(ValueError, match="one of"):
        V.write_rows([{**row, "verdict": "fine"}], tmp_path / "y.json")
    assert not (tmp_path / "y.json").exists()


def test_verdicts_are_frozen_and_fit_the_closing_table():
    from fatlib import plots

    verdicts = _some_verdicts()
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdicts[0].verdict = V.DIFFERS
    assert set(V.VERDICTS) == set(plots.VERDICTS)
    assert [plots.verdict_kind(v.text) for v in verdicts] == [v.verdict for v in verdicts]
    table = plots.comparison_table([v.comparison_row() for v in verdicts])
    assert table.columns == ["what", "paper", "ours", "settings", "verdict"]


# ----------------------------------------------------------------- input errors

@pytest.mark.parametrize("ours, n, match", [
    ([], 1000, "empty"),
    ([45.0, 101.0], 1000, r"\[0, 100\]"),
    ([-0.5], 1000, r"\[0, 100\]"),
    ([float("nan")], 1000, "finite"),
    (45.0, 1000, "one value per seed"),
    ([45.0], 0, "n must be"),
    ([45.0], None, "n must be"),
    ([45.0], True, "n must be"),
    ([45.0], 1000.0, "n must be"),
])
def test_bad_measurements_raise_with_what_to_pass(ours, n, match):
    with pytest.raises(ValueError, match=match):
        V.interval(ours, n)
    with pytest.raises(ValueError, match=match):
        V.compare("T", "c", paper=45.0, ours=ours, n=n, scale=PAPER)


def test_bad_paper_inputs_raise():
    args = dict(ours=[45.0], n=1000, scale=PAPER)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        V.compare("T", "c", paper=120.0, **args)
    with pytest.raises(ValueError, match="sd"):
        V.compare("T", "c", paper=45.0, paper_sd=-1.0, **args)
    with pytest.raises(ValueError, match="not both"):
        V.compare("T", "c", paper=45.0, paper_sd=0.5, paper_seeds=[45.0, 46.0], **args)
    with pytest.raises(ValueError, match="paper's number"):
        V.compare("T", "c", paper=None, **args)
    with pytest.raises(ValueError, match="claim"):
        V.compare("T", "", paper=45.0, **args)
    with pytest.raises(ValueError, match=">= 2 seeds"):
        V.interval([3.0], None, accuracy=False)
