"""The encoder-decoder stacked LSTM translator of Sutskever et al. (2014), regularised as in Zaremba
et al. (2014), Sec. 4.2: dropout on the non-recurrent connections only.

The decoder starts from the encoder's final (h, c) of every layer. The source is read reversed
(Sutskever et al. Sec. 3.3: it puts the first source words next to the first target words).
Optional: Luong global attention, with or without input feeding, tied decoder embeddings, and a
bidirectional encoder (each layer's final state is [forward; backward], so the decoder's init keeps its shape).

Where dropout goes, for every combination of those options. The paper's "top layer -> softmax" is, with
attention, "attentional vector h~_t = tanh(W_c [c_t; h_t]) -> softmax": the vector the output projection reads.
Fresh = a new mask at every time step; per sequence = one mask per sentence (Gal & Ghahramani 2016).

| connection                                         | zaremba | variational  | naive | none |
|----------------------------------------------------|---------|--------------|-------|------|
| embedding -> first layer (encoder and decoder)     | fresh   | per sequence | fresh | -    |
| layer l -> layer l + 1 (encoder and decoder)       | fresh   | per sequence | fresh | -    |
| the vector the output projection reads             | fresh   | per sequence | fresh | -    |
| h_{t-1} -> gates (encoder and decoder)             | never   | per sequence | fresh | -    |
| h~_{t-1} -> next decoder input (input feeding)     | never   | per sequence | fresh | -    |
| c_{t-1}; attention query (decoder top output);     | never   | never        | never | -    |
| encoder outputs read by attention; encoder final   |         |              |       |      |
| state -> decoder initial state                     |         |              |       |      |
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .attention import LuongAttention
from .dropout import DropoutMasks, check_dropout
from .lstm import StackedLSTM, lstm_pointwise, reverse_padded
from .native import search_cell_kernel
from .products import Products
from .softmax import linear_cross_entropy
from .tokenizer import PAD


@dataclass(frozen=True)
class TranslatorConfig:
    """Shape and regularisation of the translator (field names = constructor arguments = CLI flags)."""

    src_vocab_size: int
    tgt_vocab_size: int
    embedding_size: int = 1000
    hidden_size: int = 1000
    num_layers: int = 4
    dropout: float = 0.2
    dropout_mode: str = "zaremba"
    init_scale: float = 0.08
    reverse_source: bool = True
    attention: bool = False
    input_feeding: bool = False
    tie_embeddings: bool = False
    bidirectional_encoder: bool = False

    def __post_init__(self):
        check_dropout(self.dropout, self.dropout_mode)
        if self.tie_embeddings and self.embedding_size != self.hidden_size:
            raise ValueError("tie_embeddings needs embedding_size == hidden_size")
        if self.input_feeding and not self.attention:
            raise ValueError("input_feeding needs attention")


@dataclass
class Memory:
    """What the decoder reads from the encoder: outputs (S, B, H), attention keys (B, H, S), and
    src_mask (B, S), True at real tokens. outputs/keys are None without attention."""

    outputs: Tensor | None
    keys: Tensor | None
    src_mask: Tensor

    def select(self, index: Tensor) -> Memory:
        """Reorder / repeat the batch: the beams of beam search."""
        # index_select, not [index]: the same rows, without advanced indexing's generic strided kernel
        return Memory(None if self.outputs is None else self.outputs.index_select(1, index),
                      None if self.keys is None else self.keys.index_select(0, index), self.src_mask.index_select(0, index))


@dataclass
class DecoderState:
    """The decoder's recurrent state (h, c) each (L, B, H), plus h~_{t-1} (B, H) under input feeding.

    select() is lazy: it records which stored row each new row continues (rows, (N,)), so that a step
    computes W_hh h once per distinct parent when several beam hypotheses extend the same one."""

    h: Tensor
    c: Tensor
    feed: Tensor | None = None
    rows: Tensor | None = None

    def select(self, index: Tensor) -> DecoderState:
        return DecoderState(self.h, self.c, self.feed, index if self.rows is None else self.rows[index])

    def resolved(self) -> DecoderState:
        """The same state with its rows gathered."""
        if self.rows is None:
            return self
        rows = self.rows
        return DecoderState(self.h.index_select(1, rows), self.c.index_select(1, rows),
                            None if self.feed is None else self.feed.index_select(0, rows))


@dataclass
class OutputSlice:
    """The output layer cut to the target ids (U,) of a shortlist, for search: weight (U, H), bias (U,),
    and mask (B, U), 0 where sentence b may emit ids[u] and -inf where it may not."""

    ids: Tensor
    weight: Tensor
    bias: Tensor
    mask: Tensor

    def select(self, index: Tensor) -> OutputSlice:
        """Keep / reorder sentences, and drop the ids none of them may emit (</s>, column 0, stays)."""
        mask = self.mask.index_select(0, index)  # (B', U)
        used = (mask == 0).any(dim=0).nonzero().squeeze(1)  # (U',)
        if len(used) == len(self.ids):
            return OutputSlice(self.ids, self.weight, self.bias, mask)
        return OutputSlice(self.ids[used], self.weight.index_select(0, used), self.bias[used], mask.index_select(1, used))


class Translator(nn.Module):
    def __init__(self, config: TranslatorConfig):
        super().__init__()
        self.config = c = config
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.embedding_size)
        self.tgt_embedding = nn.Embedding(c.tgt_vocab_size, c.embedding_size)
        self.encoder = StackedLSTM(c.embedding_size, c.hidden_size, c.num_layers, c.dropout, c.dropout_mode,
                                   bidirectional=c.bidirectional_encoder)
        decoder_input = c.embedding_size + (c.hidden_size if c.input_feeding else 0)
        self.decoder = StackedLSTM(decoder_input, c.hidden_size, c.num_layers, c.dropout, c.dropout_mode)
        self.attention = LuongAttention(c.hidden_size) if c.attention else None
        self.output = nn.Linear(c.hidden_size, c.tgt_vocab_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -c.init_scale, c.init_scale)
        if c.tie_embeddings:
            self.output.weight = self.tgt_embedding.weight
        self.products = Products()  # search's matrix products (seq2seq.products): as nn.Linear, unless set

    def encode(self, src: Tensor, src_lengths: Tensor,
               masks: DropoutMasks | None = None) -> tuple[Memory, DecoderState]:
        """src: (S, B) right-padded ids; src_lengths: (B,); masks: the encoder's (drawn here when training and
        None), over the source as the encoder reads it (reversed); their output mask is not used: the encoder's
        outputs, read by attention, are not dropped. Returns the memory and the decoder's initial state (the
        encoder's final h, c of every layer)."""
        if self.config.reverse_source:
            src = reverse_padded(src, src_lengths)
        embedded = self.src_embedding(src)  # (S, B, E)
        if masks is None:
            masks = self.encoder.sample_masks(src.shape[0], src.shape[1], device=src.device)
        masks = None if masks is None else replace(masks, output=None)
        with self.products.autocast(src.device):  # bf16 search on a CPU: the encoder in bf16 (seq2seq.products)
            outputs, (h, c) = self.encoder(embedded, masks=masks, lengths=src_lengths)  # (S, B, H)
            keys = self.attention.keys(outputs) if self.attention is not None else None  # (B, H, S)
        if self.products.dtype is not None:  # search goes on in fp32 around its products
            outputs, h, c = outputs.float(), h.float(), c.float()
            keys = keys.float() if keys is not None else None
        src_mask = torch.arange(src.shape[0], device=src.device).unsqueeze(0) < src_lengths.unsqueeze(1)  # (B, S)
        feed = h.new_zeros(h.shape[1:]) if self.config.input_feeding else None
        return Memory(outputs if self.attention is not None else None, keys, src_mask), DecoderState(h, c, feed)

    def dropout_masks(self, steps: int, batch: int, device=None, generator=None) -> DropoutMasks | None:
        """The decoder's masks for a training pass over (steps, batch), placed as in the module's table:
        inputs[0] covers [embedding; h~_{t-1}] (its h~ part all ones in zaremba mode: that path runs across
        time), inputs[l] layer l's input, recurrent[l] h_{t-1} of layer l (variational and naive), and output
        the vector the output projection reads. None in eval mode or without dropout."""
        masks = self.decoder.sample_masks(steps, batch, device=device, generator=generator)
        if masks is None or not (self.config.input_feeding and self.config.dropout_mode == "zaremba"):
            return masks
        first = masks.inputs[0].clone()
        first[..., self.config.embedding_size :] = 1.0
        return replace(masks, inputs=(first, *masks.inputs[1:]))

    def decode(self, tgt_in: Tensor, state: DecoderState, memory: Memory,
               masks: DropoutMasks | None = None) -> tuple[Tensor, DecoderState]:
        """Teacher-forced decoder over tgt_in (T, B); masks from dropout_masks() (drawn here when training and
        None). Returns the vectors the output projection reads (T, B, H), dropped by masks.output: the top
        LSTM output, or with attention the attentional vector (the query itself is never dropped)."""
        embedded = self.tgt_embedding(tgt_in)  # (T, B, E)
        state = state.resolved()
        if masks is None:
            masks = self.dropout_masks(tgt_in.shape[0], tgt_in.shape[1], device=tgt_in.device)
        lstm_masks = None if masks is None else replace(masks, output=None)
        if self.config.input_feeding:
            top, state = self._decode_feeding(embedded, state, memory, lstm_masks)
        else:
            top, (h, c) = self.decoder(embedded, (state.h, state.c), lstm_masks)  # (T, B, H)
            if self.attention is not None:
                top = self.attention(top, memory.keys, memory.outputs, memory.src_mask)  # (T, B, H)
            state = DecoderState(h, c)
        return (top if masks is None else top * masks.output), state

    def _decode_feeding(self, embedded: Tensor, state: DecoderState, memory: Memory,
                        masks: DropoutMasks | None) -> tuple[Tensor, DecoderState]:
        """Luong input feeding: step t reads [embedding; h~_{t-1}], so the decoder runs step by step.
        h~_{t-1} is fed as attention made it; only its copy bound for the softmax is dropped (in decode)."""
        lstm_state, feed, outputs = (state.h, state.c), state.feed, []
        for t, embedded_t in enumerate(embedded.unbind(0)):  # unbind: one backward stack, not T zero-filled (T, B, E)
            step_input = torch.cat([embedded_t, feed], dim=-1).unsqueeze(0)  # (1, B, E + H)
            top, lstm_state = self.decoder(step_input, lstm_state, None if masks is None else masks.at(t))
            attended = self.attention(top, memory.keys, memory.outputs, memory.src_mask)  # (1, B, H)
            feed = attended[0]
            outputs.append(attended)
        return torch.cat(outputs), DecoderState(*lstm_state, feed)

    def forward(self, src: Tensor, src_lengths: Tensor, tgt_in: Tensor, tgt_out: Tensor,
                label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """Summed (label-smoothed) cross-entropy over the non-pad tokens of tgt_out (T, B), and their count."""
        memory, state = self.encode(src, src_lengths)
        top, _ = self.decode(tgt_in, state, memory)  # (T, B, H)
        flat = top.reshape(-1, top.shape[-1])  # (T * B, H)
        loss = linear_cross_entropy(flat, self.output.weight, self.output.bias, tgt_out.reshape(-1),  # (T * B,)
                                    label_smoothing=label_smoothing, ignore_index=PAD)
        return loss, (tgt_out != PAD).sum()

    def output_slice(self, ids: Tensor, allowed: Tensor) -> OutputSlice:
        """ids: (U,) target ids; allowed: (B, U) which of them each sentence may emit."""
        mask = torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))
        return OutputSlice(ids, self.products.weight(self.output.weight)[ids], self.output.bias[ids], mask)

    def step(self, tokens: Tensor, state: DecoderState, memory: Memory, output: OutputSlice | None = None,
             alignment: bool = False) -> tuple[Tensor, DecoderState] | tuple[Tensor, DecoderState, Tensor]:
        """One decoding step for search, without dropout. tokens: (N,) previous outputs, N = B * R: row
        b * R + r is hypothesis r of sentence b, and memory holds the B sentences once (the R hypotheses of
        a sentence attend to it like R time steps). Returns log-probs (N, V), or (N, U) over output.ids
        normalised over each sentence's allowed ids, and the new state; with alignment (attention models),
        also the most attended encoder position of each row (N,)."""
        linear = self.products.linear  # fp32, or the large products in bf16 (seq2seq.products)
        gates, rows = self._target_gates(), tokens  # (V, 4H): layer 0's input projection of each token; its rows
        if self.config.input_feeding:
            feed = state.feed if state.rows is None else state.feed[state.rows]  # (N, H)
            weight_feed = self.products.weight(self.decoder.layers[0].weight_ih_l0)[:, self.config.embedding_size:]
            gates, rows = linear(feed, weight_feed, gates.index_select(0, tokens)), None  # (N, 4H)
        top, (h, c) = decoder_step(self.decoder, None, (state.h, state.c), first_gates=gates, parents=state.rows,
                                   linear=linear, first_rows=rows, exact=self.products.dtype is None)  # top: (N, H)
        if self.attention is not None:
            query = top.view(memory.src_mask.shape[0], -1, top.shape[-1])  # (B, R, H)
            top, weights = self.attention(query, memory.keys, memory.outputs, memory.src_mask, return_weights=True,
                                          linear=linear, tanh_=self.products.tanh_, batch_first=True)
            top = top.view(tokens.shape[0], -1)  # (N, H)
            positions = weights.argmax(dim=-1).reshape(-1) if alignment else None  # (B, R) -> (N,)
        if output is None:
            log_probs = self.products.log_softmax_linear(top, self.output.weight, self.output.bias)  # (N, V)
        else:  # (N, U), each sentence's mask on its rows
            log_probs = self.products.log_softmax_linear(top, output.weight, output.bias, output.mask)
        state = DecoderState(h, c, top if self.config.input_feeding else None)
        if alignment:
            if self.attention is None:
                raise ValueError("alignments come from attention: this translator has none")
            return log_probs, state, positions
        return log_probs, state

    def _target_gates(self) -> Tensor:
        """W_ih E[y] + b_ih + b_hh of the decoder's first layer for every target token y: (V, 4H).

        Search looks rows up instead of multiplying; the table is rebuilt whenever a weight it uses
        changes (optimiser steps and load_state_dict bump a tensor's version; writes through .data do not)."""
        layer = self.decoder.layers[0]
        used = (self.tgt_embedding.weight, layer.weight_ih_l0, layer.bias_ih_l0, layer.bias_hh_l0)
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in used)
        if getattr(self, "_gates_key", None) != key:
            weight_ih = layer.weight_ih_l0[:, : self.config.embedding_size]  # (4H, E)
            with torch.no_grad():
                self._gates_table = nn.functional.linear(self.tgt_embedding.weight, weight_ih,
                                                         layer.bias_ih_l0 + layer.bias_hh_l0)  # (V, 4H)
            self._gates_key = key
        return self._gates_table


