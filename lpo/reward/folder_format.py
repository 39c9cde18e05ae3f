"""The folder format both step reward models are saved in (the LRM, SPO's pixel model).

One folder, written atomically: ``model.safetensors`` (the weights), a JSON config naming
its format and version (and the base model it was trained for), and its tokenizer(s).
:class:`RewardFolder` holds what the two differ in (names, what to tell the user) and does
what they share: write, check the folder is complete, read and check the config, check a
tokenizer against its text model, refuse another base model. Every failure a user can fix
is one line naming the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from lpo.core.errors import LpoError
from lpo.core.hashing import base_model_fingerprint
from lpo.core.io import atomic_directory, one_line

WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class RewardFolder:
    """One step reward folder format.

    what: the model's name in messages ("LRM").  format / version / config_name: the
    config file and the format it declares.  writer: the function that writes it (named
    when a folder is not one).  retrain: the fix for a damaged folder.  text_model: what
    its tokenizer feeds, in messages.
    """

    what: str
    format: str
    version: int
    config_name: str
    writer: str
    hint: str
    retrain: str
    text_model: str = "text encoder"

    def write(self, folder: str | Path, state: Mapping[str, Any], meta: dict[str, Any],
              tokenizers: Mapping[str, Any]) -> Path:
        """Weights, ``{format, format_version, **meta}`` and each tokenizer (``name/``), atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        weights = {key: tensor.detach().to("cpu").contiguous() for key, tensor in state.items()}
        config = {"format": self.format, "format_version": self.version, **meta}
        with atomic_directory(folder) as tmp:
            save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            for name, tokenizer in tokenizers.items():
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp / name)
            (tmp / self.config_name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return folder

    def files(self, folder: str | Path) -> tuple[Path, Path]:
        """(config, weights) of a complete folder."""
        folder = Path(folder)
        if not folder.exists():
            raise LpoError(f"{self.what} folder {folder} does not exist; {self.hint}")
        if not folder.is_dir():
            raise LpoError(f"{self.what} path {folder} is a file, not a folder; {self.hint}")
        config_path, weights_path = folder / self.config_name, folder / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise LpoError(
                    f"{path} is missing: {folder} is not a complete {self.what} folder; {self.hint}, or {self.retrain}"
                )
        return config_path, weights_path

    def read_config(self, path: Path) -> dict[str, Any]:
        try:
            meta = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise LpoError(
                f"could not read {path} ({one_line(err)}); the {self.what} folder is damaged: {self.retrain}"
            ) from err
        if not isinstance(meta, dict) or meta.get("format") != self.format:
            raise LpoError(
                f'{path} is not an lpo {self.what} config (no "format": "{self.format}"); pass a folder written by {self.writer}'
            )
        if meta.get("format_version") != self.version:
            raise LpoError(
                f"{path} has {self.what} format version {meta.get('format_version')}; this lpo reads version "
                f"{self.version}: upgrade lpo or {self.retrain}"
            )
        return meta

    def check_tokenizer(self, tokenizer: Any, vocab_size: int, where: Path) -> None:
        # transformers builds a 2-token default tokenizer from a folder without vocabulary files
        if not vocab_size / 2 <= len(tokenizer) <= vocab_size:
            raise LpoError(
                f"{where} has {len(tokenizer)} tokens but the {self.text_model} has {vocab_size}; "
                f"the tokenizer files are missing or damaged: {self.retrain}"
            )

    def check_base(self, folder: Path, config: Any, expected: str | None, kind: str | None, source: str | None,
                   train_for: str) -> None:
        """Refuse a model trained for another base model (``expected``) or another kind of model.
        ``train_for``: the fix, with ``{model}`` for the model to train it for."""
        if expected is not None and not same_base_model(config.base_model, expected, config.base_model_hash):
            raise LpoError(
                f"{self.what} {folder} was trained for base model {config.base_model} but you are using {expected}; "
                + train_for.format(model=expected)
            )
        if kind is not None and kind != config.kind:
            raise LpoError(
                f"{self.what} {folder} is for a {config.kind} model but the components are {kind}; "
                + train_for.format(model=source)
            )


def same_base_model(a: str, b: str, a_hash: str | None = None) -> bool:
    """Whether two base-model names mean the same model: equal strings, the same local folder,
    or (``a_hash``, :func:`lpo.core.hashing.base_model_fingerprint` of ``a``) a folder ``b`` whose
    U-Net has the same content."""
    if str(a) == str(b):
        return True
    path_a, path_b = Path(a).expanduser(), Path(b).expanduser()
    if path_a.exists() and path_b.exists() and path_a.resolve() == path_b.resolve():
        return True
    return a_hash is not None and base_model_fingerprint(b) == a_hash
