"""An independent stacked LSTM written from the equations, one scalar-free step at a time.

Zaremba et al. (2014), Sec. 3.1, with PyTorch's gate order (i, f, g, o). It shares nothing with
seq2seq.lstm except the weights it is handed, so agreement is evidence that both are right.
"""

import torch


def reference_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    gates = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    hidden = h.shape[-1]
    i = torch.sigmoid(gates[:, 0 * hidden : 1 * hidden])
    f = torch.sigmoid(gates[:, 1 * hidden : 2 * hidden])
    g = torch.tanh(gates[:, 2 * hidden : 3 * hidden])
    o = torch.sigmoid(gates[:, 3 * hidden : 4 * hidden])
    c = f * c + i * g
    return o * torch.tanh(c), c


def mask_at(mask, t):
    """A (T, B, D) mask is fresh per step; a (1, B, D) mask is the same at every step."""
    if mask is None:
        return 1.0
    return mask[t] if mask.shape[0] > 1 else mask[0]


def reference_stacked_lstm(x, weights, h0, c0, input_masks=None, recurrent_masks=None, output_mask=None):
    """x: (T, B, D); weights[l] = (w_ih, w_hh, b_ih, b_hh); h0, c0: (L, B, H).

    input_masks[l] multiplies layer l's input, recurrent_masks[l] multiplies h_{t-1} where it enters
    layer l's gates (the state itself stays unmasked), output_mask the top output.
    Returns y (T, B, H), h_n, c_n (L, B, H).
    """
    num_layers = len(weights)
    h = [h0[l] for l in range(num_layers)]
    c = [c0[l] for l in range(num_layers)]
    outputs = []
    for t in range(x.shape[0]):
        below = x[t]
        for l, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            layer_input = below * mask_at(input_masks[l] if input_masks else None, t)
            h_in = h[l] * mask_at(recurrent_masks[l] if recurrent_masks else None, t)
            h[l], c[l] = reference_cell(layer_input, h_in, c[l], w_ih, w_hh, b_ih, b_hh)
            below = h[l]
        outputs.append(below * mask_at(output_mask, t))
    return torch.stack(outputs), torch.stack(h), torch.stack(c)


def weights_of(stacked_lstm):
    return [(layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0) for layer in stacked_lstm.layers]
