"""ImageNet-style FGSM-RS training with progressive resizing (wong2020 §5.3, Tables 4-5).

``fatlib.train`` holds its data set in memory as uint8 tensors, which ImageNet (about 190 GB
at 224 px) does not allow; this module streams images from an image folder instead::

    <root>/train/<class>/*.JPEG      <root>/val/<class>/*.JPEG     (also .jpg, .png)

(the layout of torchvision's ImageFolder after the usual ImageNet preparation). Training
follows the paper's ImageNet recipe: FGSM with a random start (alpha = 1.25 eps), the
three-phase learning rate of ``fatlib.schedules.imagenet_three_phase`` and progressive
resizing, i.e. small images in the first epochs and larger ones later, each phase with
its own image size and batch size. Precision follows ``fatlib.train.autocast`` ('auto':
bf16 or fp16 with a GradScaler on CUDA). A checkpoint is written atomically after every
epoch and a second call resumes from it.

    folder = ImageFolder("/data/imagenet")
    result = train_imagenet(ImageNetConfig(root="/data/imagenet"), "runs/imagenet_fgsm")
    acc = evaluate_folder(result.model, folder, size=288, eps=2 / 255, n=1000)

``RestrictedImageNet(root, split)`` reads the same folder as Restricted ImageNet (9 super-classes
of 203 ImageNet classes, the data set of l2fast §IV).

The tests run it on a tiny synthetic folder; a real run needs ImageNet and GPUs (the
paper: 12 hours on four RTX 2080ti for 15 epochs).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fatlib import attacks, data, evaluate, models, schedules, train
from fatlib.threat import ThreatModel

SUFFIXES = (".jpeg", ".jpg", ".png")
SPLITS = {"train": "train", "val": "val", "test": "val"}
CHECKPOINT = "imagenet_checkpoint.pt"


class ImageFolder:
    """The files and labels of one split of an image folder; images are decoded on demand.

    Args:
        root: folder holding ``train/<class>/`` and ``val/<class>/``.
        split: 'train', or 'val' (alias 'test').
    Raises:
        FileNotFoundError naming the expected layout when the folder or a split is missing
        or holds no images.
    """

    def __init__(self, root, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use 'train' or 'val'")
        self.root, self.split = Path(root), SPLITS[split]
        train_dir, folder = self.root / "train", self.root / self.split
        layout = (f"expected {self.root}/train/<class>/*.JPEG and {self.root}/val/<class>/*.JPEG "
                  f"(ImageNet prepared for torchvision's ImageFolder)")
        if not train_dir.is_dir() or not folder.is_dir():
            raise FileNotFoundError(f"no image folder at {self.root}: {layout}")
        self.classes, index = self._label(sorted(p.name for p in train_dir.iterdir() if p.is_dir()))
        files = sorted((p, index[p.parent.name]) for p in folder.glob("*/*")
                       if p.suffix.lower() in SUFFIXES and p.parent.name in index)
        if not files:
            raise FileNotFoundError(f"no images in {folder}: {layout}")
        self.paths = [p for p, _ in files]
        self.labels = torch.tensor([c for _, c in files], dtype=torch.int64)

    def _label(self, folders: list[str]) -> tuple[list[str], dict[str, int]]:
        """(class names, label of each class folder kept) from the sorted train class folders."""
        return folders, {c: i for i, c in enumerate(folders)}

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, indices, size: int, *, train_crop: bool,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 [len(indices), 3, size, size] images.

        train_crop: a random resized crop (area 35-100%, aspect 3/4-4/3) and a random flip;
        else the evaluation crop (shorter side to size / 0.875, centre crop).
        """
        return torch.stack([_square(Image.open(self.paths[i]).convert("RGB"), size,
                                    train_crop, generator) for i in indices])


