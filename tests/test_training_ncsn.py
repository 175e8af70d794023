"""``NCSNModule``: NCSN training through ``gd fit`` on the embedded MNIST, no-flag reload, sampling, bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from guided_diffusion.commands.cli import main
from guided_diffusion.nets import UNetConfig
from guided_diffusion.sde import VESDE, annealed_langevin_sample, langevin_step_size, langevin_variance_ratio
from guided_diffusion.checkpoints import load_diffusion_checkpoint, load_ncsn_checkpoint
from guided_diffusion.commands.fit import lightning_main
from guided_diffusion.training.ncsn_module import NCSNModule

NCSN_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "mnist" / "ncsn.yaml")
TINY = dict(image_size=32, in_channels=1, model_channels=32, channel_mult=[1, 2], num_res_blocks=1,
            attention_resolutions=[], num_head_channels=-1, learn_sigma=False)


def _override(tmp_path: Path, steps: int) -> str:
    """Tiny network, few steps, no logger or sample grid (sampling is tested below). ``limit_val_batches``
    is 2, not 1: the CLI reads 1 as the float 1.0, i.e. *all* validation batches."""
    config = {"trainer": {"max_steps": steps, "logger": False, "log_every_n_steps": 1, "val_check_interval": 2,
                          "limit_val_batches": 2, "enable_progress_bar": False,
                          "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                         "init_args": {"dirpath": "ckpt", "save_last": True,
                                                       "every_n_train_steps": steps}}]},
              "model": {"init_args": {"network": TINY}},
              "data": {"batch_size": 8, "val_batch_size": 2}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_ncsn_fit_reload_and_sample(workdir):
    """3 steps of ``gd fit --config configs/mnist/ncsn.yaml``: sigma_1 = the largest distance between the
    MNIST-5k training images (31.66), L = 119 levels from the overlap rule for D = 1024; the
    checkpoint rebuilds the score network with no flags, its levels map to UNet timesteps L - 1 - i,
    and annealed Langevin / PC samples have the image shape and are finite."""
    overrides = _override(workdir, steps=3)
    main(["fit", "--config", NCSN_YAML, "--config", overrides])
    last = workdir / "ckpt" / "last.ckpt"
    raw = torch.load(last, weights_only=True)
    assert raw["global_step"] == 3
    assert any(k.startswith("ema.module.") for k in raw["state_dict"])
    assert {key.split(".")[0] for key in raw["state_dict"]} == {"model", "ema"}  # the UNet and its EMA only

    network, sde, info = load_ncsn_checkpoint(last)
    hparams = info["hyper_parameters"]
    assert hparams["sigma_max"] == pytest.approx(31.6608, abs=1e-3) and hparams["num_scales"] == 119
    assert sde == VESDE(0.01, hparams["sigma_max"], N=119)
    sigmas = info["sigmas"]
    assert sigmas[0] == pytest.approx(hparams["sigma_max"]) and sigmas[-1] == pytest.approx(0.01)
    torch.testing.assert_close(network.c_noise(sigmas), torch.arange(118, -1, -1, dtype=torch.float64),
                               atol=1e-9, rtol=0)  # level i -> UNet timestep L - 1 - i
    ema = {k[len("ema.module."):]: v for k, v in raw["state_dict"].items() if k.startswith("ema.module.")}
    assert all(torch.equal(network.unet.state_dict()[k], v) for k, v in ema.items())
    assert not network.training

    gamma = float(sigmas[0] / sigmas[1])
    with torch.no_grad():
        x = annealed_langevin_sample(network.score_model(), None, (2, 1, 32, 32), sigmas=sigmas, steps_per_level=1,
                                     step_size=langevin_step_size(gamma, 1, 0.01), progress=False,
                                     generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 32, 32) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match=r"is an NCSNModule checkpoint \(a VE score network\), not a diffusion model"):
        load_diffusion_checkpoint(last)

    # validate --ckpt_path: the module is rebuilt from the checkpoint's hyper-parameters (levels included).
    cli = lightning_main(["validate", "--config", NCSN_YAML, "--config", overrides, "--ckpt_path", str(last)])
    module = cli.model
    assert module.num_scales == 119 and module.sigma_max == hparams["sigma_max"]
    assert "val/loss" in cli.trainer.callback_metrics
    images = module.sample(2, sampler="pc", steps="3", generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()

    # The EMA group is saved as a plain dict; a checkpoint of the flat layout (ema_rate, ema_warmup) is migrated.
    assert hparams["ema"] == {"rate": 0.999, "warmup": True, "schedule": "rate", "power_gamma": 6.94}
    flat = {key: value for key, value in raw["hyper_parameters"].items() if key != "ema"}
    torch.save({**raw, "hyper_parameters": {**flat, "ema_rate": 0.99, "ema_warmup": False}}, workdir / "old.ckpt")
    module = lightning_main(["validate", "--config", NCSN_YAML, "--config", overrides, "--ckpt_path",
                             str(workdir / "old.ckpt")]).model
    assert (module.ema.decay, module.ema.warmup, module.num_scales) == (0.99, False, 119)
    assert module.hparams["ema"] == {"rate": 0.99, "warmup": False, "schedule": "rate", "power_gamma": 6.94}


def test_ncsn_module_levels_and_step_size():
    """Given sigma_max, the levels are NCSNv2's (the overlap rule or num_scales), and the default
    step size is Technique 4's; without sigma_max the levels wait for the data."""
    module = NCSNModule(network=TINY, sigma_max=20.0, sigma_min=0.01)
    gamma = module.gamma
    assert 1.0 < gamma <= 1.0710 and float(module.sigmas[0]) == pytest.approx(20.0)
    assert module.hparams["num_scales"] == module.num_scales
    assert module.network_timesteps(torch.tensor([0, module.num_scales - 1])).tolist() == [module.num_scales - 1, 0]
    assert module.langevin_step_size(5) == pytest.approx(langevin_step_size(gamma, 5, 0.01))
    assert len(NCSNModule(network=TINY, sigma_max=20.0, num_scales=10).sigmas) == 10
    assert module.ema.decay == 0.999 and module.ema.warmup                    # NCSNv2's EMA rate
    assert NCSNModule(network=TINY, ema={"warmup": False}).ema.decay == 0.999  # a config's ema: over that default
    pending = NCSNModule(network=TINY)
    with pytest.raises(RuntimeError, match="noise levels are not known yet"):
        pending.sample(1)
    # Technique 4 reproduces NCSNv2's CIFAR-10 step size, and is the minimiser of the variance ratio.
    eps = langevin_step_size(1.0376, 5, 0.01)
    assert eps == pytest.approx(6.2e-6, rel=0.01)
    ratio = langevin_variance_ratio(eps, 1.0376, 5, 0.01)
    assert 1 < ratio < min(langevin_variance_ratio(eps * f, 1.0376, 5, 0.01) for f in (0.8, 1.25))


