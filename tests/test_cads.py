"""CADS (condition-annealed sampling): the schedule, the embedding transform, and what it does to sampling."""
import math

import pytest
import torch
from torch import nn

from guided_diffusion.diffusion import GaussianDiffusion
from guided_diffusion.guidance import ClassifierFreeGuidance, ConditionAnnealing, NoiseLevel, as_guidance
from guided_diffusion.guidance.cads import anneal_condition, cads_gamma
from guided_diffusion.nets import UNetConfig
from guided_diffusion.noise import randn
from guided_diffusion.sampling import sample

DIFFUSION = GaussianDiffusion.from_schedule("cosine", 100)
LABELS = torch.tensor([0, 1, 1])
NULL = 2  # the null label of NET (num_classes = 2, null_class)


def tiny_unet(num_classes=2, null_class=True, seed=0):
    torch.manual_seed(seed)
    net = UNetConfig(image_size=8, in_channels=3, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                     attention_resolutions=(), num_classes=num_classes, null_class=null_class).build().eval()
    with torch.no_grad():  # the zero-initialised convs (outputs of the blocks, of the network) made random
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)
    return net


NET = tiny_unet()


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def level(tau):
    return NoiseLevel(t=tau * 99, sigma=1.0, tau=tau)


def embeddings_seen(model, x, t, y):
    """The embedding (time + label) NET's blocks see when ``model`` (NET, maybe wrapped) is called."""
    seen = []
    handle = NET.input_blocks[0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[1].clone()))
    try:
        with torch.no_grad():
            model(x, t, y=y)
    finally:
        handle.remove()
    return torch.cat(seen)


def run(guidance=None, sampler="ddim", seeds=(1, 2, 3), y=LABELS, steps="ddim5", x=None, **options):
    with torch.no_grad():
        return sample(NET, DIFFUSION, (len(seeds), 3, 8, 8) if x is None else x, sampler=sampler, steps=steps, y=y,
                      guidance=guidance, generator=gens(seeds), progress=False, **options)


# --- the schedule and the transform -------------------------------------------------------------------------


def test_gamma_schedule():
    assert [cads_gamma(tau) for tau in (0.0, 0.3, 0.6, 0.75, 0.9, 0.95, 1.0)] == [1, 1, 1, pytest.approx(0.5), 0, 0, 0]
    cads = ConditionAnnealing(0.25, tau1=0.2, tau2=0.6)
    assert [cads.gamma(tau) for tau in (0.0, 0.2, 0.3, 0.4, 0.6, 1.0)] == \
        [1, 1, pytest.approx(0.75), pytest.approx(0.5), 0, 0]
    assert ConditionAnnealing(0.25, tau1=1.0).gamma(1.0) == 1.0  # tau1 = 1: off


def test_bad_arguments_are_refused_in_one_line():
    for kwargs, words in [({"noise_scale": -0.1}, "noise_scale must be >= 0"),
                          ({"noise_scale": math.nan}, "noise_scale"), ({"noise_scale": "x"}, "must be a number"),
                          ({"noise_scale": 0.25, "tau1": 0.9, "tau2": 0.6}, "tau1 < tau2"),
                          ({"noise_scale": 0.25, "tau1": 0.5, "tau2": 0.5}, "tau1 < tau2"),
                          ({"noise_scale": 0.25, "tau2": 1.5}, "tau2 must be in [0, 1]"),
                          ({"noise_scale": 0.25, "tau1": -0.1}, "tau1 must be in [0, 1]"),
                          ({"noise_scale": 0.25, "psi": 1.5}, "psi must be in [0, 1]")]:
        with pytest.raises(ValueError) as error:
            ConditionAnnealing(**kwargs)
        assert words in str(error.value) and "\n" not in str(error.value)


def by_hand(y, n, gamma, s, psi):
    """y_final of the paper, row by row in float64 with the population std (the ratio is the same)."""
    out = torch.empty_like(y, dtype=torch.float64)
    for i in range(y.shape[0]):
        row, noise = y[i].double().tolist(), n[i].double().tolist()
        hat = [math.sqrt(gamma) * a + s * math.sqrt(1 - gamma) * b for a, b in zip(row, noise)]
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        std = lambda v: math.sqrt(sum((a - mean(v)) ** 2 for a in v) / len(v))  # noqa: E731
        rescaled = [(a - mean(hat)) / std(hat) * std(row) + mean(row) for a in hat]
        out[i] = torch.tensor([psi * r + (1 - psi) * h for r, h in zip(rescaled, hat)])
    return out


