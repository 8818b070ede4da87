"""The kernel behind the learner's batched Linear layers: ATen's default or oneDNN's fp32 linear.

ATen's fp32 `baddbmm`/`bmm` on an x86 CPU runs MKL. The same torch wheel ships oneDNN, whose
fp32 linear (`torch.ops.mkldnn._linear_pointwise`) ran 1.5-3x faster at the learner's shapes
on the development machine (a 2-core AMD EPYC with AVX-512), at full fp32 precision. oneDNN
has no fp32 batched matmul that torch exposes (ATen's `bmm` goes to oneDNN only when fp32 may
be computed in bf16/tf32), so `member_linear` runs one oneDNN linear per member; its backward
is two more `member_linear`s, so forward and backward both run on oneDNN. It is a
`torch.library` custom op with a registered backward, which `torch.compile` sees through.

Faster matmuls do not make a faster step by themselves: each oneDNN call is one more op
(a parallel region, Python dispatch), M of them per layer where ATen has one. So "auto"
(rlservice.agent.learner.matmul_kernel) times whole learner steps on both kernels, once per
process; on a GPU, or where oneDNN is missing, the kernel is ATen.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch.utils.flop_counter import register_flop_formula

Kernel = Literal["aten", "onednn"]
Choice = Literal["auto", "aten", "onednn"]


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@torch.library.custom_op("rlservice::member_linear", mutates_args=())
def member_linear(x: torch.Tensor, weight_t: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x [M, R, K] @ weight_t[m]^T [K, N] (+ bias [M, 1, N]) for each member m, on oneDNN: [M, R, N]."""
    linear = torch.ops.mkldnn._linear_pointwise
    out = x.new_empty(x.shape[0], x.shape[1], weight_t.shape[1])  # not torch.stack: its result is a view here
    for m in range(x.shape[0]):
        out[m] = linear(x[m], weight_t[m], None if bias is None else bias[m, 0], "none", [], "")
    return out


@member_linear.register_fake
def _(x, weight_t, bias):
    return x.new_empty(x.shape[0], x.shape[1], weight_t.shape[1])


@register_flop_formula(torch.ops.rlservice.member_linear)
def _flops(x_shape, weight_t_shape, bias_shape, out_shape=None, **kwargs) -> int:
    """For torch.utils.flop_counter: 2 FLOP (multiply, add) per term of each member's product."""
    members, rows, inner = x_shape
    return 2 * members * rows * inner * weight_t_shape[1]


def _setup_context(ctx, inputs, output):
    x, weight_t, _ = inputs
    ctx.save_for_backward(x, weight_t)


def _backward(ctx, grad):
    """y = x W^T + b: dx = g W, dW = g^T x, db = sum over rows of g."""
    x, weight_t = ctx.saved_tensors
    grad_x = member_linear(grad, weight_t.mT, None) if ctx.needs_input_grad[0] else None
    grad_w = member_linear(grad.mT, x.mT, None) if ctx.needs_input_grad[1] else None
    grad_b = grad.sum(dim=1, keepdim=True) if ctx.needs_input_grad[2] else None
    return grad_x, grad_w, grad_b


member_linear.register_autograd(_backward, setup_context=_setup_context)


def batched_linear(kernel: Kernel, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """bias + x @ weight per member (x [M, R, in], weight [M, in, out], bias [M, 1, out]) on `kernel`."""
    if kernel == "onednn":
        return member_linear(x, weight.mT, bias)
    return torch.baddbmm(bias, x, weight)
