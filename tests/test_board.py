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
