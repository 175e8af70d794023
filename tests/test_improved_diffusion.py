"""improved-diffusion (openai/improved-diffusion 1bc7bbb): its eight released checkpoints' key layouts,
its flags and defaults, timestep rescaling, and numerical parity with its outputs."""
import re

import pytest
import torch

from guided_diffusion.checkpoints import find_matching_presets, load_openai_checkpoint, preset_shapes
from guided_diffusion.diffusion import DiffusionConfig
from guided_diffusion.presets import config_from_openai_flags, get_preset, list_presets
from guided_diffusion.sampling import ddim_step
from tests.helpers import IMPROVED_KEYS, IMPROVED_PARITY_FIXTURE, openai_key_list, reference_state_dict

RELEASED = {  # checkpoint file stem -> preset
    "cifar10_uncond_50M_500K": "improved_cifar10_uncond",
    "cifar10_uncond_vlb_50M_500K": "improved_cifar10_uncond_vlb",
    "imagenet64_cond_270M_250K": "improved_imagenet64_cond",
    "imagenet64_uncond_100M_1500K": "improved_imagenet64_uncond",
    "imagenet64_uncond_vlb_100M_1500K": "improved_imagenet64_uncond_vlb",
    "lsun_uncond_100M_1200K_bs128": "improved_lsun_bedroom_bs128",
    "lsun_uncond_100M_2400K_bs64": "improved_lsun_bedroom_bs64",
    "upsample_cond_500K": "improved_upsample_64_256",
}


def _keys(stem):
    header, keys = openai_key_list(stem, IMPROVED_KEYS)
    return header, {name: shape for name, (shape, _) in keys.items()}


def test_every_released_checkpoint_has_a_preset():
    assert sorted(p.stem[len("keys_"):] for p in IMPROVED_KEYS.glob("keys_*.txt")) == sorted(RELEASED)
    assert {get_preset(name).checkpoint for name in RELEASED.values()} == {f"{s}.pt" for s in RELEASED}
    assert set(RELEASED.values()) <= set(list_presets(released_only=True))


@pytest.mark.parametrize("stem", sorted(RELEASED))
def test_preset_is_key_exact_and_equals_the_flags(stem):
    header, keys = _keys(stem)
    name = RELEASED[stem]
    assert preset_shapes(name) == keys
    assert name in find_matching_presets({k: torch.empty(s, device="meta") for k, s in keys.items()})
    kind, config, diffusion = config_from_openai_flags(header["flags"], repo="improved-diffusion")
    preset = get_preset(name)
    assert (kind, config, diffusion) == (preset.kind, preset.config, preset.diffusion)


def test_repo_defaults_differ_where_the_repositories_do():
    flags = "--image_size 32 --num_channels 64 --num_res_blocks 1 --learn_sigma True"
    _, improved, improved_diffusion = config_from_openai_flags(flags, repo="improved-diffusion")
    _, guided, guided_diffusion = config_from_openai_flags(flags)
    assert improved_diffusion.rescale_timesteps and improved_diffusion.rescale_learned_sigmas
    assert not guided_diffusion.rescale_timesteps and not guided_diffusion.rescale_learned_sigmas
    assert (improved.num_heads, improved.resblock_updown, improved.use_new_attention_order) == (4, False, False)
    with pytest.raises(ValueError, match="unknown flag.*resblock_updown"):
        config_from_openai_flags(flags + " --resblock_updown True", repo="improved-diffusion")
    with pytest.raises(ValueError, match="no classifiers"):
        config_from_openai_flags("--classifier_width 32", repo="improved-diffusion")


def test_presets_sharing_a_layout_are_chosen_or_named(tmp_path):
    _, keys = _keys("cifar10_uncond_vlb_50M_500K")
    state = reference_state_dict(keys)
    torch.save(state, tmp_path / "cifar.pt")
    with pytest.raises(ValueError, match=r"fits presets improved_cifar10_uncond, improved_cifar10_uncond_vlb, "
                                         r"which differ in diffusion\.use_kl"):
        load_openai_checkpoint(tmp_path / "cifar.pt")
    model, preset = load_openai_checkpoint(tmp_path / "cifar.pt", "improved_cifar10_uncond_vlb")
    assert preset.diffusion.build().loss_type == "rescaled_kl"
    # the two LSUN bedroom models share every setting: the first is taken
    assert find_matching_presets({k: torch.empty(s, device="meta")
                                  for k, s in _keys("lsun_uncond_100M_2400K_bs64")[1].items()}) == [
        "improved_lsun_bedroom_bs128", "improved_lsun_bedroom_bs64"]


