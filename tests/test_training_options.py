"""The fast-convergence training options against closed forms: MSE weightings (Min-SNR, P2), the
EMA schedules (ADM rate, EDM2 power function), the LR schedules; a short fit with each option; the
grid callback and sampling use the weights they name; the option groups (defaults, one-line errors,
the flat keys of older checkpoints)."""
from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import pytest
import torch

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.diffusion.weighting import LossWeighting, mse_weights, signal_to_noise
from guided_diffusion.training import EMA, DiffusionModule, NCSNModule, SampleGridCallback
from guided_diffusion.training.base import RENAMED_OPTIONS, migrate_hyperparameters
from guided_diffusion.training.lr_schedule import build_lr_scheduler
from guided_diffusion.training.ema import EmaOptions, ema_decay, power_ema_sigma_rel
from tests.test_training import tiny_data, tiny_diffusion_module, trainer


def cosine_abar(t: np.ndarray, steps: int, s: float = 0.008) -> np.ndarray:
    """abar_t = f(t + 1) / f(0) with f(u) = cos((u / T + s) / (1 + s) * pi / 2)^2 (improved DDPM, eq. 17)."""
    f = lambda u: np.cos((u / steps + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    return f(t + 1.0) / f(0.0)


# ---------------------------------------------------------------------------------------------- weighting


def test_min_snr_and_p2_weights_match_closed_forms_at_chosen_timesteps():
    diffusion = GaussianDiffusion.from_schedule("cosine", 1000)
    t = np.array([0, 100, 300, 500, 700, 900])
    abar = cosine_abar(t, 1000)
    assert np.allclose(diffusion.alphas_cumprod[t], abar, rtol=1e-9)
    snr = abar / (1 - abar)
    assert np.allclose(signal_to_noise(diffusion.alphas_cumprod)[t], snr, rtol=1e-9)
    # these timesteps straddle the cap: SNR > 5 at t <= 100... < 5 from t = 300 on
    assert snr[0] > 5 and snr[1] > 5 and (snr[2:] < 5).all()

    eps = mse_weights(diffusion.alphas_cumprod, "min-snr", min_snr_gamma=5.0)[t]
    assert eps[:2] == pytest.approx(5.0 / snr[:2], rel=1e-9)          # capped: 5 / SNR < 1
    assert eps[2:] == pytest.approx(np.ones(4))                         # below the cap: L_simple
    x0 = mse_weights(diffusion.alphas_cumprod, "min-snr", mean_type="x0", min_snr_gamma=5.0)[t]
    assert x0 == pytest.approx(np.minimum(snr, 5.0), rel=1e-9)
    floored = mse_weights(diffusion.alphas_cumprod, "min-snr", mean_type="x0", min_snr_gamma=5.0, min_snr_floor=1.0)[t]
    assert floored == pytest.approx(np.clip(snr, 1.0, 5.0), rel=1e-9)
    assert floored[[0, 2, 5]] == pytest.approx([5.0, snr[2], 1.0], rel=1e-9)      # capped, passed, floored
    floored_eps = mse_weights(diffusion.alphas_cumprod, "min-snr", min_snr_gamma=5.0, min_snr_floor=1.0)[t]
    assert floored_eps == pytest.approx(np.clip(snr, 1.0, 5.0) / snr, rel=1e-9)
    truncated = mse_weights(diffusion.alphas_cumprod, "truncated-snr", mean_type="x0")[t]
    assert truncated == pytest.approx(np.maximum(snr, 1.0), rel=1e-9)
    assert snr[2] > 1 > snr[4] and truncated[4] == 1.0 and truncated[2] == pytest.approx(snr[2])
    truncated_eps = mse_weights(diffusion.alphas_cumprod, "truncated-snr")[t]
    assert truncated_eps == pytest.approx(np.maximum(snr, 1.0) / snr, rel=1e-9)
    p2 = mse_weights(diffusion.alphas_cumprod, "p2", p2_gamma=1.0, p2_k=1.0)[t]
    assert p2 == pytest.approx(1.0 / (1.0 + snr), rel=1e-9)
    p2_half = mse_weights(diffusion.alphas_cumprod, "p2", p2_gamma=0.5, p2_k=2.0)[t]
    assert p2_half == pytest.approx((2.0 + snr) ** -0.5, rel=1e-9)
    assert (mse_weights(diffusion.alphas_cumprod, "p2", p2_gamma=0.0) == 1).all()   # gamma 0 = L_simple
    assert (mse_weights(diffusion.alphas_cumprod, "none") == 1).all()


def test_weighting_errors():
    abar = GaussianDiffusion.from_schedule("linear", 100).alphas_cumprod
    with pytest.raises(ValueError, match="unknown MSE weighting"):
        mse_weights(abar, "snr")
    with pytest.raises(ValueError, match="P2"):
        mse_weights(abar, "p2", mean_type="x0")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        mse_weights(abar, "min-snr", min_snr_gamma=0)
    with pytest.raises(ValueError, match="min_snr_floor"):
        mse_weights(abar, "min-snr", min_snr_floor=6.0)


def test_mse_weight_scales_only_the_mse_term_of_the_hybrid_loss():
    diffusion = GaussianDiffusion.from_schedule("cosine", 50, var_type="learned_range")
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 4, 4, generator=generator) * 2 - 1
    noise = torch.randn(x0.shape, generator=generator)
    output = torch.randn(4, 2, 4, 4, generator=generator)
    t = torch.tensor([1, 10, 30, 49])
    plain = diffusion.training_losses(lambda x, t, **_: output, x0, t, noise=noise)
    weight = torch.tensor([0.5, 1.0, 2.0, 0.25])
    weighted = diffusion.training_losses(lambda x, t, **_: output, x0, t, noise=noise, mse_weight=weight)
    assert torch.equal(weighted["mse"], plain["mse"]) and torch.equal(weighted["vb"], plain["vb"])
    assert torch.allclose(weighted["loss"], weight * plain["mse"] + plain["vb"])


def test_module_applies_the_weight_of_each_sampled_timestep(tmp_path):
    module = tiny_diffusion_module(loss_weighting=LossWeighting("min-snr", min_snr_gamma=2.0))
    expected = mse_weights(module.diffusion.alphas_cumprod, "min-snr", min_snr_gamma=2.0)
    assert torch.allclose(module.mse_weight_table.double(), torch.as_tensor(expected), rtol=1e-6)
    assert "mse_weight_table" not in module.state_dict()          # derived from the hyper-parameters
    assert module.hparams["loss_weighting"] == {"kind": "min-snr", "min_snr_gamma": 2.0, "min_snr_floor": 0.0,
                                                "p2_gamma": 1.0, "p2_k": 1.0}
    seen = {}
    original = module.diffusion.training_losses

    def spy(model, x, t, **kwargs):
        seen["t"], seen["w"] = t, kwargs["mse_weight"]
        return original(model, x, t, **kwargs)

    module.diffusion.training_losses = spy
    trainer(tmp_path, max_steps=1).fit(module, tiny_data())
    assert torch.allclose(seen["w"].double(), torch.as_tensor(expected)[seen["t"]], rtol=1e-6)


# ---------------------------------------------------------------------------------------------- EMA


def test_ema_decay_values():
    assert [ema_decay(n, "rate", rate=0.9999) for n in range(3)] == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    assert ema_decay(10**7, "rate", rate=0.9999) == 0.9999
    assert ema_decay(0, "rate", rate=0.99, warmup=False) == 0.99
    gamma = 6.94
    assert ema_decay(0, "power", power_gamma=gamma) == 0.0                      # the first update copies
    for n in (1, 9, 999):
        assert ema_decay(n, "power", power_gamma=gamma) == pytest.approx((n / (n + 1)) ** (gamma + 1), rel=1e-12)
    assert power_ema_sigma_rel(6.94) == pytest.approx(0.10, abs=5e-4)         # EDM2's sigma_rel 0.10
    assert power_ema_sigma_rel(16.97) == pytest.approx(0.05, abs=5e-4)


def test_power_ema_is_the_power_function_average_of_the_iterates():
    """After N updates with iterates theta_k, the power EMA weighs theta_k by
    ((k + 1) / N)^(gamma + 1) - (k / N)^(gamma + 1): a profile ~ k^gamma over the whole run."""
    gamma, count = 3.0, 40
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, schedule="power", power_gamma=gamma)
    thetas = torch.linspace(-1.0, 2.0, count) ** 2
    for theta in thetas:
        with torch.no_grad():
            model.weight.fill_(float(theta))
        ema.update(model)
    k = torch.arange(count, dtype=torch.float64)
    weights = ((k + 1) / count) ** (gamma + 1) - (k / count) ** (gamma + 1)
    assert float(weights.sum()) == pytest.approx(1.0)
    expected = float((weights * thetas.double()).sum())
    assert float(ema.module.weight) == pytest.approx(expected, rel=1e-5)
    assert "power-function EMA" in ema.describe() and "after 40 updates" in ema.describe()
    with pytest.raises(ValueError, match="EMA schedule"):
        EMA(model, schedule="karras")


