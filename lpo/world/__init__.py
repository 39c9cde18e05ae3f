"""The embedded synthetic text-to-image world (SPEC §2).

grammar.py     prompt vocabulary, structured prompt specs, text <-> spec, splits
render.py      procedural renderer of ground-truth images
judges.py      exact judges on decoded RGB images (segmentation + scores)
annotators.py  simulated Bradley–Terry annotators with biases and ties
tokenizer.py   a CLIP BPE tokenizer built from the grammar's words
pretrain.py    the tiny latent diffusion model, trained and saved as a pipeline folder
"""
