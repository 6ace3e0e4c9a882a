"""Tests of fatlib.runs: the run store (load_or_train) and records (save, load, verify)."""

import json

import pytest
import torch

from fatlib import runs
from fatlib.train import TrainConfig


CLEAN = "0" * 40  # a clean commit, so that save_record works while fatlib/ is being edited


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FATLIB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("FATLIB_RECORDS_DIR", str(tmp_path / "records"))
    monkeypatch.setattr(runs, "_git_commit", lambda: CLEAN)


@pytest.mark.parametrize("commit,message", [(CLEAN + runs.UNCOMMITTED, "commit them first"),
                                            (None, "not a git checkout")])
def test_save_record_refuses_code_that_is_not_committed(monkeypatch, commit, message):
    run = runs.load_or_train(tiny())
    monkeypatch.setattr(runs, "_git_commit", lambda: commit)
    with pytest.raises(RuntimeError, match=message):
        runs.save_record(run, "dirty")
    assert not (runs.records_dir() / "dirty").exists()


def tiny(**kw) -> TrainConfig:
    base = dict(dataset="mnist", model="cnn1", model_kw={"n_filters": 2}, n_train=64, n_eval=32,
                epochs=2, batch_size=32, augment=False, lr_max=0.05, eps=0.1, eval_pgd_steps=2,
                method="fgsm", fgsm_init="random", eval_every=1)
    return TrainConfig(**{**base, **kw})


def test_load_or_train_trains_once_then_loads(tmp_path):
    cfg = tiny()
    first = runs.load_or_train(cfg)
    assert first.steps_run == 4 and first.path == tmp_path / "runs" / cfg.hash()
    for name in ("config.json", "history.json", "metrics.json", "checkpoint.pt"):
        assert (first.path / name).exists()
    assert TrainConfig.from_dict(json.loads((first.path / "config.json").read_text())) == cfg
    second = runs.load_or_train(cfg)
    assert second.steps_run == 0
    assert second.history == first.history and second.metrics == first.metrics
    assert all(torch.equal(a, b) for a, b in zip(second.model.state_dict().values(),
                                                  first.model.state_dict().values()))


def test_load_run_of_an_unfinished_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished run"):
        runs.load_run(tmp_path / "nothing")


def test_record_round_trip_with_provenance():
    run = runs.load_or_train(tiny())
    rec = runs.save_record(run, "tiny_fgsm_rs", notes="test")
    assert rec.config == run.config and rec.history == run.history
    prov = rec.provenance
    for key in ("fatlib_version", "git_commit", "torch_version", "machine", "date_utc", "wall_time_s",
                "data_source", "sha256"):
        assert key in prov
    assert prov["machine"]["cores"] >= 1 and "MNIST" in prov["data_source"]["train"]
    model = rec.model()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), run.model.state_dict().values()))
    assert runs.load_record("tiny_fgsm_rs").metrics == run.metrics
    with pytest.raises(FileNotFoundError, match="records: \\['tiny_fgsm_rs'\\]"):
        runs.load_record("nope")
    with pytest.raises(ValueError, match="record name"):
        runs.save_record(run, "../escape")


def test_record_or_run_takes_the_record_only_for_its_exact_config():
    cfg = tiny()
    runs.save_record(runs.load_or_train(cfg), "kept")
    rec, source = runs.record_or_run(cfg, "kept")
    assert isinstance(rec, runs.Record) and source == "record kept"
    other, source = runs.record_or_run(cfg.replace(seed=1), "kept")
    assert isinstance(other, runs.Run) and source.startswith("this execution") and other.steps_run == 4
    _, source = runs.record_or_run(cfg, "kept", use_record=False)
    assert source.startswith("this execution")
    _, source = runs.record_or_run(cfg, "missing")
    assert source.startswith("this execution")


def test_kept_configs_load_and_a_missing_one_is_a_clear_error():
    for path in runs.configs_dir().glob("*.json"):
        kept = json.loads(path.read_text())
        as_loaded = runs.recipe(path.stem).to_dict()
        assert {k: as_loaded[k] for k in kept} == kept  # every kept field survives validation
    with pytest.raises(FileNotFoundError, match="configs:"):
        runs.recipe("nope")


def test_verify_record_passes_then_detects_tampering(tmp_path):
    runs.save_record(runs.load_or_train(tiny()), "r")
    ok = runs.verify_record("r")
    assert ok and ok.compared > 20, ok.mismatches
    folder = tmp_path / "records" / "r"
    history = json.loads((folder / "history.json").read_text())
    history[1]["pgd_acc"] += 10.0
    (folder / "history.json").write_text(json.dumps(history))
    # a careful forger also updates the checksum: the re-run still catches it
    prov = json.loads((folder / "provenance.json").read_text())
    prov["sha256"]["history.json"] = runs._sha256(folder / "history.json")
    (folder / "provenance.json").write_text(json.dumps(prov))
    bad = runs.verify_record("r")
    assert not bad and any("pgd_acc" in m for m in bad.mismatches)


