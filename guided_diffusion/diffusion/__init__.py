"""The diffusion core: schedules, respacing, the Gaussian process and its losses, timestep samplers.

Plain PyTorch; imports nothing from Lightning.
"""
from .gaussian import DiffusionConfig, GaussianDiffusion, LossType, MeanType, VarType
from .likelihood import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .schedules import (
    betas_for_alpha_bar,
    cosine_beta_schedule,
    get_named_beta_schedule,
    linear_beta_schedule,
    logsnr_spaced_timesteps,
    quadratic_spaced_timesteps,
    respaced_betas,
    space_timesteps,
)
from .timestep_sampler import LossSecondMomentResampler, TimestepSampler, UniformSampler, create_timestep_sampler

__all__ = [
    "DiffusionConfig", "GaussianDiffusion", "LossType", "MeanType", "VarType",
    "discretized_gaussian_log_likelihood", "mean_flat", "normal_kl",
    "betas_for_alpha_bar", "cosine_beta_schedule", "get_named_beta_schedule", "linear_beta_schedule",
    "logsnr_spaced_timesteps", "quadratic_spaced_timesteps",
    "respaced_betas", "space_timesteps",
    "LossSecondMomentResampler", "TimestepSampler", "UniformSampler", "create_timestep_sampler",
]
