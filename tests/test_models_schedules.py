"""Tests of fatlib.models (architectures, Normalize, checkpoints as-is) and fatlib.schedules."""

import math

import pytest
import torch
from torch import nn

from fatlib import models, schedules
from fatlib.data import DATASETS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("name,dataset", [("preact_resnet18", "cifar10"), ("mnist_net", "mnist"),
                                          ("cnn1", "cifar10"), ("cnn1", "mnist"),
                                          ("preact_resnet18", "cifar100")])
def test_build_gives_logits_for_the_dataset(name, dataset):
    info = DATASETS[dataset]
    model = models.build(name, dataset).eval()
    out = model(torch.rand(2, *info.shape))
    assert out.shape == (2, info.num_classes)
    assert torch.isfinite(out).all()


def test_normalize_is_the_first_layer_with_the_dataset_statistics():
    model = models.build("preact_resnet18", "cifar10")
    first = next(iter(model.children()))
    assert isinstance(first, models.Normalize)
    info = DATASETS["cifar10"]
    x = torch.rand(3, 3, 4, 4)
    expected = (x - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    assert torch.allclose(first(x), expected)
    assert isinstance(model.net, models.PreActResNet18)


def test_preact_resnet18_parameter_names_match_the_authors_code():
    keys = set(models.build("preact_resnet18", "cifar10").net.state_dict())
    for key in ("conv1.weight", "layer1.0.bn1.weight", "layer1.1.conv2.weight",
                "layer2.0.shortcut.0.weight", "layer4.1.bn2.running_var", "bn.weight", "linear.weight"):
        assert key in keys
    assert "layer1.0.shortcut.0.weight" not in keys  # identity shortcut where shapes agree


def test_mnist_net_loads_a_plain_sequential_checkpoint_without_conversion():
    model = models.build("mnist_net", "mnist")
    assert isinstance(model, nn.Sequential)
    assert not any(isinstance(m, models.Normalize) for m in model.modules())
    assert [k for k in model.state_dict() if k.endswith("weight")] == \
        ["0.weight", "2.weight", "5.weight", "7.weight"]
    # the authors' model, written as in their train_mnist.py
    authors = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                            nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
    models.load_weights(model, authors.state_dict())
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), authors(x))


