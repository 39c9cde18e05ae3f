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

from lpo.core.errors import LpoError


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
    """New config with ``key.sub=value`` overrides applied, then validated once.

    All overrides are parsed first and applied together, so their order does not matter
    (``max_steps=2 warmup_steps=1`` works although the first alone would fail validation).
    """
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise LpoError(f"override {item!r} must look like key=value (e.g. unet_steps=500)")
        key, raw = item.split("=", 1)
        key = key.strip()
        node, target = cfg, changes
        path = key.split(".")
        for depth, name in enumerate(path):
            names = [f.name for f in dataclasses.fields(node)]
            if name not in names:
                raise LpoError(f"unknown config key {key!r}; {type(node).__name__} has: {', '.join(names)}")
            current = getattr(node, name)
            last = depth == len(path) - 1
            if not last:
                if not dataclasses.is_dataclass(current):
                    raise LpoError(f"config key {key!r}: {name} is not a section")
                node, target = current, target.setdefault(name, {})
            elif dataclasses.is_dataclass(current):
                raise LpoError(f"config key {key!r} is a section; set one of its fields, e.g. {key}.<field>=...")
            else:
                target[name] = _parse_value(raw.strip(), _field_types(type(node))[name], key)
    return _replace(cfg, changes, overrides)


def _replace(cfg: Any, changes: dict[str, Any], overrides: list[str], prefix: str = "") -> Any:
    values = {
        name: _replace(getattr(cfg, name), value, overrides, f"{prefix}{name}.") if isinstance(value, dict) else value
        for name, value in changes.items()
    }
    try:
        return dataclasses.replace(cfg, **values)
    except (ValueError, TypeError) as err:
        # name the overrides of the section whose validation failed, not every --set given
        mine = [o for o in overrides if o.split("=", 1)[0].strip().startswith(prefix)]
        raise LpoError(f"invalid override {' '.join(mine or overrides)}: {err}") from None