@pytest.mark.parametrize("gamma", [0.0, 0.5])
@pytest.mark.parametrize("psi", [0.0, 1.0, 0.5])
def test_the_embedding_transform_against_a_hand_computation(gamma, psi):
    y = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * 2 + 0.5
    n = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    out = anneal_condition(y, n, gamma, 0.25, psi)
    torch.testing.assert_close(out.double(), by_hand(y, n, gamma, 0.25, psi), atol=1e-5, rtol=1e-5)
    if psi == 1.0:  # each row has the mean and spread of its clean embedding
        torch.testing.assert_close(out.mean(-1), y.mean(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.std(-1), y.std(-1), atol=1e-5, rtol=1e-5)
    if psi == 0.0:
        torch.testing.assert_close(out, math.sqrt(gamma) * y + 0.25 * math.sqrt(1 - gamma) * n)


def test_without_noise_the_rescaled_embedding_is_the_condition():
    y = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    for gamma in (0.0, 0.3, 1.0):
        assert torch.equal(anneal_condition(y, None, gamma, 0.0, 1.0), y)
        torch.testing.assert_close(anneal_condition(y, None, gamma, 0.0, 0.5), (0.5 + 0.5 * math.sqrt(gamma)) * y)
    # the formula itself at s = 0 (gamma > 0) gives y to rounding
    hat = math.sqrt(0.3) * y
    torch.testing.assert_close((hat - hat.mean(-1, keepdim=True)) / hat.std(-1, keepdim=True) * y.std(-1, keepdim=True)
                               + y.mean(-1, keepdim=True), y, atol=1e-6, rtol=0)


# --- the model call ------------------------------------------------------------------------------------------


def test_the_network_sees_the_annealed_embedding_drawn_from_the_sample_streams():
    x, t = torch.randn(3, 3, 8, 8), torch.full((3,), 80)
    cads = ConditionAnnealing(0.25, tau1=0.6, tau2=0.9, psi=0.5).start(gens([4, 5, 6]))
    step = cads.at(level(0.75))  # gamma = 0.5
    plain = embeddings_seen(NET, x, t, LABELS)
    annealed = embeddings_seen(step.wrap_model(NET), x, t, LABELS)
    y = NET.label_emb(LABELS).detach()
    n = randn((3, y.shape[1]), gens([4, 5, 6]))
    torch.testing.assert_close((annealed - plain + y).double(), by_hand(y, n, 0.5, 0.25, 0.5), atol=1e-5, rtol=1e-5)
    assert not NET.label_emb._forward_hooks  # the hook lived for the call only


def test_gamma_one_leaves_the_call_untouched_and_draws_nothing():
    generators = gens([4, 5, 6])
    cads = ConditionAnnealing(0.25).start(generators)
    for tau in (0.0, 0.3, 0.6):
        assert cads.at(level(tau)).wrap_model(NET) is NET
    assert [g.initial_seed() for g in generators] == [4, 5, 6]
    assert torch.equal(generators[0].get_state(), torch.Generator().manual_seed(4).get_state())


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_tau1_one_gives_the_unguided_samples_bit_for_bit(sampler):
    cads = ConditionAnnealing(0.25, tau1=1.0)
    assert not cads.active and not cads.step_dependent
    assert torch.equal(run(cads, sampler, steps="5"), run(None, sampler, steps="5"))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_no_noise_and_psi_one_is_plain_conditional_sampling(sampler):
    cads = ConditionAnnealing(0.0, tau1=0.1, tau2=0.5, psi=1.0)
    assert not cads.active and not cads.step_dependent  # the identity: skipped, bit for bit
    torch.testing.assert_close(run(cads, sampler, steps="5"), run(None, sampler, steps="5"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm-solver", "euler-maruyama"])
def test_noise_changes_the_samples_and_depends_on_the_generator(sampler):
    x_T = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    cads = ConditionAnnealing(0.5, tau1=0.1, tau2=0.5)
    plain = run(None, sampler, x=x_T, steps="5")
    first, again = run(cads, sampler, x=x_T, steps="5"), run(cads, sampler, x=x_T, steps="5")
    other = run(cads, sampler, x=x_T, steps="5", seeds=(7, 8, 9))
    assert torch.isfinite(first).all() and torch.equal(first, again)
    assert (first - plain).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every sample changed
    if sampler in ("ddim", "dpm-solver"):  # deterministic given x_T: only the CADS noise depends on the seeds
        assert (first - other).abs().amax(dim=(1, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("order", ["cfg-first", "cads-first"])
def test_null_label_rows_are_untouched_in_a_classifier_free_batch(order):
    x, t = torch.randn(3, 3, 8, 8), torch.full((3,), 80)
    cfg, cads = ClassifierFreeGuidance(3.0, null_label=NULL), ConditionAnnealing(0.5, tau1=0.1, tau2=0.5)
    guidance = as_guidance([cfg, cads] if order == "cfg-first" else [cads, cfg]).start(gens([1, 2, 3]))
    assert guidance.step_dependent
    step_model = guidance.at(level(0.8)).wrap_model(NET)
    plain = embeddings_seen(cfg.wrap_model(NET), x, t, LABELS)
    annealed = embeddings_seen(step_model, x, t, LABELS)
    assert plain.shape == annealed.shape == (6, NET.label_emb.embedding_dim)
    assert torch.equal(annealed[3:], plain[3:])  # the unconditional half
    assert (annealed[:3] - plain[:3]).abs().amax(dim=1).min() > 1e-2
    # the conditional rows took the noise of the samples' own streams
    y = NET.label_emb(LABELS).detach()
    n = randn(y.shape, gens([1, 2, 3]))
    torch.testing.assert_close(annealed[:3] - plain[:3] + y, anneal_condition(y, n, 0.0, 0.5), atol=1e-5, rtol=0)


@pytest.mark.parametrize("order", ["cfg-first", "cads-first"])
def test_a_sample_does_not_depend_on_its_batch(order):
    cfg, cads = ClassifierFreeGuidance(2.0, null_label=NULL), ConditionAnnealing(0.5, tau1=0.1, tau2=0.5)
    guidance = [cfg, cads] if order == "cfg-first" else [cads, cfg]
    batch = run(guidance, "ddpm", seeds=(1, 2, 3), y=LABELS, steps="6")
    alone = run(guidance, "ddpm", seeds=(2,), y=LABELS[1:2], steps="6")
    torch.testing.assert_close(batch[1:2], alone, atol=1e-5, rtol=0)
    assert (batch[1:2] - run(None, "ddpm", seeds=(2,), y=LABELS[1:2], steps="6")).abs().max() > 1e-3


def test_noise_is_drawn_once_per_step_and_reused_at_the_same_level():
    x, t = torch.randn(3, 3, 8, 8), torch.full((3,), 80)
    cads = ConditionAnnealing(0.5, tau1=0.1, tau2=0.5).start(gens([1, 2, 3]))
    first = embeddings_seen(cads.at(level(0.3)).wrap_model(NET), x, t, LABELS)
    repeated = cads.at(level(0.3)).wrap_model(NET)
    assert torch.equal(embeddings_seen(repeated, x, t, LABELS), first)
    assert torch.equal(embeddings_seen(repeated, x, t, LABELS), first)  # a second call of the same step
    assert not torch.equal(embeddings_seen(cads.at(level(0.35)).wrap_model(NET), x, t, LABELS), first)


def test_a_model_without_label_embedding_is_refused_in_one_line():
    unconditional = tiny_unet(num_classes=None, null_class=False)
    with pytest.raises(ValueError) as error:
        sample(unconditional, DIFFUSION, (2, 3, 8, 8), steps="ddim5", guidance=ConditionAnnealing(0.25), progress=False)
    assert str(error.value) == "CADS needs a class-conditional model (a label embedding)"


def test_the_hook_is_removed_when_the_model_call_fails():
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.num_classes = NET, 2

        def forward(self, x, t, y=None):
            self.net(x, t, y=y)
            raise RuntimeError("boom")

    step = ConditionAnnealing(0.5).start(gens([1, 2, 3])).at(level(1.0))
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
        step.wrap_model(Failing())(torch.randn(3, 3, 8, 8), torch.full((3,), 80), y=LABELS)
    assert not NET.label_emb._forward_hooks


def test_the_run_model_refuses_to_run_without_a_step():
    with pytest.raises(RuntimeError, match="step-dependent"):
        ConditionAnnealing(0.25).start().wrap_model(NET)(torch.randn(1, 3, 8, 8), torch.full((1,), 80), y=LABELS[:1])
