"""The compiled bf16 cross-entropy kernel (seq2seq/csrc/softmax_loss.cpp) against float64 references computed
from the same bf16 logits, and its place in seq2seq.softmax."""

import threading
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq import native, softmax


def built(load):
    """The compiled module `load` returns; the test is skipped where it cannot be built."""
    module = load()
    if module is None:
        pytest.skip("the kernel could not be built here (no C++ compiler or ninja)")
    return module


@pytest.fixture(scope="module")
def kernel():
    return built(native.softmax_loss_kernel)


def case(n, v, seed, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=generator) * scale).to(torch.bfloat16)
    bias = torch.randn(v, generator=generator) * 0.5
    targets = torch.randint(0, v, (n,), generator=generator)
    return logits, bias, targets


def reference(logits, bias, targets, smoothing, scale):
    """Loss rows and the gradients of sum_i scale_i loss_i in float64, from the same bf16 logits."""
    z = (logits.double() + bias.double()).requires_grad_()
    loss = F.cross_entropy(z, targets, reduction="none", label_smoothing=smoothing)
    (grad,) = torch.autograd.grad((loss * scale.double()).sum(), z)
    return loss.detach(), grad, grad.sum(0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 70), v=st.integers(2, 300), smoothing=st.sampled_from([0.0, 0.1]),
       seed=st.integers(0, 10_000))
def test_loss_and_gradients_equal_float64_reference(kernel, n, v, smoothing, seed):
    logits, bias, targets = case(n, v, seed)
    scale = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1))
    log_z, loss = kernel.forward(logits, bias, targets, smoothing)
    grad = logits.clone()  # overwritten with the gradient
    trained_loss, grad_bias = kernel.loss_and_gradient(grad, bias, targets, scale, smoothing)
    ref_loss, ref_grad, ref_bias = reference(logits, bias, targets, smoothing, scale)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16 and grad_bias.shape == (v,)
    torch.testing.assert_close(log_z.double(), torch.logsumexp(logits.double() + bias.double(), 1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    assert torch.equal(trained_loss, loss)  # training's pass computes the loss as evaluation's does
    # the gradient is rounded to bf16 once: within half a bf16 step of the exact value (plus fp32 noise)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2**-8, atol=1e-6)
    torch.testing.assert_close(grad_bias.double(), ref_bias, rtol=1e-5, atol=1e-5)


def test_gradient_is_the_round_to_nearest_bf16_of_its_fp32_value(kernel):
    logits, bias, targets = case(64, 1000, seed=7)
    scale = torch.ones(64)
    grad = logits.clone()
    kernel.loss_and_gradient(grad, bias, targets, scale, 0.0)
    _, exact, _ = reference(logits, bias, targets, 0.0, scale)
    rounded = exact.float().to(torch.bfloat16)  # torch's cast: round to nearest even
    assert (grad != rounded).float().mean() < 0.01  # only values within fp32 noise of a rounding boundary differ
    step = rounded.float().abs().clamp_min(1e-30) * 2**-7
    assert ((grad.float() - rounded.float()).abs() <= step).all()


def test_results_do_not_depend_on_the_thread_count(kernel):
    logits, bias, targets = case(203, 10_000, seed=3)
    scale = torch.full((203,), 0.05)
    threads = torch.get_num_threads()
    results = []
    for count in (1, 2, 3):
        torch.set_num_threads(count)
        grad = logits.clone()
        results.append((*kernel.forward(logits, bias, targets, 0.1),
                        *kernel.loss_and_gradient(grad, bias, targets, scale, 0.1), grad))
    torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_non_finite_logits_give_nan_loss(kernel):
    logits, bias, targets = case(3, 40, seed=1)
    logits[1, 5] = float("nan")
    logits[2, 7] = float("inf")
    _, loss = kernel.forward(logits, bias, targets, 0.0)
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1:]).all()
    loss, _ = kernel.loss_and_gradient(logits, bias, targets, torch.ones(3), 0.0)
    assert torch.isfinite(loss[0]) and torch.isnan(loss[1:]).all() and torch.isfinite(logits[0].float()).all()


