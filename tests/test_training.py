"""The Lightning training layer on tiny networks: EMA, metrics, overfitting, non-finite steps,
resume, checkpoints without flags, label dropout, timm trunks."""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from classifiers import EncoderUNetConfig
from classifiers.module import NoisyClassifierModule
from guided_diffusion.checkpoints import load_state_dict_file
from guided_diffusion.data.datamodule import ImageDataModule
from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.nets import UNetConfig
from guided_diffusion.nets.timm_classifier import TimmClassifierConfig, TimmNoisyClassifier
from guided_diffusion.checkpoints import export, load_classifier_checkpoint, load_diffusion_checkpoint
from guided_diffusion.training import EMA, DiffusionModule, QuartileMeans, quartile_means

TINY_UNET = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(8,), num_head_channels=32, learn_sigma=True,
                       resblock_updown=True, num_classes=4)
TINY_CLASSIFIER = EncoderUNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                    attention_resolutions=(8,), num_head_channels=32, num_classes=4)
TINY_DIFFUSION = DiffusionConfig(steps=100, noise_schedule="cosine", learn_sigma=True)


def tiny_data(batch_size=8, **kwargs):
    return ImageDataModule(dataset="synthetic", image_size=16, batch_size=batch_size, synthetic_size=64,
                           synthetic_classes=4, **kwargs)


def tiny_diffusion_module(**kwargs):
    return DiffusionModule(network=TINY_UNET, diffusion=TINY_DIFFUSION, **kwargs)


def trainer(tmp_path, **kwargs):
    options = dict(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   limit_val_batches=0, default_root_dir=tmp_path)
    return L.Trainer(**{**options, **kwargs})


class RecordLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


# ---------------------------------------------------------------------------------------------- units


def test_ema_warmup_and_no_grad():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, rate=0.9999)
    assert not any(p.requires_grad for p in ema.parameters())
    decays = []
    for step in range(3):
        decays.append(ema.get_decay())
        before = ema.module.weight.clone()
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model)
        assert torch.allclose(ema.module.weight, decays[-1] * before + (1 - decays[-1]) * model.weight)
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert int(ema.num_updates) == 3 and "num_updates" in ema.state_dict()
    ema.num_updates.fill_(10**7)
    assert ema.get_decay() == 0.9999
    assert EMA(model, 0.99, warmup=False).get_decay() == 0.99


def test_quartile_means_match_hand_computation():
    t = torch.tensor([0, 10, 30, 99])
    loss = torch.tensor([1.0, 3.0, 5.0, 7.0])
    out = quartile_means(t, {"loss": loss}, num_timesteps=100)
    assert out == pytest.approx({"loss": 4.0, "loss_q0": 2.0, "loss_q1": 5.0, "loss_q3": 7.0})  # q2 empty
    metrics = QuartileMeans(["loss"], num_timesteps=100)
    metrics.update(t, {"loss": loss})
    metrics.update(torch.tensor([60]), {"loss": torch.tensor([9.0])})
    assert metrics.compute() == pytest.approx({"loss": 5.0, "loss_q0": 2.0, "loss_q1": 5.0, "loss_q2": 9.0,
                                               "loss_q3": 7.0})


def test_network_and_data_consistency_errors():
    with pytest.raises(ValueError, match="learn_sigma"):
        DiffusionModule(network=TINY_UNET, diffusion=DiffusionConfig(learn_sigma=False))
    with pytest.raises(ValueError, match="not a classifier"):
        NoisyClassifierModule(network="mnist32_adm")
    with pytest.raises(ValueError, match="image_size=16"):
        trainer(None, max_steps=1).fit(tiny_diffusion_module(), ImageDataModule(dataset="synthetic", image_size=32))


# ---------------------------------------------------------------------------------------------- training


def test_diffusion_module_overfits_a_fixed_batch(tmp_path):
    """The eps-prediction MSE itself falls (the hybrid loss is dominated early by its L_vlb term, which only the
    variance head learns from), and the mean network learns: the MSE starts near E|eps|^2 = 1."""
    torch.manual_seed(0)
    module = tiny_diffusion_module(lr=2e-3, timestep_sampler="uniform")
    mse, original = [], module.diffusion.training_losses

    def recording(*args, **kwargs):
        terms = original(*args, **kwargs)
        mse.append(float(terms["mse"].mean()))
        return terms

    module.diffusion.training_losses = recording
    trainer(tmp_path, max_steps=50, overfit_batches=1).fit(module, tiny_data())
    first, last = sum(mse[:5]) / 5, sum(mse[-10:]) / 10
    assert first == pytest.approx(1.0, abs=0.3)  # zero-initialised output layer: eps_hat = 0
    assert last < 0.6 * first, (first, last)
    assert int(module.ema.num_updates) == 50


