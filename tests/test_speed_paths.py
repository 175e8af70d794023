"""GPU fast paths proven on CPU: the fused reduced-precision attention path, and hot paths that never read
a value back from the device (run on the ``meta`` device, where any such read raises)."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from classifiers import EncoderUNet, EncoderUNetConfig
from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.guidance import ClassifierGuidance
from guided_diffusion.nets import UNet, UNetConfig
from guided_diffusion.nets.layers import attention
from guided_diffusion.noise import PhiloxStreams, sample_noise
from guided_diffusion.sampling import sample
from guided_diffusion.tensor_checks import check_index_range


@pytest.mark.parametrize("path", ["fused", "float32"])
@pytest.mark.parametrize("inputs, autocast", [("bf16", False), ("fp32", True), ("bf16", True)])
def test_both_attention_paths_agree_with_float32_within_bf16_tolerance(path, inputs, autocast):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32, generator=generator) for _ in range(3))
    reference = torch.softmax(q @ k.transpose(-1, -2) / 32 ** 0.5, dim=-1) @ v  # float32, by hand
    given = [x.bfloat16() if inputs == "bf16" else x for x in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = attention(*given, path=path)
    assert out.dtype == given[0].dtype
    error = (out.float() - reference).abs().max().item()
    # bf16 has an 8-bit mantissa: inputs rounded to 2^-9 relative; outputs are O(1) averages
    assert error < 0.03, error
    if path == "float32" and inputs == "fp32":
        assert error < 1e-5  # upcast: float32 throughout


def test_the_paths_differ_where_they_should_and_auto_picks_float32_on_cpu():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 128, 64, generator=generator) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, upcast, auto = (attention(q, k, v, path=p) for p in ("fused", "float32", "auto"))
    assert not torch.equal(fused, upcast)  # the fused path really ran in bf16
    assert torch.equal(auto, upcast)
    with pytest.raises(ValueError, match="attention path"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attention(q, k, v, path="fast")


def test_index_checks_raise_on_cpu_and_are_asynchronous_elsewhere(monkeypatch):
    check_index_range(torch.tensor([0, 9]), 10, "label")
    with pytest.raises(ValueError, match=r"label 10 is out of range \[0, 9\] for a model"):
        check_index_range(torch.tensor([3, 10]), 10, "label", " for a model")
    with pytest.raises(ValueError, match=r"timestep -1 is out of range"):
        check_index_range(torch.tensor([-1]), 10, "timestep")
    asserted = []
    monkeypatch.setattr(torch, "_assert_async", lambda condition, message: asserted.append((condition, message)))
    check_index_range(torch.empty(3, dtype=torch.long, device="meta"), 10, "label")  # a read would raise here
    assert len(asserted) == 1 and asserted[0][0].device.type == "meta" and "label out of range" in asserted[0][1]


@pytest.fixture
def meta_device(monkeypatch):
    """Run on ``meta``: no device assertions (not implemented there) and no autocast contexts (idem)."""
    real_autocast, real_enabled = torch.autocast, torch.is_autocast_enabled
    monkeypatch.setattr(torch, "is_autocast_enabled",
                        lambda *device: False if device == ("meta",) else real_enabled(*device))
    monkeypatch.setattr(torch, "_assert_async", lambda *args: None)
    monkeypatch.setattr(torch, "autocast", lambda device_type, *args, **kwargs: contextlib.nullcontext()
                        if device_type == "meta" else real_autocast(device_type, *args, **kwargs))


def _meta_models():
    with torch.device("meta"):
        model = UNet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                attention_resolutions=(8,), num_head_channels=32, learn_sigma=True, num_classes=4))
        classifier = EncoderUNet(EncoderUNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2),
                                                   num_res_blocks=1, attention_resolutions=(8,),
                                                   num_head_channels=32, num_classes=4))
    return model, classifier


@pytest.mark.parametrize("sampler, steps", [("ddim", "ddim3"), ("ddpm", "3")])
def test_a_guided_sampling_run_never_reads_a_value_back_from_the_device(sampler, steps, meta_device):
    """On the meta device ``int()``, ``bool()`` and ``.item()`` raise: a sampler that ran here makes no host sync
    per step (checks are device assertions, the timestep map is indexed on the device, the per-sample noise is
    Philox streams computed on the device, as ``auto`` picks off the CPU)."""
    model, classifier = _meta_models()
    diffusion = DiffusionConfig(steps=100, noise_schedule="cosine", learn_sigma=True).build()
    x_T = torch.empty(2, 3, 16, 16, device="meta")
    y = torch.empty(2, dtype=torch.long, device="meta")
    noise = sample_noise(0, [0, 1], "meta")
    assert isinstance(noise, PhiloxStreams)
    out = sample(model, diffusion, x_T, sampler=sampler, steps=steps, y=y, generator=noise,
                 guidance=ClassifierGuidance(classifier, 1.0), progress=False)
    assert out.shape == (2, 3, 16, 16) and out.device.type == "meta"
    assert noise.draws == (2 if sampler == "ddpm" else 0)  # DDPM draws fresh noise at every step but the last


def test_a_training_loss_never_reads_a_value_back_from_the_device(meta_device):
    model, _ = _meta_models()
    diffusion = DiffusionConfig(steps=100, noise_schedule="cosine", learn_sigma=True).build()
    x = torch.empty(2, 3, 16, 16, device="meta")
    t = torch.empty(2, dtype=torch.long, device="meta")
    terms = diffusion.training_losses(model, x, t, y=torch.empty(2, dtype=torch.long, device="meta"),
                                      noise=torch.empty_like(x))
    terms["loss"].mean().backward()
    assert next(model.parameters()).grad is not None


# ---------------------------------------------------------------------------------------------- compile, channels_last
TINY = UNetConfig(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                  num_head_channels=32, learn_sigma=True, num_classes=4)


def _tiny_inputs():
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(3, 3, 8, 8, generator=generator), torch.tensor([0, 10, 99]), torch.tensor([0, 1, 3]))


def _randomised_unet():
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p), alpha=0.05)  # zero-initialised output layers would hide any difference
    return model


def test_channels_last_changes_the_speed_not_the_result():
    from guided_diffusion.nets import apply_fast_paths

    x, t, y = _tiny_inputs()
    expected = _randomised_unet()(x, t, y)
    nhwc = apply_fast_paths(_randomised_unet(), channels_last=True)
    assert nhwc.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc(x, t, y), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # inductor compiles the UNet forward: 1-2 minutes on 2 cores
def test_compile_changes_the_speed_not_the_result():
    from guided_diffusion.nets import apply_fast_paths

    x, t, y = _tiny_inputs()
    eager = _randomised_unet()
    expected, keys = eager(x, t, y), list(eager.state_dict())
    compiled = apply_fast_paths(_randomised_unet(), compile=True, channels_last=True)
    assert apply_fast_paths(compiled, compile=True) is compiled  # idempotent
    torch.testing.assert_close(compiled(x, t, y), expected, atol=1e-5, rtol=1e-5)
    assert list(compiled.state_dict()) == keys  # checkpoints are unchanged


def _fit_fast_module(tmp_path):
    import lightning as L

    from guided_diffusion.data.datamodule import ImageDataModule
    from guided_diffusion.training import DiffusionModule

    module = DiffusionModule(network=TINY, diffusion=DiffusionConfig(steps=100, learn_sigma=True),
                             compile=True, channels_last=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, ImageDataModule(dataset="synthetic", image_size=8, batch_size=4, synthetic_size=16,
                                        synthetic_classes=4))
    for network in (module.model, module.ema.module):
        assert network.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert int(module.ema.num_updates) == 2
    trainer.save_checkpoint(tmp_path / "fast.ckpt")
    return module


def test_training_modules_apply_compile_and_channels_last_to_the_network_and_its_ema(tmp_path, monkeypatch):
    from guided_diffusion.checkpoints import load_diffusion_checkpoint

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    module = _fit_fast_module(tmp_path)
    assert compiled == [module.model, module.ema.module]  # once each (configure_model), not per fit stage
    network, _, _ = load_diffusion_checkpoint(tmp_path / "fast.ckpt")
    torch.testing.assert_close(network.state_dict(), module.ema.module.state_dict())


@pytest.mark.slow  # real inductor compilation of forward and backward: minutes on 2 cores
def test_a_compiled_training_run_writes_a_plain_checkpoint(tmp_path):
    from guided_diffusion.checkpoints import load_diffusion_checkpoint

    module = _fit_fast_module(tmp_path)
    assert module.model._compiled_call_impl is not None and module.ema.module._compiled_call_impl is not None
    network, _, _ = load_diffusion_checkpoint(tmp_path / "fast.ckpt")  # a plain UNet: no "_orig_mod." keys
    torch.testing.assert_close(network.state_dict(), module.ema.module.state_dict())


def test_the_gpu_check_runs_on_cpu(capsys):
    gpu_check = _load_benchmark("gpu_check")
    gpu_check.main(["--device", "cpu", "--small", "--no-compile", "--train_steps", "1"])
    out = capsys.readouterr().out
    for row in ("train step, batch 2", "float16", "guided DDIM-2, batch 2", "bf16 fused attention",
                "noise of one step, batch 2, philox"):
        assert row in out
    errors = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "relative L2 error" in line]
    assert len(errors) == 3 and all(0 < e < 0.05 for e in errors), errors


def _load_benchmark(name: str):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reference_benchmark_imports_a_checkout_beside_this_project(tmp_path, capsys):
    """``bench_reference.py --reference DIR`` loads a package named ``guided_diffusion`` (relative imports) as
    ``reference_guided_diffusion`` while this project's ``guided_diffusion`` stays the one imported; a directory
    without the package is one clear line; without a reference only this project's rows are timed."""
    bench = _load_benchmark("bench_reference")
    package = tmp_path / "checkout" / "guided_diffusion"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nn.py").write_text("VALUE = 3\n")
    (package / "unet.py").write_text("from .nn import VALUE\n")
    (package / "script_util.py").write_text("from . import unet\n")
    try:
        unet, script_util = bench.import_reference(tmp_path / "checkout")
        assert unet.__name__ == "reference_guided_diffusion.unet" and unet.VALUE == 3 and script_util.unet is unet
        assert Path(unet.__file__).parent == package
    finally:
        for name in [name for name in sys.modules if name.startswith(bench.REFERENCE_PACKAGE)]:
            del sys.modules[name]
    import guided_diffusion

    assert Path(guided_diffusion.__file__).resolve().parents[1] == Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit, match="no guided_diffusion package"):
        bench.import_reference(tmp_path)
    bench.main(["--preset", "mnist32_adm", "--classifier", "mnist32_classifier", "--batch", "2", "--rounds", "1",
                "--precisions", "fp32", "--no-memory"])
    out = capsys.readouterr().out
    assert "ours" in out and "reference" not in out.split("medians")[-1] and "GFLOP" in out
