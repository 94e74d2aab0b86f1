"""seq2seq.sparse_grad against the dense gradients it stands for: the same gradient rows, the same clipping norm
and the same SGD updates, bit for bit; and `enable` only where that holds."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from seq2seq import native, sparse_grad
from seq2seq.clipping import clip_grad_norm, total_norm
from seq2seq.language_model import LanguageModel, LanguageModelConfig


def sparse_and_dense(vocab, size, tokens, upstream, seed=0):
    """The weight gradients of one lookup of `tokens`, from a sparse and from a dense Embedding."""
    weight = torch.rand(vocab, size, generator=torch.Generator().manual_seed(seed))
    grads = []
    for sparse in (True, False):
        table = sparse_grad.Embedding(vocab, size, _weight=weight.clone(), sparse=sparse)
        table(tokens).backward(upstream)
        grads.append(table.weight.grad)
    return grads


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(1, 300), size=st.integers(1, 70), steps=st.integers(1, 12), batch=st.integers(1, 9),
       seed=st.integers(0, 2**16))
def test_the_sparse_gradient_is_the_dense_one(vocab, size, steps, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    few = max(1, vocab // 10)  # repeated words are the case that needs care: their rows are sums
    tokens = torch.randint(0, few if seed % 2 else vocab, (steps, batch), generator=generator)
    upstream = torch.randn(steps, batch, size, generator=generator) * 10 ** torch.randn(steps, batch, 1,
                                                                                       generator=generator)
    sparse, dense = sparse_and_dense(vocab, size, tokens, upstream)
    assert sparse.is_sparse and not dense.is_sparse
    rows = sparse._indices()[0]
    assert torch.equal(rows, torch.unique(tokens))  # increasing, distinct: coalesced in fact
    assert torch.equal(sparse.to_dense(), dense)
    assert torch.equal(sparse_grad.norm(sparse), torch.linalg.vector_norm(dense))


@settings(max_examples=60, deadline=None)
@given(vocab=st.integers(1, 400), size=st.integers(1, 90), fraction=st.floats(0.01, 1.0), last=st.booleans(),
       seed=st.integers(0, 2**16))
def test_the_norm_kernel_sums_as_torch_does(vocab, size, fraction, last, seed):
    kernel = native.sparse_norm_kernel()
    if kernel is None:
        pytest.skip("the kernel could not be built here (no C++ compiler or ninja)")
    generator = torch.Generator().manual_seed(seed)
    touched = torch.nonzero(torch.rand(vocab, generator=generator) < fraction)[:, 0]
    if last:  # the tail (numel mod 8 elements) lives in the last row
        touched = torch.unique(torch.cat([touched, torch.tensor([vocab - 1])]))
    dense = torch.zeros(vocab, size)
    dense[touched] = torch.randn(len(touched), size, generator=generator) * 10 ** torch.randn(
        len(touched), 1, generator=generator)
    ours = kernel.sparse_rows_norm(dense[touched].contiguous(), touched, dense.numel())
    assert torch.equal(ours, torch.linalg.vector_norm(dense))


def test_the_kernel_refuses_rows_out_of_order():
    kernel = native.sparse_norm_kernel()
    if kernel is None:
        pytest.skip("the kernel could not be built here (no C++ compiler or ninja)")
    with pytest.raises(RuntimeError, match="increase"):
        kernel.sparse_rows_norm(torch.ones(2, 4), torch.tensor([3, 1]), 40)
    with pytest.raises(RuntimeError, match="inside"):
        kernel.sparse_rows_norm(torch.ones(1, 4), torch.tensor([10]), 40)


def test_without_the_kernel_and_with_repeated_rows_the_norm_is_the_dense_forms(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 20, (7, 5), generator=generator)
    sparse, dense = sparse_and_dense(50, 24, tokens, torch.randn(7, 5, 24, generator=generator))
    expected = torch.linalg.vector_norm(dense)
    repeated = torch.sparse_coo_tensor(torch.cat([sparse._indices()] * 2, 1), torch.cat([sparse._values()] * 2) / 2,
                                       sparse.shape, check_invariants=False)  # two backward passes' gradients, not yet summed
    assert torch.allclose(sparse_grad.norm(repeated), expected, rtol=1e-6)
    monkeypatch.setattr(sparse_grad, "_checked_kernel", lambda: None)
    assert torch.equal(sparse_grad.norm(sparse), expected)


def test_total_norm_counts_sparse_gradients_as_their_dense_forms():
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 100, (20, 20), generator=generator)
    sparse, dense = sparse_and_dense(100, 16, tokens, torch.randn(20, 20, 16, generator=generator))
    others = [torch.randn(64, 16, generator=generator), torch.randn(64, generator=generator)]
    expected = torch.nn.utils.get_total_norm([dense, *others])
    assert torch.equal(total_norm([sparse, *others]), expected)
    assert torch.equal(total_norm([sparse, others[0].double()]), torch.nn.utils.get_total_norm([dense, others[0].double()]))


def train(model, lr, max_norm, steps, sparse, bf16=False):
    """`steps` SGD steps of the language model on random windows: the norms and the final weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    assert sparse_grad.enable(model, optimizer, "cpu") == 1
    model.embedding.sparse = sparse
    torch.manual_seed(2)  # the dropout masks
    generator, state, norms = torch.Generator().manual_seed(1), None, []
    for _ in range(steps):
        tokens = torch.randint(0, model.config.vocab_size, (9, 6), generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            nll, state = model(tokens[:-1], state, tokens[1:])
        state = tuple(s.detach() for s in state)
        optimizer.zero_grad(set_to_none=True)
        (nll / 6).backward()
        norms.append(clip_grad_norm(model.parameters(), max_norm))
        optimizer.step()
    return torch.stack(norms), list(model.parameters())


@pytest.mark.parametrize("lr, max_norm, bf16", [(1.0, 5.0, False), (1 / 1.2, 0.3, False), (0.37, 0.3, True)])
def test_sgd_steps_are_the_dense_ones_bit_for_bit(lr, max_norm, bf16):
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(vocab_size=300, hidden_size=24, num_layers=2, dropout=0.5))
    (dense_norms, dense), (sparse_norms, sparse) = (
        train(copy.deepcopy(model), lr, max_norm, 8, sparse) for sparse in (False, True))
    assert torch.equal(dense_norms, sparse_norms)
    assert bool((dense_norms > max_norm).any()) == (max_norm < 1)  # both the clipped and the unclipped path
    assert all(torch.equal(a, b) for a, b in zip(dense, sparse))
    assert not torch.equal(dense[0], model.embedding.weight)  # the embedding did move


