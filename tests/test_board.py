"""The cost board (fatlib.board): its records are queued, its rows read made records only."""

from types import SimpleNamespace

import pytest

from fatlib import bench, board, runs, verdicts


def _history(pgd):
    """A history with one record per epoch at the given PGD accuracies (no collapse rule
    needs more than clean, FGSM and PGD)."""
    return [{"epoch": float(i + 1), "iteration": i + 1, "pgd_acc": p, "fgsm_acc": p + 5,
             "clean_acc": 70.0, "time_attack": 60.0 * (i + 1), "time_update": 60.0 * (i + 1)}
            for i, p in enumerate(pgd)]


def _record(name, clean, pgd, minutes=30.0, history=(30.0, 40.0, 41.0)):
    return SimpleNamespace(name=name, history=_history(history),
                           metrics={"clean_acc": clean, "pgd_acc": pgd, "n": 1000},
                           provenance={"wall_time_s": {"train": 60 * minutes}})


def _cost(ratio=1.7):
    """A bench.Timing in which every board step costs `ratio` standard steps."""
    keys = {m.step for m in board.METHODS}
    seconds = {"standard": [1.0, 1.0, 1.0], **{k: [ratio] * 3 for k in keys}}
    return bench.Timing(seconds, baseline="standard")


def test_every_record_of_the_board_is_queued_with_its_autoattack_evaluation():
    names = board.record_names()
    assert len(names) == len(board.METHODS) * len(board.EPS) * len(board.SEEDS) == 40
    queued = {item["name"]: item for item in runs._read_json(runs.queue_file())}
    assert set(names) <= set(queued)
    for name in names:
        evaluation = queued[f"{name}.autoattack"]["evaluate"]
        assert evaluation == {"record": name, **board.AUTOATTACK}
    for name in names:  # every cell trains its method at the cell's eps
        eps = int(name.split("_eps")[1].split("_")[0])
        assert queued[name]["config"]["eps"] == pytest.approx(eps / 255)


def test_zerograd_reads_the_papers_own_setting_at_16():
    zerograd = board.BY_NAME["ZeroGrad"]
    assert zerograd.record(8, 1) == "rs16_golgooni2021_zerograd_eps8_s1"
    assert zerograd.record(16, 0) == "rs16_golgooni2021_zerograd_a1.5_q60_eps16_s0"


def test_a_cell_shows_the_means_of_its_made_seeds_and_autoattack_where_evaluated(monkeypatch):
    m = board.BY_NAME["N-FGSM"]
    records = {m.record(8, 0): _record(m.record(8, 0), 70.0, 40.0, minutes=20.0),
               m.record(8, 1): _record(m.record(8, 1), 72.0, 42.0, minutes=40.0)}
    evaluated = {m.record(8, 0): {"accuracy": {"autoattack": 37.5}}}
    monkeypatch.setattr(runs, "record_evaluation", lambda name, **kw: evaluated.get(name))
    row = board.cell_row(m, 8, _cost(1.9), records)
    assert row["seeds made"] == "2 of 2"
    assert (row["clean (%)"], row["PGD-50-10 (%)"]) == ("71.0", "41.0")
    assert row["AutoAttack (%)"] == "37.5 (1 seeds)"
    assert row["collapsed seeds"] == "0 of 2"
    assert row["step cost (x standard)"] == "1.90"
    assert row["training (min, mean)"] == "30"
    empty = board.cell_row(m, 16, _cost(), records)
    assert (empty["seeds made"], empty["clean (%)"], empty["collapsed seeds"]) == ("0 of 2", "-", "-")


def test_a_collapsed_seed_is_counted(monkeypatch):
    m = board.BY_NAME["FGSM (zero init)"]
    name = m.record(16, 0)
    collapsed = _record(name, 80.0, 0.0, history=(25.0, 30.0, 2.0))
    collapsed.history[-1]["fgsm_acc"] = 80.0
    monkeypatch.setattr(runs, "record_evaluation", lambda name, **kw: None)
    assert board.cell_row(m, 16, _cost(), {name: collapsed})["collapsed seeds"] == "1 of 1"