def test_huge_logits_stay_finite_and_exact(kernel):
    logits, bias, targets = case(8, 30, seed=3, scale=1e4)
    log_z, loss = kernel.forward(logits, bias, targets, 0.0)
    ref_loss, _, _ = reference(logits, bias, targets, 0.0, torch.ones(8))
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=1e-3)


def test_bad_inputs_are_refused(kernel):
    logits, bias, targets = case(4, 32, seed=0)
    with pytest.raises(RuntimeError, match="outside"):
        kernel.forward(logits, bias, targets + 32, 0.0)
    with pytest.raises(RuntimeError, match="bfloat16"):
        kernel.forward(logits.float(), bias, targets, 0.0)
    with pytest.raises(RuntimeError, match="bias"):
        kernel.forward(logits, bias[:-1], targets, 0.0)
    with pytest.raises(RuntimeError, match="scale"):
        kernel.loss_and_gradient(logits, bias, targets, torch.ones(3), 0.0)


@pytest.mark.parametrize("smoothing, ignore_index", [(0.0, None), (0.1, 0)])
def test_autocast_layer_uses_the_kernel_and_matches_the_eager_path(kernel, monkeypatch, smoothing, ignore_index):
    generator = torch.Generator().manual_seed(11)
    h = torch.randn(50, 24, generator=generator).requires_grad_()
    weight = (torch.rand(300, 24, generator=generator) - 0.5).requires_grad_()
    bias = (torch.rand(300, generator=generator) - 0.5).requires_grad_()
    targets = torch.randint(0, 300, (50,), generator=generator)
    targets[::4] = 0

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = softmax.linear_cross_entropy(h, weight, bias, targets, smoothing, ignore_index)
        return (loss, *torch.autograd.grad(loss / 20, (h, weight, bias)))  # scaled, as a mean over a batch

    def evaluate():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return softmax.linear_cross_entropy(h, weight, bias, targets, smoothing, ignore_index)

    calls = []
    original = softmax._BF16LinearCrossEntropy.apply
    monkeypatch.setattr(softmax._BF16LinearCrossEntropy, "apply", lambda *a: calls.append(a[-1]) or original(*a))
    compiled, evaluated = run(), evaluate()
    monkeypatch.setattr(softmax, "softmax_loss_kernel", lambda: None)
    eager = run()
    assert calls == [True, False]  # the gradient computed in training only
    assert torch.equal(evaluated, compiled[0])  # evaluation's loss-only pass gives the training loss to the bit
    assert all(c.dtype == e.dtype == torch.float32 for c, e in zip(compiled, eager))
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-6, atol=1e-4)
    # float64 gradients from the same bf16-rounded operands: the kernel's are as close as the eager path's (both
    # round the logits and the products to bf16, ~2e-3)
    h64, weight64 = (x.detach().to(torch.bfloat16).double().requires_grad_() for x in (h, weight))
    bias64 = bias.detach().double().requires_grad_()
    loss64 = F.cross_entropy(h64 @ weight64.t() + bias64, targets, reduction="sum", label_smoothing=smoothing,
                             ignore_index=-100 if ignore_index is None else ignore_index)
    exact = torch.autograd.grad(loss64 / 20, (h64, weight64, bias64))
    for c, e, x in zip(compiled[1:], eager[1:], exact):
        error, eager_error = (float((g.double() - x).norm() / x.norm()) for g in (c, e))
        assert error < 4e-3 and error <= 1.1 * eager_error


def test_off_switch_and_failed_build_fall_back_to_eager(monkeypatch, capsys):
    native.softmax_loss_kernel.cache_clear()
    try:
        monkeypatch.setenv("SEQ2SEQ_NATIVE", "0")
        assert native.softmax_loss_kernel() is None
        native.softmax_loss_kernel.cache_clear()
        monkeypatch.setenv("SEQ2SEQ_NATIVE", "1")

        def no_compiler(*args, **kwargs):
            raise RuntimeError("Error building extension: c++: not found\nmore lines")

        monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
        assert native.softmax_loss_kernel() is None
        err = capsys.readouterr().err
        assert "could not be built (Error building extension: c++: not found); using eager PyTorch instead" in err
        assert "more lines" not in err
        h, weight, bias = torch.randn(6, 4), torch.randn(9, 4), torch.randn(9)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = softmax.linear_cross_entropy(h, weight, bias, torch.arange(6))
        assert torch.isfinite(loss)
    finally:
        native.softmax_loss_kernel.cache_clear()


