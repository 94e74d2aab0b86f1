"""Model directories, both halves of each: what a recipe writes and what the tools read back.

A translator's (what `seq2seq-translate` reads):

    DIR/config.json            {"kind": "Translator", "model": TranslatorConfig, "decoding": ..., "src_lang", "tgt_lang", ...}
    DIR/model.safetensors      the weights
    DIR/source.model, target.model   the SentencePiece models, checked by fingerprint on load
    DIR/shortlist.safetensors  optional lexical shortlist (seq2seq.shortlist)

An acoustic model's: config.json ({"kind": "AcousticModel", "model", "features", "preset"}) and
model.safetensors (the weights with the feature normalisation statistics).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from .checkpoint import atomic_write, load_weights, read_config, save_model
from .acoustic_model import AcousticModel, AcousticModelConfig
from .errors import UserError
from .speech.features import FeatureConfig
from .tokenizer import Tokenizer
from .translator import Translator, TranslatorConfig


def save_translator(directory: str | Path, model: Translator, preset, src_tok: Tokenizer, tgt_tok: Tokenizer) -> None:
    """Write the weights, config (with the decoding settings and the language pair) and both tokenizers."""
    directory = Path(directory)
    for name, tok in (("source.model", src_tok), ("target.model", tgt_tok)):
        atomic_write(directory / name, lambda temporary, tok=tok: shutil.copyfile(tok.path, temporary))
    save_model(directory, model, preset.model, extra={
        "decoding": dataclasses.asdict(preset.decoding), "src_lang": preset.data.src_lang,
        "tgt_lang": preset.data.tgt_lang, "source_tokenizer": "source.model", "target_tokenizer": "target.model",
        "source_fingerprint": src_tok.fingerprint(), "target_fingerprint": tgt_tok.fingerprint()})


def load_translator(directory: str | Path) -> tuple[Translator, Tokenizer, Tokenizer, dict]:
    """Model (eval mode), source and target tokenizers, and the config payload of a model directory."""
    directory = Path(directory)
    payload = read_config(directory)
    if payload.get("kind") != "Translator":
        raise UserError(f"{directory}: holds a {payload.get('kind')}, not a Translator")
    src_tok = Tokenizer(directory / payload.get("source_tokenizer", "source.model"))
    tgt_tok = Tokenizer(directory / payload.get("target_tokenizer", "target.model"))
    try:
        config = TranslatorConfig(**payload["model"])
    except (TypeError, ValueError, KeyError) as error:
        raise UserError(f"{directory / 'config.json'}: invalid model config ({error})") from None
    for tok, vocab, side in ((src_tok, config.src_vocab_size, "source"), (tgt_tok, config.tgt_vocab_size, "target")):
        expected = payload.get(f"{side}_fingerprint")
        if len(tok) != vocab or (expected and tok.fingerprint() != expected):
            raise UserError(f"{tok.path}: this {side} tokenizer ({len(tok)} pieces) is not the one the model was trained with")
    return load_weights(directory, Translator(config)).eval(), src_tok, tgt_tok, payload


def save_acoustic_model(directory: str | Path, model: AcousticModel, preset) -> None:
    """The weights, the model config, the feature settings and the decoding settings (CTC beam) of a preset."""
    save_model(directory, model, model.config, extra={"features": dataclasses.asdict(preset.features),
                                                      "beam_size": preset.training.beam_size, "preset": preset.name})


def load_acoustic_model(directory: str | Path) -> tuple[AcousticModel, FeatureConfig, dict]:
    """Model (eval mode), the feature settings it was trained on, and the config payload (beam_size, preset)."""
    directory = Path(directory)
    config = read_config(directory)
    if config.get("kind") != "AcousticModel":
        raise UserError(f"{directory}: not an acoustic model (config.json kind is {config.get('kind')!r})")
    try:
        model, features = AcousticModel(AcousticModelConfig(**config["model"])), FeatureConfig(**config["features"])
    except (TypeError, ValueError, KeyError) as error:
        raise UserError(f"{directory / 'config.json'}: invalid model config ({error})") from None
    load_weights(directory, model)
    return model.eval(), features, config
