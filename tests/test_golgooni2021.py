"""fatlib.golgooni2021: Table 1's records and claims, the rules and views of Figs. 1-2, Algs. 1-2."""

import json

import pytest
import torch

from fatlib import golgooni2021 as G
from fatlib import models, runs, verdicts
from fatlib.threat import ThreatModel


def _fake_record(root, name, pgd):
    config = runs.queue_entry(name).config
    folder = root / name
    folder.mkdir(parents=True)
    for file, content in (("config.json", config.to_dict()), ("history.json", []),
                          ("metrics.json", {"pgd_acc": pgd, "n": 1000}), ("provenance.json", {})):
        (folder / file).write_text(json.dumps(content))


def test_every_table1_row_has_two_queued_seeds_at_the_papers_setting():
    for row in G.TABLE1:
        assert len(row.records) == 2, row.name
        for seed, name in enumerate(row.records):
            c = runs.queue_entry(name).config
            assert (c.eps, c.epochs, c.lr_schedule, c.seed) == (pytest.approx(8 / 255), 30,
                                                                 "cyclic", seed), name
            assert (c.model_kw, c.n_train, c.final_n_eval) == ({"base_width": 16}, None, 1000)
            for key, value in G.METHODS.get(row.name, {}).items():
                assert getattr(c, key) == pytest.approx(value), (name, key)
    fig2 = runs.queue_entry(G.FIGURE_RECORDS["ZeroGrad (q = 0.35), alpha = 2 eps"]).config
    twin = runs.queue_entry(G.FIGURE_RECORDS["FGSM-RS, alpha = 2 eps"]).config
    assert fig2 == twin.replace(method="zerograd", zg_q=0.35)   # only the method differs
    assert runs.queue_entry(G.BEFORE_COLLAPSE).config == twin.replace(early_stop=True)


def test_table1_claims_wait_for_records_then_check_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FATLIB_RECORDS_DIR", str(tmp_path))
    survive, above = G.TABLE1_CLAIMS
    waiting = G.check_records(survive)
    assert waiting.verdict == verdicts.NOT_RUN and "rs16_golgooni2021_zerograd_eps8_s0" in waiting.detail
    for row, pgd in ((G.ZEROGRAD, 44.0), (G.MULTIGRAD, 45.0), (G.FGSM_RS, 0.5)):
        _fake_record(tmp_path, G.ROWS[row].records[0], pgd)
    assert G.check_records(survive).verdict == verdicts.REDUCED
    assert G.check_records(above).verdict == verdicts.REDUCED
    assert "47.55 ± 0.05%" in G.check_records(survive).paper


def _fake_autoattack(root, name, autoattack):
    """The queue's AutoAttack file of a fake record, tied to its (empty) provenance."""
    (root / name / runs.evaluation_file(**runs.AUTOATTACK_1000)).write_text(json.dumps(
        {"accuracy": {"clean": 70.0, "pgd": 40.0, "autoattack": autoattack, "worst_case": autoattack},
         "record_run_hash": None, "record_commit": None}))


def test_table5_waits_for_records_then_for_autoattack_then_checks_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FATLIB_RECORDS_DIR", str(tmp_path))
    assert "needs the record rs16_golgooni2021_zerograd_eps8_s0," in G.table5_verdicts()[0].detail
    for row in (G.ZEROGRAD, G.MULTIGRAD):
        _fake_record(tmp_path, G.ROWS[row].records[0], 42.0)
    waiting = G.table5_verdicts()[0]
    assert waiting.verdict == verdicts.NOT_RUN
    assert "rs16_golgooni2021_zerograd_eps8_s0.autoattack" in waiting.detail
    _fake_autoattack(tmp_path, G.ROWS[G.ZEROGRAD].records[0], 38.0)
    _fake_autoattack(tmp_path, G.ROWS[G.MULTIGRAD].records[0], 3.0)  # masked: falls to AutoAttack
    table5, appendix, *others = G.table5_verdicts()
    assert table5.verdict == appendix.verdict == verdicts.DIFFERS
    assert "AutoAttack (standard) on 1,000 test images" in table5.scale
    assert [v.verdict for v in others] == [verdicts.NOT_RUN] * 2
    _fake_autoattack(tmp_path, G.ROWS[G.MULTIGRAD].records[0], 39.0)
    assert G.table5_verdicts()[0].verdict == verdicts.REDUCED
    rows = {r["method"]: r for r in G.table5_rows()}
    assert rows[G.ZEROGRAD]["ours: AutoAttack"] == "38.0%" and rows[G.ZEROGRAD]["paper: AutoAttack"] == "43.48%"
    assert rows[G.FGSM_RS]["evaluated"] == "0 of 2 records"


