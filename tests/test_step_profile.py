"""Where a step's time goes (fatlib.step_profile): operator kinds, arithmetic, rates."""

import shutil

import pytest
import torch
from torch import nn

from fatlib import step_profile



@pytest.mark.parametrize("op, kind", [
    ("aten::convolution_backward", "convolution, backward"),
    ("autograd::engine::evaluate_function: ConvolutionBackward0", "convolution, backward"),
    ("aten::mkldnn_convolution", "convolution, forward"),
    ("aten::native_batch_norm_backward", "batch norm"),
    ("aten::clamp_min", "ReLU"),
    ("aten::threshold_backward", "ReLU"),
    ("aten::addmm", "linear layer"),
    ("aten::empty_strided", "memory (allocation, copies, casts)"),
    ("aten::_to_copy", "memory (allocation, copies, casts)"),
    ("aten::to", "memory (allocation, copies, casts)"),
    ("aten::topk", step_profile.OTHER),
    ("aten::sign", step_profile.OTHER),
])
def test_each_operator_falls_in_its_kind(op, kind):
    assert step_profile.kind_of(op) == kind


def _small_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_forward_flops_counts_two_per_multiply_add_and_leaves_the_model_as_it_was():
    net = _small_net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flops = step_profile.forward_flops(net, torch.rand(2, 3, 8, 8))
    assert flops["conv"] == 2 * (2 * 4 * 8 * 8) * 3 * 9
    assert flops["linear"] == 2 * (2 * 10) * 256
    assert flops["per_image"] == flops["total"] / 2
    assert net.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_op_breakdown_finds_the_convolutions_of_a_step():
    net, x = _small_net(), torch.rand(4, 3, 8, 8)

    def step():
        net(x).sum().backward()
    step()
    kinds = step_profile.op_breakdown(step, steps=2)
    assert list(kinds) == [k for k, _ in step_profile.KINDS] + [step_profile.OTHER]
    assert kinds["convolution, forward"] > 0 and kinds["convolution, backward"] > 0
    assert all(v >= 0 for v in kinds.values())
    with pytest.raises(ValueError, match="steps >= 1"):
        step_profile.op_breakdown(step, steps=0)


def test_limits_of_a_small_step_are_consistent():
    r = step_profile.limits("fgsm_rs", precision="fp32", model="cnn1", batch=16, steps=1,
                            rounds=1)
    assert sum(r["kinds"].values()) == pytest.approx(1.0)
    assert r["seconds"] > 0 and r["matmul_gflops"] > 0
    assert r["gflops"] == pytest.approx(r["gflop"] / r["seconds"])
    assert r["fraction"] == pytest.approx(r["gflops"] / r["matmul_gflops"])
    rows = step_profile.limits_rows({"cnn1": r})
    assert [row[""] for row in rows][:len(r["kinds"])] == list(r["kinds"])
    assert rows[-1]["cnn1"].endswith("%")


def test_matmul_rate_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of"):
        step_profile.matmul_rate("fp16")
    assert step_profile.matmul_rate("fp32", n=64, rounds=1) > 0


def test_training_hours_counts_the_last_partial_minibatch():
    assert step_profile.training_hours(1.0, epochs=15) == pytest.approx(15 * 391 / 3600)
    assert step_profile.training_hours(2.0, epochs=1, n_train=256, batch=128) == pytest.approx(4 / 3600)


def test_node_breakdown_separates_double_backprop():
    net, x = _small_net(), torch.rand(4, 3, 8, 8, requires_grad=True)

    def step():
        (g,) = torch.autograd.grad(net(x).square().sum(), x, create_graph=True)
        g.square().sum().backward()
    step()
    nodes = step_profile.node_breakdown(step, steps=1)
    assert list(nodes.values()) == sorted(nodes.values(), reverse=True)
    assert any("BackwardBackward" in k for k in nodes) and step_profile.OUTSIDE in nodes
    assert 0 < step_profile.double_backward_share(nodes) < 1
    rows = step_profile.node_rows(nodes, top=2)
    assert len(rows) == 3 and rows[-1]["autograd node"] == f"{len(nodes) - 2} other nodes"


def test_a_step_without_double_backprop_has_no_double_backward_share():
    net, x = _small_net(), torch.rand(4, 3, 8, 8)

    def step():
        net(x).sum().backward()
    step()
    assert step_profile.double_backward_share(step_profile.node_breakdown(step, steps=1)) == 0


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_a_compiled_step_updates_the_same_weights_and_is_timed_against_the_eager_one():
    g = step_profile.compile_gain("fgsm_rs", precision="fp32", model="cnn1", batch=16, steps=1,
                                  rounds=3)
    assert "error" not in g, g.get("error")
    assert g["weight_diff"] < 1e-5
    assert g["eager_s"] > 0 and g["compiled_s"] > 0 and g["compile_s"] > 0
    assert g["ratio"] == pytest.approx(g["compiled_s"] / g["eager_s"])
    (row,) = step_profile.compile_rows({"cnn1": g})
    assert row["network"] == "cnn1" and float(row["compiled / eager"].split()[0]) > 0


def test_a_compiler_failure_is_reported_not_raised(monkeypatch):
    def broken(model, **kw):
        raise RuntimeError("no C++ compiler\nmore detail")
    monkeypatch.setattr(torch, "compile", broken)
    g = step_profile.compile_gain("standard", precision="fp32", model="cnn1", batch=8)
    assert g == {"error": "torch.compile failed: RuntimeError: no C++ compiler"}
    assert step_profile.compile_rows({"cnn1": g}) == [
        {"network": "cnn1", "compiled / eager": g["error"]}]
