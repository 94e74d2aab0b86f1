"""The compiled CPU kernels (seq2seq.native) against the eager PyTorch code they replace, in one process.

    python benchmarks/native_speed.py [--repeats 30]

Dropout masks: seq2seq.dropout.bernoulli_mask with the kernel and without, for the mask shapes of PTB small
(20, 20, 200), the demo translator (19, 110, 256) and TIMIT (300, 16, 250); each pair is checked to be the same
mask from the same generator state.

Step loops: one masked LSTM layer's recurrence (seq2seq.recurrence.MaskedLSTMRecurrence, `naive`'s fresh masks),
forward and backward, with its loops in C++ and in Python, at PTB small's (T 20, B 20, u 200) and TIMIT's
bidirectional (T 300, D 2, B 16, u 125) shapes; each pair is checked to give the same outputs and gradients.

Search cells: one decoding step's decoder (seq2seq.translator.decoder_step, 2 layers of 256 like the demo
translator) for a beam of 5 over 64 sentences (320 rows continuing 200 distinct parents, layer 0's gates looked up
in a 4,000-token table), with the compiled cell and with the eager gathers and cell; each pair is checked to give
the same h and c bit for bit.

Embedding updates: a word embedding's lookup, backward, clipping norm (over the limit, so it also scales) and SGD
update at PTB small's (20 x 20 words, 10,000 x 200) and medium's (35 x 20, 10,000 x 650) shapes, with dense
gradients and with seq2seq.sparse_grad's row-sparse ones; each pair is checked to give the same norm and weights.
Then whole PTB small and medium training steps (forward, backward, clipping, SGD; random windows) of one model,
its embedding's gradient dense and sparse in turn, in fp32 and (where the CPU has it) under bf16 autocast.

The softmax layer's forward + backward, in fp32 and under bf16 autocast: for each shape (PTB small's 400 x 200 x
10,000; the demo translator's 2,090 x 256 x 4,000 with label smoothing and padding) it times
seq2seq.softmax.linear_cross_entropy, forward and backward (the three products included), with the precision's
kernel and without, alternating: once with the operands cached (the same call repeated) and once after streaming
256 MB through the caches, as the softmax meets its logits inside a training step. It also checks the fp32 kernel's
loss and gradients against the eager path's bit for bit, and prints how far the bf16 kernel's are from the eager
path's (both round the logits' gradient to bf16).

Transposed products (where seq2seq.gemm runs fp32 products in oneDNN: an AMD CPU with AVX-512, or
SEQ2SEQ_FP32_GEMM=onednn): a weight's gradient dW = dY^T X at the softmax layers' shapes (PTB small, medium, the
demo) as gemm.mm took it before (oneDNN copying dY^T itself, on one thread) and as it does now (the tiled
transposes, the cheaper way round), checked to be the same bits; then whole fp32 training steps, each of the
changes that moved products to oneDNN undone alone, a step at a time in turn: the transposes (PTB small and the demo
translator, benchmarks/roofline.py's steps), attention's products (gemm.trainable_linear; the demo), and PTB small
`variational` (dropout 0.5) with its input projections, then its recurrent products, back in MKL.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import time

import torch

from seq2seq import dropout, gemm, recurrence, softmax, sparse_grad, translator
from seq2seq.clipping import clip_grad_norm
from seq2seq.devices import bf16_supported, keep_freed_memory
from seq2seq.language_model import LanguageModel
from seq2seq.native import (dropout_mask_kernel, recurrence_kernel, search_cell_kernel, softmax_fp32_kernel,
                            softmax_loss_kernel, sparse_norm_kernel, transpose_kernel)
from seq2seq.presets import LM_PRESETS

SHAPES = {"ptb-small": (400, 200, 10_000, 0.0, None), "demo": (2_090, 256, 4_000, 0.1, 0)}
RECURRENCES = {"ptb-small": (20, 1, 20, 200), "timit": (300, 2, 16, 125)}  # T, D, B, u
EMBEDDINGS = {"ptb-small": (20, 20, 10_000, 200), "ptb-medium": (35, 20, 10_000, 650)}  # T, B, V, E
MASKS = {"ptb-small": ((20, 20, 200), 0.5), "demo": ((19, 110, 256), 0.2), "timit": ((300, 16, 250), 0.2)}


@contextlib.contextmanager
def kernel_switched(module, name: str, compiled: bool):
    """module.name (the cached loader of a compiled kernel) as it is, or answering None (the eager code), inside."""
    loader = getattr(module, name)
    setattr(module, name, loader if compiled else (lambda: None))
    try:
        yield
    finally:
        setattr(module, name, loader)


def median_ms(call, repeats: int, flush: torch.Tensor | None) -> float:
    call()
    times = []
    for _ in range(repeats):
        if flush is not None:
            flush.fill_(1.0)
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def alternating(run, repeats: int, flush: torch.Tensor | None = None, labels=("eager", "kernel"), digits: int = 2,
                ratio_digits: int = 2) -> str:
    """run(compiled) timed three times each way, alternating: both ranges of medians and the range of their ratios."""
    times = {False: [], True: []}
    for _ in range(3):
        for compiled in (False, True):
            times[compiled].append(median_ms(lambda: run(compiled), repeats, flush))
    ratios = [e / k for e, k in zip(times[False], times[True])]
    spans = [f"{label} {min(t):6.{digits}f}-{max(t):6.{digits}f} ms" for label, t in zip(labels, times.values())]
    return f"{spans[0]}   {spans[1]}   {min(ratios):.{ratio_digits}f}-{max(ratios):.{ratio_digits}f}x"


def masks(repeats: int) -> None:
    """Time bernoulli_mask with and without the kernel, alternating, after checking that both give the same mask."""
    print("dropout masks (seq2seq.dropout.bernoulli_mask), median ms a mask")
    for name, (shape, p) in MASKS.items():
        def draw(compiled: bool) -> torch.Tensor:
            with kernel_switched(dropout, "dropout_mask_kernel", compiled):
                return dropout.bernoulli_mask(shape, p)

        same = []
        for compiled in (False, True):
            torch.manual_seed(0)
            same.append((draw(compiled), torch.rand(1)))
        assert torch.equal(same[0][0], same[1][0]) and torch.equal(same[0][1], same[1][1]), "masks differ"
        print(f"  {name:<10} {str(shape):<16} p {p}: {alternating(draw, repeats, digits=3, ratio_digits=1)}"
              f"   (the same mask and generator state: checked)")


def recurrences(repeats: int) -> None:
    """Time the masked recurrence's forward + backward with the C++ loops and the Python ones, alternating."""
    print("step loops (seq2seq.recurrence, fresh masks on h_{t-1}): forward + backward of one layer, median ms")
    for name, (steps, directions, batch, units) in RECURRENCES.items():
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(steps, directions, batch, 4 * units, generator=generator).requires_grad_()
        w = (torch.rand(directions, 4 * units, units, generator=generator) * 0.2 - 0.1).requires_grad_()
        h0, c0 = torch.zeros(directions, batch, units), torch.zeros(directions, batch, units)
        mask = (torch.rand(steps, directions, batch, units, generator=generator) < 0.5).float() * 2.0
        upstream = torch.randn(steps, directions, batch, units, generator=generator)

        def run(compiled: bool):
            with kernel_switched(recurrence, "recurrence_kernel", compiled):
                hs, cs = recurrence.MaskedLSTMRecurrence.apply(x, w, h0, c0, mask)
                return (hs, cs, *torch.autograd.grad((hs * upstream).sum(), (x, w)))

        assert all(torch.equal(a, b) for a, b in zip(run(False), run(True))), "the loops differ"
        print(f"  {name:<10} T {steps}, D {directions}, B {batch}, u {units}: "
              f"{alternating(run, repeats, labels=('Python', 'C++'))}   (the same outputs and gradients: checked)")