# ---------------------------------------------------------------------------------------------- LR


def lr_values(steps: int, **kwargs) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, **kwargs)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("warmup,anneal", [(0, 0), (4, 0), (0, 10), (4, 10), (1, 7)])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_matches_its_formula(warmup, anneal, schedule):
    w = warmup if warmup > 1 else 0

    def expected(s: int) -> float:
        if s < w:
            return (s + 1) / w
        if not anneal:
            return 1.0
        if s >= anneal:
            return 0.0
        fraction = (s - w) / (anneal - w)
        return 1 - fraction if schedule == "linear" else (1 + math.cos(math.pi * fraction)) / 2

    assert lr_values(16, warmup_steps=warmup, anneal_steps=anneal, schedule=schedule) == pytest.approx(
        [expected(s) for s in range(16)], abs=1e-9)


def test_linear_anneal_without_warmup_is_guided_diffusions():
    # guided-diffusion's TrainLoop._anneal_lr: lr * (1 - step / lr_anneal_steps)
    assert lr_values(6, anneal_steps=4) == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])


def test_lr_schedule_errors():
    with pytest.raises(ValueError, match="lr_schedule"):
        tiny_diffusion_module(lr_schedule="step")
    with pytest.raises(ValueError, match="must exceed"):
        tiny_diffusion_module(lr_warmup_steps=10, lr_anneal_steps=5)