def make_synthetic_folder(root, *, classes: int = 2, train: int = 6, val: int = 3, seed: int = 0,
                          populated=None) -> Path:
    """Write a tiny image folder in ImageNet's layout (for tests and the book's demonstration).

    Class c's images are noise with colour channel c % 3 raised, of varied sizes, saved
    alternately as PNG and JPEG; folder names look like ImageNet's WordNet ids, in class
    order (``n00000007`` is class 7). ``populated``: the classes that get images (None: all);
    the others' folders are left empty, e.g. 1000 classes of which a few hold images for
    :class:`RestrictedImageNet`. Returns root.
    """
    root, rng = Path(root), np.random.default_rng(seed)
    populated = range(classes) if populated is None else set(populated)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n if c in populated else 0):
                img = rng.integers(0, 120, (30 + 4 * i, 40, 3), dtype=np.uint8)
                img[..., c % 3] += 120
                Image.fromarray(img).save(folder / f"{i}.{'JPEG' if i % 2 else 'png'}")
    return root


# Restricted ImageNet (Tsipras et al. 2019, "Robustness may be at odds with accuracy"; the
# MadryLab robustness library's RestrictedImageNet, RESTRICTED_IMAGNET_RANGES in its
# tools/constants.py; the data set of l2fast §IV): 9 super-classes, each an inclusive range of
# ImageNet class indices (the 1000 WordNet ids sorted, as ImageFolder sorts them), 203 classes
# in all; a super-class's label is its position here. robustness names "primate" "monkey";
# l2fast §IV says "10 super-classes" but lists these 9, and its 10,150 validation images are
# these 203 classes x 50.
RESTRICTED_IMAGENET = (("dog", 151, 268), ("cat", 281, 285), ("frog", 30, 32), ("turtle", 33, 37),
                       ("bird", 80, 100), ("primate", 365, 382), ("fish", 389, 397),
                       ("crab", 118, 121), ("insect", 300, 319))
IMAGENET_CLASSES = 1000


def restricted_labels(classes) -> dict[str, int]:
    """The Restricted ImageNet label of each ImageNet class it keeps.

    Implements: the label mapping of the robustness library's ``RestrictedImageNet``
    (:data:`RESTRICTED_IMAGENET`), the data set of l2fast §IV.
    Args:
        classes: ImageNet's 1000 class folder names (WordNet ids such as 'n02085620'), in any
            order; class i is the i-th in sorted order.
    Returns:
        {class name: super-class label in 0..8} for the 203 classes kept; the other 797 are
        left out (their images are dropped).
    Raises:
        ValueError: ``classes`` is not 1000 distinct names.
    """
    names = sorted(set(classes))
    if len(names) != IMAGENET_CLASSES or len(classes) != IMAGENET_CLASSES:
        raise ValueError(f"Restricted ImageNet maps ImageNet's {IMAGENET_CLASSES} classes by their "
                         f"sorted index, so it needs exactly {IMAGENET_CLASSES} distinct class "
                         f"folders; got {len(names)} distinct of {len(classes)}")
    return {names[i]: label for label, (_, first, last) in enumerate(RESTRICTED_IMAGENET)
            for i in range(first, last + 1)}


class RestrictedImageNet(ImageFolder):
    """An ImageNet folder read as Restricted ImageNet: 9 super-class labels, other images dropped.

    Implements: the robustness library's ``RestrictedImageNet``, the data set of l2fast §IV
    (:data:`RESTRICTED_IMAGENET`, :func:`restricted_labels`).
    Args:
        root: an ImageNet folder (``train/<wnid>/`` and ``val/<wnid>/``, all 1000 classes in
            ``train/``; ``val/`` may lack some).
        split: 'train', or 'val' (alias 'test').
    Attributes:
        classes: the 9 super-class names, in label order ('dog' is 0, 'insect' 8).
        synsets: the class folders kept, {WordNet id: label}.
    Raises:
        ValueError: ``train/`` does not hold exactly 1000 class folders (not a full ImageNet).
        FileNotFoundError: as ImageFolder; also when no image is in a kept class.
    """

    def _label(self, folders: list[str]) -> tuple[list[str], dict[str, int]]:
        try:
            self.synsets = restricted_labels(folders)
        except ValueError as e:
            raise ValueError(f"{self.root / 'train'} is not an ImageNet folder: {e}") from None
        return [name for name, _, _ in RESTRICTED_IMAGENET], self.synsets