def search_cells(repeats: int) -> None:
    """Time one search step's decoder with the compiled cell and the eager one, alternating."""
    print("search cells (seq2seq.translator.decoder_step, one beam step, its W_hh products included), median ms")
    layers, units, rows, parents, sentences, vocab = 2, 256, 320, 200, 64, 4_000
    generator = torch.Generator().manual_seed(0)
    decoder = translator.StackedLSTM(units, units, layers, dropout=0.0).eval()
    table = torch.randn(vocab, 4 * units, generator=generator)
    tokens = torch.randint(0, vocab, (rows,), generator=generator)
    previous = torch.randperm(rows, generator=generator)[:parents].repeat(2)[:rows]  # 200 distinct of 320
    state = (torch.randn(layers, rows, units, generator=generator), torch.randn(layers, rows, units, generator=generator))

    def run(compiled: bool):
        with kernel_switched(translator, "search_cell_kernel", compiled):
            top, (h, c) = translator.decoder_step(decoder, None, state, first_gates=table, parents=previous,
                                                  first_rows=tokens)
            return top, h, c

    assert all(torch.equal(a, b) for a, b in zip(run(False), run(True))), "the cells differ"
    print(f"  demo decoder, {layers} x {units}, {rows} rows ({sentences} sentences x beam 5), {parents} parents: "
          f"{alternating(run, repeats)}   (the same h and c: checked)")