# ---------------------------------------------------------------------------------------------- fits


@pytest.mark.parametrize("options", [
    dict(loss_weighting=LossWeighting("min-snr")),
    dict(loss_weighting={"kind": "p2", "p2_gamma": 0.5}),                  # the dict form, as in a YAML config
    dict(ema=EmaOptions(schedule="power", power_gamma=16.97)),
    dict(lr_warmup_steps=2, lr_anneal_steps=3, lr_schedule="cosine"),
], ids=["min-snr", "p2", "power-ema", "warmup-cosine"])
def test_two_step_fit_with_each_option(tmp_path, options):
    module = tiny_diffusion_module(lr=1e-3, **options)
    before = [p.detach().clone() for p in module.model.parameters()]
    trainer(tmp_path, max_steps=2).fit(module, tiny_data())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.model.parameters()))
    assert int(module.ema.num_updates) == 2
    assert all(torch.isfinite(p).all() for p in module.ema.module.parameters())


def test_gradient_clipping_through_the_trainer_bounds_the_update(tmp_path):
    """``trainer.gradient_clip_val`` (Lightning's clipping) caps the gradient norm the optimizer sees."""
    norms = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            loss = closure() if closure is not None else None
            norms.append(float(torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for group in self.param_groups for p in group["params"] if p.grad is not None]))))
            return loss

    module = tiny_diffusion_module(lr=1e-3)
    module.configure_optimizers = lambda: Spy(module.model.parameters(), lr=1e-3)
    trainer(tmp_path, max_steps=2, gradient_clip_val=1e-3).fit(module, tiny_data())
    assert len(norms) == 2 and max(norms) == pytest.approx(1e-3, rel=1e-3)


