"""fatlib.bench: the one timing function (medians, spread, ratios, the trust flag, the order
of the calls) on fake callables with known costs, the floors, the steps it times (the
training loop's own), and the report of ``python -m fatlib bench --json``. Properties only:
no assertion depends on how fast this machine is."""

import inspect
import json
import math

import pytest
import torch

from fatlib import bench, verdicts


class FakeClock:
    """A clock that advances only when a fake function 'costs' time."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def costs(self, *per_call):
        """A function whose i-th call costs per_call[i] seconds (the last one repeats)."""
        calls = []

        def fn():
            self.now += per_call[min(len(calls), len(per_call) - 1)]
            calls.append(1)
        fn.calls = calls
        return fn


def test_medians_min_max_and_ratios_of_known_costs():
    clock = FakeClock()
    # warm-up call first (100 s, not timed), then three timed rounds
    fns = {"base": clock.costs(100, 1.0, 3.0, 2.0), "double": clock.costs(100, 2.0, 6.0, 4.0)}
    t = bench.timing(fns, baseline="base", warmup=1, rounds=3, clock=clock)
    assert t.seconds == {"base": [1.0, 3.0, 2.0], "double": [2.0, 6.0, 4.0]}
    assert t.median == {"base": 2.0, "double": 4.0}
    s = t.stats("double")
    assert (s["min"], s["max"], s["q1"], s["q3"]) == (2.0, 6.0, 3.0, 5.0)
    assert s["spread"] == pytest.approx(0.5)
    assert t.ratio("double") == 2.0 and t.round_ratios("double") == [2.0, 2.0, 2.0]
    assert t.ratio("base", baseline="double") == 0.5


def test_a_load_change_that_hits_every_config_alike_leaves_the_ratio_trusted():
    clock = FakeClock()
    # round 2 is 3x slower for both (another process woke up): each config spreads widely,
    # the paired per-round ratio does not
    fns = {"a": clock.costs(1, 1, 3, 1, 1), "b": clock.costs(2, 2, 6, 2, 2)}
    t = bench.timing(fns, baseline="a", warmup=0, rounds=5, clock=clock)
    r = t.ratio_stats("b")
    assert r["ratio"] == 2.0 and r["spread"] == 0.0 and r["trusted"] and r["why"] is None
    assert (r["low"], r["high"]) == (2.0, 2.0)


def test_a_ratio_whose_rounds_disagree_is_flagged():
    clock = FakeClock()
    fns = {"a": clock.costs(1.0), "b": clock.costs(1.0, 2.0, 1.0, 2.0, 1.5)}
    t = bench.timing(fns, baseline="a", warmup=0, rounds=5, clock=clock)
    r = t.ratio_stats("b")
    assert not r["trusted"] and "spread" in r["why"] and r["spread"] > bench.MAX_SPREAD
    assert r["low"] == 1.0 and r["high"] == 2.0
    assert t.warnings() == [f"b / a = {r['ratio']:.2f} is not to be trusted: {r['why']}"]
    assert bench.timing(fns, baseline="a", warmup=0, rounds=5, clock=clock,
                        max_spread=10.0).trusted("b")


def test_too_few_rounds_measure_no_spread():
    clock = FakeClock()
    t = bench.timing({"a": clock.costs(1.0), "b": clock.costs(2.0)}, baseline="a", warmup=0,
                     rounds=bench.MIN_ROUNDS - 1, clock=clock)
    r = t.ratio_stats("b")
    assert r["ratio"] == 2.0 and not r["trusted"] and "fewer than" in r["why"]


def test_calls_are_interleaved_round_by_round():
    clock = FakeClock()
    fns = {k: clock.costs(1.0) for k in "abc"}
    t = bench.timing(fns, warmup=1, rounds=2, clock=clock)
    assert t.calls == [(-1, "a"), (-1, "b"), (-1, "c"), (0, "a"), (0, "b"), (0, "c"),
                       (1, "a"), (1, "b"), (1, "c")]
    t = bench.timing(fns, warmup=1, rounds=3, rotate=True, clock=clock)
    order = [name for _, name in t.calls]
    assert order == list("abc" "bca" "cab" "abc")
    assert all(len(f.calls) == 1 + 2 + 1 + 3 for f in fns.values())


def test_a_function_may_return_its_own_measurement():
    clock = FakeClock()
    spend = clock.costs(50.0)
    t = bench.timing({"own": lambda: spend() or 2.5, "wall": clock.costs(1.0)}, warmup=1,
                     rounds=3, clock=clock)
    assert t.median == {"own": 2.5, "wall": 1.0}
    assert len(spend.calls) == 4  # warm-up rounds run but are not timed


def test_the_public_names_pages_use_keep_their_signatures():
    calls = []
    t = bench.median_seconds({"own": lambda: calls.append(1) or 2.5, "wall": lambda: None},
                             warmup=1, rounds=3)
    assert t["own"] == 2.5 and 0 <= t["wall"] < 1 and len(calls) == 4
    for fn, names in ((bench.median_seconds, ["fns", "warmup", "rounds"]),
                      (bench.seconds_per_step, ["configs", "steps", "warmup", "rounds"])):
        assert list(inspect.signature(fn).parameters) == names


def test_timing_refuses_nothing_to_time_and_unknown_baselines():
    with pytest.raises(ValueError, match="at least one function"):
        bench.median_seconds({})
    with pytest.raises(ValueError, match="rounds"):
        bench.median_seconds({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="baseline"):
        bench.timing({"a": lambda: None}, baseline="b")
    t = bench.timing({"a": lambda: None}, rounds=1)
    with pytest.raises(ValueError, match="baseline"):
        t.ratio("a")


def test_floors_in_forward_equivalents():
    assert bench.floor("standard") == 1
    for one_step in ("fgsm_rs", "nfgsm", "zerograd", "l2_1"):
        assert bench.floor(one_step) == pytest.approx(5 / 3)
    for k in (2, 7, 10):
        assert bench.floor(f"pgd{k}") == pytest.approx((3 + 2 * k) / 3)
    assert bench.floor("l2_7") == pytest.approx(17 / 3)
    assert bench.floor("multigrad") == pytest.approx(3.0)      # (3 + 2 N) / 3, N = 3
    assert bench.floor("free") == 1
    assert not bench.METHODS["gradalign"].exact                # double backprop: an estimate
    assert bench.floor("elle_a") < bench.floor("elle")         # no graph before the first jump


def test_the_layout_fatlib_picks_is_the_one_its_recipes_train_in():
    from fatlib import sweeps, wong2020

    assert sweeps.RESNET["channels_last"] is (bench.picked_layout("pgd10") == "channels_last")
    assert "channels_last=True" in inspect.getsource(wong2020._appendix_a)
    with pytest.raises(ValueError, match="unknown bench method"):
        bench.picked_layout("pgd3")


def test_a_timed_step_is_the_training_loops_own(monkeypatch):
    from fatlib import loop

    seen = []
    real = loop._Run.train_step

    def spy(self, x, y):
        seen.append((self.cfg.method, self.cfg.elle_lambda, x.shape, self.step))
        return real(self, x, y)

    monkeypatch.setattr(loop._Run, "train_step", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as the benchmark: a busy core must not be shared
    cfg = bench.step_config("elle_a", precision="fp32", layout="channels_last", model="cnn1",
                            batch=4)
    step = bench.step_fn(cfg, fresh_elle=True)
    try:
        assert step() > 0 and step() > 0
    finally:
        torch.set_num_threads(threads)
    assert seen == [("fgsm", 4000.0, torch.Size([4, 3, 32, 32]), 0)] * 2


def test_bf16_is_left_out_with_a_note_where_it_is_not_native(monkeypatch):
    monkeypatch.setattr(bench, "cpu_features", lambda: {"native_bf16": False, "bf16": None})
    precisions, note = bench.precisions_here("cpu")
    assert precisions == ["fp32"] and "does not compute bf16 natively" in note
    monkeypatch.setattr(bench, "cpu_features", lambda: {"native_bf16": True, "bf16": "AMX"})
    assert bench.precisions_here("cpu") == (["fp32", "bf16"], None)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    assert bench.main(["--quick", "--model", "cnn1", "--threads", "1", "--precisions", "fp32",
                       "--rounds", "3", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_json_report_has_every_method_and_positive_ratios(report):
    assert report["format"] == bench.FORMAT
    assert set(report["steps"]) == set(bench.METHODS)
    assert {"pgd2", "pgd7", "pgd10", "l2_1", "l2_7", "free", "elle", "multigrad"} <= set(bench.METHODS)
    assert report["machine"]["cpu"] and report["threads"] == 1
    for key, row in report["steps"].items():
        assert row["floor"] == pytest.approx(bench.floor(key)) and row["layout"] == "channels_last"
        assert "fp32/channels_last" in row["configs"]
        for c in row["configs"].values():
            assert c["ratio"] > 0 and c["median_s"] > 0 and len(c["rounds_s"]) == 3
            assert c["min_s"] <= c["median_s"] <= c["max_s"] and isinstance(c["trusted"], bool)
            assert c["over_floor"] == pytest.approx(c["ratio"] / row["floor"])
    assert set(report["steps"]["fgsm_rs"]["configs"]) == {"fp32/nchw", "fp32/channels_last"}
    assert report["steps"]["standard"]["configs"]["fp32/channels_last"]["ratio"] == 1.0


def test_json_report_checks_every_target(report):
    names = [t["name"] for t in report["targets"]]
    assert names[:4] == ["fgsm_rs/standard", "gradalign/fgsm_rs", "elle/fgsm_rs",
                         "multigrad/fgsm_rs"]
    assert any(n.startswith("standard step fp32 nchw / bf16") for n in names)
    assert sum("early exit / plain" in n for n in names) == 2
    for t in report["targets"]:
        assert t["pass"] in (True, False, None) and t["source"]
        if t["value"] is not None:
            assert t["value"] > 0
            assert t["pass"] == (t["value"] <= t["limit"] if t["op"] == "<=" else
                                 t["value"] >= t["limit"])
    bf16 = next(t for t in report["targets"] if "bf16" in t["name"])
    assert bf16["value"] is None and bf16["pass"] is None  # fp32 only was timed
    fractions = [r["fraction"] for r in report["pgd"]["fractions"]]
    assert fractions == [0.0, 0.25, 0.45, 0.5, 0.75, 1.0]
    assert all(r["ratio"] > 0 and 0 <= r["measured"] <= 1 for r in report["pgd"]["fractions"])


def test_report_rows_and_text(report):
    rows = bench.verdict_rows(report, "smoke: cnn1, batch 8")
    assert len(rows) == len(report["targets"])
    assert all(isinstance(r, verdicts.Verdict) for r in rows)
    assert [r.verdict for r in rows].count(verdicts.NOT_RUN) == 1  # bf16 not timed
    text = bench.report_text(report)
    assert "targets:" in text and "PGD-3-2" in text and "l2 PGD-7" in text


def test_json_to_stdout_keeps_the_tables_on_stderr(capsys):
    assert bench.main(["--quick", "--model", "cnn1", "--threads", "1", "--precisions", "fp32",
                       "--parts", "pgd", "--pgd-n", "4", "--fractions", "0", "1",
                       "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert list(data["steps"]) == ["standard"] and "targets:" in err
    assert [r["fraction"] for r in data["pgd"]["fractions"]] == [0.0, 1.0]


def test_pgd_cost_makes_the_robust_fractions_it_asks_for():
    g = bench.pgd_cost(model="cnn1", n=8, steps=2, restarts=2, fractions=(0.0, 0.5, 1.0))
    assert [r["measured"] for r in g["fractions"]] == [0.0, 0.5, 1.0]
    assert g["plain_s"] > 0 and all(r["ratio"] > 0 and not math.isnan(r["ratio"])
                                    for r in g["fractions"])


def test_spread_text_says_when_a_ratio_is_not_to_be_trusted():
    clock = FakeClock()
    fns = {"a": clock.costs(1.0), "b": clock.costs(1.5), "c": clock.costs(1.0, 3.0, 1.0, 3.0)}
    t = bench.timing(fns, baseline="a", warmup=0, rounds=4, clock=clock)
    assert t.spread_text("b") == "1.50-1.50 over 4 rounds"
    assert t.spread_text("c").startswith("1.00-3.00 over 4 rounds: not to be trusted (")


def test_table_rows_cover_every_config_and_target(report):
    rows = bench.step_rows(report)
    assert len(rows) == sum(len(r["configs"]) for r in report["steps"].values())
    assert any(r["floor"].endswith("(est.)") for r in rows)  # GradAlign's count is an estimate
    targets = bench.target_rows(report)
    assert [t["ratio"] for t in targets] == [t["name"] for t in report["targets"]]
    assert {t["meets it"] for t in targets} <= {"yes", "no", "not measured"}


def test_low_precision_pgd_reports_both_attacks_and_judges_only_enough_evidence():
    from helpers import TinyConvNet

    torch.manual_seed(0)
    nets = {f"net{i}": TinyConvNet(in_channels=3, width=4).eval() for i in range(2)}
    x = torch.rand(12, 3, 12, 12)
    y = torch.randint(0, 10, (12,))
    lp = bench.low_precision_pgd(nets, x, y, steps=2, restarts=2, rounds=1)
    assert [r["model"] for r in lp["rows"]] == ["net0", "net1"]
    for r in lp["rows"]:
        assert 0 <= r["fp32_acc"] <= 100 and 0 <= r["bf16_acc"] <= 100
        assert r["gap"] == pytest.approx(r["bf16_acc"] - r["fp32_acc"])
        assert r["speedup"] == pytest.approx(r["fp32_s"] / r["bf16_s"], rel=1e-6)
    assert lp["accepted"] is None and "2 models" in lp["why"] and "12 images" in lp["why"]
    gap, speed = bench._low_precision_targets(lp)
    assert gap["limit"] == bench.LOW_PRECISION_GAP and speed["op"] == ">="
    assert gap["trusted"] is False


def test_the_low_precision_attack_runs_a_channels_last_copy_and_leaves_the_model_alone():
    from helpers import TinyConvNet

    net = TinyConvNet(in_channels=3, width=4).eval()
    x = torch.rand(2, 3, 12, 12)
    copy, images = bench.low_precision_inputs(net, x)
    assert copy is not net and images.is_contiguous(memory_format=torch.channels_last)
    conv = next(p for p in copy.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in net.parameters())  # the caller's model: unchanged
    assert not copy.training
    with torch.no_grad():
        assert torch.allclose(copy(images), net(x), atol=1e-5)
    flat = torch.rand(2, 10)
    same_net, same_x = bench.low_precision_inputs(net, flat)
    assert same_net is net and same_x is flat
