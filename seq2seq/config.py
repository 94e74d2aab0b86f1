"""Experiments configured without editing code: a preset (a frozen dataclass from seq2seq.presets), then a YAML
or JSON file with any subset of its fields, then `--set key=value` overrides, applied in that order.

Keys are nested as the dataclasses are (`model.hidden_size`, `training.lr`, `data.src_lang`,
`decoding.beam_size`); every value is checked against its field's type, so a typo'd key or a wrong type is one
line naming it, before anything runs. The resolved preset is written back as YAML (`to_yaml`), which
`--config` reads again: a run's OUTPUT/config.yaml re-runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import atomic_write
from .errors import UserError


def add_config_flags(parser: argparse.ArgumentParser, presets: dict, default: str) -> None:
    """--preset NAME, --config FILE, --set KEY=VALUE (repeatable), --print-config."""
    group = parser.add_argument_group("configuration (applied in this order)")
    group.add_argument("--preset", choices=presets, default=default, help=f"the starting point (default: {default})")
    group.add_argument("--config", type=Path, metavar="FILE", help="a YAML or JSON file with any subset of the preset's "
                       "fields, nested as in --print-config (e.g. a run's OUTPUT/config.yaml)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                       help="override one field, e.g. --set training.lr=0.002 --set model.hidden_size=128")
    group.add_argument("--print-config", action="store_true", help="print the resolved configuration as YAML and exit")


def resolve(preset, config_file: Path | None = None, overrides: list[str] = (), flags: dict[str, tuple] | None = None):
    """The preset with the file's fields, then a recipe's shorthand flags (flags: {"--dropout": ("model.dropout",
    value)} for those given), then each KEY=VALUE override (a later one wins). Every key and type is checked against
    the dataclasses; their own checks (e.g. tied embeddings need equal sizes) run once, on the combined result, so
    related fields can be changed together."""
    combined: dict = {}
    sources = []
    if config_file is not None:
        sources.append(f"--config {config_file}")
        deep_update(combined, normalized(preset, read_config_file(config_file), sources[-1]))
    for flag, (key, value) in (flags or {}).items():
        sources.append(flag)
        deep_update(combined, normalized(preset, nest(key, value), flag))
    for assignment in overrides:
        key, separator, text = assignment.partition("=")
        if not separator or not key.strip():
            raise UserError(f"--set {assignment}: expected KEY=VALUE, e.g. training.lr=0.002")
        value = yaml.safe_load(text) if text.strip() else ""  # YAML scalars: 0.002, 128, true, null, en
        sources.append(f"--set {assignment}")
        deep_update(combined, normalized(preset, nest(key.strip(), value), sources[-1]))
    try:
        return build(preset, combined)
    except ValueError as error:  # the dataclasses' own checks (__post_init__)
        raise UserError(f"{'; '.join(sources)}: {error}") from None


def nest(key: str, value) -> dict:
    """"training.lr", 0.1 -> {"training": {"lr": 0.1}}."""
    *parents, last = key.split(".")
    nested = {last: value}
    for part in reversed(parents):
        nested = {part: nested}
    return nested


def configure(args: argparse.Namespace, presets: dict, flags: dict[str, tuple] | None = None, then=None):
    """The resolved preset of a recipe's command line (add_config_flags; `then` applies what a recipe's other
    flags say); with --print-config it is printed as YAML and None returned: the recipe stops there."""
    preset = resolve(presets[args.preset](), args.config, args.overrides,
                     {flag: pair for flag, pair in (flags or {}).items() if pair[1] is not None})
    preset = preset if then is None else then(preset)
    if args.print_config:
        print(to_yaml(preset), end="")
        return None
    return preset


def write_config(path: Path, preset) -> None:
    """OUTPUT/config.yaml: the resolved configuration, which --config reads back to re-run the same experiment."""
    atomic_write(path, lambda temporary: Path(temporary).write_text(to_yaml(preset), encoding="utf-8"))


def read_config_file(path: Path) -> dict:
    """A YAML (or JSON, a subset of YAML) mapping."""
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UserError(f"--config {path}: not valid YAML or JSON ({str(error).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"--config {path}: expected a mapping of fields, got a {type(loaded).__name__}")
    return loaded


def normalized(instance, values: dict, source: str, prefix: str = "") -> dict:
    """`values` checked against the fields of `instance` (nested dicts for nested dataclasses): an unknown key or
    a value of the wrong type is a UserError naming the key and where it came from. Ints become floats where
    the field is a float, lists tuples where it is a tuple."""
    hints = typing.get_type_hints(type(instance))
    known = {f.name for f in dataclasses.fields(instance)}
    result = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in known:
            raise UserError(f"{source}: unknown key {key!r} (known here: {', '.join(sorted(known))})")
        current = getattr(instance, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{source}: {key} is a group of fields; give them as {key}.FIELD")
            result[name] = normalized(current, value, source, f"{key}.")
        else:
            result[name] = checked(value, hints[name], key, source)
    return result


def deep_update(target: dict, update: dict) -> None:
    for name, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(name), dict):
            deep_update(target[name], value)
        else:
            target[name] = value


def build(instance, values: dict):
    """dataclasses.replace, recursively, with already checked values."""
    changes = {name: build(getattr(instance, name), value) if isinstance(value, dict) else value
               for name, value in values.items()}
    return dataclasses.replace(instance, **changes)


def checked(value: Any, annotation, key: str, source: str) -> Any:
    """value if it is of the annotated type (an int is a valid float; a list is a valid tuple), else UserError."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option in (int, str, bool) and type(value) is option:
            return value
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            item = typing.get_args(option)[0]
            return tuple(checked(v, item, key, source) for v in value)
    wanted = " or ".join(describe(option) for option in options)
    raise UserError(f"{source}: {key} must be {wanted}, got {value!r}")


def describe(annotation) -> str:
    if annotation is type(None):
        return "null"
    if typing.get_origin(annotation) is tuple:
        return f"a list of {describe(typing.get_args(annotation)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(annotation, str(annotation))


def to_yaml(preset) -> str:
    """The preset as YAML, nested as its dataclasses, in field order (read back by --config)."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    return yaml.safe_dump(plain(dataclasses.asdict(preset)), sort_keys=False, allow_unicode=True)