# ---------------------------------------------------------------------------------------------- weights named


def test_sampling_and_grid_callback_use_the_weights_they_name(tmp_path):
    module = tiny_diffusion_module(ema=EmaOptions(schedule="power"))
    trainer(tmp_path, max_steps=2).fit(module, tiny_data())
    with torch.no_grad():                                           # make the two weight sets differ visibly
        for p in module.model.parameters():
            p.add_(1.0)
    labels = torch.arange(4)

    def draw(weights):
        return module.sample(4, labels, steps="ddim2", generator=torch.Generator().manual_seed(0), weights=weights)

    ema, raw = draw("ema"), draw("raw")
    assert not torch.allclose(ema, raw)
    direct = module.sample(4, labels, steps="ddim2", generator=torch.Generator().manual_seed(0))
    assert torch.equal(direct, ema)                                  # the default is the EMA
    assert "power-function EMA" in module.describe_weights("ema")
    assert module.describe_weights("raw").startswith("raw weights")

    captions = {}
    for weights in ("ema", "raw"):
        callback = SampleGridCallback(every_n_steps=0, samples_per_class=1, steps="ddim2", weights=weights)
        calls = []
        original = module.sample
        module.sample = lambda *a, **k: calls.append(k["weights"]) or original(*a, **k)
        fit = trainer(tmp_path / weights, max_steps=1, callbacks=[callback])
        fit.fit(module, tiny_data())
        module.sample = original
        captions[weights] = calls
    assert captions == {"ema": ["ema"], "raw": ["raw"]}
    with pytest.raises(ValueError, match="weights"):
        SampleGridCallback(weights="best")


def test_the_grid_callback_logs_the_ema_grid_at_each_validation_once_per_step(tmp_path):
    """Validation at steps 3 and 6 (grids every 2 steps, so step 6 already has one) and the sanity check (none)."""
    module = tiny_diffusion_module()
    callback = SampleGridCallback(every_n_steps=2, samples_per_class=1, max_classes=2, steps="ddim2",
                                  at_train_end=False)
    fit = trainer(tmp_path, max_steps=6, callbacks=[callback], limit_val_batches=1, val_check_interval=3,
                  num_sanity_val_steps=1)
    steps, original = [], callback.log_samples
    callback.log_samples = lambda trainer, pl_module: steps.append(trainer.global_step) or original(trainer, pl_module)
    fit.fit(module, tiny_data())
    assert steps == [2, 3, 4, 6]  # step 6: one grid for the step and its validation
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == [
        "step_0000002.png", "step_0000003.png", "step_0000004.png", "step_0000006.png"]
    quiet = SampleGridCallback(every_n_steps=0, samples_per_class=1, max_classes=2, steps="ddim2",
                               at_train_end=False, at_validation=False)
    trainer(tmp_path / "quiet", max_steps=3, callbacks=[quiet], limit_val_batches=1, val_check_interval=3).fit(
        tiny_diffusion_module(), tiny_data())
    assert not (tmp_path / "quiet" / "samples").exists()


# ---------------------------------------------------------------------------------------------- option groups


