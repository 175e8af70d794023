"""``gd sample``: ADM-layout output, process-count independence, resume after a crash, early errors."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from classifiers import EncoderUNetConfig
from classifiers.module import NoisyClassifierModule
from guided_diffusion.commands.cli import main as gd
from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.diffusion.schedules import space_timesteps
from guided_diffusion.generation import SamplePlan, parse_classes
from guided_diffusion.generation.plan import batches, batches_of_rank
from guided_diffusion.generation import runner as runner_module
from guided_diffusion.commands.sample import sample
from guided_diffusion.nets import UNetConfig
from guided_diffusion.training import DiffusionModule

UNET = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                  num_head_channels=32, learn_sigma=True, num_classes=4)
CLASSIFIER = EncoderUNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                               attention_resolutions=(8,), num_head_channels=32, num_classes=4)
DIFFUSION = DiffusionConfig(steps=100, noise_schedule="cosine", learn_sigma=True)
FAST = dict(steps="ddim4", batch_size=4, accelerator="cpu", progress=False)


def perturb(module: torch.nn.Module, scale: float) -> torch.nn.Module:
    """``module`` with Gaussian noise of std ``scale`` added to every parameter (in place; returns it)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter), alpha=scale)
    return module


def save_untrained(module: L.LightningModule, path: Path) -> str:
    """A Lightning checkpoint of ``module`` as training would write it (no training needed)."""
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=path.parent)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    directory = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    diffusion = DiffusionModule(network=UNET, diffusion=DIFFUSION, label_dropout=0.1)
    # an untrained UNet ignores its label (zero-initialised residual outputs): give it weights that use it
    perturb(diffusion.ema.module, 0.05)
    classifier = lambda **kw: NoisyClassifierModule(network=dataclasses.replace(CLASSIFIER, **kw),  # noqa: E731
                                                    diffusion=DIFFUSION)
    linear = NoisyClassifierModule(network=CLASSIFIER,
                                   diffusion=dataclasses.replace(DIFFUSION, noise_schedule="linear"))
    sharp = perturb(classifier(), 0.2)  # logits far from uniform: the guidance has something to ascend
    return dict(
        diffusion=save_untrained(diffusion, directory / "diffusion.ckpt"),
        classifier=save_untrained(classifier(), directory / "classifier.ckpt"),
        classifier_8px=save_untrained(classifier(image_size=8), directory / "classifier_8px.ckpt"),
        classifier_3cls=save_untrained(classifier(num_classes=3), directory / "classifier_3cls.ckpt"),
        classifier_linear=save_untrained(linear, directory / "classifier_linear.ckpt"),
        classifier_sharp=save_untrained(sharp, directory / "classifier_sharp.ckpt"),
    )


def read(path):
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


# ---------------------------------------------------------------------------------------------- the plan
def test_sample_i_depends_only_on_seed_and_index():
    plan = SamplePlan(num_samples=10, seed=3, num_classes=5, classes="random")
    fours, twos = batches([range(10)], 4), batches([range(10)], 2)
    assert [list(b) for b in fours] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    labels_a = torch.cat([plan.labels(b) for b in fours])
    labels_b = torch.cat([plan.labels(b) for b in twos])
    assert torch.equal(labels_a, labels_b) and len(set(labels_a.tolist())) > 1
    noise_a = torch.stack([torch.randn(3, generator=g) for b in fours for g in plan.generators(b)])
    noise_b = torch.stack([torch.randn(3, generator=g) for b in twos for g in plan.generators(b)])
    assert torch.equal(noise_a, noise_b)
    grown = SamplePlan(num_samples=25, seed=3, num_classes=5, classes="random")  # N is not part of sample i
    assert torch.equal(grown.labels(range(10)), labels_a) and grown.identity() == plan.identity()
    other_seed = SamplePlan(num_samples=10, seed=4, num_classes=5, classes="random")
    assert not torch.equal(torch.randn(3, generator=other_seed.generators(range(1))[0]), noise_a[0])


