"""The ImageNet code path (fatlib.imagenet) on a tiny synthetic image folder."""

import math

import numpy as np
import pytest
import torch

from fatlib import imagenet
from fatlib.train import NonFiniteLoss
from fatlib.imagenet import ImageFolder, ImageNetConfig, evaluate_folder, train_imagenet


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """2 classes (reddish, greenish), 6 train and 3 val images each, of mixed sizes and formats."""
    root = imagenet.make_synthetic_folder(tmp_path_factory.mktemp("imagenet"))
    (root / "train" / "README.txt").write_text("not an image")
    return root


def tiny(root, **kw) -> ImageNetConfig:
    """3 epochs of 48, 56 and 64 px crops in batches of 4-6, on the CPU in fp32 unless told otherwise.

    ResNet-50 divides a side by 32: at 16-32 px its last maps are 1x1, and batch norm over 4-6
    single values makes the gradients explode (largest entry ~6e4 at 16 px, ~6e2 at 32 px, ~1e1 at
    48-64 px at initialisation); at 16-32 px the bf16 run went nan on a CPU with native bf16 even at
    lr_scale 0.001. lr_scale 0.001 (peak lr 4e-4): 0.1 diverges on batches of 4 at any of these sizes.
    """
    return ImageNetConfig(**{"root": str(root), "epochs": 3, "phases": ((0, 48, 4), (1, 56, 4), (2, 64, 6)),
                             "eps": 8 / 255, "lr_scale": 0.001, "precision": "fp32", "device": "cpu", **kw})


BOUNDED = 3 * math.log(2)  # a training loss below 2.1 (chance: ln 2); the diverged runs reached 6-40


def test_folder_lists_classes_and_decodes_square_uint8_images(folder):
    train, val = ImageFolder(folder, "train"), ImageFolder(folder, "val")
    assert train.classes == ["n00000000", "n00000001"] and len(train) == 12 and len(val) == 6
    assert train.labels.tolist() == [0] * 6 + [1] * 6
    g = torch.Generator().manual_seed(0)
    x = train.load([0, 7], 24, train_crop=True, generator=g)
    assert x.shape == (2, 3, 24, 24) and x.dtype == torch.uint8
    same = train.load([0, 7], 24, train_crop=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, same)
    v = val.load([0, 1], 32, train_crop=False)
    assert v.shape == (2, 3, 32, 32) and v[0, 0].float().mean() > v[0, 1].float().mean()  # class 0: reddish


def test_missing_folder_and_bad_settings_give_clear_errors(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        ImageFolder(tmp_path / "nowhere")
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        ImageFolder(folder, "validation")
    with pytest.raises(ValueError, match="phases"):
        ImageNetConfig(root=str(folder), phases=((1, 16, 4),))
    with pytest.raises(ValueError, match="eps"):
        ImageNetConfig(root=str(folder), eps=8)


def test_progressive_resizing_trains_and_resumes_to_the_same_weights(folder, tmp_path):
    cfg = tiny(folder)
    assert [cfg.phase(e) for e in range(3)] == [(48, 4), (56, 4), (64, 6)]
    whole = train_imagenet(cfg)
    assert [h["image_size"] for h in whole.history] == [48, 56, 64]
    assert [h["steps"] for h in whole.history] == [3, 3, 2]
    assert all(np.isfinite(h["train_loss"]) and h["train_loss"] < BOUNDED for h in whole.history)
    assert not whole.model.training
    first = train_imagenet(cfg, tmp_path, until_epoch=1)
    assert len(first.history) == 1 and (tmp_path / imagenet.CHECKPOINT).exists()
    resumed = train_imagenet(cfg, tmp_path)
    assert resumed.history == whole.history
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="another config"):
        train_imagenet(tiny(folder, seed=1), tmp_path)


def test_bf16_first_epoch_stays_finite(folder):
    """bf16 autocast (native or emulated): the first epoch stays finite and its loss bounded."""
    result = train_imagenet(tiny(folder, precision="bf16"), until_epoch=1)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])
    assert result.history[0]["train_loss"] < BOUNDED and imagenet._finite(result.model)


@pytest.mark.parametrize("batch, lr_scale, message", [
    (4, 1e6, "training loss is (nan|inf) at iteration [23] of 3 in epoch 2"),  # caught before the next step
    (12, 1e38, "weights became nan or inf after its last update in epoch 2"),  # caught before the save
], ids=["loss", "weights"])
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(folder, tmp_path, batch, lr_scale,
                                                                      message):
    """Epoch 1 is one step at lr 0; epoch 2 trains from lr_scale * 0.2 on."""
    cfg = tiny(folder, epochs=2, phases=((0, 16, 12), (1, 16, batch)), lr_scale=lr_scale)
    with pytest.raises(NonFiniteLoss, match=rf"{message} \(lr .*\).*last good epoch \(1\).*Lower lr_scale"):
        train_imagenet(cfg, tmp_path)
    kept = train_imagenet(cfg, tmp_path, until_epoch=1)
    assert len(kept.history) == 1 and imagenet._finite(kept.model)


def test_resnet50_path_and_evaluation(folder):
    cfg = tiny(folder, epochs=1, phases=((0, 32, 6),), eps=2 / 255)
    result = train_imagenet(cfg)
    assert result.model.net.fc.out_features == 2
    acc = evaluate_folder(result.model, ImageFolder(folder, "val"), size=32, eps=2 / 255, n=4, pgd_steps=2)
    assert acc["n"] == 4 and 0 <= acc["pgd"] <= acc["clean"] <= 100