@pytest.fixture(scope="module")
def masks():
    return built(native.dropout_mask_kernel)


def eager_mask(shape, p, generator):
    return (torch.rand(shape, dtype=torch.float64, generator=generator) < 1.0 - p).float().div_(1.0 - p)


@settings(max_examples=40, deadline=None)
@given(before=st.integers(0, 1_300), shape=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       p=st.sampled_from([0.1, 0.2, 0.5, 0.65, 0.9]), seed=st.integers(0, 2**31))
def test_masks_and_generator_state_equal_torch_rand(masks, before, shape, p, seed):
    """From any position in the generator's 624-word block (`before` doubles drawn first), the same mask and
    the same state afterwards as torch.rand's doubles compared with 1 - p."""
    eager_generator, kernel_generator = (torch.Generator().manual_seed(seed) for _ in range(2))
    torch.rand(before, dtype=torch.float64, generator=eager_generator)
    torch.rand(before, dtype=torch.float64, generator=kernel_generator)
    expected = eager_mask(tuple(shape), p, eager_generator)
    got = masks.keep_mask(kernel_generator, shape, p)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.equal(kernel_generator.get_state(), eager_generator.get_state())


def test_large_masks_on_the_default_generator_equal_torch_rand(masks):
    for shape, p in (((19, 110, 256), 0.2), ((312,), 0.5), ((624, 3), 0.5), ((20, 20, 200), 0.65)):
        torch.manual_seed(5)
        expected = eager_mask(shape, p, None)
        follow = torch.rand(4)
        torch.manual_seed(5)
        got = masks.keep_mask(torch.default_generator, list(shape), p)
        assert torch.equal(got, expected) and torch.equal(torch.rand(4), follow)


def test_bernoulli_mask_uses_the_kernel_and_the_fallback_gives_the_same_masks(masks, monkeypatch):
    from seq2seq import dropout

    calls = []
    original = masks.keep_mask
    monkeypatch.setattr(dropout, "dropout_mask_kernel", lambda: type("K", (), {
        "keep_mask": staticmethod(lambda *a: calls.append(1) or original(*a))}))
    torch.manual_seed(9)
    compiled = dropout.sample_masks("naive", 0.5, 7, 3, [5, 4], 4)
    monkeypatch.setattr(dropout, "dropout_mask_kernel", lambda: None)
    torch.manual_seed(9)
    eager = dropout.sample_masks("naive", 0.5, 7, 3, [5, 4], 4)
    assert len(calls) == 5
    for a, b in zip((*compiled.inputs, compiled.output, *compiled.recurrent),
                    (*eager.inputs, eager.output, *eager.recurrent)):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def loops():
    return built(native.recurrence_kernel)


def recurrence_run(loops, compiled, shape, mask_kind, reached, monkeypatch):
    """MaskedLSTMRecurrence's outputs and gradients with the C++ loops or the Python ones."""
    from seq2seq import recurrence

    monkeypatch.setattr(recurrence, "recurrence_kernel", (lambda: loops) if compiled else (lambda: None))
    steps, directions, batch, units = shape
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(steps, directions, batch, 4 * units, generator=generator).requires_grad_()
    w = (torch.randn(directions, 4 * units, units, generator=generator) * 0.3).requires_grad_()
    h0, c0 = (torch.randn(directions, batch, units, generator=generator).requires_grad_() for _ in range(2))
    mask_steps = {"none": 0, "fresh": steps, "shared": 1}[mask_kind]
    mask = None if not mask_steps else (torch.rand(mask_steps, directions, batch, units, generator=generator) < 0.5) * 2.0
    hs, cs = recurrence.MaskedLSTMRecurrence.apply(x, w, h0, c0, mask)
    weights_h, weights_c = (torch.randn(hs.shape, generator=generator) for _ in range(2))
    loss = {"every h": (hs * weights_h).sum(), "last c": (cs[-1] * weights_c[-1]).sum(),
            "h and c": (hs * weights_h).sum() + (cs[-2:] * weights_c[-2:]).sum()}[reached]
    return (hs, cs, *torch.autograd.grad(loss, (x, w, h0, c0)))


