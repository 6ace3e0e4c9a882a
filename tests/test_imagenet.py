"""The ImageNet code path (fatlib.imagenet) on a tiny synthetic image folder."""

import numpy as np
import pytest
import torch

from fatlib import imagenet
from fatlib.imagenet import ImageFolder, ImageNetConfig, evaluate_folder, train_imagenet


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """2 classes (reddish, greenish), 6 train and 3 val images each, of mixed sizes and formats."""
    root = imagenet.make_synthetic_folder(tmp_path_factory.mktemp("imagenet"))
    (root / "train" / "README.txt").write_text("not an image")
    return root


def tiny(root, **kw) -> ImageNetConfig:
    return ImageNetConfig(root=str(root), epochs=3, phases=((0, 16, 4), (1, 24, 4), (2, 32, 6)),
                          eps=8 / 255, lr_scale=0.1, **kw)


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
    cfg = tiny(folder, device="cpu")
    assert [cfg.phase(e) for e in range(3)] == [(16, 4), (24, 4), (32, 6)]
    whole = train_imagenet(cfg)
    assert [h["image_size"] for h in whole.history] == [16, 24, 32]
    assert [h["steps"] for h in whole.history] == [3, 3, 2]
    assert all(np.isfinite(h["train_loss"]) for h in whole.history)
    assert not whole.model.training
    first = train_imagenet(cfg, tmp_path, until_epoch=1)
    assert len(first.history) == 1 and (tmp_path / imagenet.CHECKPOINT).exists()
    resumed = train_imagenet(cfg, tmp_path)
    assert resumed.history == whole.history
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="another config"):
        train_imagenet(tiny(folder, device="cpu", seed=1), tmp_path)


def test_resnet50_path_and_evaluation(folder):
    cfg = ImageNetConfig(root=str(folder), epochs=1, phases=((0, 32, 6),), eps=2 / 255, device="cpu")
    result = train_imagenet(cfg)
    assert result.model.net.fc.out_features == 2
    acc = evaluate_folder(result.model, ImageFolder(folder, "val"), size=32, eps=2 / 255, n=4, pgd_steps=2)
    assert acc["n"] == 4 and 0 <= acc["pgd"] <= acc["clean"] <= 100