def test_ncsn_bad_input_is_a_clear_error(workdir):
    with pytest.raises(ValueError, match="sigma_max must be a positive number"):
        NCSNModule(network=TINY, sigma_max=0.0)
    with pytest.raises(ValueError, match="sigma_min must be a positive number"):
        NCSNModule(network=TINY, sigma_min=-0.01)
    with pytest.raises(ValueError, match="sigma_max must be above sigma_min, got sigma_max=0.005 <= sigma_min=0.01"):
        NCSNModule(network=TINY, sigma_max=0.005)
    with pytest.raises(ValueError, match="num_scales must be an integer >= 2"):
        NCSNModule(network=TINY, sigma_max=1.0, num_scales=1)
    with pytest.raises(ValueError, match="set network.learn_sigma: false"):
        NCSNModule(network=UNetConfig(**{**TINY, "learn_sigma": True}))
    with pytest.raises(ValueError, match="unknown NCSN sampler 'ddim'"):
        NCSNModule(network=TINY, sampler="ddim")
    with pytest.raises(ValueError, match="step size must be a positive number"):
        NCSNModule(network=TINY, step_size=-1e-5)
    assert NCSNModule(network="mnist32_adm", sigma_max=10.0).config.learn_sigma is False  # preset: score head only
    with pytest.raises(ValueError, match="step_size .* >= 2 sigma_L\\^2"):
        NCSNModule(network=TINY, sigma_max=10.0, step_size=1e-3).sample(1, steps=1)
    with pytest.raises(ValueError, match="the ratio of neighbouring noise levels gamma must be > 1"):
        langevin_step_size(1.0, 5, 0.01)
    # Through the CLI: the error names the option, before any training.
    with pytest.raises(ValueError, match="sigma_max must be above sigma_min"):
        main(["fit", "--config", NCSN_YAML, "--model.init_args.sigma_max", "0.001", "--trainer.logger", "false"])
    assert not (workdir / "outputs" / "mnist" / "ncsn" / "checkpoints").exists()
