"""Tests of fatlib.train: config validation, every method, guards, checkpoints, resume, CO."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fatlib import train as T
from fatlib.train import TrainConfig, train

REPO = Path(__file__).resolve().parent.parent


def tiny(**kw) -> TrainConfig:
    """A config that trains in well under a second: cnn1 with 2 filters on 64 MNIST digits."""
    base = dict(dataset="mnist", model="cnn1", model_kw={"n_filters": 2}, n_train=64, n_eval=32,
                epochs=1, batch_size=32, augment=False, lr_max=0.05, eps=0.1, eval_pgd_steps=2,
                lr_schedule="flat")
    return TrainConfig(**{**base, **kw})


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def no_times(history):
    """History records without their wall-clock fields."""
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in history]


# ----------------------------------------------------------------------------- config

def test_config_json_round_trip_and_hash():
    cfg = tiny(rollback_qs=[0.5, 0.6], method="zerograd", zg_q=0.35)
    assert cfg.rollback_qs == (0.5, 0.6)
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and again.hash() == cfg.hash() and len(cfg.hash()) == 12
    assert cfg.replace(seed=1).hash() != cfg.hash()
    assert json.loads(cfg.to_json())["model_kw"] == {"n_filters": 2}
    assert hash(cfg) == hash(again)


def test_derived_values():
    assert tiny(method="fgsm", fgsm_init="zero").alpha_value == pytest.approx(0.1)
    assert tiny(method="zerograd").alpha_value == pytest.approx(0.2)
    assert tiny(method="l2fast", norm="l2", eps=1.0).alpha_value == pytest.approx(1.5)
    assert tiny(method="pgd", pgd_steps=4).alpha_value == pytest.approx(0.05)
    free = tiny(method="free", free_m=4, epochs=10)
    assert (free.replays, free.passes) == (4, 3)


def test_defaults_are_the_papers_settings():
    fgsm_rs, ga = tiny(method="fgsm"), tiny(method="gradalign")
    assert fgsm_rs.fgsm_init == "random" and fgsm_rs.alpha_value == pytest.approx(1.25 * 0.1)  # wong2020
    assert ga.fgsm_init == "zero" and ga.alpha_value == pytest.approx(0.1)  # andriushchenko2020
    assert tiny(method="gradalign", fgsm_init="random").alpha_value == pytest.approx(0.125)
    assert tiny(method="pgd", pgd_steps=2).alpha_value == pytest.approx(0.05)  # PGD-2: eps / 2
    assert tiny(method="pgd", pgd_steps=10).alpha_value == pytest.approx(0.02)  # PGD-10: eps / 5
    assert TrainConfig.from_json(ga.to_json()) == ga and json.loads(ga.to_json())["fgsm_init"] == "zero"


@pytest.mark.parametrize("method,eps_warm,alpha_warm,expect", [
    ("pgd", 2.0, 0.0, [(0.025, 0.02), (0.05, 0.02), (0.1, 0.02)]),      # absolute PGD step
    ("fgsm", 2.0, 0.0, [(0.025, 0.03125), (0.05, 0.0625), (0.1, 0.125)]),  # alpha / eps fixed
    ("fgsm", 0.0, 2.0, [(0.1, 0.03125), (0.1, 0.0625), (0.1, 0.125)]),     # multiplier warm-up
    ("fgsm", 2.0, 2.0, [(0.025, 0.03125), (0.05, 0.0625), (0.1, 0.125)]),  # linear, not t^2
])
def test_warmups_follow_the_authors(method, eps_warm, alpha_warm, expect):
    cfg = tiny(method=method, epochs=4, eps_warmup_epochs=eps_warm, alpha_warmup_epochs=alpha_warm)
    got = [T.attack_schedule(cfg, step, steps_per_epoch=2) for step in (0, 1, 3)]  # 4 warm-up steps
    assert got == [pytest.approx(e) for e in expect]


@pytest.mark.parametrize("changes,message", [
    (dict(alpha=10), "pixel units"), (dict(method="pgd", pgd_alpha=2.0), "pixel units"),
    (dict(final_pgd_alpha=0.0), "must be > 0"), (dict(alpha=float("nan")), "must be > 0"),
])
def test_step_sizes_outside_the_pixel_range_are_rejected(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(**changes)


def test_a_step_above_four_eps_warns_but_is_allowed():
    with pytest.warns(UserWarning, match="times eps"):
        cfg = tiny(alpha=0.5)
    assert cfg.alpha_value == 0.5
    assert tiny(method="l2fast", norm="l2", eps=2.0, alpha=3.0).alpha_value == 3.0  # l2: > 1 is fine


@pytest.mark.parametrize("changes,message", [
    (dict(method="fgsm_rs"), "unknown method"),
    (dict(model="vgg"), "unknown model"),
    (dict(dataset="imagenet"), "unknown dataset"),
    (dict(eps=0.0), "eps must be in"),
    (dict(eps=8.0), "eps must be in"),
    (dict(alpha=0.0), "alpha must be > 0"),
    (dict(alpha=-0.1), "alpha must be > 0"),
    (dict(method="zerograd", zg_q=1.0), "q must be in"),
    (dict(method="zerograd", zg_q=-0.1), "q must be in"),
    (dict(method="zerograd", zg_q=0.4, rollback_qs=(0.3,)), "increasing"),
    (dict(method="fgsm", rollback_qs=(0.5,)), "rollback_qs is for method 'zerograd'"),
    (dict(method="free", free_m=0), "free_m must be an integer >= 1"),
    (dict(pgd_steps=0), "pgd_steps"),
    (dict(mg_n=0), "mg_n"),
    (dict(epochs=0), "epochs"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(n_train=0), "n_train"),
    (dict(fgsm_init="gaussian"), "fgsm_init"),
    (dict(norm="l1"), "unknown norm"),
    (dict(fgsm_init="random_unclipped", norm="l2", eps=1.0), "random_unclipped"),
    (dict(method="l2fast"), "needs norm='l2'"),
    (dict(method="gradalign", norm="l2"), "norm='linf'"),
    (dict(model="preact_resnet18", model_kw={"base_width": 4}, channels_last=True), "base_width >= 8"),
    (dict(optimizer="rmsprop"), "optimizer"),
    (dict(lr_schedule="cosine"), "lr_schedule"),
    (dict(lr_max=0.0), "lr_max"),
    (dict(precision="fp8"), "precision"),
    (dict(device="tpu"), "device"),
    (dict(weight_decay=-1.0), "weight_decay"),
    (dict(grad_clip=0.0), "grad_clip"),
    (dict(model_kw={"n_filters": 0}), "n_filters"),
])
def test_bad_configs_raise_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(**changes)


def test_unknown_field_in_json_is_an_error():
    d = tiny().to_dict() | {"lr": 0.1}
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict(d)


# ----------------------------------------------------------------------------- methods

METHODS = [
    dict(method="standard"),
    dict(method="fgsm", fgsm_init="zero"),
    dict(method="fgsm", fgsm_init="random", alpha=0.125),
    dict(method="fgsm", fgsm_init="previous"),
    dict(method="fgsm", fgsm_init="random_unclipped", alpha=0.125),
    dict(method="free", free_m=2, epochs=2),
    dict(method="pgd", pgd_steps=2),
    dict(method="pgd", pgd_steps=2, pgd_corners=True),
    dict(method="gradalign", ga_lambda=0.5),
    dict(method="zerograd", zg_q=0.35),
    dict(method="multigrad", mg_n=2),
    dict(method="l2fast", norm="l2", eps=1.0),
    dict(method="fgsm", precision="bf16", channels_last=True),
    dict(method="fgsm", precision="auto"),
    dict(method="fgsm", optimizer="adam", lr_max=1e-3, grad_clip=0.1),
    dict(method="fgsm", eps_warmup_epochs=1.0, alpha_warmup_epochs=1.0, lr_schedule="cyclic"),
]


@pytest.mark.parametrize("changes", METHODS, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_every_method_trains_and_changes_the_weights(changes):
    cfg = tiny(**changes)
    torch.manual_seed(cfg.seed)
    before = weights(T.models.build(cfg.model, cfg.dataset, **cfg.model_kw))
    result = train(cfg)
    after = weights(result.model)
    assert result.complete and result.steps_run == 2 * cfg.replays * cfg.passes
    assert any(not torch.equal(before[k], after[k]) for k in before)
    first, last = result.history[0], result.history[-1]
    assert first["iteration"] == 0 and last["iteration"] == result.steps_run
    assert 0 <= last["pgd_acc"] <= last["clean_acc"] <= 100
    assert last["train_loss"] > 0 and last["weight_update_l2"] > 0
    assert last["delta_linf"] <= cfg.eps + 1e-6 or cfg.norm == "l2"
    assert result.metrics["steps"] == result.steps_run
    assert result.metrics["precision"] == T.resolve_precision(cfg.precision, torch.device("cpu"))
    json.dumps(result.history)  # plain JSON


def test_a_resumed_run_goes_on_in_the_precision_it_started_in(tmp_path, monkeypatch):
    from fatlib import devices

    cfg = tiny(epochs=2, precision="auto")
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: False)
    train(cfg, tmp_path / "a", until_epoch=1)  # started in fp32 on a CPU without native bf16
    whole = train(cfg)
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: True)  # goes on where bf16 is native
    rest = train(cfg, tmp_path / "a")
    assert rest.metrics["precision"] == "fp32" == whole.metrics["precision"]
    assert all(torch.equal(a, b) for a, b in zip(weights(rest.model).values(),
                                                 weights(whole.model).values()))
    train(cfg, tmp_path / "b", until_epoch=1)  # started in bf16
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: False)
    with pytest.raises(ValueError, match="trained in bf16 .* resume it on a CPU with native bf16"):
        train(cfg, tmp_path / "b")
    cpu = torch.device("cpu")
    assert devices.resumed_precision("auto", None, cpu) == "fp32"  # a checkpoint that does not say
    with pytest.raises(ValueError, match="resume it on a GPU"):
        devices.resumed_precision("auto", "fp16", cpu)


def test_auto_precision_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch):
    from fatlib import devices  # resolve_precision looks native_bf16_cpu up there

    cpu = torch.device("cpu")
    assert T.resolve_precision("fp32", cpu) == "fp32" and T.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: False)
    assert T.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: True)
    assert T.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setenv("FATLIB_AUTO_PRECISION", "fp32")  # the suite's second mode
    assert T.resolve_precision("auto", cpu) == "fp32" and T.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setenv("FATLIB_AUTO_PRECISION", "bf16")
    assert T.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: False)
    assert T.resolve_precision("auto", cpu) == "fp32"  # never emulated bf16
    monkeypatch.setenv("FATLIB_AUTO_PRECISION", "fp16")
    with pytest.raises(ValueError, match="FATLIB_AUTO_PRECISION"):
        T.resolve_precision("auto", cpu)


def test_free_delta_is_not_updated_on_a_step_the_grad_scaler_skips():
    method = T.make_method(tiny(method="free"))
    x = torch.rand(4, 1, 28, 28)
    state = T.AttackState(T.ThreatModel("linf", 0.1), 0.1, 0.35)
    method.on_delta_grad(state, x, torch.zeros_like(x), torch.ones_like(x))
    kept = state.delta.clone()
    assert kept.abs().max() > 0
    overflow = torch.ones_like(x)
    overflow[0, 0, 0, 0] = float("inf")  # fp16 overflow: GradScaler skips this optimizer step
    method.on_delta_grad(state, x, kept, -overflow)
    assert torch.equal(state.delta, kept)
    method.on_delta_grad(state, x, kept, -torch.ones_like(x))
    assert not torch.equal(state.delta, kept)


def test_free_replays_each_minibatch_m_times():
    result = train(tiny(method="free", free_m=3, epochs=3, eval_every=1))
    assert result.steps_run == 2 * 3  # 2 minibatches x 3 replays, ceil(3 / 3) = 1 pass
    assert [h["iteration"] for h in result.history] == list(range(7))


def test_history_has_the_documented_keys():
    result = train(tiny(eval_every=1))
    keys = {"iteration", "epoch", "lr", "eps", "alpha", "train_loss", "train_acc", "clean_acc",
            "clean_loss", "fgsm_acc", "fgsm_loss", "pgd_acc", "pgd_loss", "grad_alignment",
            "cos_fgsm_pgd", "pgd_fgsm_loss_ratio", "weight_update_l2", "weight_update_mse", "probe_delta_mse",
            "delta_l1", "delta_l2", "delta_linf", "time_attack", "time_update", "time_eval"}
    assert keys <= set(result.history[-1])
    assert len(result.history) == 3
    assert result.history[2]["probe_delta_mse"] >= 0


def test_same_seed_same_numbers():
    a, b = train(tiny(method="fgsm")), train(tiny(method="fgsm"))
    assert no_times(a.history) == no_times(b.history)
    assert all(torch.equal(x, y) for x, y in zip(weights(a.model).values(), weights(b.model).values()))


# ----------------------------------------------------------------------------- guards

def _scripted_guard(monkeypatch, accuracies):
    """Make the PGD-5 guard return the given accuracies, one per epoch."""
    seq = iter(accuracies)
    monkeypatch.setattr(T._Run, "guard_accuracy", lambda self, x, y, steps=5: next(seq))


def test_early_stop_restores_the_last_good_epoch(monkeypatch):
    cfg = tiny(epochs=3, early_stop=True)
    at_epoch_1 = weights(train(cfg.replace(epochs=3), max_steps=2).model)  # same data order
    _scripted_guard(monkeypatch, [60.0, 10.0, 60.0])
    result = train(cfg)
    assert result.complete and result.metrics["stopped_early"]
    assert [e["event"] for e in result.events] == ["early_stop"]
    assert result.events[0]["restored_epoch"] == 1
    assert all(torch.equal(at_epoch_1[k], v) for k, v in weights(result.model).items())


def test_best_rule_trains_to_the_end_and_keeps_the_best_guard_epoch(monkeypatch, tmp_path):
    cfg = tiny(epochs=3, early_stop=True, early_stop_rule="best")
    at_epoch_2 = weights(train(cfg, max_steps=4).model)  # same data order
    _scripted_guard(monkeypatch, [0.0, 40.0, 60.0, 10.0])  # one per record: start, epochs 1-3
    part = train(cfg, tmp_path, until_epoch=2)  # the kept weights survive a checkpoint
    result = train(cfg, tmp_path)
    assert result.complete and not result.metrics["stopped_early"] and part.steps_run + result.steps_run == 6
    assert [e["event"] for e in result.events] == ["best_kept"]
    assert result.events[0]["epoch"] == 2 and result.events[0]["guard_pgd_acc"] == 60.0
    assert all(torch.equal(at_epoch_2[k], v) for k, v in weights(result.model).items())


def test_best_rule_checks_pgd10_on_fixed_unaugmented_training_images(monkeypatch):
    from fatlib import data
    seen = []
    monkeypatch.setattr(T._Run, "guard_accuracy",
                        lambda self, x, y, steps=5: seen.append((x.clone(), y.clone(), steps)) or 50.0)
    cfg = tiny(epochs=2, eval_every=1, early_stop=True, early_stop_rule="best", augment=True)
    result = train(cfg)
    images, labels = data.load("mnist", "train", n=64)
    assert len(seen) == len(result.history) == 5  # every record: iteration 0 and 4 steps
    for x, y, steps in seen:
        assert steps == 10 and torch.equal(x, data.to_float(images)) and torch.equal(y, labels)
    assert all(r["guard_pgd_acc"] == 50.0 for r in result.history)


def test_a_late_field_at_its_default_leaves_the_hash_unchanged():
    cfg = tiny()
    assert "early_stop_rule" not in json.loads(cfg.to_json())
    assert TrainConfig.from_dict(cfg.to_dict()).hash() == cfg.hash()
    assert cfg.replace(early_stop_rule="best").hash() != cfg.hash()
    with pytest.raises(ValueError, match="early_stop_rule"):
        tiny(early_stop_rule="sometimes")


def test_rollback_continues_with_the_next_q(monkeypatch):
    cfg = tiny(method="zerograd", zg_q=0.2, rollback_qs=(0.5,), epochs=3)
    _scripted_guard(monkeypatch, [60.0, 10.0, 60.0, 60.0])
    result = train(cfg)
    assert result.complete and [e["event"] for e in result.events] == ["rollback"]
    assert result.events[0]["q"] == 0.5 and result.events[0]["restored_epoch"] == 1
    assert result.steps_run == 2 * 4  # epoch 2 was trained twice
    assert result.history[-1]["q"] == 0.5 and result.history[-1]["rollbacks"] == 1


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    original = T._Run.train_step

    def poisoned(self, x, y):  # from the first step of epoch 2 on, the model outputs nan
        if self.step == 3:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return original(self, x, y)

    monkeypatch.setattr(T._Run, "train_step", poisoned)
    with pytest.raises(T.NonFiniteLoss, match=r"iteration 3 .* last good checkpoint \(epoch 1\)"):
        train(tiny(epochs=3), tmp_path)
    ckpt = T.load_checkpoint(tmp_path / T.CHECKPOINT)
    assert ckpt["state"]["passes_done"] == 1 and not ckpt["state"]["complete"]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_loads_weights_only_and_resume_of_a_finished_run_does_nothing(tmp_path):
    cfg = tiny(epochs=2)
    first = train(cfg, tmp_path)
    ckpt = torch.load(tmp_path / T.CHECKPOINT, weights_only=True)
    assert TrainConfig.from_json(ckpt["config"]) == cfg
    again = train(cfg, tmp_path)
    assert again.steps_run == 0 and again.complete
    assert again.history == first.history
    cfg2, model = T.load_model(tmp_path / T.CHECKPOINT)
    assert cfg2 == cfg and all(torch.equal(a, b) for a, b in
                               zip(weights(model).values(), weights(first.model).values()))


def test_a_checkpoint_of_another_config_is_a_clear_error(tmp_path):
    train(tiny(), tmp_path)
    with pytest.raises(ValueError, match="was written for config"):
        train(tiny(seed=1), tmp_path)


def test_until_epoch_then_resume_equals_one_go(tmp_path):
    cfg = tiny(epochs=3, method="fgsm", fgsm_init="random")
    part = train(cfg, tmp_path, until_epoch=1)
    assert not part.complete and part.steps_run == 2
    rest = train(cfg, tmp_path)
    whole = train(cfg)
    assert rest.steps_run == 4
    assert all(torch.equal(a, b) for a, b in zip(weights(rest.model).values(), weights(whole.model).values()))
    assert no_times(rest.history) == no_times(whole.history)


def _cli(args, runs_dir, **popen):
    env = dict(os.environ, FATLIB_RUNS_DIR=str(runs_dir), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "fatlib", "train", "--no-progress", *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_same_final_weights(tmp_path):
    args = ["--dataset", "mnist", "--model", "mnist_net", "--n-train", "800", "--n-eval", "50",
            "--epochs", "3", "--batch-size", "20", "--method", "fgsm", "--delta-init", "random",
            "--epsilon", "0.1", "--alpha", "1/8", "--optimizer", "adam", "--lr-max", "1e-3",
            "--no-augment", "--eval-pgd-steps", "2", "--eval-every", "15"]
    from fatlib.__main__ import _add_config_flags, _config_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    _add_config_flags(parser)
    run_hash = _config_from_args(parser.parse_args(args)).hash()
    killed = tmp_path / "killed"
    proc = _cli(args, killed)
    folder = killed / run_hash
    deadline = time.time() + 300

    def last_recorded():
        try:
            return json.loads((folder / "history.json").read_text())[-1]["iteration"]
        except (FileNotFoundError, json.JSONDecodeError, IndexError):
            return -1

    while last_recorded() <= 40 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # wait until epoch 2 (steps 40-79) has recorded at step 45
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = T.load_checkpoint(folder / T.CHECKPOINT)["state"]
    assert state["step"] == 40 and not state["complete"], "not killed in the middle of epoch 2"
    assert last_recorded() > 40 and not (folder / "metrics.json").exists()
    assert _cli(args, killed).wait() == 0
    clean = tmp_path / "clean"
    assert _cli(args, clean).wait() == 0
    a, b = (T.load_checkpoint(d / run_hash / T.CHECKPOINT) for d in (killed, clean))
    assert a["state"]["complete"] and b["state"]["complete"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert no_times(a["history"]) == no_times(b["history"])
    ma, mb = (json.loads((d / run_hash / "metrics.json").read_text()) for d in (killed, clean))
    assert {k: v for k, v in ma.items() if "time" not in k} == {k: v for k, v in mb.items() if "time" not in k}


# ----------------------------------------------------------------------------- catastrophic overfitting

FULL_CIFAR10 = Path(os.environ.get("FATLIB_DATA_DIR") or "/nonexistent") / "cifar10" / "cifar10-jpg.tar.gz"


@pytest.mark.slow
@pytest.mark.skipif(not FULL_CIFAR10.is_file(), reason="needs the full CIFAR-10 mirror in $FATLIB_DATA_DIR")
def test_catastrophic_overfitting_fgsm_collapses_fgsm_rs_does_not():
    """andriushchenko2020 §4 at test scale: the authors' 4-filter single-layer CNN at eps = 16/255
    on the full CIFAR-10 training set, the first 1,800 steps of the record
    andriushchenko2020_cnn1_eps16_full's config. FGSM from zero (alpha = eps) collapses: PGD
    accuracy to 0, FGSM accuracy far above clean accuracy, gradient alignment and
    cos(delta_FGSM, delta_PGD) falling; FGSM-RS (alpha = 1.25 eps) does not, at the same budget.
    (With 5,000 or 10,000 images and 8 epochs neither collapses with the authors' init.)"""
    eps = 16 / 255
    base = TrainConfig(dataset="cifar10", model="cnn1", model_kw={"n_filters": 4}, n_eval=256,
                       epochs=30, batch_size=128, optimizer="adam", lr_max=0.003, eps=eps,
                       method="fgsm", eval_every=300, seed=0)
    fgsm = train(base.replace(fgsm_init="zero", alpha=eps), max_steps=1800).history
    rs = train(base.replace(fgsm_init="random", alpha=1.25 * eps), max_steps=1800).history
    assert fgsm[1]["grad_alignment"] > 0.9 and rs[1]["grad_alignment"] > 0.9
    # FGSM: collapse
    assert fgsm[-1]["pgd_acc"] <= 1.0
    assert fgsm[-1]["fgsm_acc"] > fgsm[-1]["clean_acc"] + 20
    assert fgsm[-1]["grad_alignment"] < 0.5 and fgsm[-1]["cos_fgsm_pgd"] < 0.25
    # FGSM-RS: no collapse
    assert rs[-1]["pgd_acc"] >= 8.0 and rs[-1]["pgd_acc"] > fgsm[-1]["pgd_acc"] + 6
    assert rs[-1]["fgsm_acc"] <= rs[-1]["clean_acc"]
    assert rs[-1]["grad_alignment"] > 0.8 and rs[-1]["cos_fgsm_pgd"] > 0.6
