"""Feature-extraction throughput (images/s) of the evaluation extractors, plus the cost of the metric maths.

Reported per extractor and input size: images/s of ``extractor(uint8 NHWC batch)`` after one warm-up
batch (median of ``--repeats`` timed batches), which is what ``gd evaluate`` spends per image. Also the
time of one ``scipy.linalg.sqrtm`` at the feature dimension (FID and sFID each need one per evaluation;
a second when the eps fallback triggers) and of precision/recall on random features.

Example::

    python benchmarks/bench_features.py --threads 2 --batch-size 32
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def _throughput(extractor, images: np.ndarray, repeats: int) -> float:
    extractor(images)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        extractor(images)
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-inception", action="store_true")
    parser.add_argument("--skip-maths", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from guided_diffusion.evaluation import InceptionFeatureExtractor, MnistFeatureExtractor

    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, batch {args.batch_size}")
    print(f"{'extractor':<40}{'input':<12}{'images/s':>10}")
    mnist = MnistFeatureExtractor().to(args.device)
    for size in (28, 32):
        images = rng.integers(0, 256, size=(args.batch_size * 8, size, size, 1), dtype=np.uint8)
        print(f"{'mnist (digit-recognizer CNN)':<40}{f'{size}x{size}x1':<12}"
              f"{_throughput(mnist, images, args.repeats):>10.1f}")
    if not args.skip_inception:
        inception = InceptionFeatureExtractor.from_weights(device=args.device)
        for size in (32, 64, 256):
            images = rng.integers(0, 256, size=(args.batch_size, size, size, 3), dtype=np.uint8)
            for resize in ("tf1", "bilinear_antialias"):
                inception.resize = resize
                label = f"inception ({resize} resize)"
                speed = _throughput(inception, images, args.repeats)
                print(f"{label:<40}{f'{size}x{size}x3':<12}{speed:>10.1f}")

    if not args.skip_maths:
        from guided_diffusion.evaluation import FeatureStatistics, frechet_distance, precision_recall

        for dim in (256, 2048):
            features = rng.normal(size=(dim + 500, dim))
            stats = FeatureStatistics.from_features(features)
            start = time.perf_counter()
            frechet_distance(stats, FeatureStatistics.from_features(features + 0.1))
            print(f"Frechet distance (one sqrtm), {dim}-d: {time.perf_counter() - start:.2f} s")
        for count in (5000, 10000):
            a, b = rng.normal(size=(count, 2048)), rng.normal(size=(count, 2048))
            start = time.perf_counter()
            precision_recall(a, b, device=args.device)
            print(f"precision/recall, {count} vs {count} x 2048-d: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