def _history(pgd, update):
    return [{"epoch": float(e), "pgd_acc": p, "probe_delta_mse": u,
             "weight_update_mse": None if u is None else {"conv1.weight": u, "block.conv.weight": u,
                                                           "last.conv.weight": u, "linear.weight": 0}}
            for e, (p, u) in enumerate(zip(pgd, update))]


def test_the_figure_rule_finds_the_update_in_the_epoch_of_the_drop():
    history = _history([10, 30, 40, 42, 5, 2], [None, 1.0, 0.5, 0.4, 9.0, 0.3])
    assert G.largest_drop_epoch(history) == 4.0
    assert G.coincides_with_the_drop(history, lambda h: h["probe_delta_mse"], name="p").passed
    late = _history([10, 30, 40, 42, 5, 2], [None, 1.0, 0.5, 0.4, 0.3, 9.0])
    result = G.coincides_with_the_drop(late, lambda h: h["probe_delta_mse"], name="p")
    assert not result.passed and "1" in result.ours
    assert G.conv_kernels(history) == ["conv1.weight", "block.conv.weight", "last.conv.weight"]


def _model_and_batch():
    torch.manual_seed(0)
    model = models.build("cnn1", "cifar10", n_filters=4).eval()
    return model, torch.rand(2, 3, 32, 32), torch.tensor([1, 2])


def test_relative_gradient_sizes_are_shares_of_each_examples_largest():
    model, x, y = _model_and_batch()
    sizes = G.relative_gradient_sizes(model, x, y)
    assert sizes.shape == (2, x[0].numel()) and 0 <= sizes.min()
    assert sizes.amax(dim=1).tolist() == pytest.approx([1.0, 1.0])
    below = G.share_below(sizes, [1e-3, 1e-1, 1.01])
    assert below == sorted(below) and below[-1] == 100.0
    per_image = G.near_zero_shares(sizes, 1e-1)
    assert len(per_image) == 2 and sum(per_image) / 2 == pytest.approx(below[1])
    assert G.near_zero_shares(sizes, 1.01) == [100.0, 100.0]


def test_the_algorithm_views_zero_a_q_share_and_stay_in_the_ball():
    model, x, y = _model_and_batch()
    threat = ThreatModel("linf", 8 / 255)
    for q in (0.0, 0.35, 0.7):
        zeroed, delta = G.zerograd_view(model, x[:1], y[:1], threat, q)
        assert zeroed.mean().item() == pytest.approx(q, abs=0.01)
        assert delta.abs().max() <= 8 / 255 + 1e-6
    mask_1, _ = G.multigrad_view(model, x[:1], y[:1], threat, 1)
    mask_5, delta = G.multigrad_view(model, x[:1], y[:1], threat, 5)
    assert mask_5.mean() >= mask_1.mean()                 # more starts, fewer entries agree
    assert delta.abs().max() <= 8 / 255 + 1e-6 and (x[0] + delta).min() >= 0
    fig = G.algorithm_slider(x[:1], [G.zerograd_view(model, x[:1], y[:1], threat, q)
                                     for q in (0.1, 0.5)], [0.1, 0.5], label="q", what="ZeroGrad")
    assert len(fig.layout.sliders[0].steps) == 2