@torch.no_grad()  # for search: the cell works in place (seq2seq.lstm.lstm_pointwise)
def decoder_step(decoder: StackedLSTM, x: Tensor | None, state: tuple[Tensor, Tensor],
                 first_gates: Tensor | None = None, parents: Tensor | None = None,
                 linear=nn.functional.linear, first_rows: Tensor | None = None,
                 exact: bool = True) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One time step of a unidirectional StackedLSTM without dropout, for search.

    x: (N, input_size), or None with first_gates (N, 4H) = W_ih x + b_ih + b_hh of layer 0 already
    computed (a decoder can table it per target token: then first_gates is the (V, 4H) table and first_rows
    (N,) the row of it each new row takes); state: (h, c) each (L, B, H); parents: (N,) the state row each
    new row continues (None: row n continues row n). W_hh h is computed once per distinct parent: in beam
    search several hypotheses often extend the same one. linear(x, weight, bias) computes the products
    (seq2seq.products: in bf16 with fp32 around them, for a CPU).
    Two matrix products and the element-wise cell per layer: at one step nn.LSTM's per-call overhead
    is a third of the work. With fp32 states on a CPU the compiled search cell (seq2seq/csrc/search_cell.cpp)
    does a layer's row gathers, sum and cell in one pass and finds the distinct parents without a sort, to
    the same bits; with exact=False (bf16 search, its products rounded to bf16 already) its activations are
    faster approximations, within ~2e-7 of torch's. Returns the top output (N, H) and the new state.
    """
    kernel = search_cell_kernel() if state[1].device.type == "cpu" and state[1].dtype == torch.float32 else None
    if first_rows is not None and (kernel is None or parents is None):  # the kernel looks rows up itself
        first_gates, first_rows = first_gates.index_select(0, first_rows), None
    distinct, inverse = None, parents  # off the CPU, no torch.unique: its data-dependent size would sync
    if parents is not None and parents.device.type == "cpu":
        distinct, inverse = (torch.unique(parents, return_inverse=True) if kernel is None
                             else kernel.unique_rows(parents, state[1].shape[1]))
    hs, cs = [], []  # each layer's new h and c; with the kernel, written straight into the step's (L, N, H)
    if kernel is not None:
        rows = len(parents) if parents is not None else len(first_gates if x is None else x)
        hs, cs = (state[1].new_empty(len(decoder.layers), rows, state[1].shape[-1]) for _ in range(2))
    for index, layer in enumerate(decoder.layers):
        gate_rows = None
        if index == 0 and first_gates is not None:
            gates, gate_rows = first_gates, first_rows
        else:
            gates = linear(x, layer.weight_ih_l0, layer.bias_ih_l0 + layer.bias_hh_l0)  # (N, 4H)
        h, c = state[0][index], state[1][index]  # (B, H)
        if parents is None:
            gates = linear(h, layer.weight_hh_l0, gates)  # (N, 4H): gates + W_hh h (in fp32, one addmm)
            hh, inputs = gates, None
        else:  # W_hh h once per distinct parent (D, 4H); row inverse[n] of it, plus the input half, is row n's
            hh, inputs = linear(h if distinct is None else h.index_select(0, distinct), layer.weight_hh_l0), gates
        if kernel is not None:  # gathers, sum and cell in one pass
            kernel.cell(hh, None if inputs is None else inverse, inputs, gate_rows, c, parents, hs[index], cs[index],
                        exact)
            x = hs[index]
        else:
            if inputs is not None:  # one row per hypothesis (N, 4H), the input half added into that fresh copy
                gates = hh.index_select(0, inverse).add_(inputs)
                c = c.index_select(0, parents)  # (N, H)
            x, c = lstm_pointwise(gates, c)
            hs.append(x)
            cs.append(c)
    return x, (hs, cs) if kernel is not None else (torch.stack(hs), torch.stack(cs))
