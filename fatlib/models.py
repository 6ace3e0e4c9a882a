"""Models used by the four papers, built by name: ``build('preact_resnet18', 'cifar10')``.

Inputs are images in [0, 1]; a model whose data needs normalisation carries it
as its first layer (``Normalize``), so attacks and eps stay in pixel units.
Models with a Normalize layer are ``nn.Sequential(normalize=..., net=...)``:
weights saved from the authors' un-normalised networks load into ``model.net``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# ImageNet is not one of fatlib.data's datasets (no loader here); ResNet-50 still
# needs its statistics: (num_classes, shape, mean, std) as torchvision uses them.
_IMAGENET = (1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, the first layer of a model on [0, 1] inputs.

    Args:
        mean: per-channel means, length C.
        std: per-channel standard deviations, length C (all > 0).
    """

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        if mean.shape != std.shape or bool((std <= 0).any()):
            raise ValueError(f"Normalize needs mean and std of the same length and std > 0; "
                             f"got mean {mean.flatten().tolist()}, std {std.flatten().tolist()}")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std

    def extra_repr(self):
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


# --- PreAct ResNet-18 (wong2020 / andriushchenko2020 / golgooni2021 CIFAR model) ---

# Where the 1x1 projection shortcut of a PreActBlock takes its input: 'input' (the block
# input; wong2020, andriushchenko2020: fatlib's default) or 'preact' (relu(bn1(x));
# kuangliu's code, which golgooni2021 uses).
SHORTCUTS = ("input", "preact")

class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016) in one of the two forms the papers' code uses.

    Implements: the block of wong2020's and andriushchenko2020's preact_resnet.py
    (locuslab/fast_adversarial, tml-epfl/understanding-fast-adv-training), whose 1x1
    projection shortcut takes the block input ``x`` (``shortcut='input'``), or the block of
    kuangliu's pytorch-cifar as golgooni2021 uses it (rohban-lab/catastrophic_overfitting),
    whose shortcut takes the pre-activated input ``relu(bn1(x))`` (``shortcut='preact'``).
    Both have the same parameters (the same state_dict keys) but compute different functions.
    Args:
        in_planes, planes: input and output channels.
        stride: stride of the first convolution (and of the projection shortcut).
        shortcut: 'input' or 'preact' (SHORTCUTS).
    """

    def __init__(self, in_planes, planes, stride=1, shortcut="input"):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"PreAct ResNet shortcut must be one of {SHORTCUTS}; got {shortcut!r}")
        self.shortcut_from = shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(x if self.shortcut_from == "input" else out)
        else:
            shortcut = x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut

    def extra_repr(self):
        return f"shortcut={self.shortcut_from!r}"


class PreActResNet18(nn.Module):
    """PreAct ResNet-18; parameter names match the authors' code (conv1, layer1-4, bn, linear).

    Args:
        num_classes: number of outputs.
        in_channels: image channels (3 for CIFAR-10).
        base_width: channels of the first stage (64 in the papers; the four stages have
            base_width, 2, 4 and 8 times base_width channels).
        shortcut: where the projection shortcuts take their input, 'input' (wong2020,
            andriushchenko2020; the default) or 'preact' (golgooni2021's kuangliu variant).
    """

    def __init__(self, num_classes=10, in_channels=3, base_width=64, shortcut="input"):
        super().__init__()
        if not (isinstance(base_width, int) and base_width >= 1):
            raise ValueError(f"preact_resnet18 base_width must be an integer >= 1; got {base_width!r}")
        w = base_width
        planes = (w, 2 * w, 4 * w, 8 * w)
        self.conv1 = nn.Conv2d(in_channels, w, 3, 1, 1, bias=False)
        layers, in_planes = [], w
        for p, s in zip(planes, (1, 2, 2, 2)):
            layers.append(nn.Sequential(PreActBlock(in_planes, p, s, shortcut),
                                        PreActBlock(p, p, 1, shortcut)))
            in_planes = p
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(planes[-1])
        self.linear = nn.Linear(planes[-1], num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.relu(self.bn(out))
        # avg_pool2d(out, 4) in the authors' code; identical for 32x32 inputs.
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# --- WideResNet-34-10 (golgooni2021 App. C.1; the TRADES/Madry layout) ---

class WideBasicBlock(nn.Module):
    """Wide ResNet basic block with pre-activation (Zagoruyko & Komodakis 2016)."""

    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == planes and stride == 1
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.equal_in_out else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WideResNet-depth-width (34-10 by default).

    Args:
        depth: 6n + 4 layers (34 -> 5 blocks per group).
        widen_factor: channel multiplier (10).
        num_classes: number of outputs; in_channels: image channels.
    """

    def __init__(self, depth=34, widen_factor=10, num_classes=10, in_channels=3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 (e.g. 28, 34); got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        groups = []
        for i, stride in enumerate((1, 2, 2)):
            blocks = [WideBasicBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1],
                                     stride if j == 0 else 1) for j in range(n)]
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.fc(out)


# --- small models ---