def _square(img: Image.Image, size: int, random_crop: bool, g: torch.Generator | None) -> torch.Tensor:
    w, h = img.size
    if random_crop:
        area = w * h * (0.35 + 0.65 * torch.rand(1, generator=g).item())
        aspect = math.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(1, generator=g).item())
        cw = min(w, round(math.sqrt(area * aspect)))
        ch = min(h, round(math.sqrt(area / aspect)))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
        img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        if torch.rand(1, generator=g).item() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
    else:
        scale = size / 0.875 / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


@dataclass(frozen=True)
class ImageNetConfig:
    """The settings of one ImageNet-style FGSM-RS run (defaults: wong2020 §5.3, ResNet-50).

    phases: (first epoch, crop size, batch size) per phase of progressive resizing. The paper
    trains phases 1 and 2 on copies of ImageNet resized to 160 and 352 px and phase 3 on the
    full images, following the DAWNBench recipe, whose training crops are 128, 224 and 288 px:
    here the crops are taken from the original files directly. The batch sizes (larger
    batches of smaller images first) are our reconstruction; the paper gives none.
    The learning rate is ``lr_scale * schedules.imagenet_three_phase(epoch)``; weight decay
    spares batch-norm weights and biases, as in the paper's DAWNBench improvements.
    The schedule's rates (peak 0.4) are for batches of hundreds of images: scale lr_scale
    down with the batch size (linear scaling: batch / 512), and further on tiny crops, where
    ResNet-50's last stages see 1x1 maps and their train-mode batch norm over a few images
    makes the gradients explode at initialisation (norm ~1e6 at 16 px and batch 4, ~250 at
    128 px and batch 32). A run whose loss or weights become nan/inf raises
    ``fatlib.train.NonFiniteLoss`` and keeps its last good epoch checkpoint.
    """

    root: str
    model: str = "resnet50"
    eps: float = 2 / 255
    alpha: float | None = None          # None: 1.25 eps (FGSM-RS)
    epochs: int = 15
    phases: tuple = ((0, 128, 512), (6, 224, 224), (12, 288, 128))
    lr_scale: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 5e-5
    precision: str = "auto"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        starts = [p[0] for p in self.phases]
        if not self.phases or starts[0] != 0 or starts != sorted(starts):
            raise ValueError(f"phases must start at epoch 0 and be in epoch order; got {self.phases}")
        if not 0 < self.eps <= 1:
            raise ValueError(f"eps is in pixel units (0, 1]; got {self.eps}")

    def phase(self, epoch: int) -> tuple[int, int]:
        """(image size, batch size) of the phase that holds `epoch`."""
        _, size, batch = [p for p in self.phases if p[0] <= epoch][-1]
        return size, batch


@dataclass
class ImageNetResult:
    """The trained model and one history entry per epoch (crop size, batch size, steps, loss and
    accuracy on the training perturbations)."""

    config: ImageNetConfig
    model: nn.Module
    history: list


def train_imagenet(cfg: ImageNetConfig, run_dir=None, *, until_epoch: int | None = None) -> ImageNetResult:
    """FGSM-RS training with progressive resizing; resumes from ``run_dir``'s checkpoint.

    Args:
        cfg: the run's settings.
        run_dir: folder of the epoch checkpoint (None: nothing written).
        until_epoch: stop after this many epochs (a later call goes on).
    Returns:
        ImageNetResult; the model is left in eval mode.
    Raises:
        fatlib.train.NonFiniteLoss: the loss or the weights became nan/inf; the checkpoint of
        the last good epoch is kept.
    """
    device = train.resolve_device(cfg.device)
    folder = ImageFolder(cfg.root, "train")
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, "imagenet", num_classes=len(folder.classes)).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]  # not batch-norm weights, not biases
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": rest, "weight_decay": 0.0}], lr=0.0, momentum=cfg.momentum)
    precision = train.resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    threat = ThreatModel("linf", cfg.eps)
    alpha = 1.25 * cfg.eps if cfg.alpha is None else cfg.alpha
    history, path = [], Path(run_dir) / CHECKPOINT if run_dir is not None else None
    if path is not None and path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if json.loads(ckpt["config"]) != _config_json(cfg):
            raise ValueError(f"{path} was written by another config; use another run_dir")
        models.load_weights(model, ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        history = json.loads(ckpt["history"])
    last = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)
    for epoch in range(len(history), last):
        history.append(_train_epoch(model, opt, scaler, folder, cfg, epoch, threat, alpha, device, precision))
        if path is not None:
            train.save_checkpoint(path, {"config": json.dumps(_config_json(cfg)), "model": model.state_dict(),
                                         "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
                                         "history": json.dumps(history)})
    model.eval()
    return ImageNetResult(cfg, model, history)