def test_classifier_module_overfits_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    module = NoisyClassifierModule(network=TINY_CLASSIFIER, diffusion=TINY_DIFFUSION, lr=2e-3, weight_decay=0.0)
    losses = RecordLosses()
    trainer(tmp_path, max_steps=40, overfit_batches=1, callbacks=[losses]).fit(module, tiny_data())
    first, last = sum(losses.losses[:5]) / 5, sum(losses.losses[-10:]) / 10
    assert first == pytest.approx(math.log(4), abs=0.2)  # zero-initialised head: uniform logits
    assert last < 0.6 * first, (first, last)


def _poison(module, nan_calls):
    """Make ``training_losses`` return NaN on the given call numbers (0-based)."""
    original, calls = module.diffusion.training_losses, [0]

    def poisoned(*args, **kwargs):
        terms = original(*args, **kwargs)
        if calls[0] in nan_calls:
            terms = {name: value * float("nan") for name, value in terms.items()}
        calls[0] += 1
        return terms

    module.diffusion.training_losses = poisoned


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    module = tiny_diffusion_module(max_consecutive_nonfinite=100)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    _poison(module, nan_calls=range(100))
    trainer(tmp_path, max_steps=3).fit(module, tiny_data())
    assert module.nonfinite_steps == 3 and int(module.ema.num_updates) == 0
    for key, value in module.state_dict().items():
        assert torch.equal(value, initial[key]), key  # weights, EMA untouched: never NaN

    module = tiny_diffusion_module(max_consecutive_nonfinite=3)
    _poison(module, nan_calls={1, 2})
    trainer(tmp_path, max_steps=5).fit(module, tiny_data())
    assert module.nonfinite_steps == 2 and int(module.ema.num_updates) == 3
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_consecutive_nonfinite_steps_stop_training_naming_the_step(tmp_path):
    module = tiny_diffusion_module(max_consecutive_nonfinite=3)
    _poison(module, nan_calls={2, 3, 4, 5})
    with pytest.raises(FloatingPointError, match=r"stopped at step 4: .* 3 consecutive steps \(2..4\)"):
        trainer(tmp_path, max_steps=10).fit(module, tiny_data())


class CaptureAtTrainStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.global_step = trainer.global_step
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.sampler = {k: v.clone() for k, v in pl_module.timestep_sampler.state_dict().items()}


@pytest.fixture(scope="module")
def trained_diffusion(tmp_path_factory):
    """A tiny DiffusionModule trained 3 steps, with its last.ckpt."""
    tmp_path = tmp_path_factory.mktemp("diffusion")
    torch.manual_seed(0)
    module = tiny_diffusion_module(label_dropout=0.3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_last=True)
    trainer(tmp_path, max_steps=3, enable_checkpointing=True, callbacks=[checkpoint]).fit(module, tiny_data())
    return module, tmp_path / "ckpt" / "last.ckpt"


def test_resume_restores_step_ema_and_sampler_state(trained_diffusion, tmp_path):
    module, last = trained_diffusion
    assert module.timestep_sampler.loss_counts.sum() == 3 * 8  # fed with every (t, loss) pair
    capture = CaptureAtTrainStart()
    resumed = tiny_diffusion_module(label_dropout=0.3)
    trainer(tmp_path, max_steps=4, callbacks=[capture]).fit(resumed, tiny_data(), ckpt_path=last)
    assert capture.global_step == 3
    state = module.state_dict()
    assert capture.state.keys() == state.keys()
    for key in state:
        assert torch.equal(capture.state[key], state[key]), key  # model, EMA (values and update count)
    for key, value in module.timestep_sampler.state_dict().items():
        assert torch.equal(capture.sampler[key], value), key
    assert int(resumed.ema.num_updates) == 4


def test_checkpoints_rebuild_without_flags_and_export(trained_diffusion, tmp_path):
    module, last = trained_diffusion
    checkpoint = torch.load(last, weights_only=True)  # plain values only
    assert checkpoint["hyper_parameters"]["network"]["null_class"] is True
    model, diffusion, info = load_diffusion_checkpoint(last)
    assert info["global_step"] == 3 and info["null_label"] == 4 and info["ema"] is True
    assert diffusion.num_timesteps == 100 and diffusion.var_type == "learned_range"
    assert model.label_emb.weight.shape[0] == 5  # 4 classes + the null class
    for key, value in module.ema.module.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="not a NoisyClassifierModule checkpoint"):
        load_classifier_checkpoint(last)
    raw, _, _ = load_diffusion_checkpoint(last, ema=False)
    assert torch.equal(raw.out[2].weight, module.model.out[2].weight)
    assert DiffusionModule.load_from_checkpoint(last).config == module.config

    from guided_diffusion.sampling import ClassifierFreeGuidance, sample

    # the trained model guided classifier-free at w = 2 is DDIM on eps_null + 2 (eps_y - eps_null) (variance
    # channels from the conditional pass), both passes written out here with the null label of the file
    y, noise = torch.tensor([0, 3]), torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    images = sample(model, diffusion, noise.clone(), steps="ddim4", y=y, progress=False,
                    guidance=ClassifierFreeGuidance(2.0, null_label=info["null_label"]))

    def by_hand(x, t):  # an unconditional model to the sampler: the labels are fixed here
        conditional, unconditional = model(x, t, y=y), model(x, t, y=torch.full_like(y, 4))
        return torch.cat([unconditional[:, :3] + 2.0 * (conditional[:, :3] - unconditional[:, :3]),
                          conditional[:, 3:]], dim=1)

    torch.testing.assert_close(images, sample(by_hand, diffusion, noise.clone(), steps="ddim4", progress=False))
    plain = sample(model, diffusion, noise.clone(), steps="ddim4", y=y, progress=False)
    assert not torch.equal(images, plain)  # (3 training steps: the labels move the samples only by ~1e-4)

    out = export(str(last), str(tmp_path / "model.pt"), ema=True)
    exported = load_state_dict_file(out)
    assert exported.keys() == model.state_dict().keys()
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())