def embedding_updates(repeats: int) -> None:
    """Time an embedding's lookup, backward, clipping norm and SGD update with dense gradients and with
    seq2seq.sparse_grad's row-sparse ones, alternating, after checking that both give the same norm and weights."""
    print("embedding lookup + backward + clipping norm + SGD update (seq2seq.sparse_grad), median ms")
    for name, (steps, batch, vocab, size) in EMBEDDINGS.items():
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, vocab, (steps, batch), generator=generator)
        upstream = torch.randn(steps, batch, size, generator=generator)
        start = torch.rand(vocab, size, generator=generator) * 0.2 - 0.1
        tables = {}
        for sparse in (False, True):
            table = sparse_grad.Embedding(vocab, size, _weight=start.clone())
            optimizer = torch.optim.SGD(table.parameters(), lr=1 / 1.2)
            assert sparse_grad.enable(table, optimizer, "cpu") == 1
            table.sparse = sparse
            tables[sparse] = (table, optimizer)

        def run(sparse: bool):
            table, optimizer = tables[sparse]
            optimizer.zero_grad(set_to_none=True)
            table(tokens).backward(upstream)
            norm = clip_grad_norm(table.parameters(), 5.0)  # over the limit: every step scales
            optimizer.step()
            return norm, table.weight

        assert all(torch.equal(a, b) for a, b in zip(run(False), run(True))), "the updates differ"
        print(f"  {name:<10} {steps} x {batch} words, {vocab:,} x {size}: "
              f"{alternating(run, repeats, labels=('dense', 'sparse'), digits=3, ratio_digits=1)}"
              f"   (the same norm and weights: checked)")


