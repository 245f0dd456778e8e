"""The built-in experiments: each module exposes EXPERIMENT (gradnoise.experiment)."""