def test_label_dropout_uses_the_null_class():
    module = tiny_diffusion_module(label_dropout=0.5)
    y = torch.arange(4).repeat(50)
    dropped = module.model_labels(y, drop=True)
    assert 0.3 < (dropped == 4).float().mean() < 0.7
    assert torch.equal(dropped[dropped != 4], y[dropped != 4])
    assert torch.equal(module.model_labels(y, drop=False), y)
    with pytest.raises(ValueError, match="class-conditional"):
        DiffusionModule(network=TINY_UNET.__class__(**{**TINY_UNET.to_dict(), "num_classes": None}),
                        diffusion=TINY_DIFFUSION, label_dropout=0.1)


def test_classifier_checkpoint_rebuilds_without_flags(tmp_path):
    module = NoisyClassifierModule(network=TINY_CLASSIFIER, diffusion=TINY_DIFFUSION)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer(tmp_path, max_steps=2, enable_checkpointing=True, callbacks=[checkpoint],
            limit_val_batches=1).fit(module, tiny_data())
    classifier, diffusion, info = load_classifier_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 50, 99])
    assert torch.allclose(classifier(x, t), module.model.eval()(x, t))
    assert info["kind"] == "classifier" and diffusion.num_timesteps == 100
    with pytest.raises(ValueError, match="is a NoisyClassifierModule checkpoint, not a diffusion model"):
        load_diffusion_checkpoint(tmp_path / "ckpt" / "last.ckpt")


# ---------------------------------------------------------------------------------------------- timm trunks


def test_timm_configs_that_would_download_are_refused():
    with pytest.raises(ValueError, match="hub names are not allowed"):
        TimmClassifierConfig(model_name="hf-hub:timm/resnet18.a1_in1k")
    with pytest.raises(ValueError, match=r"model_kwargs \['pretrained'\]: weights come only from pretrained_path"):
        TimmClassifierConfig(model_name="resnet18", model_kwargs={"pretrained": True})


def test_timm_trunk_takes_the_timestep_at_the_stem(tmp_path):
    import timm

    config = TimmClassifierConfig(model_name="test_resnet", image_size=32, in_channels=1, num_classes=10)
    classifier = TimmNoisyClassifier(config)
    x = torch.randn(2, 1, 32, 32)
    early, late = classifier(x, torch.tensor([0, 0])), classifier(x, torch.tensor([900, 900]))
    assert early.shape == (2, 10) and torch.equal(early, late)  # zero-initialised: trunk unchanged at first
    torch.nn.init.normal_(classifier.time_embed[2].weight)
    assert not torch.allclose(classifier(x, torch.tensor([0, 0])), classifier(x, torch.tensor([900, 900])))

    weights = tmp_path / "trunk.pth"
    torch.save(timm.create_model("test_resnet", num_classes=7).state_dict(), weights)
    pretrained = TimmNoisyClassifier(TimmClassifierConfig(**{**config.to_dict(), "pretrained_path": str(weights)}))
    reference = torch.load(weights, weights_only=True)
    assert torch.equal(pretrained.trunk.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])
    with pytest.raises(ValueError, match="hub names"):
        TimmClassifierConfig(model_name="hf-hub:timm/resnet18.a1_in1k")
    with pytest.raises(FileNotFoundError):
        TimmClassifierConfig(pretrained_path=str(tmp_path / "missing.pth"))


def test_classifier_module_trains_a_timm_trunk(tmp_path):
    """A timm trunk learns through the module (its cross-entropy on a fixed batch falls from log 4) and reloads."""
    torch.manual_seed(0)
    config = TimmClassifierConfig(model_name="test_resnet", image_size=16, in_channels=3, num_classes=4)
    module = NoisyClassifierModule(network=config, diffusion=TINY_DIFFUSION, lr=2e-3, weight_decay=0.0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    losses = RecordLosses()
    trainer(tmp_path, max_steps=50, overfit_batches=1, enable_checkpointing=True,
            callbacks=[checkpoint, losses]).fit(module, tiny_data())
    first, last = sum(losses.losses[:5]) / 5, sum(losses.losses[-10:]) / 10
    assert last < 0.7 * first, (first, last)  # measured 1.43 -> 0.59
    classifier, _, _ = load_classifier_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 70])
    assert torch.allclose(classifier(x, t), module.model.eval()(x, t))