def test_option_groups_keep_the_former_defaults():
    """The defaults of the flat arguments they replace: ADM's EMA (DiffusionModule), NCSNv2's rate (NCSNModule),
    no MSE weighting."""
    adm_ema = EmaOptions(rate=0.9999, warmup=True, schedule="rate", power_gamma=6.94)
    no_weighting = LossWeighting(kind="none", min_snr_gamma=5.0, min_snr_floor=0.0, p2_gamma=1.0, p2_k=1.0)
    assert EmaOptions() == adm_ema and LossWeighting() == no_weighting
    diffusion_defaults = inspect.signature(DiffusionModule).parameters
    assert diffusion_defaults["ema"].default == adm_ema
    assert diffusion_defaults["loss_weighting"].default == no_weighting
    assert inspect.signature(NCSNModule).parameters["ema"].default == dataclasses.replace(adm_ema, rate=0.999)
    assert len(diffusion_defaults) <= 20 and len(inspect.signature(NCSNModule).parameters) <= 20

    module = tiny_diffusion_module()
    assert (module.ema.decay, module.ema.warmup, module.ema.schedule, module.ema.power_gamma) == (0.9999, True,
                                                                                                  "rate", 6.94)
    assert module.loss_weighting == no_weighting and module.loss_weighting.is_uniform
    # hyper-parameters hold plain dicts (checkpoints load with weights_only=True)
    assert module.hparams["ema"] == {"rate": 0.9999, "warmup": True, "schedule": "rate", "power_gamma": 6.94}
    assert module.hparams["loss_weighting"] == {"kind": "none", "min_snr_gamma": 5.0, "min_snr_floor": 0.0,
                                                "p2_gamma": 1.0, "p2_k": 1.0}
    # a dict (a YAML mapping) is read over the module's own default
    assert tiny_diffusion_module(ema={"schedule": "power"}).ema.decay == 0.9999
    with pytest.raises(dataclasses.FrozenInstanceError):
        module.loss_weighting.kind = "p2"
    with pytest.raises(ValueError, match=r"^unknown EMA option\(s\) rat; the options are rate, warmup, schedule, "
                                         r"power_gamma$"):
        tiny_diffusion_module(ema={"rat": 0.9})


@pytest.mark.parametrize("group,field,value,message", [
    (EmaOptions, "rate", 1.0, "ema.rate must lie in [0, 1), got 1.0"),
    (EmaOptions, "rate", -0.5, "ema.rate must lie in [0, 1), got -0.5"),
    (EmaOptions, "rate", float("nan"), "ema.rate must lie in [0, 1), got nan"),
    (EmaOptions, "warmup", "yes", "ema.warmup must be true or false, got 'yes'"),
    (EmaOptions, "schedule", "karras", "unknown EMA schedule 'karras' (ema.schedule): choose 'rate' or 'power'"),
    (EmaOptions, "power_gamma", 0.0, "ema.power_gamma (the power EMA's gamma) must be a number > 0, got 0.0"),
    (LossWeighting, "kind", "snr",
     "unknown MSE weighting 'snr' (loss_weighting.kind): choose from none, min-snr, truncated-snr, p2"),
    (LossWeighting, "min_snr_gamma", 0.0, "loss_weighting.min_snr_gamma must be a number > 0, got 0.0"),
    (LossWeighting, "min_snr_floor", 6.0, "loss_weighting.min_snr_floor must lie in [0, min_snr_gamma = 5.0], got 6.0"),
    (LossWeighting, "min_snr_floor", -1.0,
     "loss_weighting.min_snr_floor must lie in [0, min_snr_gamma = 5.0], got -1.0"),
    (LossWeighting, "p2_gamma", -0.5, "loss_weighting.p2_gamma must be a number >= 0, got -0.5"),
    (LossWeighting, "p2_k", 0.0, "loss_weighting.p2_k must be a number > 0, got 0.0"),
], ids=lambda value: value if isinstance(value, str) and " " not in value else None)
def test_each_bad_option_is_one_line_naming_it(group, field, value, message):
    with pytest.raises(ValueError) as error:
        group(**{field: value})
    assert str(error.value) == message
    module_argument = "ema" if group is EmaOptions else "loss_weighting"
    with pytest.raises(ValueError) as error:
        tiny_diffusion_module(**{module_argument: {field: value}})   # the dict form of a config
    assert str(error.value) == message


