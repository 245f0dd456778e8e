"""gradnoise: annealed Gaussian gradient noise for optax (Neelakantan et al. 2015).

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

__version__ = "0.2.0"

__all__ = [
    "FUSED_DRAW_MAX_ELEMENTS",
    "GradientNoiseState",
    "add_gradient_noise",
    "annealed_std",
    "as_key",
    "clip_by_global_norm",
    "clip_by_leaf_norm",
    "constant_std",
    "noisy",
]
