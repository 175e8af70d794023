"""Cascades (ADM-G + ADM-U): ``gd sample --upsampler`` and ``gd upsample``, resumable, checked before sampling."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from classifiers import EncoderUNetConfig
from classifiers.module import NoisyClassifierModule
from guided_diffusion.checkpoints import export_openai_checkpoint
from guided_diffusion.commands.cli import main as gd
from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.generation import runner as runner_module
from guided_diffusion.commands.sample import sample
from guided_diffusion.commands.upsample import upsample
from guided_diffusion.nets import UNetConfig
from guided_diffusion.presets import PRESETS, Preset
from guided_diffusion.training import DiffusionModule
from tests.test_generation import read, save_untrained

BASE = UNetConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
                  learn_sigma=True, num_classes=4)
UPSAMPLER = UNetConfig(image_size=16, low_res_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(), learn_sigma=True, num_classes=4)
CLASSIFIER = EncoderUNetConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                               attention_resolutions=(), num_classes=4)
DIFFUSION = DiffusionConfig(steps=100, noise_schedule="cosine", learn_sigma=True)
FAST = dict(steps="ddim3", batch_size=4, accelerator="cpu", progress=False)


def _randomised(module):
    """Untrained networks output zeros (zero-initialised last layers): weights whose output depends on the input."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.ema.module.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cascade")

    def diffusion(name, **network):
        config = dataclasses.replace(UPSAMPLER if "up" in name else BASE, **network)
        module = _randomised(DiffusionModule(network=config, diffusion=DIFFUSION))
        return save_untrained(module, directory / f"{name}.ckpt")

    classifier = NoisyClassifierModule(network=CLASSIFIER, diffusion=DIFFUSION)
    return dict(base=diffusion("base"), base_uncond=diffusion("base_uncond", num_classes=None),
                up=diffusion("up"), up_uncond=diffusion("up_uncond", num_classes=None),
                up_4px=diffusion("up_4px", low_res_size=4), up_3cls=diffusion("up_3cls", num_classes=3),
                classifier=save_untrained(classifier, directory / "classifier.ckpt"), directory=directory)


def test_a_guided_cascade_writes_the_final_resolution_and_keeps_the_base_samples(models, tmp_path):
    result = sample(models["base"], str(tmp_path / "run"), classifier=models["classifier"], scale=2.0,
                    upsampler=models["up"], num_samples=6, **FAST)
    final, low = read(result.samples), read(result.low_res)
    assert result.samples.name == "samples_6x16x16x3.npz" and result.low_res.name == "samples_6x8x8x3.npz"
    assert final["arr_0"].dtype == np.uint8 and np.array_equal(final["arr_1"], low["arr_1"])
    assert np.array_equal(final["arr_1"], [0, 1, 2, 3, 0, 1])
    # the base samples are those of the same run without an upsampler
    alone = read(sample(models["base"], str(tmp_path / "base"), classifier=models["classifier"], scale=2.0,
                        num_samples=6, **FAST).samples)
    assert np.array_equal(alone["arr_0"], low["arr_0"])
    from PIL import Image
    assert Image.open(result.grid).size == (3 * 18 + 2, 2 * 18 + 2)  # 3 x 2 images of 16 px, 2 px apart


def test_gd_upsample_of_gd_sample_equals_the_cascade_image_for_image(models, tmp_path):
    cascade = sample(models["base"], str(tmp_path / "cascade"), upsampler=models["up"], num_samples=5, seed=3,
                     **FAST)
    base = sample(models["base"], str(tmp_path / "base"), num_samples=5, seed=3, **FAST)
    upsampled = upsample(str(base.samples), models["up"], str(tmp_path / "up"), seed=3, **FAST)
    assert np.array_equal(read(cascade.samples)["arr_0"], read(upsampled.samples)["arr_0"])
    assert np.array_equal(read(cascade.samples)["arr_1"], read(upsampled.samples)["arr_1"])
    other_seed = upsample(str(base.samples), models["up"], str(tmp_path / "up7"), seed=7, **FAST)
    assert not np.array_equal(read(cascade.samples)["arr_0"], read(other_seed.samples)["arr_0"])
    # the input reaches the upsampler: other base images, same noise, other outputs
    flipped = tmp_path / "flipped.npz"
    base_samples = read(base.samples)
    np.savez(flipped, arr_0=np.ascontiguousarray(base_samples["arr_0"][:, ::-1]), arr_1=base_samples["arr_1"])
    other_input = upsample(str(flipped), models["up"], str(tmp_path / "up_flipped"), seed=3, **FAST)
    assert not np.array_equal(read(cascade.samples)["arr_0"], read(other_input.samples)["arr_0"])