@pytest.fixture(params=["mkl", "onednn"])
def fp32_library(request, monkeypatch):
    """The recurrence's fp32 products in MKL (torch.bmm) or oneDNN (seq2seq.gemm's choice on an AMD CPU with
    AVX-512), whichever CPU runs the tests."""
    from seq2seq import gemm

    monkeypatch.setenv("SEQ2SEQ_FP32_GEMM", request.param)
    gemm.fp32_library.cache_clear()
    yield gemm.fp32_library()
    monkeypatch.delenv("SEQ2SEQ_FP32_GEMM")
    gemm.fp32_library.cache_clear()


@pytest.mark.parametrize("shape", [(20, 1, 20, 16), (7, 2, 3, 5), (1, 1, 2, 3), (4, 1, 5, 200), (3, 2, 2, 125)])
@pytest.mark.parametrize("mask_kind", ["none", "fresh", "shared"])
@pytest.mark.parametrize("reached", ["every h", "last c", "h and c"])
def test_step_loops_in_cpp_equal_the_python_loops_bit_for_bit(loops, monkeypatch, fp32_library, shape, mask_kind,
                                                              reached):
    compiled = recurrence_run(loops, True, shape, mask_kind, reached, monkeypatch)
    python = recurrence_run(loops, False, shape, mask_kind, reached, monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(compiled, python))


@pytest.mark.parametrize("shape", [(20, 1, 20, 16), (7, 2, 3, 5), (3, 2, 2, 125)])
def test_step_loops_products_in_onednn_are_mkls_to_fp32_rounding(loops, monkeypatch, shape):
    """The same outputs and gradients with the recurrence's products in either library, up to their rounding."""
    from seq2seq import gemm

    runs = []
    for library in ("mkl", "onednn"):
        monkeypatch.setenv("SEQ2SEQ_FP32_GEMM", library)
        gemm.fp32_library.cache_clear()
        runs.append(recurrence_run(loops, True, shape, "fresh", "h and c", monkeypatch))
    gemm.fp32_library.cache_clear()
    for a, b in zip(*runs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def cells():
    return built(native.search_cell_kernel)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int32)


@settings(max_examples=40, deadline=None)
@given(units=st.integers(1, 70), distinct=st.integers(1, 9), rows=st.integers(1, 40), previous=st.integers(1, 9),
       table=st.sampled_from(["none", "per row", "looked up"]), gathered=st.booleans(), seed=st.integers(0, 10_000))
def test_search_cell_equals_the_eager_gathers_and_cell_bit_for_bit(cells, units, distinct, rows, previous, table,
                                                                   gathered, seed):
    """hh[rows] + inputs[input_rows] through lstm_pointwise with c[parents], every optional index present or not,
    at widths with and without a scalar tail (ATen's sigmoid finishes a row's last H mod 32 values with std::exp)."""
    from seq2seq.lstm import lstm_pointwise

    generator = torch.Generator().manual_seed(seed)
    hh = torch.randn(distinct if gathered else rows, 4 * units, generator=generator) * 4
    hh[0, : min(3, 4 * units)] = torch.tensor([30.0, -30.0, 1e-20])[: min(3, 4 * units)]  # saturated gates
    row_index = torch.randint(0, distinct, (rows,), generator=generator) if gathered else None
    inputs = {"none": None, "per row": torch.randn(rows, 4 * units, generator=generator),
              "looked up": torch.randn(11, 4 * units, generator=generator)}[table]
    input_rows = torch.randint(0, 11, (rows,), generator=generator) if table == "looked up" else None
    c = torch.randn(previous if gathered else rows, units, generator=generator) * 2
    parents = torch.randint(0, previous, (rows,), generator=generator) if gathered else None

    gates = hh if row_index is None else hh.index_select(0, row_index)
    if inputs is not None:
        gates = gates + (inputs if input_rows is None else inputs.index_select(0, input_rows))
    h_ref, c_ref = lstm_pointwise(gates.clone(), c if parents is None else c.index_select(0, parents))
    h_out, c_out = torch.full((rows, units), float("nan")), torch.full((rows, units), float("nan"))
    c_before = c.clone()
    cells.cell(hh, row_index, inputs, input_rows, c, parents, h_out, c_out)
    assert torch.equal(bits(h_out), bits(h_ref)) and torch.equal(bits(c_out), bits(c_ref))
    assert torch.equal(c, c_before)  # the previous state is read, not written


