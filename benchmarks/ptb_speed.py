"""Training words/s of the PTB language model, per config and dropout mode, against a reference loop.

    python benchmarks/ptb_speed.py [--configs small medium] [--steps 30] [--rounds 3] [--bf16]

The reference is PyTorch's own word_language_model example, reproduced inline: nn.Embedding ->
nn.Dropout -> nn.LSTM(num_layers, dropout=p) -> nn.Dropout -> nn.Linear, F.cross_entropy,
clip_grad_norm_, and a hand-written SGD update. Both see the same random token windows (speed does not
depend on the words) in one process, so the ratio is measured under the same conditions. The reference is
timed first with glibc's malloc defaults, as the example runs, then again after
seq2seq.devices.keep_freed_memory(), the setting the recipes train in; the toolkit is timed in that setting.

A shared machine's speed drifts within a run, so each contender is timed in --rounds rounds, taken in turn (round 1
of every contender, then round 2, ...), and the figures are each contender's median round, its range in brackets;
the ratios are of medians. The reference with glibc's defaults runs its rounds first, on their own: the allocator
setting cannot be undone within a process.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from statistics import median

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq import sparse_grad
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


def in_turn(contenders: dict, windows, warmup: int, rounds: int) -> dict[str, list[float]]:
    """Words/s of each contender (name -> step) in every round, the rounds taken in turn; warm-up steps only
    before a contender's first round."""
    speeds = {name: [] for name in contenders}
    for round_ in range(rounds):
        for name, step in contenders.items():
            speeds[name].append(words_per_second(step, windows, warmup if round_ == 0 else 0))
    return speeds


def spread(values: list[float]) -> str:
    return f"[{min(values):.0f}-{max(values):.0f}]" if len(values) > 1 else ""


def windows_for(preset, steps: int, warmup: int):
    m, t = preset.model, preset.training
    torch.manual_seed(0)
    stream = torch.randint(0, m.vocab_size, ((steps + warmup) * t.unroll + 1, t.batch_size))
    return [(stream[i * t.unroll:(i + 1) * t.unroll], stream[i * t.unroll + 1:(i + 1) * t.unroll + 1])
            for i in range(steps + warmup)]


def timed_dropout(preset) -> float:
    return 0.5 if preset.model.dropout == 0 else preset.model.dropout  # time the dropout modes with dropout on


def reference_loop(preset):
    """A step function of the reference model (its own weights and carried state)."""
    m, t = preset.model, preset.training
    reference = ReferenceLM(m.vocab_size, m.hidden_size, m.num_layers, timed_dropout(preset)).train()
    hidden = [tuple(torch.zeros(m.num_layers, t.batch_size, m.hidden_size) for _ in range(2))]

    def ref(tokens, targets):
        hidden[0] = reference_step(reference, tokens, targets, hidden[0], t.lr, t.max_grad_norm)

    return ref


def toolkit_loop(preset, mode: str, bf16: bool):
    """A step function of the toolkit's model in one dropout mode and precision."""
    m, t = preset.model, preset.training
    p = timed_dropout(preset)
    model = LanguageModel(dataclasses.replace(m, dropout_mode=mode, dropout=0.0 if mode == "none" else p)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=t.lr)
    sparse_grad.enable(model, optimizer, "cpu")  # as recipes/ptb_lm.py trains
    state = [model.zero_state(t.batch_size)]

    def ours(tokens, targets):
        state[0] = toolkit_step(model, optimizer, tokens, targets, state[0], t.max_grad_norm, bf16)

    return ours


def bench_config(name: str, preset, windows, warmup: int, rounds: int, bf16: bool, base: list[float]) -> None:
    """Every dropout mode of the toolkit (in the allocator setting the recipes train with) against the reference
    as pytorch/examples runs it (glibc's defaults, `base`) and in the toolkit's allocator setting, in turn."""
    m, t = preset.model, preset.training
    print(f"\n{name}: {m.num_layers} x {m.hidden_size}, vocab {m.vocab_size}, unroll {t.unroll}, batch {t.batch_size}, "
          f"dropout {timed_dropout(preset)}, {len(windows) - warmup} timed steps x {rounds} rounds in turn, "
          f"{torch.get_num_threads()} threads; median round [range]")
    kept_label = "reference loop (fp32), freed memory kept"
    contenders = {kept_label: reference_loop(preset)}
    for mode in DROPOUT_MODES:
        for use_bf16 in ([False, True] if bf16 else [False]):
            contenders[f"seq2seq {mode} ({'bf16' if use_bf16 else 'fp32'})"] = toolkit_loop(preset, mode, use_bf16)
    speeds = in_turn(contenders, windows, warmup, rounds)
    reference, kept = median(base), median(speeds[kept_label])
    print(f"  {'reference loop (fp32)':40s} {reference:8.0f} words/s   1.00x   {spread(base)}")
    for label, values in speeds.items():
        speed = median(values)
        against_kept = "" if label == kept_label else f"   ({speed / kept:.2f}x the kept-memory reference)"
        print(f"  {label:40s} {speed:8.0f} words/s   {speed / reference:.2f}x   {spread(values)}{against_kept}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["small", "medium"], choices=list(LM_PRESETS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender, taken in turn")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    presets = {name: LM_PRESETS[name]() for name in args.configs}
    windows = {name: windows_for(presets[name], args.steps, args.warmup) for name in args.configs}
    # The reference first, with glibc's malloc defaults as the example runs; then the setting the recipes train in
    # (it cannot be undone within a process).
    bases = {name: in_turn({"reference": reference_loop(presets[name])}, windows[name], args.warmup,
                           args.rounds)["reference"] for name in args.configs}
    keep_freed_memory()
    for name in args.configs:
        bench_config(name, presets[name], windows[name], args.warmup, args.rounds, args.bf16, bases[name])


if __name__ == "__main__":
    main()