def test_enable_only_where_the_update_is_the_dense_ones():
    def switched(optimizer_class, device="cpu", processes=1, accumulation_steps=1, **options):
        model = nn.Sequential(sparse_grad.Embedding(10, 4), sparse_grad.Embedding(10, 4, padding_idx=0),
                              nn.Embedding(10, 4))
        count = sparse_grad.enable(model, optimizer_class(model.parameters(), lr=0.1, **options), device,
                                   processes, accumulation_steps)
        assert [m.sparse for m in model] == [count == 1, False, False]
        return count

    assert switched(torch.optim.SGD) == 1
    assert switched(torch.optim.SGD, momentum=0.9) == 0
    assert switched(torch.optim.SGD, weight_decay=1e-4) == 0
    assert switched(torch.optim.Adam) == 0
    assert switched(torch.optim.SGD, device="cuda") == 0
    assert switched(torch.optim.SGD, processes=2) == 0
    assert switched(torch.optim.SGD, accumulation_steps=4) == 0


def test_a_sparse_embedding_looks_up_the_same_vectors():
    table = sparse_grad.Embedding(30, 5, sparse=True)
    tokens = torch.randint(0, 30, (4, 3))
    assert torch.equal(table(tokens), table.weight[tokens])
    with torch.no_grad():
        assert torch.equal(table(tokens), table.weight[tokens])
