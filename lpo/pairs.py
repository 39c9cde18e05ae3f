"""The one preference-pair format, shared by LRM training, MPCF, SPO's step model and
Diffusion-DPO.

A pair is a prompt, two images and ``label_0`` = P(image 0 is preferred): 1.0 (image 0
wins), 0.0 (image 1 wins) or 0.5 (tie) — Pick-a-Pic's convention, so that Pick-a-Pic
rows need no conversion. On disk a pair set is a Parquet file in Pick-a-Pic's columns
(``caption``, ``jpg_0``, ``jpg_1``, ``label_0``, ``label_1``; images as encoded bytes)
plus ``pair_id``, ``source`` and ``weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIE = 0.5


@dataclass
class PreferencePair:
    """One labelled pair.

    images: (H, W, 3) uint8 arrays.
    label_0: P(image_0 ≻ image_1) ∈ {1.0, 0.0, 0.5}.
    weight: per-pair loss weight (e.g. 1 / pairs of the same prompt).
    source: where the pair came from ("world", "pickapic_v1", ...).
    """

    pair_id: str
    prompt: str
    image_0: np.ndarray
    image_1: np.ndarray
    label_0: float
    source: str
    weight: float = 1.0

    @property
    def is_tie(self) -> bool:
        return self.label_0 == TIE

    @property
    def winner(self) -> np.ndarray:
        """The preferred image (image_0 for a tie)."""
        return self.image_1 if self.label_0 == 0.0 else self.image_0

    @property
    def loser(self) -> np.ndarray:
        return self.image_0 if self.label_0 == 0.0 else self.image_1
