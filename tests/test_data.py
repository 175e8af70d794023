"""Training data: ADM pre-processing, image folders (labels, bad files, errors), MNIST-5k, synthetic data."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.data import (
    ImageFolderDataset,
    ImageTransform,
    UnreadableImageError,
    center_crop_arr,
    list_image_files,
    load_mnist5k,
    random_crop_arr,
)
from guided_diffusion.data.datamodule import ImageDataModule
from guided_diffusion.data.datasets import folder_labels, stratified_split


def _save_image(path, size=(40, 30), color=(200, 10, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path):
    """Two classes in sub-folders, file names with the reference's ``<class>_<id>`` prefix."""
    root = tmp_path / "train"
    for name, color in (("n02", (0, 0, 255)), ("n01", (255, 0, 0))):
        for i in range(4):
            _save_image(root / name / f"{name}_{i}.png", color=color)
    return root


def test_center_crop_matches_the_reference_recipe():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    out = center_crop_arr(image, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # By hand: one box-halving (200 >= 128 -> 100x150), bicubic short side to 64 (64x96), centre crop.
    expected = image.resize((100, 150), resample=Image.BOX).resize((64, 96), resample=Image.BICUBIC)
    assert np.array_equal(out, np.array(expected)[16:80, :])


def test_random_crop_and_transform_range():
    torch.manual_seed(0)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    crops = {random_crop_arr(image, 32).tobytes() for _ in range(8)}
    assert len(crops) > 1
    x = ImageTransform(32, random_crop=True, random_flip=True)(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    grey = ImageTransform(32)(np.zeros((28, 28, 1), dtype=np.uint8))
    assert grey.shape == (1, 32, 32) and torch.all(grey == -1)


def test_folder_labels_from_directory_and_filename(image_folder):
    files = list_image_files(image_folder)
    labels, classes = folder_labels(files, image_folder, "directory")
    assert classes == ["n01", "n02"]
    assert labels == [0] * 4 + [1] * 4
    assert folder_labels(files, image_folder, "filename") == (labels, classes)
    dataset = ImageFolderDataset(files, labels, ImageTransform(16))
    x, y = dataset[0]
    assert x.shape == (3, 16, 16) and y == 0
    assert torch.allclose(x[0], torch.ones(16, 16)) and torch.allclose(x[2], -torch.ones(16, 16))  # red


def test_missing_and_empty_folders_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_image_files(tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="contains no image files"):
        list_image_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="data_dir .* does not exist"):
        ImageDataModule(dataset="folder", data_dir=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="needs data_dir"):
        ImageDataModule(dataset="folder")
    datamodule = ImageDataModule(dataset="folder", data_dir=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="contains no image files"):
        datamodule.setup("fit")
    _save_image(tmp_path / "flat" / "x_1.png")
    with pytest.raises(ValueError, match="one sub-folder per class"):
        ImageDataModule(dataset="folder", data_dir=str(tmp_path / "flat")).setup("fit")


def test_corrupt_and_truncated_images_are_counted_and_skipped(image_folder, caplog):
    (image_folder / "n01" / "n01_bad.png").write_bytes(b"this is not a png")
    jpeg = _save_image(image_folder / "n02" / "n02_trunc.jpg", size=(64, 64), fmt="JPEG")
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])
    files = list_image_files(image_folder)
    labels, _ = folder_labels(files, image_folder, "directory")
    dataset = ImageFolderDataset(files, labels, ImageTransform(16))
    with caplog.at_level(logging.WARNING):
        items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == len(files) and all(x.shape == (3, 16, 16) for x, _ in items)
    assert int(dataset.skipped) == 2
    assert "n01_bad.png" in caplog.text and "n02_trunc.jpg" in caplog.text
    strict = ImageFolderDataset(files, labels, ImageTransform(16), on_bad_image="raise")
    bad_index = [f.name for f in files].index("n01_bad.png")
    with pytest.raises(UnreadableImageError, match="n01_bad.png"):
        strict[bad_index]


def test_skip_count_crosses_dataloader_workers(image_folder):
    (image_folder / "n01" / "n01_bad.png").write_bytes(b"corrupt")
    datamodule = ImageDataModule(dataset="folder", data_dir=str(image_folder), image_size=16, batch_size=3,
                                 num_workers=2, val_fraction=0.0)
    datamodule.setup("fit")
    batches = list(datamodule.train_dataloader())
    assert all(x.shape == (3, 3, 16, 16) and y.dtype == torch.int64 for x, y in batches)
    assert datamodule.skipped_images >= 1


def test_mnist5k_is_offline_padded_and_split_deterministically():
    images, labels = load_mnist5k(32)
    assert images.shape == (5000, 32, 32, 1) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert images[:, :2].max() == 0 and images[:, :, -2:].max() == 0  # 2 px of padding
    train, val = stratified_split(labels, 0.1, seed=0)
    assert len(val) == 500 and np.bincount(labels[val]).tolist() == [50] * 10
    assert not set(train) & set(val)
    assert np.array_equal(stratified_split(labels, 0.1, seed=0)[1], val)

    datamodule = ImageDataModule(batch_size=16)
    datamodule.setup("fit")
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and datamodule.num_classes == 10 and datamodule.channels == 1
    assert len(datamodule.train_set) == 4500 and len(datamodule.val_set) == 500
    assert datamodule.random_flip is False  # no flips for digits
    resized = ImageDataModule(image_size=64, mnist_layout="resize", batch_size=4)
    resized.setup("fit")
    assert next(iter(resized.val_dataloader()))[0].shape == (4, 1, 64, 64)


def test_synthetic_dataset():
    datamodule = ImageDataModule(dataset="synthetic", image_size=16, batch_size=8, synthetic_size=40,
                                 synthetic_classes=4, val_fraction=0.2)
    datamodule.setup("fit")
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64 and datamodule.num_classes == 4
    assert len(datamodule.train_set) == 32 and len(datamodule.val_set) == 8
