"""gradnoise: annealed Gaussian gradient noise for optax (Neelakantan et al. 2015).

Beside it, a family of other noises under the same contract: Langevin (SGLD),
anticorrelated, multiplicative, relative and perturbed-gradient-descent noise.

``import gradnoise`` gives the optax transforms only; the trainer, experiments and
command lines live in submodules that are imported on demand.
"""

from gradnoise.noise import (
    FUSED_DRAW_MAX_ELEMENTS,
    GradientNoiseState,
    add_gradient_noise,
    annealed_std,
    as_key,
    clip_by_global_norm,
    clip_by_leaf_norm,
    constant_std,
    noisy,
)
from gradnoise.anticorrelated import AnticorrelatedNoiseState, add_anticorrelated_noise
from gradnoise.clipping import clip_by_spectral_norm, spectral_norm
from gradnoise.langevin import add_langevin_noise, langevin_std
from gradnoise.multiplicative import MultiplicativeNoiseState, add_multiplicative_noise
from gradnoise.perturbed import PerturbationState, add_pgd_perturbation
from gradnoise.relative import RelativeNoiseState, add_relative_noise

__version__ = "0.2.0"

__all__ = [
    "FUSED_DRAW_MAX_ELEMENTS",
    "AnticorrelatedNoiseState",
    "GradientNoiseState",
    "MultiplicativeNoiseState",
    "PerturbationState",
    "RelativeNoiseState",
    "add_anticorrelated_noise",
    "add_gradient_noise",
    "add_langevin_noise",
    "add_multiplicative_noise",
    "add_pgd_perturbation",
    "add_relative_noise",
    "annealed_std",
    "as_key",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "clip_by_spectral_norm",
    "constant_std",
    "langevin_std",
    "noisy",
    "spectral_norm",
]