def test_a_killed_cascade_resumes_to_the_exact_count_reusing_its_base_shards(models, tmp_path, monkeypatch):
    options = dict(upsampler=models["up"], num_samples=10, classes="random", seed=5, **FAST)
    reference = read(sample(models["base"], str(tmp_path / "reference"), **options).samples)
    written, real_write = [], runner_module.write_shard

    def crash_on_fourth(directory, shard, images, labels):
        if len(written) == 3:
            raise RuntimeError("simulated crash")
        written.append((directory.name, shard.start))
        return real_write(directory, shard, images, labels)

    monkeypatch.setattr(runner_module, "write_shard", crash_on_fourth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sample(models["base"], str(tmp_path / "run"), **options)
    assert written == [("low_res", 0), ("run", 0), ("low_res", 4)]  # killed before the final samples 4..7
    written.clear()
    monkeypatch.setattr(runner_module, "write_shard",
                        lambda *args: written.append((args[0].name, args[1].start)) or real_write(*args))
    # resumed with batches of 2: samples 4..5 and 6..7 upsample the two halves of the kept base shard 4..7
    result = sample(models["base"], str(tmp_path / "run"), **{**options, "batch_size": 2})
    assert written == [("run", 4), ("run", 6), ("low_res", 8), ("run", 8)]  # base samples 4..7 not sampled again
    resumed = read(result.samples)
    assert resumed["arr_0"].shape == (10, 16, 16, 3)
    assert np.array_equal(resumed["arr_0"], reference["arr_0"]) and np.array_equal(resumed["arr_1"], reference["arr_1"])
    assert read(result.low_res)["arr_0"].shape == (10, 8, 8, 3)
    with pytest.raises(ValueError, match=r"different run.*'upsampler_steps'"):
        sample(models["base"], str(tmp_path / "run"), **{**options, "upsampler_steps": "ddim5"})


def test_an_openai_upsampler_file_is_detected_and_samples_the_same(models, tmp_path, monkeypatch):
    from guided_diffusion.checkpoints import load_upsampler

    preset = Preset("test_tiny_upsampler", "superres_unet", UPSAMPLER, DIFFUSION, "test preset")
    monkeypatch.setitem(PRESETS, preset.name, preset)
    loaded = load_upsampler(models["up"])
    path = export_openai_checkpoint(loaded.network, tmp_path / "upsampler.pt")
    ours = sample(models["base"], str(tmp_path / "ckpt"), upsampler=models["up"], num_samples=4, **FAST)
    openai = sample(models["base"], str(tmp_path / "pt"), upsampler=str(path), num_samples=4, **FAST)
    assert np.array_equal(read(ours.samples)["arr_0"], read(openai.samples)["arr_0"])


@pytest.mark.parametrize("options, message", [
    (dict(upsampler="up_4px"), "upsampler takes 3x4x4 low-resolution images but the samples of .* are 3x8x8"),
    (dict(upsampler="base"), r"base\.ckpt is a 'unet' network, not an upsampler \(a base model"),
    (dict(checkpoint="base_uncond", upsampler="up"), "upsampler is class-conditional .4 classes. but .* no labels"),
    (dict(upsampler="up_3cls"), "upsampler knows 3 classes but the labels .* range over 4"),
    (dict(checkpoint="up"), r"up\.ckpt is a 'superres_unet' network, not a diffusion model .*--upsampler"),
    (dict(upsampler_steps="ddim5"), "need --upsampler"),
    (dict(upsampler="up", upsampler_steps="ddim7000"), "ddim7000|cannot|fewer"),
])
def test_bad_cascades_fail_before_any_sampling(models, tmp_path, monkeypatch, options, message):
    monkeypatch.setattr(runner_module, "sample", lambda *a, **k: pytest.fail("sampling started"))
    options = {key: models.get(value, value) if key in ("checkpoint", "upsampler") else value
               for key, value in options.items()}
    checkpoint = options.pop("checkpoint", models["base"])
    with pytest.raises(ValueError, match=message):
        sample(checkpoint, str(tmp_path / "out"), num_samples=4, **{**FAST, **options})
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_upsample_input_fails_before_any_sampling(models, tmp_path, monkeypatch):
    monkeypatch.setattr(runner_module, "sample", lambda *a, **k: pytest.fail("sampling started"))
    images = np.zeros((3, 8, 8, 3), np.uint8)
    cases = {"no_labels.npz": (dict(arr_0=images), "up", "class-conditional .* no labels"),
             "size.npz": (dict(arr_0=np.zeros((3, 16, 16, 3), np.uint8)), "up_uncond",
                          "images are 16x16x3 .* the upsampler takes 8x8x3"),
             "float.npz": (dict(arr_0=images.astype(np.float32)), "up_uncond", "must be uint8"),
             "labels.npz": (dict(arr_0=images, arr_1=np.array([0, 1, 9])), "up", "knows 4 classes .* range over 10")}
    for name, (arrays, upsampler, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=message):
            upsample(str(tmp_path / name), models[upsampler], str(tmp_path / "out"), **FAST)
    with pytest.raises(ValueError, match="not an upsampler"):
        upsample(str(tmp_path / "labels.npz"), models["base"], str(tmp_path / "out"), **FAST)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        upsample(str(tmp_path / "missing.npz"), models["up"], str(tmp_path / "out"), **FAST)
    assert not (tmp_path / "out").exists()


def test_the_cli_runs_upsample_and_an_unconditional_upsampler_keeps_the_labels(models, tmp_path, capsys):
    labels = np.array([3, 1])
    np.savez(tmp_path / "low.npz", arr_0=np.full((2, 8, 8, 3), 128, np.uint8), arr_1=labels)
    gd(["upsample", str(tmp_path / "low.npz"), models["up_uncond"], "--output", str(tmp_path / "out"),
        "--steps", "ddim2", "--batch_size", "2", "--accelerator", "cpu", "--progress", "false"])
    written = read(tmp_path / "out" / "samples_2x16x16x3.npz")
    assert np.array_equal(written["arr_1"], labels) and "upsampled 8 -> 16 px" in capsys.readouterr().out


def test_a_bad_base_shard_of_a_cascade_is_set_aside_and_made_again(models, tmp_path, capsys):
    """A cut-short ``low_res/`` shard is renamed *.bad before the run (not left to break the merge) and the
    base samples it held are sampled again, also when the resume uses another batch size."""
    options = dict(upsampler=models["up"], num_samples=8, classes="random", seed=5, **FAST)
    run = tmp_path / "run"
    reference = read(sample(models["base"], str(run), **options).samples)
    base = run / "low_res" / "shard-00000004-00000008.npz"
    base.write_bytes(base.read_bytes()[:100])
    for path in [run / "shard-00000004-00000008.npz", *run.glob("samples_*.npz"), *run.glob("low_res/samples_*")]:
        path.unlink()
    capsys.readouterr()
    result = sample(models["base"], str(run), **{**options, "batch_size": 2})
    assert "low_res/shard-00000004-00000008.npz is bad" in capsys.readouterr().out
    assert (run / "low_res" / "shard-00000004-00000008.npz.bad").exists()
    resumed = read(result.samples)
    assert np.array_equal(resumed["arr_0"], reference["arr_0"]) and np.array_equal(resumed["arr_1"], reference["arr_1"])
    assert read(result.low_res)["arr_0"].shape == (8, 8, 8, 3)