def training_steps(repeats: int) -> None:
    """Time whole PTB training steps (forward, backward, clipping, SGD) of one model with its embedding's
    gradient dense and sparse, alternating, in fp32 and under bf16 autocast."""
    print("PTB training steps (forward, backward, clipping at 5, SGD at lr 1), dense and sparse embedding "
          "gradients, median ms")
    for name in ("ptb-small", "ptb-medium"):
        preset = LM_PRESETS[name.removeprefix("ptb-")]()
        model, t = LanguageModel(preset.model).train(), preset.training
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        sparse_grad.enable(model, optimizer, "cpu")
        generator = torch.Generator().manual_seed(0)
        windows = torch.randint(0, preset.model.vocab_size, (16, t.unroll + 1, t.batch_size), generator=generator)
        for bf16 in (False, True) if bf16_supported(torch.device("cpu")) else (False,):
            count, state = [0], [model.zero_state(t.batch_size)]

            def run(sparse: bool):
                model.embedding.sparse = sparse
                tokens, count[0] = windows[count[0] % len(windows)], count[0] + 1
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    nll, hidden = model(tokens[:-1], state[0], tokens[1:])
                state[0] = tuple(h.detach() for h in hidden)
                (nll / t.batch_size).backward()
                clip_grad_norm(model.parameters(), t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            steps = 3 * repeats if name == "ptb-small" else repeats
            print(f"  {name:<10} {'bf16' if bf16 else 'fp32'}: {interleaved(run, steps)}")


def interleaved(run, steps: int, labels=("dense", "sparse")) -> str:
    """run(False) and run(True) timed in turn, one call each at a time, `steps` calls a side after two warm-up
    pairs (a drifting machine slows both alike): the medians, quartiles and the ratio of the medians."""
    times = {False: [], True: []}
    for i in range(steps + 2):
        for sparse in (False, True):
            start = time.perf_counter()
            run(sparse)
            if i >= 2:
                times[sparse].append((time.perf_counter() - start) * 1e3)
    quartiles = {k: statistics.quantiles(v, n=4) for k, v in times.items()}
    spans = [f"{label} {q[1]:6.1f} ms [{q[0]:.1f}-{q[2]:.1f}]" for label, q in zip(labels, quartiles.values())]
    return f"{spans[0]}   {spans[1]}   {quartiles[False][1] / quartiles[True][1]:.2f}x (medians)"


def inputs(n: int, h: int, v: int, ignore_index: int | None):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=generator).requires_grad_()
    weight = (torch.rand(v, h, generator=generator) * 0.2 - 0.1).requires_grad_()
    bias = (torch.rand(v, generator=generator) * 0.2 - 0.1).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=generator)
    if ignore_index is not None:
        targets[n - n // 10:] = ignore_index  # the last tenth is padding
    return hidden, weight, bias, targets


def softmax_layers(repeats: int, precision: str) -> None:
    """Time the softmax layer's forward + backward with and without its kernel, cached and from memory."""
    bf16 = precision == "bf16"
    loader = "softmax_loss_kernel" if bf16 else "softmax_fp32_kernel"
    print(f"forward + backward of the {precision} softmax layer (seq2seq.softmax.linear_cross_entropy), median ms")
    flush = torch.empty(64 * 2**20)  # 256 MB
    for name, (n, h, v, smoothing, ignore_index) in SHAPES.items():
        hidden, weight, bias, targets = inputs(n, h, v, ignore_index)

        def run(compiled: bool):
            """The loss and the three gradients."""
            for tensor in (hidden, weight, bias):
                tensor.grad = None
            with kernel_switched(softmax, loader, compiled), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = softmax.linear_cross_entropy(hidden, weight, bias, targets, smoothing, ignore_index)
            loss.backward()
            return loss.detach(), hidden.grad, weight.grad, bias.grad

        eager, kernel = run(False), run(True)
        if bf16:
            loss_error = abs(float(kernel[0]) - float(eager[0])) / abs(float(eager[0]))
            grad_errors = [float((k - e).norm() / e.norm()) for k, e in zip(kernel[1:], eager[1:])]
            agreement = (f"loss rel. difference {loss_error:.1e}, gradients (h, W, b) "
                         f"{', '.join(f'{x:.1e}' for x in grad_errors)}")
        else:
            same = all(torch.equal(k.view(torch.int32), e.view(torch.int32)) for k, e in zip(kernel, eager))
            agreement = "loss and gradients " + ("the same bit for bit" if same else "DIFFERENT")
        print(f"{name}: N {n}, H {h}, V {v}, smoothing {smoothing}; kernel vs eager: {agreement}")
        for where, buffer in (("operands cached", None), ("from memory", flush)):
            print(f"  {where:<16} {alternating(run, repeats, buffer)}")


def mm_before(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """gemm.mm as it was: a transposed a handed to oneDNN as it is, which copies it (one thread)."""
    if gemm.in_onednn(a, b):
        return gemm.linear(a, b.t())
    return torch.mm(a, b)


def transposed_products(repeats: int) -> None:
    """dW = dY^T X before and now (see the head), alone and inside whole fp32 training steps."""
    if gemm.fp32_library() != "onednn":
        print("transposed products: skipped, fp32 products run in MKL on this CPU (SEQ2SEQ_FP32_GEMM=onednn to measure)")
        return
    print("a weight's gradient dY^T X in oneDNN (seq2seq.gemm.mm): before (oneDNN copies dY^T) and now, median ms")
    flush = torch.empty(64 * 2**20)
    generator = torch.Generator().manual_seed(0)
    for name, (n, h, v) in {"ptb-small": (400, 200, 10_000), "ptb-medium": (700, 650, 10_000),
                            "demo": (2_090, 256, 4_000)}.items():
        grad, x = torch.randn(n, v, generator=generator), torch.randn(n, h, generator=generator)
        same = torch.equal(mm_before(grad.t(), x), gemm.mm(grad.t(), x))
        print(f"  {name:<10} ({v} x {n}) x ({n} x {h}), the same bits: {same}")

        def product(now: bool, grad=grad, x=x) -> torch.Tensor:
            return (gemm.mm if now else mm_before)(grad.t(), x)

        for where, buffer in (("operands cached", None), ("from memory", flush)):
            print(f"    {where:<16} {alternating(product, repeats, buffer, labels=('before', 'now'))}")
    import roofline  # benchmarks/roofline.py: its training steps, as its table times them

    print("whole fp32 training steps, each change to the products alone, before and now, median ms")
    variational = dataclasses.replace(LM_PRESETS["small"]().model, dropout_mode="variational", dropout=0.5)
    changes = [  # (workload, what changed, module, attribute, its earlier value)
        ("ptb-small", "dY^T X transposes", gemm, "mm", mm_before),
        ("demo", "dY^T X transposes", gemm, "mm", mm_before),
        ("demo", "attention's products", gemm._Linear, "apply", torch.nn.functional.linear),
        ("variational", "input projections", gemm._Linear, "apply", torch.nn.functional.linear),
        ("variational", "recurrent products", recurrence, "_onednn", lambda w: False)]
    for name, what, module, attribute, earlier in changes:
        cpu = torch.device("cpu")
        step = (roofline.ptb("small", False, cpu, variational) if name == "variational"
                else roofline.WORKLOADS[name](False, cpu))[0]
        current = getattr(module, attribute)

        def run(now: bool):
            setattr(module, attribute, current if now else earlier)
            try:
                step()
            finally:
                setattr(module, attribute, current)

        steps = repeats if name == "demo" else 3 * repeats
        print(f"  {name:<11} {what:<22} {interleaved(run, steps, labels=('before', 'now'))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    options = parser.parse_args()
    keep_freed_memory()
    if None in (softmax_loss_kernel(), softmax_fp32_kernel(), dropout_mask_kernel(), recurrence_kernel(),
                search_cell_kernel(), sparse_norm_kernel(), transpose_kernel()):
        raise SystemExit("the compiled kernels are not available here (see the line above): nothing to compare")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    masks(options.repeats)
    recurrences(max(5, options.repeats // 3))
    search_cells(options.repeats)
    embedding_updates(options.repeats)
    training_steps(options.repeats)
    softmax_layers(options.repeats, "fp32")
    softmax_layers(options.repeats, "bf16")
    transposed_products(options.repeats)


if __name__ == "__main__":
    main()
