"""Training throughput of each workload against its GEMM-bound ceiling on this machine (seq2seq.roofline).

    python benchmarks/roofline.py [--steps 20] [--workloads ptb-small ptb-medium demo timit] [--no-bf16]
    python benchmarks/roofline.py --workloads decode --model runs/wmt14_enfr-demo/model [--breakdown]  # beam 5
    python benchmarks/roofline.py --device cuda ...    # on a GPU (the default where there is one)
    python benchmarks/roofline.py --workloads ptb-small --breakdown    # where a step's time goes (CPU)
    python benchmarks/roofline.py --workloads ptb-small --rounds 5     # median efficiency of 5 rounds, and its range

For each workload: the matrix products of one training step at their exact shapes, each timed alone in fp32
(and bf16 where the CPU has AVX512-BF16 / AMX, or the GPU bf16), on the same device, give the ceiling; the same
step of the toolkit's model (forward, backward, clipping, optimiser update) timed over --steps steps gives the
achieved rate; efficiency is their ratio. Data are random ids / features of the preset's shapes: speed does not
depend on the words (PTB reads a new window each step, as training does, so clipping is as rare as there).
On a shared machine both halves move with the neighbours' load (PTB small fp32: 65-81 % in single runs of one
day); --rounds R measures the ceiling (every rate afresh) and the step in turn R times and prints the medians,
with the range of the R efficiencies.

Decoding (`decode`, needs a trained --model): seq2seq-translate's beam search over --input, run once with every
encoder and decoder step's shapes recorded (rows, sentences, source length, output columns), which give the
products of the ceiling (decoder layers, attention, the output layer over the shortlist; every row counted, so
the ceiling is if anything too low), then timed as the command runs it.

--breakdown (on a CPU) profiles each workload and prints each operator's own time by phase and by kind (the
linear layers' products, oneDNN's LSTM layers, casts, dropout masks, the rest by name) against the ceiling's
products, the large ones also timed with their operands coming from memory (seq2seq.roofline.cold_seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from statistics import median
from pathlib import Path

import torch

from seq2seq import sparse_grad
from seq2seq.acoustic_model import AcousticModel
from seq2seq.clipping import clip_grad_norm
from seq2seq.devices import bf16_supported, keep_freed_memory
from seq2seq.language_model import LanguageModel
from seq2seq.presets import ACOUSTIC_PRESETS, LM_PRESETS, TRANSLATION_PRESETS
from seq2seq.products import prepare_for_search
from seq2seq.roofline import (acoustic_model_step, ceiling_seconds, cold_seconds, language_model_step, measured_rate,
                              synchronize, translator_step)
from seq2seq.tokenizer import BOS
from seq2seq.translator import Translator

TIMIT_FRAMES, DEMO_BATCH, DEMO_SRC, DEMO_TGT, DEMO_VOCAB = 300, 110, 16, 19, 4000  # Multi30k-like shapes
WINDOWS = 64  # random PTB windows, cycled
CPU = torch.device("cpu")


def phase(name: str):
    """A named span of a training step, for --breakdown's profile (negligible cost otherwise)."""
    return torch.profiler.record_function(name)


