"""Config dataclass helpers: dotted, type-checked overrides and saving resolved values.

Configs are stdlib dataclasses nested by concern. ``apply_overrides(cfg, ["a.b=3"])``
returns a new config with the value parsed to the field's declared type; unknown keys
and unparsable values raise ``LpoError`` naming the key and the allowed ones.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from lpo.errors import LpoError


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(raw: str, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_value(raw, arg, key)
            except LpoError:
                continue
        raise LpoError(f"cannot parse {key}={raw!r} as {typ}")
    if typ is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise LpoError(f"{key} expects true or false, got {raw!r}")
    if typ in (int, float, str):
        try:
            return typ(raw)
        except ValueError:
            raise LpoError(f"{key} expects {typ.__name__}, got {raw!r}") from None
    if origin is tuple:
        items = [s for s in raw.strip("()[] ").split(",") if s.strip()]
        item_type = args[0] if args else str
        return tuple(_parse_value(s.strip(), item_type, key) for s in items)
    if typing.get_origin(typ) is typing.Literal:
        if raw not in args:
            raise LpoError(f"{key} must be one of {', '.join(map(str, args))}, got {raw!r}")
        return raw
    raise LpoError(f"{key} cannot be set from the command line (type {typ})")


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """New config with ``key.sub=value`` overrides applied (validated by __post_init__)."""
    for item in overrides:
        if "=" not in item:
            raise LpoError(f"override {item!r} must look like key=value (e.g. unet_steps=500)")
        key, raw = item.split("=", 1)
        cfg = _set(cfg, key.strip().split("."), raw.strip(), key.strip())
    return cfg


def _set(cfg: Any, path: list[str], raw: str, full_key: str) -> Any:
    names = [f.name for f in dataclasses.fields(cfg)]
    head = path[0]
    if head not in names:
        raise LpoError(f"unknown config key {full_key!r}; {type(cfg).__name__} has: {', '.join(names)}")
    current = getattr(cfg, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise LpoError(f"config key {full_key!r}: {head} is not a section")
        value = _set(current, path[1:], raw, full_key)
    else:
        if dataclasses.is_dataclass(current):
            raise LpoError(f"config key {full_key!r} is a section; set one of its fields, e.g. {full_key}.<field>=...")
        value = _parse_value(raw, _field_types(type(cfg))[head], full_key)
    try:
        return dataclasses.replace(cfg, **{head: value})
    except (ValueError, TypeError) as err:
        raise LpoError(f"invalid override {full_key}={raw}: {err}") from None
