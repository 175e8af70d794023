"""How much the resize to 299x299 moves FID Inception features: TF1 bilinear vs torch bilinear vs antialias.

Uses the natural photographs that ship inside installed packages (matplotlib's grace_hopper.jpg,
scikit-learn's china.jpg and flower.jpg; both come with mlxtend), cut into 48 crops per setting:
64x64 and 32x32 (upsampled to 299, like ImageNet-64 / CIFAR evaluation) and 400x400 (downsampled).
For each pair of resize modes it prints the mean/max absolute pixel difference after resizing, the mean
relative L2 difference of pool (2048-d) and spatial (2023-d) features, |delta mu|^2 and the Frechet
distance between the two feature sets of the *same* images (n=48, so only a relative scale; the FD
between two halves of the crops is printed for comparison). Takes a few minutes on 2 CPU cores.

    python benchmarks/measure_resize.py
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODES = ("tf1", "bilinear", "bilinear_antialias")


def _photographs() -> list[np.ndarray]:
    import matplotlib
    import sklearn

    paths = [Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg",
             Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
             Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"]
    return [np.asarray(Image.open(path).convert("RGB")) for path in paths]


def _crops(photos, size: int, window: int, count: int, rng) -> np.ndarray:
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - window), rng.integers(0, photo.shape[1] - window)
        patch = Image.fromarray(photo[top:top + window, left:left + window])
        crops.append(np.asarray(patch.resize((size, size), Image.BICUBIC) if window != size else patch))
    return np.stack(crops)


def main() -> None:
    from guided_diffusion.evaluation import FeatureStatistics, InceptionFeatureExtractor, frechet_distance, \
        resize_images

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    photos = _photographs()
    settings = {"64->299": (64, 256), "32->299": (32, 256), "400->299": (400, 400)}
    extractor = InceptionFeatureExtractor.from_weights()
    for label, (size, window) in settings.items():
        images = _crops(photos, size, window, 48, rng)
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        resized = {mode: resize_images(pixels, (299, 299), mode) for mode in MODES}
        features, start = {}, time.perf_counter()
        for mode in MODES:
            extractor.resize = mode
            parts = [extractor(images[i:i + 16]) for i in range(0, len(images), 16)]
            features[mode] = {k: torch.cat([p[k] for p in parts]).double().numpy() for k in parts[0]}
        print(f"== {label}: {len(images)} crops ({time.perf_counter() - start:.0f} s of feature extraction)")
        for a, b in (("tf1", "bilinear"), ("tf1", "bilinear_antialias"), ("bilinear", "bilinear_antialias")):
            diff = (resized[a] - resized[b]).abs()
            pool_a, pool_b = features[a]["pool"], features[b]["pool"]
            relative = np.linalg.norm(pool_a - pool_b, axis=1) / np.linalg.norm(pool_a, axis=1)
            spatial_a, spatial_b = features[a]["spatial"], features[b]["spatial"]
            spatial_relative = np.linalg.norm(spatial_a - spatial_b, axis=1) / np.linalg.norm(spatial_a,
                                                                                              axis=1)
            fd = frechet_distance(FeatureStatistics.from_features(pool_a),
                                  FeatureStatistics.from_features(pool_b))
            delta_mu = float(((pool_a.mean(0) - pool_b.mean(0)) ** 2).sum())
            print(f"  {a:>9} vs {b:<18} pixels |d| mean {diff.mean():.3f} max {diff.max():.1f} | pool rel L2 "
                  f"{relative.mean():.4f} | spatial rel L2 {spatial_relative.mean():.4f} "
                  f"| |dmu|^2 {delta_mu:.4f} "
                  f"| FD {fd:.3f}")
        pool = features["tf1"]["pool"]
        halves = frechet_distance(FeatureStatistics.from_features(pool[:24]),
                                  FeatureStatistics.from_features(pool[24:]))
        print(f"  scale: FD between the two halves of the crops (different images, tf1) {halves:.1f}")


if __name__ == "__main__":
    main()