def test_every_appendix_setting_is_queued_with_its_tables_change():
    c = {name: runs.queue_entry(name).config for s in G.TABLE6 + G.TABLE7 + G.TABLE9 + G.TABLE11 + G.C2
         for name in s.records}
    assert [c[s.records[0]].zg_q for s in G.TABLE6] == [0.3, 0.4, 0.5]
    assert [c[s.records[0]].mg_n for s in G.TABLE7] == [2, 4, 5]
    assert [c[s.records[0]].grad_clip for s in G.TABLE11] == [0.02, 0.06, 0.10]
    assert [c[name].seed for name in G.TABLE11[1].records] == [0, 1, 2]
    assert all(c[s.records[0]].eps == pytest.approx(16 / 255) for s in G.C2)
    long = c[G.TABLE9[0].records[0]]
    assert (long.epochs, long.lr_schedule, long.method) == (52, "onedrop", "multigrad")
    rollback = runs.queue_entry(G.ROLLBACK).config
    assert (rollback.zg_q, rollback.rollback_qs) == (0.25, (0.45,))


def test_appendix_claims_are_queued_rows_until_their_records_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("FATLIB_RECORDS_DIR", str(tmp_path))
    rows = G.setting_verdicts() + [G.clipping_instability_verdict(), G.rollback_verdict(),
                                   G.perturbation_size_verdict()]
    assert all(r.verdict == verdicts.NOT_RUN and "queued" in r.detail for r in rows)
    for name in G.TABLE11[2].records:
        _fake_record(tmp_path, name, pgd={"0": 48.0, "1": 44.0, "2": 1.5}[name[-1]])
    unstable = G.clipping_instability_verdict()
    assert unstable.verdict == verdicts.REDUCED and "seed (2)" in unstable.ours
    assert all(r.verdict == verdicts.NOT_RUN for r in G.table8_not_run(5.0) + G.table9_not_run(None))


def test_mean_l1_is_per_entry_times_255():
    assert G.mean_l1_255({"delta_l1": 3072 * 8 / 255}) == pytest.approx(8.0)


def test_multigrad_gradient_is_what_multigrad_steps_along_and_its_shares():
    torch.manual_seed(0)
    model = models.build("cnn1", "cifar10", n_filters=4).eval()
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2])
    threat = ThreatModel("linf", 8 / 255)
    grad, kept = G.multigrad_gradients(model, x, y, threat, n=3, seed=1)
    assert torch.equal(torch.where(kept != 0, grad, torch.zeros_like(grad)), kept)
    torch.manual_seed(1)
    delta = G.attacks.multigrad(model, x, y, threat, n=3)
    assert torch.equal(delta, threat.project(threat.step(torch.zeros_like(x), kept, 8 / 255), x))
    count, mass = G.zeroed_shares(grad, kept)
    assert len(count) == 3 and all(0 <= m <= 100 and 0 <= c <= 100 for c, m in zip(count, mass))
    small = grad.clone()
    small[:, 0] = 1e-9  # zero the smallest channel: a tiny share of the mass
    c1, m1 = G.zeroed_shares(small, torch.where(small.abs() > 1e-8, small, torch.zeros_like(small)))
    assert all(m < c for c, m in zip(c1, m1))
    assert G.figure3_verdict(c1, m1, scale="smoke: test").verdict == verdicts.REDUCED


def test_the_small_entries_claim_waits_for_both_records_then_compares_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FATLIB_RECORDS_DIR", str(tmp_path))
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    waiting = G.small_entries_verdict(G.sizes_before_and_after(x, y))
    assert waiting.verdict == verdicts.NOT_RUN and G.BEFORE_COLLAPSE in waiting.detail
    for seed, name in enumerate((G.BEFORE_COLLAPSE, G.FIGURE_RECORDS["FGSM-RS, alpha = 2 eps"])):
        _fake_record(tmp_path, name, 40.0 - 40 * seed)
        torch.manual_seed(seed)
        config = runs.queue_entry(name).config
        model = models.build(config.model, config.dataset, **config.model_kw)
        torch.save(model.state_dict(), tmp_path / name / "weights.pt")
    found = G.small_entries_verdict(G.sizes_before_and_after(x, y))
    assert found.verdict in (verdicts.REDUCED, verdicts.DIFFERS) and found.artifact == G.SMALL_ENTRIES
    assert "after" in found.ours and "before" in found.ours and "FGSM-RS" in found.ours
