"""Saving and loading models as safetensors + JSON: no pickle anywhere a user might download from.

Every file is written atomically (a temporary name in the same directory, then os.replace), so a
crash mid-write leaves the previous file intact.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import load_model as safetensors_load_model
from safetensors.torch import save_model as safetensors_save_model
from torch import nn

from .errors import UserError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def atomic_write(path: str | Path, write) -> None:
    """Call write(temporary_path), then rename it to path; the temporary file is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Any) -> None:
    """Write JSON atomically, indented, with a trailing newline."""

    def write(temporary: str) -> None:
        Path(temporary).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    atomic_write(path, write)


def save_model(directory: str | Path, model: nn.Module, config: Any, extra: dict | None = None) -> None:
    """Write DIR/model.safetensors (the state dict) and DIR/config.json ({"kind", "model", ...extra})."""
    directory = Path(directory)
    # safetensors' save_model stores tied weights (decoder embedding = softmax) once
    atomic_write(directory / WEIGHTS_NAME, lambda temporary: safetensors_save_model(model, temporary))
    payload = {"kind": type(model).__name__, "model": dataclasses.asdict(config), **(extra or {})}
    write_json(directory / CONFIG_NAME, payload)


def read_config(directory: str | Path) -> dict:
    """The parsed config.json of a model directory, or a UserError naming what is missing."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory}: no such model directory")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise UserError(f"{directory}: {name} is missing (a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        return json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{directory / CONFIG_NAME}: not valid JSON ({error})") from None


def load_weights(directory: str | Path, model: nn.Module) -> nn.Module:
    """Load DIR/model.safetensors into model (strict); a corrupt or mismatched file is a UserError."""
    path = Path(directory) / WEIGHTS_NAME
    try:
        load_file(path)  # parse first: a truncated or corrupt file is the user's, not a bug
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        safetensors_load_model(model, path, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match {CONFIG_NAME} ({first})") from None
    return model