def mnist_net(num_classes=10, in_channels=1, height=28, width=28) -> nn.Sequential:
    """The wong2020 MNIST network (Tjeng et al.'s verifiable CNN), as one nn.Sequential.

    Implements: wong2020 §5.1 (conv 16 k4 s2 p1, conv 32 k4 s2 p1, fc 100, fc 10).
    Its state_dict keys are 0.weight, 2.weight, 5.weight, 7.weight (and biases), so the
    authors' checkpoints load without conversion. No normalisation layer.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width // 4), 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def he_normal_init(module: nn.Module) -> None:
    """He-normal weights and zero biases, as andriushchenko2020's code initialises its models.

    Implements: ``initialize_weights`` of tml-epfl/understanding-fast-adv-training (utils.py):
    conv weights ~ N(0, 2 / (k_h k_w out_channels)), linear weights ~ N(0, 2 / in_features),
    biases 0, BatchNorm weight 1 and bias 0. Use with ``model.apply(he_normal_init)``.
    """
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / module.in_features))
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class SingleLayerCNN(nn.Module):
    """Single-layer CNN: conv 3x3 with n filters (stride 1, padding 1), ReLU, linear layer.

    Implements: andriushchenko2020 §4 (catastrophic overfitting with 4 filters), Lemma 2, as
    the authors' code builds it: no input normalisation (pixels in [0, 1] go straight into
    the convolution), He-normal weights and zero biases (``he_normal_init``).
    Args:
        n_filters: number of 3x3 filters (4 in the paper).
        num_classes, in_channels, height, width: data shape.
    """

    def __init__(self, n_filters=4, num_classes=10, in_channels=3, height=32, width=32):
        super().__init__()
        if int(n_filters) < 1:
            raise ValueError(f"cnn1 needs n_filters >= 1; got {n_filters}")
        self.conv = nn.Conv2d(in_channels, n_filters, 3, stride=1, padding=1)
        self.linear = nn.Linear(n_filters * height * width, num_classes)
        self.apply(he_normal_init)

    def forward(self, x):
        return self.linear(F.relu(self.conv(x)).flatten(1))


def _resnet50(num_classes=1000, in_channels=3, **_shape):
    import torchvision  # lazy: only the ImageNet path needs it

    if in_channels != 3:
        raise ValueError("resnet50 expects 3-channel images")
    return torchvision.models.resnet50(num_classes=num_classes)


def _preact(num_classes, in_channels, base_width=64, shortcut="input", **_shape):
    return PreActResNet18(num_classes, in_channels, base_width, shortcut)


def _wrn(num_classes, in_channels, depth=34, widen_factor=10, **_shape):
    return WideResNet(depth, widen_factor, num_classes, in_channels)


def _cnn1(num_classes, in_channels, height, width, n_filters=4):
    return SingleLayerCNN(n_filters, num_classes, in_channels, height, width)


# name -> (constructor(num_classes, in_channels, height, width, **kw), has Normalize layer)
_MODELS: dict[str, tuple[Callable[..., nn.Module], bool]] = {
    "preact_resnet18": (_preact, True),
    "mnist_net": (mnist_net, False),
    "cnn1": (_cnn1, False),
    "wide_resnet34_10": (_wrn, True),
    "resnet50": (_resnet50, True),
}
MODEL_NAMES = tuple(_MODELS)


def dataset_stats(dataset: str):
    """(num_classes, (C, H, W), mean, std) of a dataset name from fatlib.data.DATASETS.

    'imagenet' (ResNet-50 path) is known here too, with torchvision's statistics.
    """
    from fatlib import data  # lazy: models import without the data module's work

    if dataset in data.DATASETS:
        info = data.DATASETS[dataset]
        return info.num_classes, tuple(info.shape), tuple(info.mean), tuple(info.std)
    if dataset == "imagenet":
        return _IMAGENET
    known = sorted(data.DATASETS) + ["imagenet"]
    raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(known)}")


def build(name: str, dataset: str, *, num_classes: int | None = None, **kw) -> nn.Module:
    """Build model `name` for `dataset`, with Normalize as its first layer where needed.

    Args:
        name: one of MODEL_NAMES ('preact_resnet18', 'mnist_net', 'cnn1',
            'wide_resnet34_10', 'resnet50').
        dataset: a fatlib.data dataset name ('mnist', 'cifar10', ...) or 'imagenet'.
        num_classes: outputs, if not the dataset's (e.g. an image folder with fewer classes).
        **kw: model options, e.g. n_filters=4 for 'cnn1', base_width=16 or shortcut='preact'
            (golgooni2021's block) for 'preact_resnet18', depth/widen_factor for WRN.
    Returns:
        nn.Module mapping images in [0, 1], [B, C, H, W], to logits [B, num_classes].
        Normalised models are nn.Sequential(normalize=Normalize, net=<the network>).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    classes, (c, h, w), mean, std = dataset_stats(dataset)
    num_classes = classes if num_classes is None else num_classes
    make, normalized = _MODELS[name]
    try:
        net = make(num_classes=num_classes, in_channels=c, height=h, width=w, **kw)
    except TypeError as e:
        raise ValueError(f"bad options {kw} for model {name!r}: {e}") from None
    if not normalized:
        return net
    return nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))


def load_weights(model: nn.Module, state_dict: dict, *, what: str = "checkpoint") -> None:
    """Load a state_dict strictly, turning a shape/key mismatch into a clear ValueError.

    Args:
        model: the freshly built model.
        state_dict: weights, e.g. from torch.load(path, weights_only=True).
        what: a description of the source, used in the message.
    """
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"{what} does not match the model architecture "
                         f"({type(model).__name__}): {' '.join(first[:3])[:500]} ... "
                         f"build the model with the checkpoint's config") from None
