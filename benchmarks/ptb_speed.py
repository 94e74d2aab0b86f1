"""Training words/s of the PTB language model, per config and dropout mode, against a reference loop.

    python benchmarks/ptb_speed.py [--configs small medium] [--steps 30] [--bf16]

The reference is PyTorch's own word_language_model example, reproduced inline: nn.Embedding ->
nn.Dropout -> nn.LSTM(num_layers, dropout=p) -> nn.Dropout -> nn.Linear, F.cross_entropy,
clip_grad_norm_, and a hand-written SGD update. Both see the same random token windows (speed does not
depend on the words) in one process, so the ratio is measured under the same conditions. The reference is
timed first with glibc's malloc defaults, as the example runs, then again after
seq2seq.devices.keep_freed_memory(), the setting the recipes train in; the toolkit is timed in that setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.clipping import clip_grad_norm
from seq2seq.devices import keep_freed_memory
from seq2seq.dropout import DROPOUT_MODES
from seq2seq.language_model import LanguageModel
from seq2seq.presets import LM_PRESETS


class ReferenceLM(nn.Module):
    """pytorch/examples word_language_model RNNModel (LSTM, untied), as that example builds it."""

    def __init__(self, ntoken: int, ninp: int, nlayers: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, ninp, nlayers, dropout=dropout)
        self.decoder = nn.Linear(ninp, ntoken)

    def forward(self, tokens, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(output)), hidden


def reference_step(model, tokens, targets, hidden, lr, clip):
    hidden = tuple(h.detach() for h in hidden)
    model.zero_grad()
    logits, hidden = model(tokens, hidden)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1)) * tokens.shape[0]
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), clip)
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
    return hidden


def toolkit_step(model, optimizer, tokens, targets, state, clip, bf16):
    state = tuple(s.detach() for s in state)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        nll, state = model(tokens, state, targets)
    optimizer.zero_grad(set_to_none=True)
    (nll / tokens.shape[1]).backward()
    clip_grad_norm(model.parameters(), clip)
    optimizer.step()
    return state


def words_per_second(step, windows, warmup: int) -> float:
    for tokens, targets in windows[:warmup]:
        step(tokens, targets)
    started = time.perf_counter()
    for tokens, targets in windows[warmup:]:
        step(tokens, targets)
    elapsed = time.perf_counter() - started
    return sum(t.numel() for t, _ in windows[warmup:]) / elapsed


def windows_for(preset, steps: int, warmup: int):
    m, t = preset.model, preset.training
    torch.manual_seed(0)
    stream = torch.randint(0, m.vocab_size, ((steps + warmup) * t.unroll + 1, t.batch_size))
    return [(stream[i * t.unroll:(i + 1) * t.unroll], stream[i * t.unroll + 1:(i + 1) * t.unroll + 1])
            for i in range(steps + warmup)]


def timed_dropout(preset) -> float:
    return 0.5 if preset.model.dropout == 0 else preset.model.dropout  # time the dropout modes with dropout on


def reference_speed(preset, windows, warmup: int) -> float:
    m, t = preset.model, preset.training
    reference = ReferenceLM(m.vocab_size, m.hidden_size, m.num_layers, timed_dropout(preset)).train()
    hidden = [tuple(torch.zeros(m.num_layers, t.batch_size, m.hidden_size) for _ in range(2))]

    def ref(tokens, targets):
        hidden[0] = reference_step(reference, tokens, targets, hidden[0], t.lr, t.max_grad_norm)

    return words_per_second(ref, windows, warmup)


def bench_config(name: str, preset, windows, warmup: int, bf16: bool, base: float) -> None:
    """Every dropout mode of the toolkit (in the allocator setting the recipes train with) against the reference
    as pytorch/examples runs it (glibc's defaults, `base`) and in the toolkit's allocator setting."""
    m, t = preset.model, preset.training
    p = timed_dropout(preset)
    print(f"\n{name}: {m.num_layers} x {m.hidden_size}, vocab {m.vocab_size}, unroll {t.unroll}, batch {t.batch_size}, "
          f"dropout {p}, {len(windows) - warmup} timed steps, {torch.get_num_threads()} threads")
    print(f"  {'reference loop (fp32)':40s} {base:8.0f} words/s   1.00x")
    kept = reference_speed(preset, windows, warmup)
    print(f"  {'reference loop (fp32), freed memory kept':40s} {kept:8.0f} words/s   {kept / base:.2f}x")
    precisions = [False, True] if bf16 else [False]
    for mode in DROPOUT_MODES:
        for use_bf16 in precisions:
            config = dataclasses.replace(m, dropout_mode=mode, dropout=0.0 if mode == "none" else p)
            model = LanguageModel(config).train()
            optimizer = torch.optim.SGD(model.parameters(), lr=t.lr)
            state = [model.zero_state(t.batch_size)]

            def ours(tokens, targets):
                state[0] = toolkit_step(model, optimizer, tokens, targets, state[0], t.max_grad_norm, use_bf16)

            speed = words_per_second(ours, windows, warmup)
            label = f"seq2seq {mode} ({'bf16' if use_bf16 else 'fp32'})"
            print(f"  {label:40s} {speed:8.0f} words/s   {speed / base:.2f}x   ({speed / kept:.2f}x the kept-memory "
                  f"reference)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["small", "medium"], choices=list(LM_PRESETS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    presets = {name: LM_PRESETS[name]() for name in args.configs}
    windows = {name: windows_for(presets[name], args.steps, args.warmup) for name in args.configs}
    # The reference first, with glibc's malloc defaults as the example runs; then the setting the recipes train in
    # (it cannot be undone within a process).
    bases = {name: reference_speed(presets[name], windows[name], args.warmup) for name in args.configs}
    keep_freed_memory()
    for name in args.configs:
        bench_config(name, presets[name], windows[name], args.warmup, args.bf16, bases[name])


if __name__ == "__main__":
    main()