def backward_and_update(loss, model, optimizer, max_grad_norm: float) -> None:
    """The rest of a training step after its forward, as the recipes run it: backward, clipping, update."""
    with phase("backward"):
        loss.backward()
    with phase("clipping + update"):
        clip_grad_norm(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def timed(step, steps: int, device: torch.device = CPU) -> float:
    """Seconds per step: two warm-up steps, then the median of `steps` timed ones (a GPU's queue drained
    before and after each)."""
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def alternate(sides: dict, run, pairs: int, warm_up: bool = True) -> dict[str, list[float]]:
    """Seconds of run() on each side in turn, `pairs` times (an untimed pass before each timed one with warm_up):
    sides maps a name to a callable that switches the process to that side. A shared machine's speed drifts by
    more than a small change gains, so two versions are compared in one process, alternating."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(pairs):
        for name, switch in sides.items():
            switch()
            if warm_up:
                run()
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def ptb(name: str, bf16: bool, device: torch.device = CPU, model_config=None):
    """A PTB training step of the preset `name` (its model, or `model_config` in its place)."""
    preset = LM_PRESETS[name]()
    t = preset.training
    model = LanguageModel(model_config or preset.model).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    sparse_grad.enable(model, optimizer, device)  # as recipes/ptb_lm.py trains
    # A new window every step, as in training: one window over and over at lr 1 is memorised until its
    # gradients blow up, and every step would clip (a real run clips on ~7 % of its steps)
    windows = torch.randint(0, preset.model.vocab_size, (WINDOWS, t.unroll + 1, t.batch_size), device=device).unbind(0)
    state, count = model.lstm.zero_state(t.batch_size, device), 0

    def step():
        nonlocal state, count
        tokens, count = windows[count % WINDOWS], count + 1
        state = tuple(s.detach() for s in state)
        with phase("forward"), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            nll, state = model(tokens[:-1], state, tokens[1:])
        backward_and_update(nll / t.batch_size, model, optimizer, t.max_grad_norm)

    products = language_model_step(t.batch_size, t.unroll, preset.model.hidden_size, preset.model.num_layers,
                                   preset.model.vocab_size)
    return step, t.unroll * t.batch_size, "words", products


def demo(bf16: bool, device: torch.device = CPU):
    preset = TRANSLATION_PRESETS["demo"]()
    config = dataclasses.replace(preset.model, src_vocab_size=DEMO_VOCAB, tgt_vocab_size=DEMO_VOCAB)
    model = Translator(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    src = torch.randint(4, DEMO_VOCAB, (DEMO_SRC, DEMO_BATCH), device=device)
    lengths = torch.full((DEMO_BATCH,), DEMO_SRC, device=device)
    body = torch.randint(4, DEMO_VOCAB, (DEMO_TGT - 1, DEMO_BATCH), device=device)
    tgt_in = torch.cat([torch.full((1, DEMO_BATCH), BOS, device=device), body])
    tgt_out = torch.cat([body, body[:1]])

    def step():
        with phase("forward"), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, count = model(src, lengths, tgt_in, tgt_out, preset.training.label_smoothing)
        backward_and_update(loss / count, model, optimizer, preset.training.max_grad_norm)

    products = translator_step(DEMO_BATCH, DEMO_SRC, DEMO_TGT, config.embedding_size, config.hidden_size,
                               config.num_layers, DEMO_VOCAB, config.attention, config.bidirectional_encoder)
    return step, DEMO_TGT * DEMO_BATCH, "target tokens", products


def timit(bf16: bool, device: torch.device = CPU):
    preset = ACOUSTIC_PRESETS["default"]()
    c, batch = preset.model, preset.training.batch_size
    model = AcousticModel(c).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    features = torch.randn(TIMIT_FRAMES, batch, c.input_size, device=device)
    lengths = torch.full((batch,), TIMIT_FRAMES, device=device)
    labels = torch.randint(0, 48, (TIMIT_FRAMES, batch), device=device)
    no_phones = torch.zeros(batch, 1, dtype=torch.long, device=device), torch.ones(batch, dtype=torch.long, device=device)

    def step():
        with phase("forward"):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(features, lengths)
            loss, count = model.loss(logits, lengths, labels, *no_phones)
        backward_and_update(loss / count, model, optimizer, preset.training.max_grad_norm)

    products = acoustic_model_step(TIMIT_FRAMES, batch, c.input_size, c.hidden_size, c.num_layers, c.num_classes,
                                   c.bidirectional)
    return step, TIMIT_FRAMES * batch, "frames", products


def decode(bf16: bool, model_dir, input_path, device: torch.device = CPU, beam: int = 5, workers: int = 2):
    from seq2seq.data.parallel import read_text_lines
    from seq2seq.model_dir import load_translator
    from seq2seq.roofline import Product, linear, lstm_layer
    from seq2seq.shortlist import load_shortlist
    from seq2seq.translate import translate_lines

    model, src_tok, tgt_tok, payload = load_translator(model_dir)
    model = prepare_for_search(model, device, torch.bfloat16 if bf16 else torch.float32)  # as seq2seq-translate does
    shortlist = load_shortlist(model_dir, len(src_tok), len(tgt_tok), (src_tok.fingerprint(), tgt_tok.fingerprint()))
    lines = [line for line in read_text_lines(Path(input_path)) if line]
    defaults = {"alpha": 0.6, "max_len_a": 1.5, "max_len_b": 10}
    options = {key: payload.get("decoding", {}).get(key, value) for key, value in defaults.items()}
    c, products = model.config, []
    encode, step = model.encode, model.step

    def recorded_encode(src, lengths, *args, **kwargs):
        directions = 2 if c.bidirectional_encoder else 1
        sizes = [c.embedding_size] + [c.hidden_size] * (c.num_layers - 1)
        products.extend(p for size in sizes for p in lstm_layer(src.shape[0], src.shape[1], size,
                                                                   c.hidden_size // directions, directions, False))
        if c.attention:
            products.extend(linear(src.shape[0] * src.shape[1], c.hidden_size, c.hidden_size, backward=False))
        return encode(src, lengths, *args, **kwargs)

    def recorded_step(tokens, state, memory, output=None, alignment=False):
        rows, sentences, h = tokens.shape[0], memory.src_mask.shape[0], c.hidden_size
        per_row = [Product(rows, h, 4 * h, 2 * c.num_layers - 1 + c.input_feeding)]  # W_hh every layer, W_ih above 0
        if c.attention:
            s_len = memory.src_mask.shape[1]
            beam_rows = rows // sentences
            per_row += [Product(beam_rows, h, s_len, sentences), Product(beam_rows, s_len, h, sentences)]
            per_row += linear(rows, 2 * h, h, backward=False)
        per_row += linear(rows, h, len(output.ids) if output is not None else c.tgt_vocab_size, backward=False)
        products.extend(per_row)
        return step(tokens, state, memory, output, alignment)

    def run(workers):
        return translate_lines(model, src_tok, tgt_tok, lines, beam_size=beam, batch_size=64, shortlist=shortlist,
                               workers=workers, **options)

    model.encode, model.step = recorded_encode, recorded_step
    with torch.no_grad():
        run(1)
    model.encode, model.step = encode, step
    recorded = list(products)

    def timed_run():
        with torch.no_grad():
            run(workers)

    return timed_run, len(lines), "sentences", recorded


GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
            "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn", "mkldnn::_linear_pointwise"}  # the last: seq2seq.gemm's oneDNN


def decode_breakdown(model_dir, input_path, bf16: bool, top: int = 12) -> None:
    """Where a beam-5 decode's time goes: one pass (1 worker, so each op's time is its own) under the torch
    profiler; self CPU time of the matrix products against everything else, the largest other ops by name."""
    timed_run, _, _, _ = decode(bf16, model_dir, input_path, workers=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        started = time.perf_counter()
        timed_run()
        wall = time.perf_counter() - started
    events = [e for e in profile.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e6
    print(f"decode breakdown ({'bf16' if bf16 else 'fp32'}, 1 worker, profiled): wall {wall:.2f} s, ops' self time "
          f"{total:.2f} s; matrix products {gemm:.2f} s ({gemm / total:.0%}), the rest {total - gemm:.2f} s "
          f"({(total - gemm) / total:.0%}); Python and the search's own bookkeeping: {max(0.0, wall - total):.2f} s")
    others = sorted((e for e in events if e.key not in GEMM_OPS), key=lambda e: -e.self_cpu_time_total)[:top]
    for e in others:
        print(f"  {e.key:<36} {e.self_cpu_time_total / 1e6:7.3f} s {e.self_cpu_time_total / 1e6 / total:6.1%} "
              f"{e.count:9,d} calls {e.self_cpu_time_total / max(e.count, 1):8.1f} us/call")


PHASES = ("forward", "backward", "clipping + update")
CATEGORIES = {  # op name -> what it is, for the training breakdown
    **{name: "matrix products of linear layers and attention" for name in GEMM_OPS},
    "aten::mkldnn_rnn_layer": "oneDNN LSTM layers (their products and cell)",
    "aten::mkldnn_rnn_layer_backward": "oneDNN LSTM layers (their products and cell)",
    "aten::mkldnn_rnn": "oneDNN LSTM layers (their products and cell)",
    "aten::copy_": "dtype casts and copies", "aten::_to_copy": "dtype casts and copies",
    "seq2seq::transpose_kernel": "dtype casts and copies",
    **{name: "dropout masks (random doubles, compared with 1 - p)" for name in ("aten::uniform_", "aten::bernoulli_",
                                                                                 "aten::lt", "seq2seq::dropout_mask_kernel")},
    "seq2seq::softmax_loss_kernel": "compiled bf16 softmax (loss, gradient)",
    "seq2seq::softmax_fp32_kernel": "compiled fp32 softmax (element-wise passes)",
}


def owning_phase(event) -> str:
    while event is not None and event.name not in PHASES:
        event = event.cpu_parent
    return event.name if event is not None else "outside the phases"


def training_breakdown(name: str, bf16: bool, steps: int = 10, top: int = 6) -> None:
    """Where a training step's time goes on a CPU: `steps` steps under the torch profiler, each op's self time
    by phase (forward, backward, clipping + update) and by kind, next to the products' ceiling with the
    operands cached (the table's) and, for the products outside the LSTM kernels, with them coming from memory
    (seq2seq.roofline.cold_seconds), as they do in a step."""
    step, units, unit, products = WORKLOADS[name](bf16, CPU)
    dtype = torch.bfloat16 if bf16 else torch.float32
    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - started) / steps * 1e3  # ms a step
    by_phase, by_kind, by_op = {}, {}, {}
    for event in profile.events():
        if event.name in PHASES or event.self_cpu_time_total <= 0:
            continue
        ms, where = event.self_cpu_time_total / 1e3 / steps, owning_phase(event)
        by_phase[where] = by_phase.get(where, 0.0) + ms
        kind = CATEGORIES.get(event.name, "other operators")
        by_kind[kind] = by_kind.get(kind, 0.0) + ms
        if kind == "other operators":
            by_op[event.name] = by_op.get(event.name, 0.0) + ms
    lstm = [p for p in products if p.lstm]
    others = [p for p in products if not p.lstm]
    hot_lstm, hot_others = (ceiling_seconds(ps, dtype) * 1e3 for ps in (lstm, others))
    cold_others = sum(min(cold_seconds(p, d) for d in {torch.float32, dtype}) for p in others) * 1e3
    print(f"{name} breakdown ({'bf16' if bf16 else 'fp32'}, profiled, {steps} steps): {wall:.1f} ms a step; "
          f"ceiling {hot_lstm + hot_others:.1f} ms (LSTM layers' products {hot_lstm:.1f}, the other products "
          f"{hot_others:.1f}; those with operands from memory: {cold_others:.1f})")
    ops = sum(by_kind.values())
    print("  ops' self time by phase: " + ", ".join(f"{p} {by_phase[p]:.1f} ms" for p in (*PHASES, "outside the phases")
                                                  if by_phase.get(p, 0.0) >= 0.05)
          + f"; Python and waits between ops {max(0.0, wall - ops):.1f} ms")
    for kind, ms in sorted(by_kind.items(), key=lambda item: -item[1]):
        if ms >= 0.05:
            print(f"  {kind:<52} {ms:6.1f} ms {ms / wall:6.1%}")
    for op, ms in sorted(by_op.items(), key=lambda item: -item[1])[:top]:
        print(f"    {op[:48]:<48} {ms:6.2f} ms")


WORKLOADS = {"ptb-small": lambda bf16, device: ptb("small", bf16, device),
             "ptb-medium": lambda bf16, device: ptb("medium", bf16, device),
             "demo": demo, "timit": timit, "decode": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--no-bf16", action="store_true", help="fp32 only, even where bf16 is supported")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure ceiling and speed in turn this many times; print medians and the range")
    parser.add_argument("--model", help="a trained translation model dir, for the decode workload")
    parser.add_argument("--input", default="data/multi30k/test_2016_flickr.en.gz", help="source lines for decode")
    parser.add_argument("--breakdown", action="store_true",
                        help="on a CPU: also profile each workload (decode: one pass) and print where a step's time "
                             "goes: matrix products against the rest, by phase and kind")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the workloads and the ceiling's products run (default: the GPU if there is one)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    keep_freed_memory()  # the allocator setting the recipes train in
    precisions = ["fp32"] + (["bf16"] if bf16_supported(device) and not args.no_bf16 else [])
    where = (f"GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else
             f"CPU {torch.backends.cpu.get_cpu_capability()} | {torch.get_num_threads()} threads")
    bf16_note = ("supported" if "bf16" in precisions else "supported, not measured (--no-bf16)"
                 if bf16_supported(device) else "not supported: fp32 only")
    print(f"torch {torch.__version__} | {where} | bf16 {bf16_note}")
    print(f"{'workload':<11} {'precision':<9} {'GFLOP/step':>10} {'ceiling units/s':>16} {'achieved':>10} "
          f"{'efficiency':>10}  unit")
    for name in args.workloads:
        if name == "decode" and not args.model:
            print("decode: skipped (give --model DIR, a trained translation model)")
            continue
        for precision in precisions:
            bf16 = precision == "bf16"
            if name == "decode":
                step, units, unit, products = decode(bf16, args.model, args.input, device)
                steps = 3
            else:
                step, units, unit, products = WORKLOADS[name](bf16, device)
                steps = args.steps
            dtype = torch.bfloat16 if bf16 else torch.float32
            ceilings, speeds = [], []
            for round_ in range(args.rounds):  # in turn, each round's ceiling from freshly timed rates
                if round_:
                    measured_rate.cache_clear()
                ceilings.append(units / ceiling_seconds(products, dtype, device))
                speeds.append(units / timed(step, steps, device))
            efficiencies = [a / c for a, c in zip(speeds, ceilings)]
            flops = sum(p.flops() for p in products) / 1e9
            spread = (f"  [{min(efficiencies):.0%}-{max(efficiencies):.0%} over {args.rounds} rounds]"
                      if args.rounds > 1 else "")
            print(f"{name:<11} {precision:<9} {flops:10.2f} {median(ceilings):16,.0f} {median(speeds):10,.0f} "
                  f"{median(efficiencies):10.0%}  {unit}{spread}", flush=True)
    if args.breakdown and device.type != "cpu":
        print("--breakdown: profiles CPU operators only; skipped on", device.type)
    elif args.breakdown:
        for name in args.workloads:
            for precision in precisions:
                if name != "decode":
                    training_breakdown(name, precision == "bf16")
                elif args.model:
                    decode_breakdown(args.model, args.input, precision == "bf16")


if __name__ == "__main__":
    main()
