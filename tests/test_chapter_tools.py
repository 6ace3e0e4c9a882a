"""The tools every chapter shares: the one definition of catastrophic overfitting
(fatlib.overfitting) and closing tables whose rows the scoreboard reads back out of executed
notebooks (fatlib.chapter). The one timing function (fatlib.bench) is tested in
tests/test_bench.py."""

import json
import math
from types import SimpleNamespace

import nbformat
import pytest

from fatlib import chapter, overfitting, verdicts


def _history(*pairs):
    return [{"epoch": i, "fgsm_acc": f, "pgd_acc": p} for i, (f, p) in enumerate(pairs)]


# --------------------------------------------------------------------------- overfitting

def test_collapse_point_is_the_first_record_with_the_fgsm_pgd_gap_after_a_loss():
    h = _history((20, 18), (25, 9), (60, 1), (80, 0))  # threshold=0: only the gap clause
    assert overfitting.collapse_point(h, threshold=0)["epoch"] == 2
    assert overfitting.collapse_point(h, gap=10, threshold=0)["epoch"] == 1


def test_a_weak_attack_early_in_training_is_not_a_collapse():
    # MNIST at eps 0.3: FGSM accuracy 25-30 points above PGD accuracy while both rise
    h = _history((40, 10), (70, 40), (90, 65), (95, 87))
    assert overfitting.collapse_point(h) is None


def test_a_small_model_that_loses_its_robustness_has_collapsed_without_a_large_gap():
    # a single-layer CNN: PGD accuracy peaks at 21% and ends at 1%, FGSM never 20 points above
    h = _history((22, 21), (20, 15), (18, 9), (10, 1))
    assert overfitting.collapse_point(h)["epoch"] == 2
    # a run that never reached twice the threshold has not lost anything: no collapse
    assert overfitting.collapse_point(_history((12, 11), (9, 8), (6, 5))) is None


def test_records_without_attack_accuracies_are_skipped():
    h = [{"epoch": 0}, {"epoch": 1, "clean_acc": 30.0}] + _history((20, 18))
    assert overfitting.collapse_point(h) is None
    assert overfitting.best_before_collapse([{"epoch": 0}]) is None


def test_best_before_collapse_ignores_what_follows_the_collapse():
    h = _history((30, 25), (35, 28), (80, 2), (90, 40))  # a late spike after the collapse
    assert overfitting.best_before_collapse(h)["pgd_acc"] == 28
    assert overfitting.best_before_collapse(_history((30, 25), (35, 28)))["pgd_acc"] == 28


def test_a_dead_network_is_chance_accuracy_with_undefined_gradient_alignment():
    history = [{"epoch": 1, "grad_alignment": float("nan")}]
    assert overfitting.is_dead({"clean_acc": 10.0}, history)
    assert not overfitting.is_dead({"clean_acc": 25.0}, history)
    assert not overfitting.is_dead({"clean_acc": 10.0}, [{"epoch": 1, "grad_alignment": 0.1}])
    assert not overfitting.is_dead({"clean_acc": 10.0}, [])


def test_diagnose_says_what_happened_in_one_line():
    run = SimpleNamespace(history=_history((30, 25), (80, 2)), metrics={"clean_acc": 40.0})
    d = overfitting.diagnose(run)
    assert d.collapsed and d.epoch == 1 and not d.dead
    assert d.text == "collapsed at epoch 1.0 (best PGD 25.0% at epoch 0.0)"
    fine = overfitting.diagnose(SimpleNamespace(history=_history((30, 25)),
                                                metrics={"clean_acc": 40.0}))
    assert not fine.collapsed and fine.text.startswith("no collapse")


def test_the_verdict_rule_and_the_history_rule_share_one_threshold():
    assert verdicts.COLLAPSE_THRESHOLD is overfitting.COLLAPSE_THRESHOLD


# --------------------------------------------------------------------------- closing tables

def _verdicts():
    rule = verdicts.collapses([1.0], 1000, name="FGSM")
    return [verdicts.check("wong2020 Table 1", "FGSM from zero collapses", rule, paper="0.00%",
                           scale="quick: cnn1, 10,000 images"),
            verdicts.not_run("wong2020 Table 4", "ImageNet", paper="43%", need="ImageNet")]


def test_closing_table_refuses_typed_verdicts_and_a_missing_chapter():
    with pytest.raises(ValueError, match="Verdicts of fatlib.verdicts"):
        chapter.closing_table([{"verdict": "reproduced"}], chapter="a/b")
    with pytest.raises(ValueError, match="at least one"):
        chapter.closing_table([], chapter="a/b")
    with pytest.raises(ValueError, match="chapter="):
        chapter.closing_table(_verdicts(), chapter=" ")


def test_the_scoreboard_reads_back_the_rows_of_an_executed_notebook(tmp_path):
    table = chapter.closing_table(_verdicts(), chapter="wong2020/table1_init_step")
    bundle = table._repr_mimebundle_()
    assert "reproduced at reduced scale" in bundle["text/html"]
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("closing_table(...)")
    cell.outputs = [nbformat.v4.new_output("display_data", data=bundle)]
    nb.cells = [cell]
    (tmp_path / "wong2020").mkdir()
    nbformat.write(nb, tmp_path / "wong2020" / "table1_init_step.ipynb")
    rows = chapter.collect_rows(tmp_path)
    assert rows == {"wong2020/table1_init_step": _verdicts()}


def test_collect_rows_names_the_notebook_of_a_bad_row(tmp_path):
    bundle = {chapter.ROWS_MIME: {"chapter": "x/y", "rows": [{"verdict": "great"}]}}
    nb = {"cells": [{"cell_type": "code", "outputs": [{"data": bundle}]}]}
    (tmp_path / "y.ipynb").write_text(json.dumps(nb))
    with pytest.raises(ValueError, match="y.ipynb"):
        chapter.collect_rows(tmp_path)


def test_glue_text_takes_formatted_texts_only():
    with pytest.raises(ValueError, match="format the number first"):
        chapter.glue_text(pgd=math.pi)


def test_queued_names_the_record_and_refuses_one_not_in_the_queue():
    v = chapter.queued("wong2020 Table 1", "FGSM-RS, alpha 10/255", paper="46.06%",
                       record="scale_preact18_w16_fgsm_rs_8")
    assert v.verdict == verdicts.NOT_RUN and "scale_preact18_w16_fgsm_rs_8" in v.detail
    with pytest.raises(ValueError, match="not in the record queue"):
        chapter.queued("a", "b", paper="1%", record="no_such_record")