def _config_json(cfg: ImageNetConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _train_epoch(model, opt, scaler, folder, cfg, epoch, threat, alpha, device, precision) -> dict:
    size, batch = cfg.phase(epoch)
    seed = train.derived_seed(cfg.seed, "imagenet epoch", epoch)  # a resumed run is identical
    g = torch.Generator().manual_seed(seed)  # order and crops
    torch.manual_seed(seed)  # the attack's random starts
    order = torch.randperm(len(folder), generator=g).tolist()
    steps = math.ceil(len(order) / batch)
    model.train()
    loss_sum = correct = seen = 0.0
    for i in range(steps):
        lr = cfg.lr_scale * schedules.imagenet_three_phase(epoch + i / steps)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = order[i * batch:(i + 1) * batch]
        x = data.to_float(folder.load(idx, size, train_crop=True, generator=g)).to(device)
        y = folder.labels[idx].to(device)
        with train.autocast(device, precision):
            delta = attacks.fgsm(model, x, y, threat, alpha=alpha, init="random")
            logits = model(x + delta)
            loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss.detach()):
            raise _diverged(f"training loss is {loss.item()} at iteration {i + 1} of {steps}", epoch, lr)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        loss_sum += loss.item() * len(idx)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(idx)
    if not _finite(model):
        raise _diverged("the weights became nan or inf after its last update", epoch, lr)
    return {"epoch": epoch + 1, "image_size": size, "batch_size": batch, "steps": steps,
            "train_loss": loss_sum / seen, "train_adv_acc": 100 * correct / seen}


def _finite(model: nn.Module) -> bool:
    """Whether every floating-point weight and buffer (batch-norm statistics too) is finite."""
    return all(t.isfinite().all() for t in model.state_dict().values() if t.is_floating_point())


def _diverged(what: str, epoch: int, lr: float) -> train.NonFiniteLoss:
    """The error of a run that diverged in 0-based ``epoch``: what happened, where, what to do."""
    kept = f"the last good epoch ({epoch})" if epoch else "no epoch yet"
    return train.NonFiniteLoss(
        f"{what} in epoch {epoch + 1} (lr {lr:.4g}); the run stopped and its epoch checkpoint "
        f"(if run_dir is set) holds {kept}. Lower lr_scale (the "
        f"schedule's rates are for batches of hundreds: scale it with the batch size) or use "
        f"precision='fp32', and train in a new run_dir (a changed config does not resume this one).")


def evaluate_folder(model: nn.Module, folder: ImageFolder, *, size: int, eps: float, n: int | None = None,
                    pgd_steps: int = 10, pgd_restarts: int = 1) -> dict:
    """Clean and PGD-K-R accuracy (percent) on the first `n` images of `folder` at `size` px.

    The paper reports PGD+10 (10 steps) on ImageNet's validation set at 288 px.
    """
    idx = list(range(len(folder) if n is None else min(n, len(folder))))
    x = folder.load(idx, size, train_crop=False)
    y = folder.labels[idx]
    correct = evaluate.evaluate(model, x, y, ThreatModel("linf", eps), attacks=("clean", "pgd"),
                                pgd_steps=pgd_steps, pgd_restarts=pgd_restarts)
    return {name: evaluate.accuracy(c) for name, c in correct.items()} | {"n": len(idx), "size": size}