def test_batches_cover_the_missing_samples_and_ranks_split_them_without_overlap():
    work = batches([range(3, 5), range(9, 23)], 4)
    assert [(b.start, b.stop) for b in work] == [(3, 5), (9, 13), (13, 17), (17, 21), (21, 23)]
    assert len(work) == 5 and work[-1] == range(21, 23) and work[1:3] == [range(9, 13), range(13, 17)]
    huge = batches([range(3, 10 ** 12)], 25)  # computed on demand: no list of 4e10 ranges
    assert len(huge) == -(-(10 ** 12 - 3) // 25) and huge[10 ** 10] == range(3 + 25 * 10 ** 10, 28 + 25 * 10 ** 10)
    assert huge[-1] == range(10 ** 12 - 22, 10 ** 12)
    ranks = [list(batches_of_rank(work, rank, 2)) for rank in range(2)]
    assert sorted(i for mine in ranks for b in mine for i in b) == [3, 4, *range(9, 23)]
    assert ranks[1] == [range(9, 13), range(17, 21)]
    with pytest.raises(ValueError, match="batch_size must be positive"):
        batches([range(3)], 0)


def test_class_choices():
    assert parse_classes("all", 10) == "all" and parse_classes("random", 10) == "random"
    assert parse_classes("1, 7,9", 10) == [1, 7, 9] and parse_classes([2], 10) == [2]
    plan = SamplePlan(num_samples=6, num_classes=10, classes=(1, 7))
    assert plan.labels(range(6)).tolist() == [1, 7, 1, 7, 1, 7]
    assert SamplePlan(num_samples=5, num_classes=3).labels(range(5)).tolist() == [0, 1, 2, 0, 1]
    for bad, message in (("10", r"out of range.*10 classes"), ("-1", "out of range"), ("x", "comma-separated"),
                         ("", "empty")):
        with pytest.raises(ValueError, match=message):
            parse_classes(bad, 10)
    with pytest.raises(ValueError, match="neither the model nor a classifier knows classes"):
        parse_classes("3", None)


# ---------------------------------------------------------------------------------------------- the command
def test_guided_sampling_writes_the_adm_npz_and_a_grid(checkpoints, tmp_path):
    result = sample(checkpoints["diffusion"], str(tmp_path), classifier=checkpoints["classifier"], scale=3.0,
                    num_samples=6, classes="2", **FAST)
    assert result.samples == tmp_path / "samples_6x16x16x3.npz"
    data = read(result.samples)
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (6, 16, 16, 3)
    assert data["arr_1"].dtype == np.int64 and data["arr_1"].tolist() == [2] * 6
    assert data["arr_0"].std() > 0
    from PIL import Image

    assert Image.open(result.grid).size == (3 * 18 + 2, 2 * 18 + 2)  # 3 columns x 2 rows of 16 px, 2 px padding
    settings = json.loads((tmp_path / "run.json").read_text())
    assert settings["scale"] == 3.0 and settings["checkpoint"].startswith("sha256:")
    assert "num_samples" not in settings and "batch_size" not in settings  # a run grows and is re-batched


def test_guidance_raises_the_classifiers_log_probability_and_scale_zero_is_unguided(checkpoints, tmp_path):
    """gd sample's classifier guidance ascends log p(y | x): the guiding classifier's mean log-probability of the
    requested labels at t = 0 on the written uint8 samples rises with the scale (0 < 10 < 40); a mis-signed or
    ignored gradient fails this. Scale 0 is exactly unguided."""
    from guided_diffusion.checkpoints import load_classifier
    from guided_diffusion.images import from_uint8_nhwc

    def run(name, **options):
        return read(sample(checkpoints["diffusion"], str(tmp_path / name), num_samples=8, classes="random", seed=4,
                           **{**FAST, "steps": "ddim20"}, **options).samples)

    classifier = load_classifier(checkpoints["classifier_sharp"]).network.eval()

    def log_probability(data):
        x = from_uint8_nhwc(data["arr_0"]).float()
        with torch.no_grad():
            logits = classifier(x, torch.zeros(len(x), dtype=torch.long))
        return logits.log_softmax(-1).gather(1, torch.from_numpy(data["arr_1"])[:, None]).mean().item()

    unguided = run("none")
    zero = run("zero", classifier=checkpoints["classifier_sharp"], scale=0.0)
    assert np.array_equal(zero["arr_0"], unguided["arr_0"])
    scores = [log_probability(run(f"s{scale:g}", classifier=checkpoints["classifier_sharp"], scale=scale))
              for scale in (0.0, 10.0, 40.0)]
    assert scores[0] < scores[1] < scores[2] and scores[2] > scores[0] + 0.05, scores  # measured +0.043, +0.105
    assert not np.array_equal(run("cfg", guidance="classifier-free", scale=3.0)["arr_0"], unguided["arr_0"])


def test_a_crashed_run_resumes_and_completes_exactly(checkpoints, tmp_path, monkeypatch):
    options = dict(num_samples=10, classes="random", seed=7, **FAST)
    reference = read(sample(checkpoints["diffusion"], str(tmp_path / "reference"), **options).samples)

    written = []
    real_write = runner_module.write_shard

    def crash_after_two(directory, shard, images, labels):
        if len(written) == 2:
            raise RuntimeError("simulated crash")
        written.append(shard)
        return real_write(directory, shard, images, labels)

    monkeypatch.setattr(runner_module, "write_shard", crash_after_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        sample(checkpoints["diffusion"], str(tmp_path / "run"), **options)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["fingerprints.json", "run.json", "shard-00000000-00000004.npz",
                     "shard-00000004-00000008.npz"]  # no partial shard, no merge

    monkeypatch.setattr(runner_module, "write_shard", lambda *args: written.append(args[1]) or real_write(*args))
    result = sample(checkpoints["diffusion"], str(tmp_path / "run"), **options)
    assert written == [range(0, 4), range(4, 8), range(8, 10)]  # the re-run only sampled the missing shard
    resumed = read(result.samples)
    assert resumed["arr_0"].shape[0] == 10
    assert np.array_equal(resumed["arr_0"], reference["arr_0"]) and np.array_equal(resumed["arr_1"], reference["arr_1"])

    with pytest.raises(ValueError, match=r"different run.*'seed'"):
        sample(checkpoints["diffusion"], str(tmp_path / "run"), **{**options, "seed": 8})


def test_philox_noise_runs_are_independent_of_the_batch_size_and_part_of_the_run(checkpoints, tmp_path):
    """``--noise philox`` (the default on accelerators): DDPM draws fresh noise at every step; shards of 2 and of
    3 give the same images; the images differ from the generator streams', and a resume with the other kind is
    refused."""
    options = dict(classifier=checkpoints["classifier"], scale=2.0, num_samples=5, classes="random", seed=5,
                   sampler="ddpm", steps="4", progress=False)
    twos = read(sample(checkpoints["diffusion"], str(tmp_path / "twos"), batch_size=2, noise="philox",
                       **options).samples)
    threes = read(sample(checkpoints["diffusion"], str(tmp_path / "threes"), batch_size=3, noise="philox",
                         **options).samples)
    assert np.array_equal(twos["arr_0"], threes["arr_0"]) and np.array_equal(twos["arr_1"], threes["arr_1"])
    generators = read(sample(checkpoints["diffusion"], str(tmp_path / "generators"), batch_size=2,
                             noise="generators", **options).samples)
    assert np.array_equal(generators["arr_1"], twos["arr_1"]) and not np.array_equal(generators["arr_0"], twos["arr_0"])
    with pytest.raises(ValueError, match=r"different run.*'noise'"):
        sample(checkpoints["diffusion"], str(tmp_path / "twos"), batch_size=2, noise="generators", **options)


def test_a_bad_shard_is_set_aside_and_sampled_again(checkpoints, tmp_path, capsys):
    """A shard cut short (a full disk, a copy) or holding other samples' labels is renamed *.bad and redone."""
    options = dict(num_samples=12, classes="random", seed=3, **FAST)
    run = tmp_path / "run"
    reference = read(sample(checkpoints["diffusion"], str(run), **options).samples)
    merged = next(run.glob("samples_*.npz"))
    merged.unlink()
    truncated = run / "shard-00000004-00000008.npz"
    original = truncated.read_bytes()
    truncated.write_bytes(original[: len(original) // 2])
    with np.load(run / "shard-00000008-00000012.npz") as data:  # right count, wrong labels
        np.savez(run / "shard-00000008-00000012.npz", arr_0=data["arr_0"], arr_1=(data["arr_1"] + 1) % 4)
    capsys.readouterr()
    result = sample(checkpoints["diffusion"], str(run), **options)
    out = capsys.readouterr().out
    assert "shard-00000004-00000008.npz is bad" in out and "does not read back" in out
    assert "shard-00000008-00000012.npz is bad (its labels are not the ones the plan gives" in out
    assert "4 of 12 samples already written, sampling 8 in 2 batches of up to 4" in out
    assert (run / "shard-00000004-00000008.npz.bad").read_bytes() == original[: len(original) // 2]  # kept
    assert (run / "shard-00000008-00000012.npz.bad").exists()
    resumed = read(result.samples)
    assert np.array_equal(resumed["arr_0"], reference["arr_0"]) and np.array_equal(resumed["arr_1"], reference["arr_1"])


@pytest.mark.parametrize("options, error, message", [
    (dict(classes="4"), ValueError, r"class label\(s\) \[4\] out of range"),
    (dict(classes="-1"), ValueError, "out of range"),
    (dict(scale=-1.0, classifier="classifier"), ValueError, "finite and non-negative"),
    (dict(scale=float("nan"), classifier="classifier"), ValueError, "finite and non-negative"),
    (dict(classifier="classifier_8px"), ValueError, "takes 3x8x8 images but the model makes 3x16x16"),
    (dict(classifier="classifier_3cls"), ValueError, "knows 3 classes but the model 4"),
    (dict(classifier="classifier_linear"), ValueError, "another noise process"),
    (dict(classifier="missing.ckpt"), FileNotFoundError, "classifier checkpoint .*missing.ckpt.* does not exist"),
    (dict(checkpoint="missing.ckpt"), FileNotFoundError, "diffusion model checkpoint .* does not exist"),
    (dict(guidance="classifier"), ValueError, "needs --classifier"),
    (dict(steps="ddim7000"), ValueError, "ddim7000|cannot|fewer"),
    (dict(sampler="ddpm", eta=0.5), ValueError, "eta is an option of ddim; sampler .ddpm. does not take it"),
    (dict(classifier="classifier", guidance_interval="5,1"), ValueError, r"'5,1': need 0 <= lo <= hi"),
    (dict(classifier="classifier", guidance_interval="0-5"), ValueError, "must be 'lo,hi'"),
    (dict(schedule="linear"), ValueError, "shape classifier guidance: give --classifier"),
    (dict(guidance_every=2, guidance="classifier-free"), ValueError, "shape classifier guidance"),
    (dict(cfg_scale=2.0), ValueError, "--cfg_scale combines classifier-free with classifier guidance"),
    (dict(classifier="classifier", cfg_interval="0,500"), ValueError, "--cfg_interval needs classifier-free"),
    (dict(classifier="classifier", temperature=0.0), ValueError, "temperature must be finite and > 0"),
])
def test_bad_input_fails_before_any_sampling(checkpoints, tmp_path, monkeypatch, options, error, message):
    monkeypatch.setattr(runner_module, "sample", lambda *a, **k: pytest.fail("sampling started"))
    options = dict(options)
    for key in ("checkpoint", "classifier"):
        if key in options and options[key] in checkpoints:
            options[key] = checkpoints[options[key]]
        elif key in options:
            options[key] = str(tmp_path / options[key])
    checkpoint = options.pop("checkpoint", checkpoints["diffusion"])
    with pytest.raises(error, match=message):
        sample(checkpoint, str(tmp_path / "out"), num_samples=4, **{**FAST, **options})
    assert not (tmp_path / "out").exists()  # nothing written


def test_guidance_options_from_the_cli_and_the_cost_they_report(checkpoints, tmp_path, capsys):
    """An interval, a schedule, reuse and the x0 gradient reach the sampler from ``gd sample``; the reported cost
    counts the classifier only inside the window and every k-th step, and classifier-free guidance with
    ``--cfg_scale`` doubles the model's batch where it acts."""
    common = ["--classifier", checkpoints["classifier"], "--scale", "3", "--num_samples", "4", "--batch_size", "4",
              "--steps", "ddim8", "--accelerator", "cpu", "--progress", "false"]
    respaced = space_timesteps(DIFFUSION.steps, "ddim8")
    runs = {
        "plain": [],
        "window": ["--guidance_interval", "0,50", "--schedule", "linear", "--temperature", "2"],
        "reuse": ["--guidance_every", "3", "--gradient_at", "x0"],
        "both": ["--cfg_scale", "2", "--cfg_interval", "30,99", "--interval_in", "t"],
    }
    costs, images = {}, {}
    for name, extra in runs.items():
        capsys.readouterr()
        gd(["sample", checkpoints["diffusion"], "--output", str(tmp_path / name), *common, *extra])
        line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("cost:"))
        costs[name] = [float(word) for word in line.split(":", 2)[2].split() if word.replace(".", "").isdigit()]
        images[name] = read(tmp_path / name / "samples_4x16x16x3.npz")["arr_0"]
    inside = sum(t <= 50 for t in respaced)
    assert costs["plain"][:2] == [8, 8] and costs["window"][:2] == [8, inside] and costs["reuse"][:2] == [8, 3]
    assert costs["both"][:2] == [8 + sum(t >= 30 for t in respaced), 8] and 0 < inside < 8
    assert all(not np.array_equal(images[name], images["plain"]) for name in ("window", "reuse", "both"))
    settings = json.loads((tmp_path / "window" / "run.json").read_text())
    assert settings["guidance_options"]["interval"] == "0,50" and settings["guidance_options"]["schedule"] == "linear"


def test_the_cli_runs_sample(checkpoints, tmp_path, capsys):
    gd(["sample", checkpoints["diffusion"], "--output", str(tmp_path), "--num_samples", "2", "--steps", "ddim2",
        "--batch_size", "2", "--accelerator", "cpu", "--progress", "false", "--sampler", "ddim"])
    assert (tmp_path / "samples_2x16x16x3.npz").exists() and "wrote" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- controllable
def test_inpainting_keeps_the_known_pixels_and_fills_the_rest(checkpoints, tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, :8] = 1  # keep the left half
    np.savez(tmp_path / "inpaint.npz", arr_0=images, mask=mask)
    result = sample(checkpoints["diffusion"], str(tmp_path / "out"), inpaint=str(tmp_path / "inpaint.npz"),
                    num_samples=4, **FAST)
    out = read(result.samples)["arr_0"].astype(int)
    for i in range(4):  # sample i completes image i mod 2
        assert np.abs(out[i, :, :8] - images[i % 2, :, :8]).max() <= 1
    assert np.abs(out[:, :, 8:] - images[[0, 1, 0, 1], :, 8:]).mean() > 20  # the rest is generated


def test_colorization_keeps_the_grey_level(checkpoints, tmp_path):
    grey = np.random.default_rng(1).integers(60, 200, size=(1, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "grey.npz", arr_0=grey)
    result = sample(checkpoints["diffusion"], str(tmp_path / "out"), colorize=str(tmp_path / "grey.npz"),
                    num_samples=2, clip_denoised=False, **FAST)
    out = read(result.samples)["arr_0"].astype(float)
    in_gamut = ((out > 0) & (out < 255)).all(-1)  # the random test model also paints out-of-gamut colours
    assert in_gamut.sum() >= 10
    error = np.abs(out.mean(-1) - grey[0][None])[in_gamut]
    assert error.max() < 1.5  # the channel mean is the given grey (up to uint8 truncation)


@pytest.mark.parametrize("arrays, message", [
    (dict(arr_0=np.zeros((1, 8, 8, 3), np.uint8), mask=np.ones((8, 8))), "images are 8x8 but the model makes 16x16"),
    (dict(arr_0=np.zeros((1, 16, 16, 3), np.uint8)), "needs a 'mask'"),
    (dict(arr_0=np.zeros((1, 16, 16, 3), np.uint8), mask=np.full((16, 16), 0.5)), "only 0 .* and 1"),
    (dict(arr_0=np.zeros((1, 16, 16, 3), np.float32), mask=np.ones((16, 16))), "must be uint8"),
])
def test_bad_inpainting_input_is_a_clear_error(checkpoints, tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=message):
        sample(checkpoints["diffusion"], str(tmp_path / "out"), inpaint=str(tmp_path / "bad.npz"), num_samples=2,
               **FAST)
