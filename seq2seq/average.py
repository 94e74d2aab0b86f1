"""`seq2seq-average`: one model whose weights are the element-wise mean of several checkpoints' (the last
few of a run, as Vaswani et al. 2017 average the last 5 or 20), safetensors in and out.

    seq2seq-average --inputs runs/demo/checkpoints/step-* --output runs/demo/averaged
    seq2seq-translate --model runs/demo/averaged --input test.en --ref test.fr

Inputs are checkpoint directories (OUTPUT/checkpoints/step-N) or model directories, each with a
model.safetensors of the same tensors. The output is a complete model directory: the averaged weights plus
config.json, tokenizers and shortlist copied from --config-from (default: the first input that has a
config.json, else the run's OUTPUT/model beside its checkpoints).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, atomic_write
from .errors import ArgumentParser, UserError, exits_cleanly

MODEL_FILES = (CONFIG_NAME, "source.model", "target.model", "shortlist.safetensors", "vocabulary.json")


def average_weights(directories: list[Path]) -> dict[str, torch.Tensor]:
    """The mean of DIR/model.safetensors over the directories, accumulated in float64 and returned in
    each tensor's own dtype; every file must hold the same names and shapes."""
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for directory in directories:
        path = directory / WEIGHTS_NAME
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as error:
            raise UserError(f"{path}: not a readable safetensors file ({error})") from None
        if total and (set(tensors) != set(total) or any(tensors[k].shape != total[k].shape for k in tensors)):
            raise UserError(f"{path}: holds other tensors than {directories[0] / WEIGHTS_NAME}; average checkpoints "
                            f"of one run")
        for name, tensor in tensors.items():
            dtypes.setdefault(name, tensor.dtype)
            total[name] = total.get(name, 0) + tensor.double()
    return {name: (value / len(directories)).to(dtypes[name]).contiguous() for name, value in total.items()}


def config_source(inputs: list[Path], given: Path | None) -> Path:
    candidates = [given] if given else [*inputs, inputs[0].parent.parent / "model"]
    for directory in candidates:
        if (directory / CONFIG_NAME).is_file():
            return directory
    raise UserError(f"no {CONFIG_NAME} in {', '.join(map(str, candidates))}; name the model directory with --config-from")


def average(inputs: list[Path], output: Path, config_from: Path | None = None) -> Path:
    """Write the averaged model directory; returns it."""
    if not inputs:
        raise UserError("--inputs: give at least one checkpoint directory")
    source = config_source(inputs, config_from)
    weights = average_weights(inputs)
    atomic_write(output / WEIGHTS_NAME, lambda temporary: save_file(weights, temporary,
                                                                      metadata={"averaged": ",".join(map(str, inputs))}))
    for name in MODEL_FILES:
        if (source / name).is_file():
            atomic_write(output / name, lambda temporary, name=name: shutil.copyfile(source / name, temporary))
    return output


@exits_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="seq2seq-average", description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", type=Path, required=True, help="checkpoint or model directories")
    parser.add_argument("--output", type=Path, required=True, help="the averaged model directory")
    parser.add_argument("--config-from", type=Path, help="the model directory whose config and tokenizers to copy "
                                                         "(default: see above)")
    args = parser.parse_args(argv)
    output = average(args.inputs, args.output, args.config_from)
    print(f"averaged {len(args.inputs)} checkpoints into {output}")


if __name__ == "__main__":
    main()
