"""Tests of the record queue: fatlib.runs.load_queue / queue_status / run_queue and
``python -m fatlib records status|run`` (tiny MNIST cnn1 runs, seconds each), and its
evaluation entries (AutoAttack on a record: a cheap stand-in, and the reference on 8 images)."""

import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from fatlib import evaluate, loop, models, runs
from fatlib.__main__ import main
from fatlib.train import CHECKPOINT, TrainConfig, load_checkpoint

CLEAN = "0" * 40  # a clean commit, so that records can be saved while fatlib/ is being edited


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("FATLIB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("FATLIB_RECORDS_DIR", str(tmp_path / "records"))
    monkeypatch.setenv("FATLIB_QUEUE_PROGRESS_DIR", str(tmp_path / "queue_progress"))
    monkeypatch.setattr(runs, "_git_commit", lambda: CLEAN)


def tiny(**kw) -> TrainConfig:
    base = dict(dataset="mnist", model="cnn1", model_kw={"n_filters": 2}, n_train=64, n_eval=32,
                epochs=3, batch_size=32, augment=False, lr_max=0.05, eps=0.1, eval_pgd_steps=2,
                method="fgsm", fgsm_init="random", eval_every=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def write_queue(tmp_path, *entries) -> str:
    """A queue file of (name, config[, needs]) entries and of items given as dicts."""
    items = [e if isinstance(e, dict) else
             {"name": e[0], "config": e[1].to_dict(), "notes": f"test {e[0]}",
              **({"needs": e[2]} if len(e) > 2 else {})} for e in entries]
    path = tmp_path / "queue.json"
    path.write_text(json.dumps(items))
    return str(path)


def without_times(history: list) -> list:
    return [{k: v for k, v in rec.items() if not k.startswith("time_")} for rec in history]


def same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def uninterrupted(config: TrainConfig, tmp_path, monkeypatch) -> runs.Run:
    """The run of `config` trained in one go, in a runs folder of its own."""
    monkeypatch.setenv("FATLIB_RUNS_DIR", str(tmp_path / "runs_uninterrupted"))
    return runs.load_or_train(config)


def test_status_of_a_tiny_queue(tmp_path, monkeypatch, capsys):
    started, fresh, done, other = tiny(), tiny(seed=1, batch_size=16), tiny(seed=2), tiny(seed=3)
    bf16, outside = tiny(seed=4), tiny(seed=5)
    queue = write_queue(tmp_path, ("started", started), ("fresh", fresh), ("done", done),
                        ("other", other), ("big", bf16, "native_bf16"), ("outside", outside))
    monkeypatch.setattr(runs, "native_bf16_cpu", lambda: False)
    runs.run_queue(queue, budget_minutes=1e-9, only=["started"])  # one epoch
    runs.load_or_train(outside, until_epoch=1)  # not by the queue: `records run` restarts it
    runs.save_record(runs.load_or_train(done), "done")
    runs.save_record(runs.load_or_train(other.replace(lr_max=0.01)), "other")
    status = {s.entry.name: s for s in runs.queue_status(queue)}
    assert [status[n].state for n in ("started", "fresh", "done", "other", "big")] == \
        ["in progress", "not started", "done", "differs", "waiting for native bf16"]
    assert status["started"].passes_done == 1 and status["started"].seconds_left > 0
    assert status["started"].basis == "checkpoint timers"
    assert status["fresh"].seconds_left is None and status["done"].seconds_left == 0
    assert "in progress at epoch 1 of 3" in status["started"].line()
    assert f"done (commit {CLEAN[:10]})" in status["done"].line()
    assert "unknown" in status["fresh"].line()
    assert status["outside"].state == "in progress" and "restarts it" in status["outside"].basis
    capsys.readouterr()
    assert main(["records", "status", "--queue", queue]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 7 and out[-1].startswith("left: 3 of 6 entries")
    assert "1 not estimated" in out[-1] and "1 waiting for native bf16" in out[-1]  # fresh


def test_status_estimates_from_an_old_record_or_a_measured_step(tmp_path):
    old, new = tiny(), tiny(seed=1)
    queue = write_queue(tmp_path, ("old", old), ("new", new))
    run = runs.load_or_train(old)
    runs.save_record(run, "old")
    shutil.rmtree(run.path)  # the record is all that is left of it
    prov = runs.records_dir() / "old" / "provenance.json"
    p = json.loads(prov.read_text())
    p["git_commit"] = CLEAN + runs.UNCOMMITTED  # an old record being re-made
    p["wall_time_s"] = {"train": 30.0, "history_eval": 6.0, "final_eval": 4.0}
    prov.write_text(json.dumps(p))
    first = runs.entry_status(runs.load_queue(queue)[0])
    assert first.state == "not started" and first.seconds_left == pytest.approx(40.0)
    measured = runs.entry_status(runs.load_queue(queue)[1], measure=True)
    assert measured.basis == "measured step cost" and 0 < measured.seconds_left < 60


def test_status_estimates_from_a_similar_record_per_pass(tmp_path):
    made = tiny(epochs=2)
    queue = write_queue(tmp_path, ("made", made), ("longer", tiny(epochs=6, eps=0.2, seed=3)),
                        ("other_method", tiny(method="pgd", pgd_steps=3)))
    runs.save_record(runs.load_or_train(made), "made")
    prov = runs.records_dir() / "made" / "provenance.json"
    p = json.loads(prov.read_text())
    p["wall_time_s"] = {"train": 30.0, "history_eval": 6.0, "final_eval": 4.0}
    prov.write_text(json.dumps(p))
    entries = runs.load_queue(queue)
    longer = runs.entry_status(entries[1])
    assert longer.seconds_left == pytest.approx(36.0 / 2 * 6 + 4.0)  # per pass x 6 passes + final
    assert "similar record made" in longer.basis
    assert runs.entry_status(entries[2]).seconds_left is None  # another method costs otherwise


def test_run_with_a_budget_that_finishes(tmp_path):
    queue = write_queue(tmp_path, ("a", tiny()), ("b", tiny(seed=1, epochs=2)))
    results = runs.run_queue(queue, budget_minutes=60)
    assert [(r["name"], r["result"], r["epochs"]) for r in results] == \
        [("a", "recorded", 3), ("b", "recorded", 2)]
    rec = runs.load_record("a")
    assert rec.provenance["git_commit"] == CLEAN and rec.provenance["notes"] == "test a"
    assert rec.config == tiny() and rec.metrics
    assert all(s.state == "done" for s in runs.queue_status(queue))
    log = (runs.runs_dir() / runs.QUEUE_LOG).read_text()
    assert "a: epoch 3 of 3 done" in log and "b: record saved" in log
    again = runs.run_queue(queue)
    assert [(r["result"], r["epochs"]) for r in again] == [("done", 0), ("done", 0)]


def test_run_stops_at_the_budget_and_resumes_to_the_same_weights(tmp_path, monkeypatch):
    cfg = tiny()
    queue = write_queue(tmp_path, ("a", cfg), ("b", tiny(seed=1)))
    first = runs.run_queue(queue, budget_minutes=1e-9)  # no estimate yet: one epoch runs
    assert [(r["name"], r["result"], r["epochs"]) for r in first] == [("a", "stopped at budget", 1)]
    assert runs.entry_status(runs.load_queue(queue)[0]).passes_done == 1
    second = runs.run_queue(queue, budget_minutes=1e-9)  # the checkpoint's timers: does not fit
    assert second[0]["epochs"] == 0 and second[0]["result"] == "stopped at budget"
    assert "stopping before epoch 2 of 3" in (runs.runs_dir() / runs.QUEUE_LOG).read_text()
    third = runs.run_queue(queue, only=["a"])
    assert [(r["name"], r["result"], r["epochs"]) for r in third] == [("a", "recorded", 2)]
    rec = runs.load_record("a")
    whole = uninterrupted(cfg, tmp_path, monkeypatch)
    assert same_weights(rec.model(), whole.model)
    assert without_times(rec.history) == without_times(whole.history)
    assert rec.metrics["pgd_acc"] == whole.metrics["pgd_acc"]


def test_a_crash_in_the_final_evaluation_keeps_the_trained_epochs(tmp_path, monkeypatch):
    cfg = tiny(final_n_eval=32, final_pgd_steps=2, final_pgd_restarts=1)
    queue = write_queue(tmp_path, ("a", cfg))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed in the final evaluation")

    with monkeypatch.context() as m:
        m.setattr(loop, "final_evaluation", crash)
        with pytest.raises(KeyboardInterrupt):
            runs.run_queue(queue)
    status = runs.entry_status(runs.load_queue(queue)[0])
    assert status.state == "in progress" and status.passes_done == 3
    assert "epoch 3 of 3, final evaluation left" in status.line()
    again = runs.run_queue(queue)
    assert [(r["result"], r["epochs"]) for r in again] == [("recorded", 0)]
    assert "a: the final evaluation (resuming after epoch 3)" in (
        runs.runs_dir() / runs.QUEUE_LOG).read_text()
    rec, whole = runs.load_record("a"), uninterrupted(cfg, tmp_path, monkeypatch)
    assert same_weights(rec.model(), whole.model) and rec.metrics["pgd_acc"] == whole.metrics[
        "pgd_acc"]


@pytest.mark.slow
def test_a_queue_run_killed_with_sigkill_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    cfg = tiny(n_train=512, epochs=4)
    queue = write_queue(tmp_path, ("killed", cfg))
    path = runs.run_path(cfg)
    code = ("import sys, torch; torch.set_num_threads(1); from fatlib import runs; "
            f"runs._git_commit = lambda: {CLEAN!r}; from fatlib.__main__ import main; "
            f"sys.exit(main(['records', 'run', '--queue', {queue!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=runs.REPO, env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if (path / CHECKPOINT).exists() and \
                    load_checkpoint(path / CHECKPOINT)["state"]["passes_done"] >= 1:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not runs.is_complete(path)
    at_kill = load_checkpoint(path / CHECKPOINT)["state"]["passes_done"]
    assert 1 <= at_kill < cfg.passes
    results = runs.run_queue(queue)
    assert results == [{"name": "killed", "epochs": cfg.passes - at_kill, "result": "recorded"}]
    assert f"killed: epoch {at_kill + 1} of 4 (resuming)" in (runs.runs_dir() / runs.QUEUE_LOG).read_text()
    rec = runs.load_record("killed")
    whole = uninterrupted(cfg, tmp_path, monkeypatch)
    assert without_times(rec.history) == without_times(whole.history)
    assert same_weights(rec.model(), whole.model)


def test_a_run_folder_not_started_by_the_queue_is_moved_aside(tmp_path):
    cfg = tiny()
    queue = write_queue(tmp_path, ("a", cfg))
    runs.load_or_train(cfg, until_epoch=1)  # made outside the queue: its code is not known
    results = runs.run_queue(queue)
    assert results[0]["result"] == "recorded" and results[0]["epochs"] == 3
    moved = [p.name for p in runs.runs_dir().glob(f"{cfg.hash()}.moved-*")]
    assert len(moved) == 1 and moved[0] in (runs.runs_dir() / runs.QUEUE_LOG).read_text()


def test_records_run_refuses_uncommitted_fatlib(tmp_path, monkeypatch, capsys):
    queue = write_queue(tmp_path, ("a", tiny()))
    monkeypatch.setattr(runs, "_git_commit", lambda: CLEAN + runs.UNCOMMITTED)
    assert main(["records", "run", "--queue", queue]) == 2
    assert "uncommitted changes" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="commit them first"):
        runs.run_queue(queue)
    assert not runs.run_path(tiny()).exists() and not (runs.records_dir() / "a").exists()


def test_records_run_rejects_names_not_in_the_queue(tmp_path, capsys):
    queue = write_queue(tmp_path, ("a", tiny()))
    assert main(["records", "run", "--queue", queue, "--only", "nope"]) == 2
    assert "not in the queue: ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("item,message", [
    ({"name": "x"}, "exactly one of 'config', 'recipe' and 'evaluate'"),
    ({"name": "x", "recipe": "wong2020_cifar10_fgsm_rs_15ep", "config": {}}, "exactly one"),
    ({"name": "x", "config": {}, "colour": 1}, "an entry is an object"),
    ({"name": "../x", "config": {}}, "record name"),
    ({"name": "x", "config": {"epochs": 0}}, "entry 0 \\(x\\)"),
    ({"name": "x", "config": {"learning_rate": 1}}, "unknown TrainConfig fields"),
    ({"name": "x", "config": {}, "needs": "gpu"}, "needs must be one of"),
    ({"name": "x", "config": {}, "evaluate": {}}, "exactly one of"),
    ({"name": "x", "evaluate": {"record": "a"}}, "'evaluate' is an object with exactly the keys"),
    ({"name": "x", "evaluate": "a"}, "'evaluate' is an object"),
    ({"name": "x", "evaluate": {"record": "../a", "attack": "autoattack", "version": "standard",
                                "n": 8}}, "evaluate.record must be a record name"),
    ({"name": "x", "evaluate": {"record": "a", "attack": "pgd", "version": "standard", "n": 8}},
     "evaluate.attack must be one of \\('autoattack',\\)"),
    ({"name": "x", "evaluate": {"record": "a", "attack": "autoattack", "version": "fast", "n": 8}},
     "evaluate.version must be one of"),
    ({"name": "x", "evaluate": {"record": "a", "attack": "autoattack", "version": "standard",
                                "n": "1000"}}, "evaluate.n must be a whole number"),
    ({"name": "x", "evaluate": {"record": "a", "attack": "autoattack", "version": "standard",
                                "n": 0}}, "evaluate.n must be"),
    ({"name": "x", "needs": "native_bf16", "evaluate": {"record": "a", "attack": "autoattack",
                                                        "version": "standard", "n": 8}},
     "'needs' is for training entries"),
])
def test_load_queue_names_a_bad_entry(tmp_path, item, message):
    path = tmp_path / "queue.json"
    path.write_text(json.dumps([item]))
    with pytest.raises(ValueError, match=message):
        runs.load_queue(path)


def evaluation(record: str, n: int = 8, version: str = "standard", name: str | None = None) -> dict:
    """A queue item: AutoAttack on the first n test images of `record`."""
    return {"name": name or f"{record}.autoattack", "notes": f"test evaluation of {record}",
            "evaluate": {"record": record, "attack": "autoattack", "version": version, "n": n}}


def test_load_queue_checks_what_an_evaluation_evaluates(tmp_path):
    with pytest.raises(ValueError, match="evaluates record 'nope', which no training entry"):
        runs.queue_items(write_queue(tmp_path, ("a", tiny()), evaluation("nope")))
    with pytest.raises(ValueError, match="evaluations written twice: \\['a/autoattack_standard_8.json'\\]"):
        runs.queue_items(write_queue(tmp_path, ("a", tiny()), evaluation("a"), evaluation("a", name="b")))
    queue = write_queue(tmp_path, evaluation("a", n=1000, version="rand"), ("a", tiny()))
    first, second = runs.queue_items(queue)  # an evaluation may come before its record
    assert (first.name, first.record, first.attack, first.version, first.n) == \
        ("a.autoattack", "a", "autoattack", "rand", 1000)
    assert first.config == tiny() and first.file == "autoattack_rand_1000.json"
    assert [e.name for e in runs.load_queue(queue)] == ["a"]  # the training entries, as before
    with pytest.raises(ValueError, match="not in the record queue"):
        runs.queue_entry("a.autoattack", queue)


def test_load_queue_rejects_a_name_used_twice(tmp_path):
    with pytest.raises(ValueError, match="used twice: \\['a'\\]"):
        runs.load_queue(write_queue(tmp_path, ("a", tiny()), ("a", tiny(seed=1))))


def test_the_shipped_queue_is_valid_and_lists_every_record():
    entries = runs.load_queue()  # builds (and so validates) every entry's TrainConfig
    assert len(runs.queue_items()) >= len(entries)  # and validates the evaluation entries
    assert runs.queue_file() == runs.REPO / "data" / "record_queue.json"
    assert all(isinstance(e.config, TrainConfig) for e in entries)
    by_name = {e.name: e for e in entries}
    records = runs.REPO / "data" / "records"
    kept = sorted(p.name for p in records.iterdir() if (p / "config.json").exists())
    assert set(kept) <= set(by_name), f"records missing from the queue: {sorted(set(kept) - set(by_name))}"
    for width in (16, 32):
        c = by_name[f"scale_preact18_w{width}_fgsm_rs_8"].config
        assert (c.model, c.model_kw, c.dataset, c.n_train) == ("preact_resnet18", {"base_width": width},
                                                               "cifar10", None)
        assert (c.method, c.fgsm_init, c.eps, c.alpha) == ("fgsm", "random", 8 / 255, 10 / 255)
        assert (c.epochs, c.lr_schedule, c.lr_max, c.precision, c.seed) == (15, "cyclic", 0.2, "auto", 0)
        assert (c.final_n_eval, c.final_pgd_steps, c.final_pgd_restarts) == (1000, 50, 10)
        assert (c.eval_every, c.n_eval) == (0, 500)
        models.build(c.model, c.dataset, **c.model_kw)
    paper = by_name["wong2020_cifar10_fgsm_rs_15ep"]
    assert paper.needs == "native_bf16" and paper.config == runs.recipe("wong2020_cifar10_fgsm_rs_15ep")
    names = [e.name for e in entries]
    assert names[-1] == paper.name  # paper scale waits behind the record scale
    record_scale = [e for e in entries if e.name.startswith("rs16_")]
    # the width-16 study run first (it decides the record scale), width 32 behind the Table 1 rows
    assert record_scale and names.index("scale_preact18_w16_fgsm_rs_8") < names.index(record_scale[0].name)
    for e in record_scale:  # the record-scale model and evaluation (issue 14)
        c = e.config
        assert (c.model, c.model_kw, c.dataset, c.n_train) == ("preact_resnet18", {"base_width": 16},
                                                               "cifar10", None), e.name
        # PGD-50-10 on 1,000 test images; the l2 records use the l2fast paper's Fig. 2 attack, PGD-20-10
        final_pgd = (1000, 20, 10) if c.norm == "l2" else (1000, 50, 10)
        assert (c.final_n_eval, c.final_pgd_steps, c.final_pgd_restarts) == final_pgd, e.name


# ----------------------------------------------------------------------------- evaluation entries

EVALUATED = tiny(model_kw={"n_filters": 4}, n_train=256, epochs=2, optimizer="adam", lr_max=0.01,
                 final_n_eval=8)  # 37.5% clean on its 8 final test images, one robust to PGD-50-10


@pytest.fixture(scope="module")
def made_record(tmp_path_factory) -> "os.PathLike":
    """A records folder holding the record 'rec' of EVALUATED (trained once for the module)."""
    root = tmp_path_factory.mktemp("made")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FATLIB_RUNS_DIR", str(root / "runs"))
        mp.setattr(runs, "_git_commit", lambda: CLEAN)
        runs.save_record(runs.load_or_train(EVALUATED), "rec", root=root / "records")
    return root / "records"


def copy_record(made_record) -> dict:
    """Copy the record 'rec' into this test's records folder; the sha256 of each of its files."""
    shutil.copytree(made_record / "rec", runs.records_dir() / "rec")
    return file_hashes()


def file_hashes() -> dict:
    folder = runs.records_dir() / "rec"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def cheap_autoattack(model, x, y, threat, *, version, seed):
    """A stand-in for evaluate.run_autoattack (its signature and result): FGSM from zero."""
    delta = evaluate.make_attack("fgsm", threat)(model, x, y)
    return evaluate.AutoAttackResult(delta, evaluate.predict_correct(model, x, y, delta),
                                     ["cheap stand-in"], [], version, seed)


def test_an_evaluation_waits_for_its_record_then_runs_once(tmp_path, made_record, capsys):
    queue = write_queue(tmp_path, evaluation("rec"), ("rec", EVALUATED))
    waiting = runs.entry_status(runs.queue_items(queue)[0])
    assert waiting.state == "waiting for rec" and "waiting for rec" in waiting.line()
    assert runs.format_status(runs.queue_status(queue)).endswith("1 evaluations waiting for their record")
    skipped = runs.run_queue(queue, only=["rec.autoattack"], run_autoattack=cheap_autoattack)
    assert skipped == [{"name": "rec.autoattack", "epochs": 0, "result": "skipped: waiting for rec"}]
    assert runs.record_evaluation("rec", n=8) is None
    before = copy_record(made_record)
    ready = runs.entry_status(runs.queue_items(queue)[0])
    assert ready.state == "not started" and ready.seconds_left > 0
    assert ready.basis.startswith("rough AutoAttack cost model, record's final evaluation time")
    results = runs.run_queue(queue, only=["rec.autoattack"], run_autoattack=cheap_autoattack)
    assert [r["result"] for r in results] == ["evaluated"]
    after = file_hashes()
    assert after.pop("autoattack_standard_8.json") and after == before  # the record is untouched
    found = runs.record_evaluation("rec", n=8)
    assert found == json.loads((runs.records_dir() / "rec" / "autoattack_standard_8.json").read_text())
    acc, rec = found["accuracy"], runs.load_record("rec")
    assert set(acc) == {"clean", "pgd", "autoattack", "worst_case"}
    assert acc["clean"] == rec.metrics["clean_acc"] and acc["pgd"] == rec.metrics["pgd_acc"]
    assert acc["worst_case"] <= min(acc["clean"], acc["pgd"], acc["autoattack"])
    assert (found["n"], found["attack"], found["version"], found["entry"]) == \
        (8, "autoattack", "standard", "rec.autoattack")
    assert found["source"] == rec.metrics["source"] and found["pgd"] == "PGD-50-10 (alpha eps/4)"
    assert set(found["seconds"]) == {"clean_pgd", "autoattack"}
    assert found["git_commit"] == CLEAN and found["machine"]["cpu"] == runs.machine()["cpu"]
    assert found["reference"] == {"package": "pyautoattack", "seed": found["reference"]["seed"],
                                  "package_version": importlib.metadata.version("pyautoattack"),
                                  "flags": [], "log": ["cheap stand-in"]}
    assert (found["record_run_hash"], found["record_commit"]) == (EVALUATED.hash(), CLEAN)
    assert found["date_utc"].endswith("+00:00") and found["notes"] == "test evaluation of rec"
    done = runs.entry_status(runs.queue_items(queue)[0])
    assert done.state == "done" and f"done (commit {CLEAN[:10]})" in done.line()
    again = runs.run_queue(queue, only=["rec.autoattack"], run_autoattack=cheap_autoattack)
    assert [r["result"] for r in again] == ["done"]
    capsys.readouterr()
    assert main(["records", "status", "--queue", queue]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("left: 0 of 2 entries")
    prov = runs.records_dir() / "rec" / "provenance.json"  # the record re-made at another commit
    prov.write_text(json.dumps({**json.loads(prov.read_text()), "git_commit": "1" * 40}))
    assert runs.record_evaluation("rec", n=8) is None
    assert runs.entry_status(runs.queue_items(queue)[0]).state == "not started"


def test_an_evaluation_fits_the_budget_or_waits_and_a_killed_one_starts_over(tmp_path, made_record):
    queue = write_queue(tmp_path, ("rec", EVALUATED), evaluation("rec"))
    before = copy_record(made_record)
    stopped = runs.run_queue(queue, budget_minutes=1e-9, run_autoattack=cheap_autoattack)
    assert [r["result"] for r in stopped] == ["done", "stopped at budget"]
    assert "rec.autoattack: stopping before autoattack (standard) on 8 test images of rec" in \
        (runs.runs_dir() / runs.QUEUE_LOG).read_text()

    def killed(*args, **kw):
        raise KeyboardInterrupt  # as a kill in the middle of AutoAttack

    with pytest.raises(KeyboardInterrupt):
        runs.run_queue(queue, run_autoattack=killed)
    assert file_hashes() == before  # nothing written: the next run starts over
    assert [r["result"] for r in runs.run_queue(queue, run_autoattack=cheap_autoattack)] == \
        ["done", "evaluated"]


def test_records_run_evaluates_a_tiny_record_with_the_reference_autoattack(tmp_path, made_record):
    queue = write_queue(tmp_path, ("rec", EVALUATED), evaluation("rec"))
    before = copy_record(made_record)
    assert main(["records", "run", "--queue", queue]) == 0  # the real pyautoattack, 8 images
    found = runs.record_evaluation("rec", n=8)
    acc, ref = found["accuracy"], found["reference"]
    assert acc["autoattack"] <= acc["clean"] == runs.load_record("rec").metrics["clean_acc"] > 0
    assert acc["worst_case"] <= min(acc["pgd"], acc["autoattack"]) and found["n"] == 8
    assert "using standard version including apgd-ce, apgd-t, fab-t, square." in ref["log"]
    assert isinstance(ref["flags"], list) and isinstance(ref["seed"], int)
    assert {k: v for k, v in file_hashes().items() if k in before} == before


# --- unfinished runs carried to the next machine (fatlib.queue_progress, records park|unpark)

@pytest.fixture
def parking(tmp_path, monkeypatch):
    """data/queue_progress of the test: a folder of its own."""
    from fatlib import queue_progress

    monkeypatch.setattr(queue_progress, "progress_dir", lambda: tmp_path / "queue_progress")
    return queue_progress


def test_a_parked_run_resumes_on_a_new_machine_to_the_same_weights(tmp_path, monkeypatch,
                                                                   parking, capsys):
    cfg = tiny()
    queue = write_queue(tmp_path, ("a", cfg), ("untouched", tiny(seed=1)))
    runs.run_queue(queue, budget_minutes=1e-9, only=["a"])  # one epoch, then the machine goes
    assert main(["records", "park", "--queue", queue]) == 0
    assert "a: parked at epoch 1 of 3" in capsys.readouterr().out
    progress = parking.parked_runs()
    assert [(p["record"], p["passes_done"], p["commit"]) for p in progress] == [("a", 1, CLEAN)]
    assert progress[0]["parks"][0]["machine"]["cores"] >= 1
    monkeypatch.setenv("FATLIB_RUNS_DIR", str(tmp_path / "new_machine"))
    assert runs.entry_status(runs.load_queue(queue)[0]).state == "not started"
    assert main(["records", "unpark", "--queue", queue]) == 0
    out = capsys.readouterr().out
    assert "a: restored at epoch 1 of 3" in out and f"git worktree add ../fatlib-queue-{CLEAN[:7]}" in out
    assert runs.entry_status(runs.load_queue(queue)[0]).passes_done == 1
    assert runs.run_queue(queue, only=["a"]) == [{"name": "a", "epochs": 2, "result": "recorded"}]
    whole = uninterrupted(cfg, tmp_path, monkeypatch)
    rec = runs.load_record("a")
    assert same_weights(rec.model(), whole.model)
    assert without_times(rec.history) == without_times(whole.history)
    assert parking.park(queue) == ["a: record made; parked run removed"]
    assert parking.parked_runs() == []


def test_unpark_leaves_a_further_run_and_a_stale_entry_alone(tmp_path, monkeypatch, parking):
    cfg = tiny()
    queue = write_queue(tmp_path, ("a", cfg))
    runs.run_queue(queue, budget_minutes=1e-9)
    parking.park(queue)
    assert parking.park(queue) == ["a: already parked at epoch 1"]
    runs.load_or_train(cfg, until_epoch=2)  # this machine went on after the park
    said, commits = parking.unpark(queue)
    assert "at epoch 2 already; left as it is" in said[0] and commits == {CLEAN: ["a"]}
    assert runs.entry_status(runs.load_queue(queue)[0]).passes_done == 2
    changed = write_queue(tmp_path, ("a", cfg.replace(lr_max=0.01)))
    said, commits = parking.unpark(changed)
    assert "stale" in said[0] and commits == {}


def test_a_parked_run_from_another_commit_is_restarted_not_mixed(tmp_path, monkeypatch, parking):
    cfg = tiny()
    queue = write_queue(tmp_path, ("a", cfg))
    runs.run_queue(queue, budget_minutes=1e-9)
    parking.park(queue)
    monkeypatch.setenv("FATLIB_RUNS_DIR", str(tmp_path / "new_machine"))
    parking.unpark(queue)
    monkeypatch.setattr(runs, "_git_commit", lambda: "1" * 40)  # the queue runs from a newer commit
    assert runs.run_queue(queue)[0] == {"name": "a", "epochs": 3, "result": "recorded"}
    assert runs.load_record("a").provenance["git_commit"] == "1" * 40


def test_a_run_keeps_its_precision_across_machines(tmp_path, monkeypatch, parking):
    from fatlib import devices

    cfg = tiny(precision="auto")
    queue = write_queue(tmp_path, ("a", cfg))
    for module in (devices, runs, parking):
        monkeypatch.setattr(module, "native_bf16_cpu", lambda: True)
    runs.run_queue(queue, budget_minutes=1e-9)  # one epoch in bf16
    parking.park(queue)
    assert parking.parked_precision("a") == "bf16"
    for module in (devices, runs, parking):  # a CPU without native bf16 does not go on with it
        monkeypatch.setattr(module, "native_bf16_cpu", lambda: False)
    assert runs.entry_status(runs.load_queue(queue)[0]).state == "waiting for native bf16"
    assert runs.run_queue(queue)[0]["result"] == "skipped: needs native bf16"
    assert "a: trained in bf16; resume it on a CPU with native bf16" in parking.resume_hint(
        {CLEAN: ["a"]})
    progress = json.loads((parking.progress_dir() / "a" / "progress.json").read_text())
    del progress["parks"][0]["precision"]  # a park from before precision was recorded
    (parking.progress_dir() / "a" / "progress.json").write_text(json.dumps(progress))
    assert parking.parked_precision("a") == "bf16"  # the parking machine had native bf16
    progress["parks"][0]["machine"]["native_bf16"] = False
    (parking.progress_dir() / "a" / "progress.json").write_text(json.dumps(progress))
    monkeypatch.setattr(parking, "native_bf16_cpu", lambda: True)
    hint = parking.resume_hint({CLEAN: ["a"]})  # an fp32 run on a CPU with native bf16:
    assert "&& FATLIB_AUTO_PRECISION=fp32 FATLIB_RUNS_DIR=" in hint  # an older commit stays fp32
