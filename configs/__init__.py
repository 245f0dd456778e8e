"""Experiment configs: get_config(arg) and get_sweep(arg) per file, loaded by path."""
