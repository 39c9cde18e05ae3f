"""Model components: load a pipeline's parts, encode prompts, condition the U-Net; the pluggable model families."""
