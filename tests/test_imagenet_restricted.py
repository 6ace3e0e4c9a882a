"""Restricted ImageNet (fatlib.imagenet.RestrictedImageNet) on a synthetic folder of 1000 classes."""

import pytest
import torch

from fatlib import imagenet
from fatlib.imagenet import RESTRICTED_IMAGENET, ImageFolder, RestrictedImageNet, restricted_labels

# class index -> super-class label: both ends of a range, and classes between or outside the ranges
KEPT = {30: 2, 32: 2, 33: 3, 80: 4, 100: 4, 118: 7, 121: 7, 151: 0, 268: 0, 281: 1, 285: 1,
        300: 8, 319: 8, 365: 5, 382: 5, 389: 6, 397: 6}
DROPPED = (0, 29, 38, 79, 101, 117, 122, 150, 269, 280, 286, 299, 320, 364, 383, 388, 398, 999)
NAMES = [f"n{c:08d}" for c in range(1000)]  # the folder names of make_synthetic_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """1000 class folders; images (2 train, 1 val each) only in the classes of KEPT and DROPPED."""
    return imagenet.make_synthetic_folder(tmp_path_factory.mktemp("restricted"), classes=1000,
                                          train=2, val=1, populated=[*KEPT, *DROPPED])


def test_the_ranges_are_the_robustness_librarys():
    assert [n for n, _, _ in RESTRICTED_IMAGENET] == ["dog", "cat", "frog", "turtle", "bird",
                                                      "primate", "fish", "crab", "insect"]
    sizes = [last - first + 1 for _, first, last in RESTRICTED_IMAGENET]
    assert sizes == [118, 5, 3, 5, 21, 18, 9, 4, 20] and sum(sizes) == 203
    covered = [i for _, first, last in RESTRICTED_IMAGENET for i in range(first, last + 1)]
    assert len(set(covered)) == 203  # the ranges do not overlap


def test_labels_follow_the_sorted_class_index_whatever_the_order_given():
    labels = restricted_labels(NAMES[::-1])
    assert len(labels) == 203 and sorted(set(labels.values())) == list(range(9))
    assert all(labels[NAMES[c]] == label for c, label in KEPT.items())
    assert not any(NAMES[c] in labels for c in DROPPED)
    assert sum(v == 0 for v in labels.values()) == 118  # dogs


def test_folder_keeps_the_nine_super_classes_and_drops_the_other_images(folder):
    train, val = RestrictedImageNet(folder, "train"), RestrictedImageNet(folder, "val")
    assert train.classes[0] == "dog" and train.classes[8] == "insect" and len(train.classes) == 9
    assert len(train) == 2 * len(KEPT) and len(val) == len(KEPT)
    for split, per_class in ((train, 2), (val, 1)):
        got = sorted((p.parent.name, int(y)) for p, y in zip(split.paths, split.labels))
        assert got == sorted((NAMES[c], label) for c, label in KEPT.items() for _ in range(per_class))
    assert val.load([0], 16, train_crop=False).shape == (1, 3, 16, 16)
    full = ImageFolder(folder, "train")  # the plain folder keeps every class and image
    assert len(full.classes) == 1000 and len(full) == 2 * (len(KEPT) + len(DROPPED))
    assert train.synsets == restricted_labels(full.classes)


def test_a_folder_without_1000_classes_is_refused(tmp_path):
    small = imagenet.make_synthetic_folder(tmp_path, classes=400, train=1, val=1, populated=[151])
    ImageFolder(small)  # fine as a plain folder
    with pytest.raises(ValueError, match=r"train is not an ImageNet folder.*exactly 1000 .*got 400"):
        RestrictedImageNet(small)
    with pytest.raises(ValueError, match="1000 distinct class folders; got 999 distinct of 1000"):
        restricted_labels(NAMES[:-1] + NAMES[:1])


def test_only_unmapped_images_means_no_images(tmp_path):
    root = imagenet.make_synthetic_folder(tmp_path, classes=1000, train=1, val=1, populated=[0, 999])
    with pytest.raises(FileNotFoundError, match="no images"):
        RestrictedImageNet(root)
    assert torch.equal(ImageFolder(root).labels, torch.tensor([0, 999]))
