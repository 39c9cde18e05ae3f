"""Baseline trainers (SPO, Diffusion-DPO) on the shared harness. Installed as ``lpo.baselines``."""
