"""The paper's experiments; each module registers itself with gradnoise.experiment."""

EXPERIMENTS = ("mnist_mlp", "memnet", "neural_gpu")
