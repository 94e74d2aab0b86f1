"""Search's matrix products in a lower precision, with everything around them in fp32.

On a CPU with AMX a bf16 product at a decoding step's shapes ((320 x 256) x (256 x 1024): a beam of 5 over 64
sentences, the demo model's gates) runs ~7x faster than in fp32 (125 against 877 us on one thread). The
element-wise work of a step does not: in bf16 every sigmoid, tanh and addition widens each value to fp32 and
narrows it back (the cell's tanh took ~130 us against ~40 us in fp32), and products as small as attention's, one
sentence's beam against its source, are slower in bf16 than in fp32. So search with `Products(torch.bfloat16)`
keeps the model, its states, the attention and the softmax in fp32 and runs only the large products (the
decoder's gates, attention's output layer, the softmax layer) in bf16: each weight is cast once and kept until it
changes, the input is cast at every call and the product widened back to fp32.

The encoder, whose LSTM layers read whole sentences at once, runs under autocast to the same dtype
(`Products.autocast`) and hands fp32 on to the search. The element-wise work around bf16 products, whose inputs
are rounded to bf16 anyway, uses the compiled search kernels' approximations (csrc/search_cell.cpp, within ~2e-7
of torch's functions): attention's tanh (`Products.tanh_`), and the output layer's bias, shortlist mask and
log_softmax a row at a time over its bf16 product (`Products.log_softmax_linear`).

`Products()` (no dtype) is plain `nn.functional.linear` in the model's own dtype: fp32 search, or a whole model
cast to bf16 / fp16 as on a GPU, where element-wise work in half precision is cheap.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from . import gemm
from .native import search_cell_kernel


class Products:
    """x W^T (+ bias) for search: in `dtype` with fp32 around it, or, with dtype None, as nn.Linear computes it."""

    def __init__(self, dtype: torch.dtype | None = None):
        self.dtype = dtype
        self._casts: dict[int, tuple[Tensor, int, int, Tensor]] = {}  # id -> (weight, version, address, cast)

    def weight(self, weight: Tensor) -> Tensor:
        """weight in `dtype` (cast once; cast again after the weight changes in place or moves), or itself."""
        if self.dtype is None or weight.dtype == self.dtype:
            return weight
        kept = self._casts.get(id(weight))
        if kept is None or kept[0] is not weight or kept[1:3] != (weight._version, weight.data_ptr()):
            kept = (weight, weight._version, weight.data_ptr(), weight.detach().to(self.dtype))
            self._casts[id(weight)] = kept
        return kept[3]

    def autocast(self, device: torch.device):
        """The encoder's setting in bf16 search on a CPU: autocast to dtype, so that its fused LSTM layers (whole
        sentences at once: large products, forward only, where oneDNN's bf16 runs ~1.5x its fp32) and attention's
        keys run in dtype; the caller widens what it returns to fp32. Elsewhere a context that changes nothing
        (not autocast(enabled=False), which would switch off a training run's own autocast)."""
        if self.dtype is None or device.type != "cpu":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """x (N, in) times weight (out, in) transposed, plus bias ((out,) or (N, out)), in x's dtype.

        Without a dtype this is nn.functional.linear (with a bias: one addmm, the bias summed inside the
        product), so fp32 search is unchanged to the last bit, except on a CPU where seq2seq.gemm runs fp32
        products in oneDNN (an AMD CPU with AVX-512). With one, the product runs in dtype and the bias is added
        after it, in fp32."""
        if self.dtype is None:
            return gemm.linear(x, weight, bias)
        product = nn.functional.linear(x.to(self.dtype), self.weight(weight)).to(x.dtype)  # (N, out)
        return product if bias is None else product.add_(bias)

    def _bf16_kernel(self):
        """The compiled search kernels when this search's products are bf16 on a CPU (else None)."""
        return search_cell_kernel() if self.dtype == torch.bfloat16 else None

    def tanh_(self, x: Tensor) -> Tensor:
        """x = tanh(x) in place: torch's, or in bf16 search on a CPU the compiled approximation."""
        kernel = self._bf16_kernel()
        if kernel is None or not (x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()):
            return x.tanh_()
        kernel.tanh_approx_(x)
        return x

    def log_softmax_linear(self, x: Tensor, weight: Tensor, bias: Tensor, mask: Tensor | None = None) -> Tensor:
        """log_softmax(x W^T + bias (+ mask)) along rows, fp32: x (N, in), weight (V, in), bias (V,); mask (B, V)
        added to each sentence's N / B rows (a shortlist's -inf at ids a sentence may not emit), or None.
        Without a dtype, `linear`'s product, the mask, then torch.log_softmax, as the eager step computed them; in
        bf16 on a CPU, the bf16 product and the compiled kernel, a row at a time."""
        kernel = self._bf16_kernel()
        if kernel is not None and x.device.type == "cpu":
            product = nn.functional.linear(x.to(self.dtype), self.weight(weight))  # (N, V) bf16
            return kernel.log_softmax_rows(product, bias.float().contiguous(),
                                           None if mask is None else mask.float().contiguous())
        logits = self.linear(x, weight, bias)  # (N, V)
        if mask is not None:  # (B, N / B, V) + (B, 1, V)
            logits = logits.view(len(mask), -1, logits.shape[-1]).add_(mask.unsqueeze(1)).flatten(0, 1)
        return torch.log_softmax(logits.float(), dim=-1)


def prepare_for_search(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The model on `device`, set to search in `dtype`: bf16 on a CPU keeps the model in fp32 and runs the large
    products in bf16 (`model.products`, see above); anywhere else the whole model is cast to dtype."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        model = model.to(device=device, dtype=torch.float32)
        model.products = Products(dtype)
        return model
    model = model.to(device=device, dtype=dtype)
    model.products = Products()
    return model