def test_use_kl_is_the_rescaled_kl_as_in_both_reference_repositories():
    assert DiffusionConfig(use_kl=True).build().loss_type == "rescaled_kl"
    assert DiffusionConfig(use_kl=True, rescale_learned_sigmas=True).build().loss_type == "rescaled_kl"
    assert DiffusionConfig(rescale_learned_sigmas=True).build().loss_type == "rescaled_mse"


def test_rescaled_timesteps_reach_the_network_and_survive_respacing():
    diffusion = DiffusionConfig(steps=4000, noise_schedule="cosine", rescale_timesteps=True).build()
    t = torch.tensor([0, 1, 3999])
    torch.testing.assert_close(diffusion.model_timesteps(t), torch.tensor([0.0, 0.25, 999.75]))
    respaced = diffusion.respace("ddim50")
    assert respaced.original_num_timesteps == 4000
    expected = respaced.timestep_map[torch.tensor([0, 49])].float() * 0.25
    torch.testing.assert_close(respaced.model_timesteps(torch.tensor([0, 49])), expected)
    assert DiffusionConfig(steps=4000).build().model_timesteps(t).dtype == torch.long


@pytest.fixture(scope="module")
def parity():
    return torch.load(IMPROVED_PARITY_FIXTURE, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def parity_model(parity):
    kind, config, diffusion_config = config_from_openai_flags(parity["flags"], repo="improved-diffusion")
    model = config.build().eval()
    model.load_state_dict(reference_state_dict({k: v.shape for k, v in model.state_dict().items()}))
    return model, diffusion_config.build()


def test_parity_with_improved_diffusion(parity, parity_model):
    model, diffusion = parity_model
    assert re.search(r"--diffusion_steps 4000", parity["flags"]) and diffusion.rescale_timesteps
    x_t, t = parity["x_t"], parity["t"]
    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(diffusion.q_sample(parity["x_start"], t, parity["noise"]), x_t, **close)
    with torch.no_grad():
        # the fixture's network output is the network called at the given t; the diffusion rescales it
        torch.testing.assert_close(model(x_t, t), parity["model_output"], **close)
        out = diffusion.p_mean_variance(model, x_t, t, clip_denoised=True)
        torch.testing.assert_close(out["mean"], parity["p_mean"], **close)
        torch.testing.assert_close(out["log_variance"], parity["p_log_variance"], **close)
        torch.testing.assert_close(out["pred_xstart"], parity["pred_xstart"], **close)
        terms = diffusion.training_losses(model, parity["x_start"], t, noise=parity["noise"])
        for name in ("loss", "mse", "vb"):
            torch.testing.assert_close(terms[name], parity[name], rtol=1e-5, atol=1e-4, msg=name)
        respaced = diffusion.respace("ddim50")
        assert respaced.timestep_map.tolist() == parity["respaced_timestep_map"].tolist()
        rt, rx = parity["respaced_t"], parity["respaced_x"]
        out = respaced.p_mean_variance(model, rx, rt, clip_denoised=True)
        torch.testing.assert_close(out["mean"], parity["respaced_p_mean"], **close)
        torch.testing.assert_close(out["log_variance"], parity["respaced_log_variance"], **close)
        for i, index in enumerate(rt.tolist()):  # one deterministic DDIM step per sample, at its own index
            one = {k: v[i:i + 1] for k, v in out.items() if torch.is_tensor(v) and v.shape[:1] == rx.shape[:1]}
            step = ddim_step(respaced, one, rx[i:i + 1], index, 0.0)
            torch.testing.assert_close(step, parity["ddim_sample"][i:i + 1], **close)


def test_parity_needs_the_rescaling(parity, parity_model):
    """Through the diffusion the network must see t * 1000 / 4000: without the rescaling nothing matches."""
    model, _ = parity_model
    plain = DiffusionConfig(steps=4000, noise_schedule="cosine", learn_sigma=True, rescale_learned_sigmas=True).build()
    with torch.no_grad():
        out = plain.p_mean_variance(model, parity["x_t"], parity["t"], clip_denoised=True)
        terms = plain.training_losses(model, parity["x_start"], parity["t"], noise=parity["noise"])
    assert (out["mean"] - parity["p_mean"]).abs().max() > 1e-4
    assert (terms["loss"] - parity["loss"]).abs().max() > 1.0