def _weights_before(alphas_cumprod, kind, mean_type, gamma, floor, p2_gamma, p2_k):
    """w_t as the flat arguments computed it (``loss_weighting``, ``min_snr_gamma``, ... of DiffusionModule)."""
    snr = signal_to_noise(alphas_cumprod)
    if kind == "none":
        return np.ones_like(snr)
    if kind == "min-snr":
        x0_weight = np.maximum(np.minimum(snr, gamma), floor)
        return x0_weight / snr if mean_type == "eps" else x0_weight
    if kind == "truncated-snr":
        return np.maximum(snr, 1.0) / snr if mean_type == "eps" else np.maximum(snr, 1.0)
    return 1.0 / (p2_k + snr) ** p2_gamma


@pytest.mark.parametrize("kind", ["none", "min-snr", "truncated-snr", "p2"])
@pytest.mark.parametrize("mean_type", ["eps", "x0"])
def test_the_weighting_group_computes_the_former_weights(kind, mean_type):
    alphas_cumprod = GaussianDiffusion.from_schedule("cosine", 1000).alphas_cumprod
    options = dict(min_snr_gamma=3.0, min_snr_floor=0.5, p2_gamma=0.5, p2_k=2.0)
    weighting = LossWeighting(kind, **options)
    if kind == "p2" and mean_type == "x0":
        with pytest.raises(ValueError, match="P2 weighting is defined on the eps loss"):
            weighting.weights(alphas_cumprod, mean_type)
        return
    expected = _weights_before(alphas_cumprod, kind, mean_type, *options.values())
    assert np.array_equal(weighting.weights(alphas_cumprod, mean_type), expected)      # bit for bit
    assert np.array_equal(mse_weights(alphas_cumprod, kind, mean_type=mean_type, **options), expected)
    assert kind == "none" or not np.allclose(expected, 1.0)                             # each kind weighs


def test_old_flat_hyper_parameters_move_into_the_groups():
    """Checkpoints written before the groups hold the flat keys; ``--ckpt_path`` runs rebuild from the migrated ones."""
    flat = {"_class_path": "guided_diffusion.training.diffusion_module.DiffusionModule", "lr": 2e-3,
            "ema_rate": 0.99, "ema_warmup": False, "ema_schedule": "power", "ema_power_gamma": 3.0,
            "timestep_sampler": "uniform", "loss_weighting": "min-snr", "min_snr_gamma": 4.0, "min_snr_floor": 0.5,
            "p2_gamma": 0.5, "p2_k": 2.0}
    migrated = migrate_hyperparameters(flat)
    assert migrated == {"_class_path": flat["_class_path"], "lr": 2e-3, "timestep_sampler": "uniform",
                        "ema": {"rate": 0.99, "warmup": False, "schedule": "power", "power_gamma": 3.0},
                        "loss_weighting": {"kind": "min-snr", "min_snr_gamma": 4.0, "min_snr_floor": 0.5,
                                           "p2_gamma": 0.5, "p2_k": 2.0}}
    assert migrate_hyperparameters({"ema_rate": 0.999, "ema_warmup": True}) == {   # an NCSNModule checkpoint
        "ema": {"rate": 0.999, "warmup": True}}
    module = tiny_diffusion_module(**{k: v for k, v in migrated.items() if k != "_class_path"})
    assert (module.ema.decay, module.ema.warmup, module.ema.schedule, module.ema.power_gamma) == (0.99, False,
                                                                                                  "power", 3.0)
    assert module.loss_weighting == LossWeighting("min-snr", 4.0, 0.5, 0.5, 2.0)
    assert migrate_hyperparameters(module.hparams) == dict(module.hparams)          # the grouped layout is kept
    # every new place is a field of the group the module takes under that name
    groups = {"ema": EmaOptions, "loss_weighting": LossWeighting}
    for old, new in RENAMED_OPTIONS.items():
        group, field = new.split(".")
        assert field in {f.name for f in dataclasses.fields(groups[group])}, old
        assert group in inspect.signature(DiffusionModule).parameters, old