def test_verify_record_detects_a_changed_config(tmp_path):
    runs.save_record(runs.load_or_train(tiny()), "r")
    folder = tmp_path / "records" / "r"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["lr_max"] = 0.5
    (folder / "config.json").write_text(json.dumps(cfg))
    bad = runs.verify_record("r")
    assert not bad and any("config.json: sha256" in m for m in bad.mismatches)
    assert any("train_loss" in m or "weight_update" in m for m in bad.mismatches)


def test_cli_eval_prints_a_table_for_a_run_folder(capsys):
    from fatlib.__main__ import main

    run = runs.load_or_train(tiny())
    assert main(["eval", "--run", str(run.path), "--epsilon", "0.05", "1/10", "--n", "32",
                 "--pgd-steps", "2", "--restarts", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["eps"] for r in out["rows"]] == [0.05, 0.1]
    assert out["rows"][1]["pgd"] <= out["rows"][1]["clean"] and "MNIST" in out["source"]


def test_cli_delegates_bench_and_book(monkeypatch):
    import sys
    import types

    from fatlib.__main__ import main

    seen = []
    for name in ("bench", "book"):
        fake = types.ModuleType(f"fatlib.{name}")
        fake.main = lambda argv, name=name: seen.append((name, argv)) or 0
        monkeypatch.setitem(sys.modules, f"fatlib.{name}", fake)
    assert main(["bench", "--quick"]) == 0 and main(["book", "build", "--profile", "smoke"]) == 0
    assert seen == [("bench", ["--quick"]), ("book", ["build", "--profile", "smoke"])]
    assert main(["nonsense"]) == 2


def test_cli_train_flags_accept_fractions_and_paper_names():
    from fatlib.__main__ import _add_config_flags, _config_from_args
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    _add_config_flags(parser)
    args = parser.parse_args(["--epsilon", "8/255", "--attack", "fgsm", "--delta-init", "zero",
                              "--model", "cnn1", "--n-filters", "4", "--no-augment", "--n-train", "all",
                              "--rollback-qs", "--lr-drops", "10", "15"])
    cfg = _config_from_args(args)
    assert cfg.eps == 8 / 255 and cfg.fgsm_init == "zero" and cfg.model_kw == {"n_filters": 4}
    assert cfg.augment is False and cfg.n_train is None and cfg.lr_drops == (10.0, 15.0)


@pytest.mark.parametrize("flags,message", [
    (["--alpha", "10"], "pixel units"), (["--method", "pgd", "--pgd-alpha-train", "2"], "pixel units"),
    (["--config", "README.md"], "is not a TrainConfig JSON file"),
    (["--config", "data/records"], "cannot read it"),
    (["--config", "_toc.yml"], "is not a TrainConfig JSON file"),
])
def test_cli_train_rejects_bad_input_with_a_clear_message(flags, message, capsys, monkeypatch):
    from fatlib.__main__ import main
    monkeypatch.chdir(runs.REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dataset", "mnist", "--model", "cnn1", "--print-config", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_train_reports_a_json_that_is_not_a_config(tmp_path, capsys):
    from fatlib.__main__ import main
    for text, message in (("[1, 2]", "holds a list"), ('{"lr": 0.1}', "unknown TrainConfig fields")):
        (tmp_path / "c.json").write_text(text)
        with pytest.raises(SystemExit):
            main(["train", "--config", str(tmp_path / "c.json"), "--print-config"])
        assert message in capsys.readouterr().err


def test_cli_eval_rejects_a_step_in_255_units(capsys):
    from fatlib.__main__ import main
    with pytest.raises(SystemExit):
        main(["eval", "--record", "x", "--pgd-alpha", "2"])
    assert "pixel units" in capsys.readouterr().err


def test_final_evaluation_stores_the_cheap_sanity_checks_and_records_report_them():
    from fatlib import sanity
    run = runs.load_or_train(tiny(final_n_eval=40))
    stored = run.metrics["sanity"]
    assert len(stored) == len(sanity.CHEAP_CHECKS)
    assert all(set(c) == {"name", "passed", "message"} and isinstance(c["passed"], bool) for c in stored)
    rec = runs.save_record(run, "kept")
    assert [c.name for c in runs.sanity_report(rec)] == [c["name"] for c in stored]
    # a record made before the checks were stored: computed on its kept weights
    (rec.path / "metrics.json").write_text(json.dumps({k: v for k, v in rec.metrics.items()
                                                       if k != "sanity"}))
    computed = runs.sanity_report(runs.load_record("kept"))
    assert [c.name for c in computed] == [c["name"] for c in stored]
    (rec.path / "weights.pt").unlink()
    assert runs.sanity_report(runs.load_record("kept")) is None


def test_sanity_summary_passes_only_what_passed_on_every_run(monkeypatch):
    from fatlib import sanity
    a, b = runs.load_or_train(tiny(seed=1)), runs.load_or_train(tiny(seed=2))
    reports = {a.config.hash(): [sanity.Check("x", True, "ok"), sanity.Check("y", True, "ok")],
               b.config.hash(): [sanity.Check("x", False, "bad things"), sanity.Check("y", True, "ok")]}
    monkeypatch.setattr(runs, "sanity_report", lambda item: reports[item.config.hash()])
    x, y = runs.sanity_summary([a, b])
    assert not x.passed and "passed on 1 of 2" in x.message and "bad things" in x.message
    assert y.passed and y.message == "passed on 2 of 2"
