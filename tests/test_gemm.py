"""seq2seq.gemm: the fp32 product library is chosen from the CPU (never a timing), and both compute a @ b."""

import pytest
import torch

from seq2seq import gemm
from seq2seq.errors import UserError


@pytest.fixture
def library(monkeypatch):
    """Set SEQ2SEQ_FP32_GEMM for one test; the choice is cached per process, so clear it around."""
    def choose(value: str) -> str:
        monkeypatch.setenv("SEQ2SEQ_FP32_GEMM", value)
        gemm.fp32_library.cache_clear()
        return gemm.fp32_library()
    yield choose
    monkeypatch.delenv("SEQ2SEQ_FP32_GEMM", raising=False)
    gemm.fp32_library.cache_clear()


@pytest.mark.parametrize("vendor, capability, expected", [
    ("AuthenticAMD", "AVX512", "onednn"), ("AuthenticAMD", "AVX2", "mkl"), ("GenuineIntel", "AVX512", "mkl"),
    ("", "AVX512", "mkl")])
def test_auto_takes_onednn_on_an_amd_cpu_with_avx512_only(monkeypatch, library, vendor, capability, expected):
    monkeypatch.setattr(gemm, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    chosen = library("auto")
    assert chosen == (expected if gemm.onednn_available() else "mkl")
    assert (gemm.describe() is not None) == (chosen == "onednn")


def test_the_setting_overrides_and_a_bad_one_is_one_sentence(library):
    assert library("mkl") == "mkl" and gemm.describe() is None
    assert library("oneDNN") == ("onednn" if gemm.onednn_available() else "mkl")
    with pytest.raises(UserError, match="SEQ2SEQ_FP32_GEMM='blas': expected one of auto, mkl, onednn"):
        library("blas")


@pytest.mark.parametrize("setting", ["mkl", "onednn"])
def test_both_libraries_multiply_transposed_views_to_fp32_accuracy_and_repeat(library, setting):
    library(setting)
    generator = torch.Generator().manual_seed(0)
    h, weight = torch.randn(37, 24, generator=generator), torch.randn(301, 24, generator=generator)
    grad = torch.randn(37, 301, generator=generator)
    for a, b in [(h, weight.t()), (grad, weight), (grad.t(), h)]:  # the softmax layer's three products
        product = gemm.mm(a, b)
        exact = a.double() @ b.double()
        assert product.shape == exact.shape and product.dtype == torch.float32
        assert torch.allclose(product.double(), exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())
        assert torch.equal(product, gemm.mm(a, b))  # a seed fixes the result: the same bits every call
    if setting == "mkl":
        assert torch.equal(gemm.mm(grad.t(), h), torch.mm(grad.t(), h))  # the recorded runs' products, exactly


@pytest.mark.parametrize("rows, hidden, vocab", [(120, 32, 3000), (400, 200, 10000), (37, 256, 4000)])
def test_a_transposed_first_operand_gives_the_bits_of_the_direct_onednn_product(library, rows, hidden, vocab):
    """dW = dY^T X is taken as (X^T dY)^T where that copies less (the first two shapes; the third keeps the direct
    way): either way the same bits as oneDNN's product of the copied dY^T, the one it ran before."""
    if library("onednn") != "onednn":
        pytest.skip("this torch build has no oneDNN linear layer")
    generator = torch.Generator().manual_seed(2)
    grad, h = torch.randn(rows, vocab, generator=generator), torch.randn(rows, hidden, generator=generator)
    product = gemm.mm(grad.t(), h)  # (vocab, hidden)
    direct = torch.ops.mkldnn._linear_pointwise(grad.t().contiguous(), h.t(), None, "none", [], "")
    assert product.is_contiguous() and product.shape == (vocab, hidden)
    assert torch.equal(product, direct)


@pytest.mark.parametrize("native", ["1", "0"])
def test_transposed_is_the_transpose_made_contiguous(monkeypatch, native):
    """The compiled tiled transpose and its eager fallback (SEQ2SEQ_NATIVE=0): the values of x.t(), contiguous,
    for shapes that are not whole tiles, a row-strided view, and one row or column."""
    monkeypatch.setenv("SEQ2SEQ_NATIVE", native)
    gemm.transpose_kernel.cache_clear()
    generator = torch.Generator().manual_seed(3)
    try:
        for shape in [(200, 1000), (65, 129), (1, 70), (70, 1), (3, 5)]:
            x = torch.randn(shape, generator=generator)
            for view in (x, torch.randn(shape[0], shape[1] + 7, generator=generator)[:, 3 : 3 + shape[1]]):
                out = gemm.transposed(view)
                assert out.is_contiguous() and torch.equal(out, view.t())
    finally:
        gemm.transpose_kernel.cache_clear()


def test_other_dtypes_stay_with_torch_mm(library):
    library("onednn")
    a, b = torch.randn(8, 16).bfloat16(), torch.randn(16, 4).bfloat16()
    assert torch.equal(gemm.mm(a, b), torch.mm(a, b))


@pytest.mark.parametrize("setting", ["mkl", "onednn"])
def test_linear_is_nn_linear_to_fp32_accuracy_and_exactly_so_in_mkl(library, setting):
    """Search's fp32 products (seq2seq.products) go through gemm.linear: the bias summed in, a 2-D bias as torch."""
    library(setting)
    generator = torch.Generator().manual_seed(1)
    x, weight = torch.randn(45, 32, generator=generator), torch.randn(70, 32, generator=generator)
    for bias in (None, torch.randn(70, generator=generator), torch.randn(45, 70, generator=generator)):
        expected = torch.nn.functional.linear(x, weight, bias)
        product = gemm.linear(x, weight, bias)
        assert product.shape == (45, 70) and torch.allclose(product, expected, rtol=1e-5, atol=1e-5)
        if setting == "mkl" or (bias is not None and bias.dim() == 2):
            assert torch.equal(product, expected)


@pytest.mark.parametrize("setting", ["mkl", "onednn"])
def test_trainable_linear_is_nn_linear_forward_and_backward(library, setting):
    """The LSTM step loops' input products and attention's layers train through gemm.trainable_linear: the values and
    the three gradients of nn.functional.linear (to fp32 rounding; exactly where it is MKL's), any leading dims."""
    library(setting)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(7, 5, 24, generator=generator)
    weight, bias, grad = torch.randn(40, 24, generator=generator), torch.randn(40, generator=generator), None
    results = []
    for function in (gemm.trainable_linear, torch.nn.functional.linear):
        for with_bias in (True, False):
            inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
            out = function(inputs[0], inputs[1], inputs[2] if with_bias else None)
            grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
            out.backward(grad)
            results.append([out.detach()] + [t.grad for t in inputs[: 3 if with_bias else 2]])
    for ours, torchs in zip(results[:2], results[2:]):
        assert [t.shape for t in ours] == [t.shape for t in torchs]
        for a, b in zip(ours, torchs):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5) and (setting == "onednn" or torch.equal(a, b))


def test_trainable_linear_under_autocast_is_autocasts(library):
    library("onednn")
    x, weight = torch.randn(6, 8), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, torchs = gemm.trainable_linear(x, weight), torch.nn.functional.linear(x, weight)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, torchs)