def test_the_pareto_figure_has_a_slider_step_per_eps_and_a_point_per_record(monkeypatch):
    monkeypatch.setattr(runs, "record_evaluation", lambda name, **kw: None)
    m = board.BY_NAME["PGD-2"]
    fig = board.pareto_figure(_cost(2.3), {m.record(8, 0): _record(m.record(8, 0), 75.0, 44.0)})
    assert len(fig.layout.sliders[0].steps) == len(board.EPS)
    points = [t for t in fig.data if t.x]
    assert [(t.x[0], t.y[0]) for t in points] == [(pytest.approx(2.3), 44.0)]


def test_time_to_reads_the_first_epoch_at_the_target():
    rec = _record("r", 70.0, 41.0, history=(30.0, 45.5, 44.0))
    hit = board.time_to(rec, 45.0)
    assert (hit["epoch"], hit["minutes"], hit["best"]) == (2.0, 4.0, 45.5)
    assert board.time_to(rec, 50.0)["epoch"] is None


def test_the_large_eps_claim_waits_for_its_records():
    row = board.large_eps_verdict()
    assert row.verdict == verdicts.NOT_RUN and "rs16_andriushchenko2020_fgsmrs_eps16_s0" in row.detail


def _candidate(name, pgd, *, threads=1, native=True, history=(30.0, 40.0, 41.0)):
    rec = _record(name, 70.0, pgd, history=history)
    rec.config = SimpleNamespace(model_kw={"base_width": 16}, epochs=len(history),
                                 precision="auto")
    rec.provenance.update(machine={"cpu": "Test CPU", "torch_threads": threads,
                                   "native_bf16": native})
    return rec


def test_the_headline_rows_put_the_best_record_first_with_its_minutes_to_each_target():
    rows = board.time_to_rows([_candidate("low", 38.0, native=False),
                               _candidate("high", 42.0, history=(36.0, 41.0, 46.0))],
                              targets=(40.0, 45.0))
    assert [r["record"] for r in rows] == ["high", "low"]
    assert (rows[0]["min to 40%"], rows[0]["min to 45%"], rows[1]["min to 45%"]) == ("4", "6", "-")
    assert (rows[0]["precision"], rows[1]["precision"]) == ("bf16", "fp32")
    assert rows[0]["training (min)"] == "6"


def test_the_headline_text_names_the_best_record_or_the_fastest_to_the_target():
    slow, fast = _candidate("slow", 46.0, history=(40.0,) * 5), _candidate("fast", 45.5)
    text = board.headline_text([slow, fast])
    assert "the fastest record to 45% PGD-50-10 is fast" in text
    assert text.endswith("within the headline's 60 minutes.")
    long = _candidate("long", 45.5, history=(40.0,) * 40)  # 2 minutes an epoch: 80 minutes
    assert board.headline_text([long]).endswith("over the headline's 60 minutes.")
    text = board.headline_text([_candidate("a", 41.0), _candidate("b", 39.0)])
    assert text.startswith("no record reached 45% PGD-50-10; the best of 2 is a at 41.0%")
    assert board.headline_text([]) == "no CIFAR-10 8/255 record is made yet."


def test_the_headline_candidates_are_the_made_cifar10_linf_8_records():
    found = board.linf8_records()
    assert found, "the repository keeps record-scale CIFAR-10 records at 8/255"
    for r in found:
        assert (r.config.dataset, r.config.norm, r.config.model) == ("cifar10", "linf",
                                                                    "preact_resnet18")
        assert r.config.eps == pytest.approx(8 / 255)


def test_the_time_to_figure_draws_a_line_per_record_and_the_target():
    fig = board.time_to_figure([_candidate("a", 41.0), _candidate("b", 39.0)])
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].x) == [2.0, 4.0, 6.0]
    assert any(s.y0 == 45.0 for s in fig.layout.shapes)
