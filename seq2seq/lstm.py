"""The stacked LSTM with an explicit dropout placement (see seq2seq.dropout).

Zaremba et al. (2014), Eq. in Sec. 3.1, with PyTorch's gate order (i, f, g, o):
    [i, f, g, o] = W_ih D(h^{l-1}_t) + b_ih + W_hh h^l_{t-1} + b_hh
    c^l_t = sigmoid(f) * c^l_{t-1} + sigmoid(i) * tanh(g)
    h^l_t = sigmoid(o) * tanh(c^l_t)
D (dropout) touches only the vertical input h^{l-1}_t, so `zaremba` and `none` run every layer on the
fused kernel (nn.LSTM: cuDNN on GPU, oneDNN on CPU). `variational` and `naive` also mask h_{t-1} inside
the recurrence, which a fused kernel cannot do: they run a step loop over the same weights.

Bidirectional layers (for encoders and acoustic models) give each direction hidden_size / 2 units and
concatenate them, so every layer's output and state keep the width hidden_size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import gemm
from .dropout import DropoutMasks, check_dropout, sample_masks
from .recurrence import MaskedLSTMRecurrence

State = tuple[Tensor, Tensor]  # (h, c), each (L, B, H)


def _fused_bf16_ok(x: Tensor) -> bool:
    """oneDNN's bf16 LSTM needs AVX512-BF16 (or AMX); without it nn.LSTM fails under CPU autocast."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def lstm_pointwise(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """The LSTM cell's element-wise part, for search (no autograd: it overwrites gates). gates: (..., 4H)
    pre-activations; c: (..., H), left as it is. Returns (h, c): h a new tensor, c a view into gates.

    Each activation runs in place on its chunk of gates and the products accumulate into them: the same
    operations on the same values as sigmoid(f) * c + sigmoid(i) * tanh(g) and sigmoid(o) * tanh(c) written
    out of place (bit for bit), with four (N, H) buffers fewer a layer and a step, whose first writes cost more
    than the arithmetic at a beam's N. One sigmoid over all four gates would save two calls but changes the
    last bit (the contiguous tensor's rows are no longer separate loops, so its vector loop splits them
    differently), and runs made with this cell would not repeat exactly. torch.jit.script and torch.compile of
    the cell were not faster on this project's CPU.
    """
    i, f, g, o = gates.chunk(4, -1)
    c = f.sigmoid_().mul_(c).add_(i.sigmoid_().mul_(g.tanh_()))  # f c + i g
    h = torch.tanh(c).mul_(o.sigmoid_())  # o tanh(c), a fresh contiguous (..., H)
    return h, c


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each column's first lengths[b] steps, leaving its padding at the end. x: (T, B, ...)."""
    if lengths is None:
        return x.flip(0)
    positions = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
    source = lengths.to(x.device).unsqueeze(0) - 1 - positions  # (T, B)
    return take_steps(x, torch.where(source >= 0, source, positions.expand_as(source)))  # (T, B, ...)


def take_steps(x: Tensor, steps: Tensor) -> Tensor:
    """out[s, b] = x[steps[s, b], b]. x: (T, B, ...); steps: (S, B) time indices; returns (S, B, ...).

    Whole rows of the flattened (T * B, ...) x through index_select, whose backward is a plain index_add, not
    gather over an index expanded to every feature (a scatter_add backward): the same values and gradients,
    ~6x less time forward + backward at TIMIT's (300, 16, 384)."""
    batch = x.shape[1]
    rows = (steps * batch + torch.arange(batch, device=x.device)).view(-1)  # (S * B,)
    return x.reshape(-1, *x.shape[2:]).index_select(0, rows).view(*steps.shape, *x.shape[2:])