def test_single_layer_cnn_has_n_3x3_filters_and_a_linear_layer():
    model = models.build("cnn1", "cifar10", n_filters=4)
    conv, linear = model.conv, model.linear
    assert (conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (4, (3, 3), (1, 1), (1, 1))
    assert linear.in_features == 4 * 32 * 32
    assert len(list(model.children())) == 2


def test_single_layer_cnn_is_the_authors_no_normalisation_he_normal_zero_bias():
    model = models.build("cnn1", "cifar10", n_filters=64)
    assert not any(isinstance(m, models.Normalize) for m in model.modules())
    assert not model.conv.bias.any() and not model.linear.bias.any()
    # He normal: conv std sqrt(2 / (3 * 3 * out_channels)), linear std sqrt(2 / in_features)
    conv_std, lin_std = model.conv.weight.std().item(), model.linear.weight.std().item()
    assert abs(conv_std / math.sqrt(2 / (9 * 64)) - 1) < 0.1
    assert abs(lin_std / math.sqrt(2 / model.linear.in_features) - 1) < 0.02
    assert abs(model.conv.weight.mean().item()) < 0.2 * conv_std
    x = torch.rand(2, 3, 32, 32)  # pixels go straight into the convolution
    assert torch.allclose(model.conv(x), torch.nn.functional.conv2d(x, model.conv.weight, padding=1))


class _LocuslabBlock(nn.Module):
    """wong2020's / andriushchenko2020's PreActBlock, as their preact_resnet.py writes it."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(x) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class _KuangliuBlock(_LocuslabBlock):
    """kuangliu's PreActBlock (golgooni2021's code): the shortcut takes relu(bn1(x))."""

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


@pytest.mark.parametrize("shortcut,authors", [("input", _LocuslabBlock), ("preact", _KuangliuBlock)])
def test_preact_block_computes_each_authors_function(shortcut, authors):
    ours, theirs = models.PreActBlock(16, 32, 2, shortcut), authors(16, 32, 2)
    for module in theirs.modules():  # non-trivial BatchNorm statistics and affine parameters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    models.load_weights(ours, theirs.state_dict())  # same keys, strict
    ours.eval(), theirs.eval()
    x = torch.randn(2, 16, 8, 8)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_the_two_shortcuts_differ_and_input_is_the_default():
    net = models.build("preact_resnet18", "cifar10").net
    assert all(b.shortcut_from == "input" for b in net.modules() if isinstance(b, models.PreActBlock))
    other = models.build("preact_resnet18", "cifar10", shortcut="preact").eval()
    default = models.build("preact_resnet18", "cifar10").eval()
    models.load_weights(default, other.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(default(x), other(x), atol=1e-4)
    with pytest.raises(ValueError, match="shortcut must be one of"):
        models.build("preact_resnet18", "cifar10", shortcut="output")


@pytest.mark.parametrize("width", [16, 32])
def test_preact_resnet18_base_width_scales_every_stage(width):
    net = models.build("preact_resnet18", "cifar10", base_width=width).net
    assert net.conv1.out_channels == width and net.linear.in_features == 8 * width
    assert net.layer3[0].conv1.out_channels == 4 * width
    full = sum(p.numel() for p in models.build("preact_resnet18", "cifar10").parameters())
    ratio = full / sum(p.numel() for p in net.parameters())
    assert 0.8 * (64 / width) ** 2 < ratio < 1.2 * (64 / width) ** 2  # parameters ~ width^2


def test_big_models_have_the_expected_size():
    wrn = models.build("wide_resnet34_10", "cifar10")
    assert 46_000_000 < sum(p.numel() for p in wrn.parameters()) < 46_300_000
    resnet = models.build("resnet50", "imagenet")
    assert isinstance(resnet[0], models.Normalize)
    assert sum(p.numel() for p in resnet.parameters()) == 25_557_032


@pytest.mark.parametrize("call,message", [
    (lambda: models.build("resnet9000", "cifar10"), "known models: preact_resnet18"),
    (lambda: models.build("cnn1", "tinyimagenet"), "known datasets"),
    (lambda: models.build("cnn1", "cifar10", n_filters=0), "n_filters >= 1"),
    (lambda: models.build("cnn1", "cifar10", width=3, bogus=1), "bad options"),
    (lambda: models.Normalize((0.5,), (0.0,)), "std > 0"),
])
def test_bad_model_requests_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_checkpoint_of_another_architecture_is_a_clear_error():
    model = models.build("cnn1", "mnist", n_filters=4)
    other = models.build("cnn1", "mnist", n_filters=8).state_dict()
    with pytest.raises(ValueError, match="does not match the model architecture"):
        models.load_weights(model, other)


# ----------------------------------------------------------------------------- schedules

def test_cyclic_rises_to_the_peak_at_two_fifths_and_ends_at_zero():
    total = 100
    lrs = [schedules.cyclic(i, total, 0.2) for i in range(total)]
    peak = max(range(total), key=lambda i: lrs[i])
    assert peak == 39 and lrs[peak] == pytest.approx(0.2)
    assert lrs[0] == pytest.approx(0.2 / 40) and lrs[-1] == 0.0
    assert all(a < b for a, b in zip(lrs[:39], lrs[1:40]))
    assert all(a > b for a, b in zip(lrs[39:-1], lrs[40:]))
    assert schedules.cyclic(49, 100, 1.0, peak=0.5) == pytest.approx(1.0)


def test_piecewise_and_onedrop_drop_at_epochs():
    total, epochs = 200, 10  # 20 steps per epoch
    lr = [schedules.piecewise(i, total, 0.1, epochs=epochs, drops=(5, 8)) for i in range(total)]
    assert lr[99] == pytest.approx(0.1) and lr[100] == pytest.approx(0.01)
    assert lr[159] == pytest.approx(0.01) and lr[160] == pytest.approx(0.001)
    one = [schedules.onedrop(i, total, 0.1, epochs=epochs) for i in range(total)]
    assert one[159] == pytest.approx(0.1) and one[160] == pytest.approx(0.01)
    assert schedules.flat(7, 10, 1e-4) == 1e-4


def test_learning_rate_dispatch_and_errors():
    assert schedules.learning_rate("cyclic", 3, 10, 1.0, epochs=1) == schedules.cyclic(3, 10, 1.0)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        schedules.learning_rate("cosine", 0, 10, 1.0, epochs=1)
    with pytest.raises(ValueError, match="iteration"):
        schedules.cyclic(10, 10, 1.0)


def test_linear_warmup():
    assert [schedules.linear_warmup(i, 4, 8.0) for i in range(6)] == [2.0, 4.0, 6.0, 8.0, 8.0, 8.0]
    assert schedules.linear_warmup(0, 0, 3.0) == 3.0


def test_imagenet_three_phase_schedule_data():
    knots = schedules.IMAGENET_THREE_PHASE
    assert knots["epochs"][-1] == 15 and len(knots["phases"]) == 3
    assert schedules.imagenet_three_phase(2.0) == max(knots["lr"])
    assert schedules.imagenet_three_phase(12.5) < schedules.imagenet_three_phase(7.0) / 5
    assert math.isclose(schedules.imagenet_three_phase(0.0), 0.0)
