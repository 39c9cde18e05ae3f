"""Samplers: the DDIM step with log-probabilities, LRM-guided sampling, seeded generation through the pipeline."""