def recurrent_layer(x: Tensor, h: Tensor, c: Tensor, lstm: nn.LSTM, h_mask: Tensor | None,
                    lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Run one single-layer nn.LSTM's weights step by step with h_{t-1} multiplied by h_mask; both directions
    of a bidirectional layer advance together in one loop (batched products), halving the steps' overhead.

    x: (T, B, D) already-masked input; h, c: (B, H), H = directions x units, the forward half first;
    h_mask: (T, B, H) fresh per step (indexed by the time step each direction reads), (1, B, H) shared, or
    None; lengths: (B,) valid steps per sequence (state frozen and output zero after; the backward
    direction reads each sequence reversed within its own length).
    Returns y (T, B, H) and the final h, c (B, H).

    On a CPU the recurrence runs in the state's precision (fp32) even under bf16 autocast: its per-step products
    have a few dozen rows (PTB: 20; TIMIT: 16 a direction), too few for bf16's faster products to pay for widening
    and narrowing every element-wise operation of the cell (forward + backward of a masked PTB small layer: 5.1-5.3
    against 6.3-6.4 ms; of a TIMIT layer, both directions: 110-111 against 111-118 ms). The input product over all
    T * B rows keeps autocast's precision.
    """
    directions, batch = 2 if lstm.bidirectional else 1, x.shape[1]
    suffixes = ("l0", "l0_reverse")[:directions]
    inputs = (x, reverse_padded(x, lengths)) if directions == 2 else (x,)  # the backward direction reads x reversed
    # The input half of every gate does not depend on t: one large product per direction for all steps;
    # the recurrence itself is one autograd node (seq2seq.recurrence).
    x_proj = _stack([gemm.trainable_linear(x_d, getattr(lstm, f"weight_ih_{s}"),
                                           getattr(lstm, f"bias_ih_{s}") + getattr(lstm, f"bias_hh_{s}"))
                     for x_d, s in zip(inputs, suffixes)], dim=1)  # (T, D, B, 4u)
    if x_proj.device.type == "cpu":  # under bf16 autocast only the input product above runs in bf16: see below
        x_proj = x_proj.to(h.dtype)
    w_hh = _stack([getattr(lstm, f"weight_hh_{s}") for s in suffixes], dim=0)  # (D, 4u, u)
    h, c = (by_direction(state, directions) for state in (h, c))  # (D, B, u)
    if h_mask is not None:
        h_mask = by_direction(h_mask, directions)  # (T or 1, D, B, u)
        if directions == 2 and h_mask.shape[0] > 1:  # the backward direction's step t reads time step T'-1-t
            h_mask = torch.stack([h_mask[:, 0], reverse_padded(h_mask[:, 1], lengths)], dim=1)
    # Padded steps run on like the others (no per-step select): they come after every valid step of their
    # sequence, so they change nothing before it; their outputs are zeroed and each sequence's final state is
    # taken at its own last step afterwards.
    y, cells = MaskedLSTMRecurrence.apply(x_proj, w_hh, h, c, h_mask)  # (T, D, B, u) each
    if lengths is None:
        h, c = y[-1], cells[-1]
    else:
        h, c = at_lengths(y, lengths, h), at_lengths(cells, lengths, c)
        y = y * (torch.arange(y.shape[0], device=y.device).view(-1, 1, 1, 1) < lengths.view(1, 1, -1, 1))
    if directions == 2:
        y = torch.cat([y[:, 0], reverse_padded(y[:, 1], lengths)], dim=-1)  # (T, B, H)
    else:
        y = y[:, 0]
    return y, h.transpose(0, 1).reshape(batch, -1), c.transpose(0, 1).reshape(batch, -1)


def _stack(tensors: list[Tensor], dim: int) -> Tensor:
    """torch.stack, without the copy when there is one tensor (one direction)."""
    return tensors[0].unsqueeze(dim) if len(tensors) == 1 else torch.stack(tensors, dim)


def at_lengths(steps: Tensor, lengths: Tensor, initial: Tensor) -> Tensor:
    """Each sequence's state after its own last step: steps (T, D, B, u); lengths (B,); initial (D, B, u),
    kept where a length is 0."""
    lengths = lengths.to(steps.device)
    last = (lengths - 1).clamp(min=0).repeat(steps.shape[1]).unsqueeze(0)  # (1, D * B): columns are (d, b)
    picked = take_steps(steps.flatten(1, 2), last).view(initial.shape)  # (D, B, u)
    return torch.where(lengths.view(1, -1, 1) > 0, picked, initial)


def by_direction(state: Tensor, directions: int) -> Tensor:
    """(..., B, H) -> (..., D, B, H / D): each direction's half of the units as its own batch of the loop."""
    return state.unflatten(-1, (directions, -1)).movedim(-2, -3)


class StackedLSTM(nn.Module):
    """num_layers LSTM layers with dropout placed by `dropout_mode` (zaremba, variational, naive, none).

    Inputs are time-major: x (T, B, input_size). Parameters are the same for every mode (one
    single-layer nn.LSTM per layer), so a model trained with one placement loads under another.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, dropout: float = 0.0,
                 dropout_mode: str = "zaremba", bidirectional: bool = False):
        super().__init__()
        check_dropout(dropout, dropout_mode)
        if bidirectional and hidden_size % 2:
            raise ValueError(f"a bidirectional LSTM needs an even hidden_size, got {hidden_size}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.dropout_mode, self.bidirectional = dropout, dropout_mode, bidirectional
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        units = hidden_size // 2 if bidirectional else hidden_size
        self.layers = nn.ModuleList(nn.LSTM(d, units, bidirectional=bidirectional) for d in sizes)

    def input_sizes(self) -> list[int]:
        return [layer.input_size for layer in self.layers]

    def zero_state(self, batch: int, device=None, dtype=None) -> State:
        shape = (self.num_layers, batch, self.hidden_size)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def sample_masks(self, steps: int, batch: int, device=None, generator=None) -> DropoutMasks | None:
        """The masks a training forward pass over (steps, batch) would draw; None in eval mode."""
        if not self.training:
            return None
        return sample_masks(self.dropout_mode, self.dropout, steps, batch, self.input_sizes(),
                            self.hidden_size, device=device, generator=generator)

    def forward(self, x: Tensor, state: State | None = None, masks: DropoutMasks | None = None,
                lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """x: (T, B, input_size); state: (h, c) each (L, B, H) or None for zeros; masks: explicit masks
        (else drawn when training); lengths: (B,) for right-padded batches, so that the final state is
        each sequence's own last step and padded outputs are zero.
        Returns the top layer's output (T, B, H), times masks.output unless that is None, and the final state.
        """
        steps, batch = x.shape[0], x.shape[1]
        if masks is None:
            masks = self.sample_masks(steps, batch, device=x.device)
        h0, c0 = state if state is not None else self.zero_state(batch, x.device, x.dtype)
        fused = masks is None or masks.recurrent is None
        hs, cs = [], []
        for layer_index, layer in enumerate(self.layers):
            if masks is not None:
                x = x * masks.inputs[layer_index]
            h, c = h0[layer_index], c0[layer_index]
            if fused:
                x, (h, c) = self._run_fused(layer, x, h, c, lengths)
            else:
                x, h, c = recurrent_layer(x, h, c, layer, masks.recurrent[layer_index], lengths)
            hs.append(h)
            cs.append(c)
        if masks is not None and masks.output is not None:
            x = x * masks.output
        return x, (torch.stack(hs), torch.stack(cs))

    def outputs(self, x: Tensor, lengths: Tensor, masks: DropoutMasks | None = None) -> Tensor:
        """The top layer's outputs (T, B, H) of a right-padded batch x (T, B, input_size) from zero states, for
        a model that needs no final state (a frame classifier). Without packing, whose CPU backward is ~10x
        slower than the fused kernel's: a forward direction's outputs at valid steps do not depend on the
        padding after them, and the backward direction reads each sequence reversed within its own length.
        Padded outputs are zeroed, as packing would."""
        if masks is None:
            masks = self.sample_masks(x.shape[0], x.shape[1], device=x.device)
        if masks is not None and masks.recurrent is not None:  # step loops handle lengths themselves
            return self.forward(x, None, masks, lengths)[0]
        valid = (torch.arange(x.shape[0], device=x.device).unsqueeze(1) < lengths.to(x.device)).unsqueeze(-1)  # (T, B, 1)
        for layer_index, layer in enumerate(self.layers):
            if masks is not None:
                x = x * masks.inputs[layer_index]
            x = self._layer_outputs(layer, x, lengths) * valid
        return x if masks is None or masks.output is None else x * masks.output

    @staticmethod
    def _layer_outputs(layer: nn.LSTM, x: Tensor, lengths: Tensor) -> Tensor:
        """One layer, unpacked: forward direction on x, backward on x reversed within each length."""
        if not _fused_bf16_ok(x):
            with torch.autocast("cpu", enabled=False):
                return StackedLSTM._layer_outputs(layer, x.float(), lengths)
        y = _direction(layer, x, "l0")
        if not layer.bidirectional:
            return y
        backward = _direction(layer, reverse_padded(x, lengths), "l0_reverse")
        return torch.cat([y, reverse_padded(backward, lengths)], dim=-1)

    @staticmethod
    def _run_fused(layer: nn.LSTM, x: Tensor, h: Tensor, c: Tensor, lengths: Tensor | None) -> tuple[Tensor, State]:
        if not _fused_bf16_ok(x):
            with torch.autocast("cpu", enabled=False):
                return StackedLSTM._run_fused(layer, x.float(), h.float(), c.float(), lengths)
        state = (_directions(h, layer), _directions(c, layer))  # each (directions, B, units)
        if lengths is None or bool((lengths == x.shape[0]).all()):  # no padding: the fast unpacked kernel
            y, (h, c) = layer(x, state)
        elif x.device.type == "cpu" and not torch.is_grad_enabled():
            y, (h, c) = _by_length(layer, x, state, lengths)
        else:
            y, (h, c) = _packed(layer, x, state, lengths)
        return y, (torch.cat(list(h), dim=-1), torch.cat(list(c), dim=-1))  # h, c: (B, H)


def _packed(layer: nn.LSTM, x: Tensor, state: State, lengths: Tensor) -> tuple[Tensor, State]:
    """One layer over a right-padded batch, packed (cuDNN on a GPU; training on a CPU). x: (T, B, D)."""
    y, state = layer(pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False), state)
    return pad_packed_sequence(y, total_length=x.shape[0])[0], state


def _by_length(layer: nn.LSTM, x: Tensor, state: State, lengths: Tensor) -> tuple[Tensor, State]:
    """One layer over a right-padded batch without packing, for inference on a CPU: each group of sequences of
    one length runs on the unpacked fused kernel (oneDNN). x: (T, B, D); state: each (directions, B, units).
    Returns y (T, B, directions x units), zero after each length, and each sequence's final (h, c), in the
    kernel's dtype (bf16 under bf16 autocast, as for an unpadded batch).

    A packed batch runs ATen's own step loop instead, and in fp32 even under bf16 autocast: the demo's
    bidirectional encoder over test_2016_flickr (16 batches of 64, 45 groups of one length, one thread) took
    0.410 s in bf16 and 0.535 s in fp32 packed, 0.307 and 0.468 s by length (benchmarks/encoder_by_length.py;
    fp32 results within 1.2e-7 of packing's). Training keeps packing: a change of kernel there would change
    recorded runs' bits."""
    groups = []
    for length in lengths.unique().tolist():
        columns = (lengths == length).nonzero().squeeze(1)  # (b,) the sequences of this length
        begin = tuple(s.index_select(1, columns) for s in state)  # (directions, b, units) each
        groups.append((length, columns, layer(x[:length, columns], begin) if length else (None, begin)))
    dtype = next((y.dtype for _, _, (y, _) in groups if y is not None), x.dtype)
    y = x.new_zeros(x.shape[0], x.shape[1], layer.hidden_size * (2 if layer.bidirectional else 1), dtype=dtype)
    h, c = (s.new_empty(s.shape, dtype=dtype) for s in state)
    for length, columns, (y_l, (h_l, c_l)) in groups:  # a length of 0 reads nothing: its state stays
        if length:
            y[:length, columns] = y_l
        h[:, columns], c[:, columns] = h_l.to(dtype), c_l.to(dtype)
    return y, (h, c)


def _direction(layer: nn.LSTM, x: Tensor, suffix: str) -> Tensor:
    """One direction of a layer on the fused kernel (zero initial state): outputs (T, B, units)."""
    weights = [getattr(layer, f"{name}_{suffix}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    zeros = x.new_zeros(1, x.shape[1], layer.hidden_size)  # (1, B, units): h_0 = c_0 = 0
    return torch.lstm(x, hx=(zeros, zeros), params=weights, has_biases=True, num_layers=1, dropout=0.0,
                      train=layer.training, bidirectional=False, batch_first=False)[0]


def _directions(state: Tensor, layer: nn.LSTM) -> Tensor:
    """(B, H) -> (directions, B, H / directions), the layout nn.LSTM expects for one layer."""
    directions = 2 if layer.bidirectional else 1
    return state.view(state.shape[0], directions, -1).transpose(0, 1).contiguous()  # (B, H) -> (directions, B, units)
