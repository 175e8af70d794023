"""``gd fit|validate|predict|export`` in-process on the embedded MNIST presets: W&B offline, resume,
checkpoint export, and the early errors for bad configs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from guided_diffusion.checkpoints import load_openai_checkpoint
from guided_diffusion.commands.cli import main
from guided_diffusion.presets import get_preset
from tests.helpers import wandb_records
from guided_diffusion.commands.fit import lightning_main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DIFFUSION_YAML = str(CONFIGS / "mnist" / "diffusion.yaml")
CLASSIFIER_YAML = str(CONFIGS / "mnist" / "classifier.yaml")
CAPTURED: dict = {}


class CaptureResumeState(Callback):
    """Records the module state when (resumed) training starts."""

    def on_train_start(self, trainer, pl_module):
        CAPTURED.update(global_step=trainer.global_step,
                        state={k: v.clone() for k, v in pl_module.state_dict().items()},
                        sampler={k: v.clone() for k, v in pl_module.timestep_sampler.state_dict().items()})


def _override(tmp_path: Path, name: str, steps: int, extra_callbacks=(), **sections) -> str:
    """A second --config that makes a preset tiny: few steps, small batches, fast sample grids."""
    checkpoints = f"outputs/{name}/checkpoints"
    callbacks = [{"class_path": "guided_diffusion.training.RunCheckpoint",
                  "init_args": {"dirpath": checkpoints, "every_n_train_steps": 2, "save_last": True}}]
    if name == "diffusion":
        callbacks.append({"class_path": "guided_diffusion.training.SampleGridCallback",
                          "init_args": {"every_n_steps": 2, "samples_per_class": 2, "max_classes": 3,
                                        "steps": "ddim3"}})
    callbacks += [{"class_path": path} for path in extra_callbacks]
    config = {"trainer": {"max_steps": steps, "log_every_n_steps": 1, "val_check_interval": 2, "limit_val_batches": 2,
                          "enable_progress_bar": False, "callbacks": callbacks, **sections.pop("trainer", {})},
              "data": {"batch_size": 8, **sections.pop("data", {})}, **sections}
    path = tmp_path / f"{name}-{len(list(tmp_path.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_fit_diffusion_with_wandb_then_resume_export_predict(workdir):
    import wandb

    main(["fit", "--config", DIFFUSION_YAML, "--config", _override(workdir, "diffusion", steps=4)])
    wandb.finish()
    checkpoints = workdir / "outputs" / "diffusion" / "checkpoints"
    first = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert first["global_step"] == 4

    # W&B offline run: scalars (overall and per quartile), the resolved config and sample images.
    run_dir = next((workdir / "outputs" / "mnist" / "diffusion" / "wandb").glob("offline-run-*"))
    history, config = set(), {}
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            history |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif record.WhichOneof("record_type") == "config":
            config.update({item.key or "/".join(item.nested_key): item.value_json for item in record.config.update})
    for key in ("train/loss", "train/mse", "train/loss_q0", "train/mse_q3", "train/grad_norm",
                "train/param_norm", "train/lr", "train/nonfinite_steps", "val/loss", "val/mse_q1"):
        assert key in history, key
    assert "train/vb" not in history  # the MNIST recipe's variance is fixed: no L_vlb term to log
    assert "network" in config and "config" in config and "DiffusionModule" in config["config"]
    assert list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert sorted(p.name for p in (workdir / "outputs" / "mnist" / "diffusion" / "samples").glob("*.png")) == [
        "step_0000002.png", "step_0000004.png"]

    # Resume from last.ckpt: same step, same weights, EMA and timestep-sampler state.
    CAPTURED.clear()
    resume = _override(workdir, "diffusion", steps=6, extra_callbacks=["tests.test_cli.CaptureResumeState"],
                       trainer={"logger": False})
    main(["fit", "--config", DIFFUSION_YAML, "--config", resume, "--ckpt_path", "last"])
    assert CAPTURED["global_step"] == 4
    for key, value in first["state_dict"].items():
        assert torch.equal(CAPTURED["state"][key], value), key
    for key, value in first["timestep_sampler"].items():
        assert torch.equal(CAPTURED["sampler"][key], value), key
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 6

    # Export to the OpenAI layout: the file is recognised as the mnist32_adm preset.
    main(["export", str(checkpoints / "last.ckpt"), str(workdir / "mnist.pt"), "--ema", "true"])
    model, preset = load_openai_checkpoint(workdir / "mnist.pt")
    assert preset.name == "mnist32_adm"
    ema = {k[len("ema.module."):]: v for k, v in torch.load(checkpoints / "last.ckpt")["state_dict"].items()
           if k.startswith("ema.module.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())

    # Predict: one EMA sample per validation label.
    predict = _override(workdir, "diffusion", steps=6, trainer={"logger": False, "limit_predict_batches": 2},
                        data={"val_batch_size": 3})
    cli = lightning_main(["predict", "--config", DIFFUSION_YAML, "--config", predict, "--ckpt_path",
                          str(checkpoints / "last.ckpt"), "--model.init_args.sampling_steps", "ddim2"])
    prediction = cli.trainer.predict_loop.predictions[0]
    assert prediction["images"].shape == (3, 32, 32, 1) and prediction["images"].dtype == torch.uint8
    assert cli.model.sampling_steps == "ddim2"


def test_fit_and_validate_classifier(workdir):
    overrides = _override(workdir, "classifier", steps=2, trainer={"logger": False})
    main(["fit", "--config", CLASSIFIER_YAML, "--config", overrides])
    last = workdir / "outputs" / "classifier" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    cli = lightning_main(["validate", "--config", CLASSIFIER_YAML, "--config", overrides, "--ckpt_path", str(last)])
    metrics = cli.trainer.callback_metrics
    for key in ("val/loss", "val/acc@1", "val/acc@5", "val/acc@1_q0", "val/acc@1_q3", "val/loss_q2"):
        assert key in metrics, key


def test_unknown_config_key_is_a_clear_error(workdir, capsys):
    with pytest.raises(ValueError, match=r"^--model.init_args.network.num_clases: option 'num_clases' is not "
                                         r"accepted$"):
        main(["fit", "--config", DIFFUSION_YAML, "--model.init_args.network.num_clases", "10"])
    bad = workdir / "bad.yaml"
    bad.write_text("trainer:\n  max_stepz: 3\n")
    with pytest.raises(ValueError, match="max_stepz") as error:
        main(["fit", "--config", DIFFUSION_YAML, "--config", str(bad)])
    assert "\n" not in str(error.value)


def test_renamed_model_keys_are_refused_with_one_line_naming_the_new_key(workdir, capsys):
    """The EMA and loss-weighting options moved into groups: their flat keys end gd fit with one line (exit 2)."""
    from guided_diffusion.commands.fit import refuse_renamed_options
    from guided_diffusion.training.base import RENAMED_OPTIONS

    def error_lines(args):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", DIFFUSION_YAML, *args], one_line_errors=True)
        assert exit_info.value.code == 2
        return [line for line in capsys.readouterr().err.splitlines() if line.startswith("gd fit")]

    assert error_lines(["--model.init_args.ema_rate", "0.99"]) == [
        "gd fit: error: model.init_args.ema_rate was renamed: use model.init_args.ema.rate"]
    old = workdir / "old.yaml"
    old.write_text("model:\n  init_args:\n    loss_weighting: min-snr\n    min_snr_gamma: 5\n")
    assert error_lines(["--config", "old.yaml"]) == [
        "gd fit: error: model.init_args.loss_weighting was renamed: use model.init_args.loss_weighting.kind; "
        "model.init_args.min_snr_gamma was renamed: use model.init_args.loss_weighting.min_snr_gamma (in old.yaml)"]
    assert not (workdir / "outputs").exists()

    for key, new in RENAMED_OPTIONS.items():  # each old key, in every place an argument can be given
        message = f"model.init_args.{key} was renamed: use model.init_args.{new}"
        for args in ([f"--model.init_args.{key}=1"], [f"--model.{key}", "1"],
                     {"fit": {"model": {"init_args": {key: 1}}}},
                     ["--model", yaml.safe_dump({"class_path": "DiffusionModule", "init_args": {key: 1}})]):
            with pytest.raises(ValueError) as error:
                refuse_renamed_options(args)
            assert str(error.value) == message, args
    refuse_renamed_options(["--config", DIFFUSION_YAML, "--model.init_args.ema.rate", "0.99",  # the new keys pass
                            "--model.init_args.loss_weighting.kind=p2", "--model.init_args.loss_weighting",
                            '{"kind": "p2"}', "--model.init_args.lr", "1e-3"])


def test_a_checkpoint_with_the_flat_option_keys_validates_and_resumes(workdir):
    """A checkpoint written before the option groups (``ema_rate``, ``loss_weighting: min-snr``, ... in its
    hyper-parameters): ``--ckpt_path FILE`` rebuilds the module with its values in the groups, and a fit resumes."""
    tiny = {"init_args": {"network": {"model_channels": 32, "channel_mult": [1, 2], "attention_resolutions": []}}}
    first = _override(workdir, "diffusion", steps=1, trainer={"logger": False}, model=tiny)
    main(["fit", "--config", DIFFUSION_YAML, "--config", first])
    last = workdir / "outputs" / "diffusion" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["ema"] == {"rate": 0.9999, "warmup": True, "schedule": "power", "power_gamma": 6.94}
    assert hparams["loss_weighting"] == {"kind": "min-snr", "min_snr_gamma": 5.0, "min_snr_floor": 1.0,
                                         "p2_gamma": 1.0, "p2_k": 1.0}
    flat = {key: value for key, value in hparams.items() if key not in ("ema", "loss_weighting")}
    flat.update(ema_rate=0.99, ema_warmup=False, ema_schedule="rate", ema_power_gamma=3.0,
                loss_weighting="truncated-snr", min_snr_gamma=4.0, min_snr_floor=0.5, p2_gamma=0.5, p2_k=2.0)
    old = workdir / "old.ckpt"
    torch.save({**checkpoint, "hyper_parameters": flat}, old)
    ema = {"rate": 0.99, "warmup": False, "schedule": "rate", "power_gamma": 3.0}
    weighting = {"kind": "truncated-snr", "min_snr_gamma": 4.0, "min_snr_floor": 0.5, "p2_gamma": 0.5, "p2_k": 2.0}

    cli = lightning_main(["validate", "--config", DIFFUSION_YAML, "--config", first, "--ckpt_path", str(old)])
    module = cli.model
    assert module.hparams["ema"] == ema and module.hparams["loss_weighting"] == weighting
    assert (module.ema.decay, module.ema.warmup, module.ema.schedule, module.loss_weighting.kind) == (
        0.99, False, "rate", "truncated-snr")
    assert "val/loss" in cli.trainer.callback_metrics

    # fit --ckpt_path old.ckpt: one more step, with the EMA rate of the checkpoint
    main(["fit", "--config", DIFFUSION_YAML, "--config", _override(workdir, "diffusion", steps=2,
                                                                   trainer={"logger": False}, model=tiny),
          "--ckpt_path", str(old)])
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == 2
    assert resumed["hyper_parameters"]["ema"] == ema and resumed["hyper_parameters"]["loss_weighting"] == weighting
    before, after = checkpoint["state_dict"], resumed["state_dict"]
    assert int(after["ema.num_updates"]) == 2
    for key in (k for k in after if k.startswith("model.") and after[k].is_floating_point()):
        ema_key = "ema.module." + key[len("model."):]
        torch.testing.assert_close(after[ema_key], 0.99 * before[ema_key] + 0.01 * after[key], rtol=1e-5, atol=1e-6)


def test_image_size_the_network_cannot_take_is_a_clear_error(workdir):
    with pytest.raises(ValueError, match=r"image_size=30 is not divisible by 2\*\*2"):
        main(["fit", "--config", DIFFUSION_YAML, "--model.init_args.network.image_size", "30"])
    overrides = _override(workdir, "diffusion", steps=1, trainer={"logger": False},
                          data={"image_size": 28, "mnist_layout": "resize"})
    with pytest.raises(ValueError, match="28x28 images but the network was built for image_size=32"):
        main(["fit", "--config", DIFFUSION_YAML, "--config", overrides])
    assert not (workdir / "outputs" / "diffusion" / "checkpoints").exists()  # failed before training


def test_missing_data_folder_is_a_clear_error(workdir):
    with pytest.raises(FileNotFoundError, match="data_dir 'no/such/folder' does not exist"):
        main(["fit", "--config", DIFFUSION_YAML, "--data.dataset", "folder", "--data.data_dir", "no/such/folder",
              "--trainer.logger", "false"])


def test_presets_parse_and_match_the_network_presets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "imagenet256" / "diffusion.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "DiffusionModule" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / "imagenet512" / "upsampler.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "low_res_size: 128" in capsys.readouterr().out
    from classifiers import EncoderUNetConfig
    from guided_diffusion.nets import UNetConfig

    for size in (64, 128, 256):
        for job, preset, config_cls in (("diffusion", f"adm_imagenet{size}", UNetConfig),
                                        ("classifier", f"{size}_classifier", EncoderUNetConfig)):
            config = yaml.safe_load((CONFIGS / f"imagenet{size}" / f"{job}.yaml").read_text())
            network = config_cls(**config["model"]["init_args"]["network"])
            expected = get_preset(preset).config
            assert network.to_dict() | {"channel_mult": None} == expected.to_dict() | {"channel_mult": None}, preset
            assert network.resolved_channel_mult == expected.resolved_channel_mult, preset
    for size, preset in ((256, "adm_upsampler_64_256"), (512, "adm_upsampler_128_512")):  # ADM-U, the paper's runs
        config = yaml.safe_load((CONFIGS / f"imagenet{size}" / "upsampler.yaml").read_text())
        arguments, expected = config["model"]["init_args"], get_preset(preset)
        assert UNetConfig(**arguments["network"]) == expected.config, preset
        assert arguments["lr"] == expected.training["lr"] and config["trainer"]["max_steps"] == expected.training[
            "iterations"], preset
        trainer = config["trainer"]
        global_batch = (config["data"]["batch_size"] * trainer["devices"] * trainer["num_nodes"]
                        * trainer["accumulate_grad_batches"])
        assert global_batch == expected.training["batch_size"], preset
        assert config["data"]["image_size"] == expected.config.image_size
    for job, preset in (("diffusion", "mnist32_adm"), ("classifier", "mnist32_classifier")):
        config = yaml.safe_load((CONFIGS / "mnist" / f"{job}.yaml").read_text())
        config_cls = UNetConfig if job == "diffusion" else EncoderUNetConfig
        assert config_cls(**config["model"]["init_args"]["network"]) == get_preset(preset).config