@pytest.mark.parametrize("units", [1, 16, 37, 256])
def test_approximate_search_cell_is_within_float_rounding_of_the_exact_one(cells, units):
    """exact=False (bf16 search): lanes.h's sigmoid and tanh, over 16 lanes and a scalar tail, agree with ATen's to
    ~2e-7 (float64 reference) over ordinary and saturated gates, and saturate to the same 0, 1 and -1."""
    generator = torch.Generator().manual_seed(units)
    hh = torch.randn(50, 4 * units, generator=generator) * 4
    hh[0] = 100.0  # every gate saturated high: i = f = o = 1, g = 1
    hh[1] = -100.0  # low: i = f = o = 0, g = -1
    c = torch.randn(50, units, generator=generator) * 2
    exact, approximate = [(torch.empty(50, units), torch.empty(50, units)) for _ in range(2)]
    cells.cell(hh, None, None, None, c, None, *exact)
    cells.cell(hh, None, None, None, c, None, *approximate, False)
    i, f, g, o = hh.double().chunk(4, -1)
    c_ref = f.sigmoid() * c.double() + i.sigmoid() * g.tanh()
    h_ref = c_ref.tanh() * o.sigmoid()
    for (h_out, c_out) in (exact, approximate):
        torch.testing.assert_close(c_out.double(), c_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(h_out.double(), h_ref, rtol=0, atol=1e-6)
    assert torch.equal(approximate[1][0], c[0] + 1) and bool(approximate[1][1].abs().max() < 1e-30)
    assert bool(approximate[0][1].abs().max() < 1e-30)


@pytest.mark.parametrize("size", [1, 15, 16, 17, 40_000])
def test_approximate_tanh_is_within_float_rounding_of_tanh(cells, size):
    """bf16 search's in-place tanh (attention's h~): lanes.h's, within ~2e-7 of float64's over 16 lanes and a
    scalar tail, split over threads above 16,384 values; -1 and 1 exactly where tanh saturates."""
    x = torch.randn(size, generator=torch.Generator().manual_seed(size)) * 5
    x[0] = 100.0
    if size > 1:
        x[1] = -100.0
    y = x.clone()
    cells.tanh_approx_(y)
    torch.testing.assert_close(y.double(), x.double().tanh(), rtol=0, atol=3e-7)
    assert y[0] == 1.0 and (size == 1 or y[1] == -1.0)
    with pytest.raises(RuntimeError, match="float32"):
        cells.tanh_approx_(x.double())


@pytest.mark.parametrize("v", [1, 16, 37, 2_001])
@pytest.mark.parametrize("sentences", [None, 1, 4])
def test_log_softmax_rows_is_the_bf16_logits_log_softmax(cells, v, sentences):
    """log_softmax(float(z) + bias + mask[sentence]) against float64, each sentence's rows with its own mask (-inf
    at ids it may not emit: -inf out, the rest normalised over the allowed ones), with and without a column tail."""
    generator = torch.Generator().manual_seed(v)
    rows = 12
    z = (torch.randn(rows, v, generator=generator) * 6).bfloat16()
    bias = torch.randn(v, generator=generator)
    expected = z.double() + bias.double()
    mask = None
    if sentences is not None:
        mask = torch.zeros(sentences, v).masked_fill(torch.rand(sentences, v, generator=generator) < 0.4, float("-inf"))
        mask[:, 0] = 0.0  # every sentence may emit something
        expected = (expected.view(sentences, -1, v) + mask.double().unsqueeze(1)).view(rows, v)
    expected = torch.log_softmax(expected, dim=-1)
    out = cells.log_softmax_rows(z, bias, mask)
    assert out.dtype == torch.float32 and out.shape == (rows, v)
    assert torch.equal(out.isinf(), expected.isinf())
    finite = expected.isfinite()
    torch.testing.assert_close(out.double()[finite], expected[finite], rtol=1e-6, atol=2e-6)


def test_log_softmax_rows_refuses_bad_shapes(cells):
    z, bias = torch.zeros(6, 5, dtype=torch.bfloat16), torch.zeros(5)
    with pytest.raises(RuntimeError, match="mask's rows must divide"):
        cells.log_softmax_rows(z, bias, torch.zeros(4, 5))
    with pytest.raises(RuntimeError, match="bias must be"):
        cells.log_softmax_rows(z, torch.zeros(4))
    with pytest.raises(RuntimeError, match="bfloat16"):
        cells.log_softmax_rows(z.float(), bias)


def test_search_cell_does_not_depend_on_the_thread_count(cells):
    generator = torch.Generator().manual_seed(3)
    hh, c = torch.randn(200, 4 * 256, generator=generator), torch.randn(64, 256, generator=generator)
    rows, parents = torch.randint(0, 200, (320,), generator=generator), torch.randint(0, 64, (320,), generator=generator)
    results, threads = [], torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            h_out, c_out = torch.empty(320, 256), torch.empty(320, 256)
            cells.cell(hh, rows, None, None, c, parents, h_out, c_out)
            results.append((h_out, c_out))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def longest_pause_during(call) -> tuple[float, float]:
    """call() in a thread while this thread keeps time: the call's span, and the longest stretch of it in which
    this thread could not run Python (the whole span when the call holds the interpreter lock)."""
    span = {}

    def work():
        span["start"] = time.perf_counter()
        call()
        span["end"] = time.perf_counter()

    stamps, thread = [], threading.Thread(target=work)
    thread.start()
    while thread.is_alive():
        stamps.append(time.perf_counter())
    thread.join()
    inside = [span["start"], *(t for t in stamps if span["start"] < t < span["end"]), span["end"]]
    return span["end"] - span["start"], max(b - a for a, b in zip(inside, inside[1:]))


def test_search_kernels_let_go_of_the_interpreter_lock(cells):
    """seq2seq-translate's workers are threads: one batch's Python runs while the other's kernels do."""
    generator = torch.Generator().manual_seed(5)
    hh, c = torch.randn(8000, 4 * 512, generator=generator), torch.randn(8000, 512, generator=generator)
    h_out, c_out = torch.empty_like(c), torch.empty_like(c)
    z, bias = torch.randn(2000, 20000, generator=generator).bfloat16(), torch.zeros(20000)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernel on one core, this thread's loop on the other
    try:
        for call in (lambda: cells.cell(hh, None, None, None, c, None, h_out, c_out, True),
                     lambda: cells.log_softmax_rows(z, bias)):
            span, pause = longest_pause_during(call)
            assert span > 0.01 and pause < span / 2, (span, pause)
    finally:
        torch.set_num_threads(threads)


@settings(max_examples=40, deadline=None)
@given(parents=st.lists(st.integers(0, 30), min_size=1, max_size=60), extra=st.integers(0, 5))
def test_unique_rows_equals_torch_unique(cells, parents, extra):
    index = torch.tensor(parents)
    distinct, inverse = cells.unique_rows(index, max(parents) + 1 + extra)
    expected_distinct, expected_inverse = torch.unique(index, sorted=True, return_inverse=True)
    assert torch.equal(distinct, expected_distinct) and torch.equal(inverse, expected_inverse)


def test_search_cell_refuses_bad_indices_and_dtypes(cells):
    hh, c, out = torch.zeros(3, 8), torch.zeros(3, 2), torch.empty(4, 2)
    with pytest.raises(RuntimeError, match=r"rows\[1\] = 3 is outside \[0, 3\)"):
        cells.cell(hh, torch.tensor([0, 3, 1, 1]), None, None, c, torch.tensor([0, 1, 2, 0]), out, out.clone())
    with pytest.raises(RuntimeError, match="parents"):
        cells.cell(hh, torch.tensor([0, 1, 2, 1]), None, None, c, torch.tensor([0, 1, 2, -1]), out, out.clone())
    with pytest.raises(RuntimeError, match="float32"):
        cells.cell(hh.double(), None, None, None, c, None, out[:3], out[:3].clone())
    with pytest.raises(RuntimeError, match="parents"):
        cells.unique_rows(torch.tensor([0, 5]), 5)


@pytest.mark.parametrize("variant", [dict(attention=False), dict(attention=True, bidirectional_encoder=True),
                                     dict(attention=True, input_feeding=True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_beam_search_with_the_search_cell_equals_the_eager_step_exactly(cells, monkeypatch, variant, dtype):
    """Every hypothesis, score and alignment of a batched beam search, kernel on and off, in fp32 and with the
    bf16 products of seq2seq.products (whose cell stays fp32, and takes the kernel's approximate activations:
    the same hypotheses, scores within bf16 rounding: the approximations move h by ~1e-7, which now and then
    rounds an input of a later bf16 product the other way, and one such flip moved a sentence's scores by 1e-4
    relative once the encoder itself ran in bf16)."""
    from seq2seq import products, translator
    from seq2seq.products import prepare_for_search
    from seq2seq.search import beam_search
    from seq2seq.tokenizer import PAD

    torch.manual_seed(0)
    config = translator.TranslatorConfig(src_vocab_size=30, tgt_vocab_size=40, embedding_size=16, hidden_size=24,
                                         num_layers=2, dropout=0.0, init_scale=0.5, **variant)
    model = prepare_for_search(translator.Translator(config).eval(), torch.device("cpu"), dtype)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 9, (7,), generator=generator)
    src = torch.full((int(lengths.max()), 7), PAD)
    for b, n in enumerate(lengths.tolist()):
        src[:n, b] = torch.randint(4, 30, (n,), generator=generator)
    found, exact = {}, set()

    class Recorded:  # the kernel, noting whether each call asked for the exact cell
        unique_rows = staticmethod(cells.unique_rows)

        @staticmethod
        def cell(*args):
            exact.add(args[-1])
            return cells.cell(*args)

    for compiled in (True, False):  # off: the eager cell, and in bf16 the eager tanh and log_softmax too
        monkeypatch.setattr(translator, "search_cell_kernel", (lambda: Recorded) if compiled else (lambda: None))
        monkeypatch.setattr(products, "search_cell_kernel", (lambda: cells) if compiled else (lambda: None))
        hypotheses = beam_search(model, src, lengths, beam_size=4, alpha=0.6, nbest=3,
                                 alignment=config.attention)
        found[compiled] = [[(h.tokens, h.score, h.log_prob, h.alignment) for h in row] for row in hypotheses]
    if dtype == torch.float32:
        assert found[True] == found[False]
    else:
        assert [[(t, a) for t, _, _, a in row] for row in found[True]] == [[(t, a) for t, _, _, a in row]
                                                                          for row in found[False]]
        scores = [[score for _, score, log_prob, _ in row for score in (score, log_prob)] for row in found[True]]
        eager = [[score for _, score, log_prob, _ in row for score in (score, log_prob)] for row in found[False]]
        torch.testing.assert_close(torch.tensor(sum(scores, [])), torch.tensor(sum(eager, [])), rtol=1e-3, atol=1e-5)
    assert exact == {dtype == torch.float32}  # fp32: ATen's activations; bf16: the approximate ones
    assert sum(len(h[0]) for row in found[True] for h in row) > 0  # something was searched for


@pytest.fixture(scope="module")
def softmax32():
    return built(native.softmax_fp32_kernel)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), v=st.integers(1, 3000), spread=st.sampled_from([1.0, 1e4]), seed=st.integers(0, 10_000))
def test_row_sums_equal_torch_sum_bit_for_bit(softmax32, n, v, spread, seed):
    """The kernel's replica of ATen's cascade sum, at widths below, at and above its vector (8 lanes), ILP (4)
    and level (16 vectors) boundaries, over values of one size and of very different sizes."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, v, generator=generator) * torch.rand(n, v, generator=generator).pow(8) * spread
    assert torch.equal(bits(softmax32.row_sums(x)), bits(x.sum(1)))


@pytest.mark.parametrize("v", [10_000, 40_007, 300_000])
def test_row_sums_of_long_rows_equal_torch_sum(softmax32, v):  # rows long enough to fold into upper levels
    x = torch.rand(3, v, generator=torch.Generator().manual_seed(v))
    assert torch.equal(bits(softmax32.row_sums(x)), bits(x.sum(1)))


def fp32_layer(h, weight, bias, targets, smoothing, ignore_index):
    h, weight, bias = (t.clone().requires_grad_() for t in (h, weight, bias))
    loss = softmax.linear_cross_entropy(h, weight, bias, targets, smoothing, ignore_index)
    return (loss, *torch.autograd.grad(loss * 0.37, (h, weight, bias)))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 70), v=st.integers(1, 300), smoothing=st.sampled_from([0.0, 0.1]),
       ignore=st.booleans(), seed=st.integers(0, 10_000))
def test_fp32_layer_with_the_kernel_equals_the_eager_path_bit_for_bit(softmax32, n, v, smoothing, ignore, seed):
    generator = torch.Generator().manual_seed(seed)
    h, weight = torch.randn(n, 16, generator=generator) * 3, torch.randn(v, 16, generator=generator)
    bias, targets = torch.randn(v, generator=generator), torch.randint(0, v, (n,), generator=generator)
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(softmax, "softmax_fp32_kernel", lambda: calls.append(1) or softmax32)
        compiled = fp32_layer(h, weight, bias, targets, smoothing, 0 if ignore else None)
        patch.setattr(softmax, "softmax_fp32_kernel", lambda: None)
        eager = fp32_layer(h, weight, bias, targets, smoothing, 0 if ignore else None)
    assert calls == [1]
    assert all(torch.equal(bits(c), bits(e)) for c, e in zip(compiled, eager))


def test_fp32_layer_at_ptb_size_equals_the_eager_path_at_each_thread_count(softmax32, monkeypatch):
    """PTB small's softmax layer (its rows split among threads), kernel against eager at one and two threads (the
    eager results themselves differ between the two: MKL splits the gradient product's long sum)."""
    generator = torch.Generator().manual_seed(5)
    h, weight = torch.randn(400, 200, generator=generator), torch.rand(10_000, 200, generator=generator) - 0.5
    bias, targets = torch.rand(10_000, generator=generator) - 0.5, torch.randint(0, 10_000, (400,), generator=generator)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            monkeypatch.setattr(softmax, "softmax_fp32_kernel", lambda: softmax32)
            compiled = fp32_layer(h, weight, bias, targets, 0.0, None)
            monkeypatch.setattr(softmax, "softmax_fp32_kernel", lambda: None)
            eager = fp32_layer(h, weight, bias, targets, 0.0, None)
            assert all(torch.equal(bits(c), bits(e)) for c, e in zip(compiled, eager))
    finally:
        torch.set_num_threads(threads)


def test_fp32_kernel_passes_nan_through_and_refuses_bad_inputs(softmax32):
    logits, bias, targets = torch.randn(3, 40), torch.randn(40), torch.tensor([0, 5, 39])
    logits[1, 7] = float("nan")
    _, _, peak, total = softmax32.forward(logits, bias, targets, False)
    assert torch.isnan(peak[1]) and torch.isnan(total[1]) and torch.isfinite(total[[0, 2]]).all()
    with pytest.raises(RuntimeError, match="outside"):
        softmax32.forward(torch.randn(3, 40), bias, targets + 1, False)
    with pytest.raises(RuntimeError, match="float32"):
        softmax32.forward(torch.randn(3, 40).double(), bias, targets, False)
    with pytest.raises(RuntimeError, match="bias"):
        softmax32.forward(torch.randn(3, 40), bias[:-1], targets, False)
    with pytest.raises(RuntimeError, match="keep"):
        softmax32.backward(torch.rand(3, 40), torch.ones(3, 1), targets, 0.0, torch.ones(2, 1), 1.0)
    with pytest.raises(RuntimeError, match="totals"):
        softmax32.backward(torch.rand(3, 40), torch.ones(2, 1), targets, 0.0, None, 1.0)
