"""The training loader's images per second: an image folder (decode + resize every epoch) vs ``gd prepare``'s chunks.

On a generated folder of ImageNet-sized JPEGs (500 x 375, quality 90, smooth content with noise), in one process:

* ``folder``: ``ImageDataModule(dataset="folder")``, guided-diffusion's way (every JPEG decoded and resized every
  epoch);
* ``prepared``: ``gd prepare`` once (timed: images/s of the one-off pass), then
  ``ImageDataModule(dataset="prepared")`` streaming the chunks;

each for the diffusion recipe (centre crop at 64 px; prepared at 64) and the classifier recipe (random crop at
64 px; prepared at 80 = ceil(64 / 0.8)), with the same batch size and DataLoader workers. The rate is one epoch's
images over the time from the first batch to the last (worker start-up excluded), the best of ``--repeats``
epochs, variants alternating so that a noisy moment hits both. Say which CPU class the figures come from
(``grep -o avx512_bf16 /proc/cpuinfo``).

    python benchmarks/bench_prepared_data.py                     # 2000 images, 2 workers, batch 64
    python benchmarks/bench_prepared_data.py --num_images 5000 --num_workers 8
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guided_diffusion.data.datamodule import ImageDataModule  # noqa: E402
from guided_diffusion.data.prepare import PrepareOptions, prepare_images  # noqa: E402


def make_folder(root: Path, num_images: int, num_classes: int = 10, seed: int = 0) -> None:
    """ImageNet-sized JPEGs: a smooth random colour field plus noise (decodes like a photograph, not like flat
    colour or pure noise)."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        path = root / f"n{i % num_classes:08d}" / f"n{i % num_classes:08d}_{i}.JPEG"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3), dtype=np.int16)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def epoch_rate(data: ImageDataModule) -> float:
    """Images per second of one epoch of the training loader, from its first batch to its last."""
    data.setup("fit")
    loader = data.train_dataloader()
    iterator = iter(loader)
    first = next(iterator)
    count, start = 0, time.perf_counter()
    for x, _ in iterator:
        count += len(x)
    elapsed = time.perf_counter() - start
    del iterator, first, loader
    gc.collect()  # the loader's persistent workers end here, not during the next measurement
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=2000)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk_bytes", default=None, help="chunk size of gd prepare (default: gd prepare's)")
    parser.add_argument("--work_dir", default=None, help="keep the generated folder and chunks here")
    args = parser.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_prepared_"))
    folder = work / "jpeg"
    start = time.perf_counter()
    make_folder(folder, args.num_images)
    print(f"{args.num_images} JPEGs of 500x375 in {folder} ({time.perf_counter() - start:.0f} s to generate); "
          f"{args.num_workers} loader workers, batch {args.batch_size}, cpu_count {os.cpu_count()}")
    recipes = {"centre crop 64 (diffusion)": (64, False), "random crop 64 (classifier)": (80, True)}
    common = dict(image_size=64, batch_size=args.batch_size, num_workers=args.num_workers, val_fraction=0.0)
    rows = []
    for name, (stored, random_crop) in recipes.items():
        dest = work / f"prepared{stored}-{args.chunk_bytes or 'default'}"
        start = time.perf_counter()
        manifest = prepare_images(folder, dest, PrepareOptions(image_size=stored, num_workers=args.num_workers,
                                                               chunk_bytes=args.chunk_bytes))
        prepare_rate = manifest.num_images / (time.perf_counter() - start)
        rates: dict[str, list[float]] = {"folder": [], "prepared": []}
        for _ in range(args.repeats):
            rates["folder"].append(epoch_rate(ImageDataModule(dataset="folder", data_dir=str(folder),
                                                              random_crop=random_crop, **common)))
            rates["prepared"].append(epoch_rate(ImageDataModule(dataset="prepared", data_dir=str(dest),
                                                                random_crop=random_crop, **common)))
        best = {key: max(values) for key, values in rates.items()}
        rows.append((name, stored, prepare_rate, best["folder"], best["prepared"]))
        print(f"  {name}: folder {rates['folder']}, prepared {rates['prepared']} images/s")
    print()
    print("| recipe | prepared side | gd prepare, images/s (once) | folder, images/s | prepared, images/s | ratio |")
    print("|---|---|---|---|---|---|")
    for name, stored, prepare_rate, folder_rate, prepared_rate in rows:
        print(f"| {name} | {stored} | {prepare_rate:.0f} | {folder_rate:.0f} | {prepared_rate:.0f} | "
              f"{prepared_rate / folder_rate:.1f}x |")


if __name__ == "__main__":
    main()
