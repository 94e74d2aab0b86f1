"""Luong et al. (2015) global attention, "general" score: score(h_t, s) = h_t^T W_a s.

The attentional hidden state is h~_t = tanh(W_c [c_t; h_t]) (Luong Eq. 5); it feeds the softmax and,
with input feeding (Luong Sec. 3.3), the next decoder step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import gemm


class LuongAttention(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, hidden_size, bias=False)  # W_a
        self.combine = nn.Linear(2 * hidden_size, hidden_size, bias=False)  # W_c

    def keys(self, memory: Tensor) -> Tensor:
        """W_a s for every source position, computed once per sentence. memory: (S, B, H) -> (B, H, S)."""
        return gemm.trainable_linear(memory, self.score.weight).permute(1, 2, 0)  # nn.Linear's, oneDNN on AMD

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, src_mask: Tensor,
                return_weights: bool = False, linear=gemm.trainable_linear, tanh_=Tensor.tanh_,
                batch_first: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """query: (T, B, H) decoder outputs, or (B, T, H) with batch_first (search: a sentence's beams are its
        T, and its rows stay in the order the step keeps them); keys: (B, H, S); memory: (S, B, H); src_mask:
        (B, S) True at real tokens. Returns the attentional hidden states in query's layout, and with
        return_weights the attention weights (B, T, S) too. linear(x, weight): W_c's product (by default
        nn.functional.linear's, in oneDNN where seq2seq.gemm says so; search passes seq2seq.products'), and
        tanh_(x) its in-place tanh (search in bf16 passes the compiled approximation)."""
        scores = torch.bmm(query if batch_first else query.transpose(0, 1), keys)  # (B, T, S)
        scores = scores.masked_fill_(~src_mask.unsqueeze(1), float("-inf"))  # in place: bmm saves its inputs only
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        context = torch.bmm(weights, memory.transpose(0, 1))  # (B, T, H)
        context = context if batch_first else context.transpose(0, 1)  # query's layout
        attended = tanh_(linear(torch.cat([context, query], dim=-1), self.combine.weight))  # as query
        return (attended, weights) if return_weights else attended
