"""ADM .npz IO: streaming, stored statistics, and clear errors for bad inputs."""

import numpy as np
import pytest

from guided_diffusion.evaluation import inspect_npz, iter_image_batches, read_labels, read_statistics


def _images(n=10, h=8, w=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_images_stream_in_batches(tmp_path, save):
    images, labels = _images(10), np.arange(10)
    path = tmp_path / "samples.npz"
    save(path, images, labels)
    batches = list(iter_image_batches(path, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images)
    assert all(b.flags.writeable for b in batches)
    np.testing.assert_array_equal(np.concatenate(list(iter_image_batches(path, 4, limit=6))), images[:6])
    np.testing.assert_array_equal(read_labels(path), labels)
    info = inspect_npz(path)
    assert info.num_images == 10 and info.images.shape == (10, 8, 8, 3) and info.statistics == ()


def test_reference_statistics_are_read(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=_images(4), mu=np.ones(3, np.float32), sigma=np.eye(3),
             mu_s=np.zeros(2), sigma_s=np.eye(2))
    stats = read_statistics(path)
    assert set(stats) == {"pool", "spatial"}
    assert stats["pool"].mu.dtype == np.float64 and stats["pool"].sigma.shape == (3, 3)
    assert inspect_npz(path).statistics == ("pool", "spatial")


def test_statistics_only_reference_is_accepted_but_has_no_images(tmp_path):
    path = tmp_path / "stats.npz"
    np.savez(path, mu=np.zeros(3), sigma=np.eye(3))
    info = inspect_npz(path)
    assert info.images is None and info.num_images == 0
    with pytest.raises(ValueError, match="no 'arr_0' images"):
        next(iter_image_batches(path))


def test_npz_without_arr_0_or_statistics_is_rejected(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=_images(2))
    with pytest.raises(ValueError, match=r"no 'arr_0' image array \(keys: \['images'\]\)"):
        inspect_npz(path)


def test_wrong_dtype_is_rejected(tmp_path):
    path = tmp_path / "float.npz"
    np.savez(path, _images(2).astype(np.float32) / 127.5 - 1)
    with pytest.raises(ValueError, match="dtype float32, expected uint8"):
        inspect_npz(path)


def test_nchw_layout_is_rejected_with_a_hint(tmp_path):
    path = tmp_path / "nchw.npz"
    np.savez(path, _images(2, 16, 16, 3).transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="looks like NCHW.*transpose"):
        inspect_npz(path)


@pytest.mark.parametrize("shape", [(2, 8, 8, 4), (2, 8, 8, 2)])
def test_unsupported_channel_counts_are_rejected(tmp_path, shape):
    path = tmp_path / "channels.npz"
    np.savez(path, np.zeros(shape, np.uint8))
    with pytest.raises(ValueError, match="expected 1 or 3"):
        inspect_npz(path)


def test_wrong_rank_empty_and_mismatched_labels_are_rejected(tmp_path):
    np.savez(tmp_path / "rank.npz", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="expected 4-D NHWC"):
        inspect_npz(tmp_path / "rank.npz")
    np.savez(tmp_path / "empty.npz", np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="holds no images"):
        inspect_npz(tmp_path / "empty.npz")
    np.savez(tmp_path / "labels.npz", _images(3), np.arange(4))
    with pytest.raises(ValueError, match="one per image"):
        inspect_npz(tmp_path / "labels.npz")


def test_half_a_statistics_pair_is_rejected(tmp_path):
    path = tmp_path / "half.npz"
    np.savez(path, arr_0=_images(2), mu=np.zeros(3))
    with pytest.raises(ValueError, match="'mu' without its partner"):
        inspect_npz(path)


def test_missing_and_non_npz_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such .npz"):
        inspect_npz(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz archive"):
        inspect_npz(tmp_path / "text.npz")
