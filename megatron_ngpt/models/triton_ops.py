"""Triton kernels for nGPT's per-token normalizations, forward and backward.

Every nGPT layer normalizes each query and key head (then scales it by `s_qk`) and makes two
spherical residual updates ``norm(h + |alpha| * (norm(x) - h))``. In eager PyTorch each is a chain
of memory-bound kernels, and autograd saves several intermediates. Here each direction is one
kernel: the forward reads its inputs once and writes its output once; the backward recomputes
the normalized vectors from the saved inputs (fp32 throughout, one rounding at the store) and
writes the input gradients, plus per-program partial sums for the gradient of the per-channel
vector (`s_qk` or `alpha`), which one small `sum` finishes (deterministic: no atomics).

The kernels are wrapped as `torch.library.custom_op`s with registered autograd and fake
(meta) implementations, so eager code and `torch.compile`d graphs can both call them. CPU
tensors need Triton's interpreter (``TRITON_INTERPRET=1`` before Triton is imported; the test
suite sets it on machines without CUDA): it is slow, and it truncates where the GPU rounds to
nearest when it stores bf16. Only long-standing `tl` APIs are used: the kernels run on Triton 3.6
(the GPU machines') through 3.9.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the eager and torch.compile paths of fused.py still work
    triton = None
HAS_TRITON = triton is not None

if HAS_TRITON:

    @triton.jit
    def _normalize_heads_fwd(x_ptr, s_ptr, out_ptr, tokens, x_stride, out_stride, head_dim,
                             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        """out[t, h, :] = x[t, h, :] / ||x[t, h, :]|| * s[h, :] for BLOCK_T tokens of head h."""
        head = tl.program_id(1)
        rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < head_dim
        mask = (rows[:, None] < tokens) & col_ok[None, :]
        offsets = head * head_dim + cols[None, :]
        x = tl.load(x_ptr + rows[:, None] * x_stride + offsets, mask=mask, other=0.0)
        x = x.to(tl.float32)
        s = tl.load(s_ptr + head * head_dim + cols, mask=col_ok, other=0.0).to(tl.float32)
        inv = tl.rsqrt(tl.maximum(tl.sum(x * x, axis=1), 1e-30))
        out = x * inv[:, None] * s[None, :]
        tl.store(out_ptr + rows[:, None] * out_stride + offsets, out, mask=mask)

    @triton.jit
    def _normalize_heads_bwd(grad_ptr, x_ptr, s_ptr, dx_ptr, ds_partial_ptr, tokens, grad_stride,
                             x_stride, dx_stride, width, head_dim,
                             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
        """dx for BLOCK_T tokens of one head, and their share of ds (one row of partial sums)."""
        block, head = tl.program_id(0), tl.program_id(1)
        rows = block.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < head_dim
        mask = (rows[:, None] < tokens) & col_ok[None, :]
        offsets = head * head_dim + cols[None, :]
        x = tl.load(x_ptr + rows[:, None] * x_stride + offsets, mask=mask, other=0.0)
        g = tl.load(grad_ptr + rows[:, None] * grad_stride + offsets, mask=mask, other=0.0)
        x, g = x.to(tl.float32), g.to(tl.float32)
        s = tl.load(s_ptr + head * head_dim + cols, mask=col_ok, other=0.0).to(tl.float32)
        inv = tl.rsqrt(tl.maximum(tl.sum(x * x, axis=1), 1e-30))
        y = x * inv[:, None]
        gy = g * s[None, :]
        dx = inv[:, None] * (gy - y * tl.sum(y * gy, axis=1)[:, None])
        tl.store(dx_ptr + rows[:, None] * dx_stride + offsets, dx, mask=mask)
        tl.store(ds_partial_ptr + block * width + head * head_dim + cols, tl.sum(g * y, axis=0),
                 mask=col_ok)

    @triton.jit
    def _residual_update_fwd(h_ptr, x_ptr, alpha_ptr, out_ptr, h_stride, x_stride, out_stride,
                             width, BLOCK_D: tl.constexpr):
        """One token: out = norm(h + |alpha| * (norm(x) - h))."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        mask = cols < width
        h = tl.load(h_ptr + row * h_stride + cols, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        a = tl.abs(tl.load(alpha_ptr + cols, mask=mask, other=0.0).to(tl.float32))
        xn = x * tl.rsqrt(tl.maximum(tl.sum(x * x, axis=0), 1e-30))
        u = h + a * (xn - h)
        out = u * tl.rsqrt(tl.maximum(tl.sum(u * u, axis=0), 1e-30))
        tl.store(out_ptr + row * out_stride + cols, out, mask=mask)

    @triton.jit
    def _residual_update_bwd(grad_ptr, h_ptr, x_ptr, alpha_ptr, dh_ptr, dx_ptr, da_partial_ptr,
                             tokens, grad_stride, h_stride, x_stride, dh_stride, dx_stride, width,
                             ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
        """dh and dx of ROWS consecutive tokens, and their share of d|alpha|."""
        pid = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        col_ok = cols < width
        a = tl.abs(tl.load(alpha_ptr + cols, mask=col_ok, other=0.0).to(tl.float32))
        da = tl.zeros([BLOCK_D], dtype=tl.float32)
        for i in range(0, ROWS):
            row = pid * ROWS + i
            # Not `col_ok & (row < tokens)`: Triton 3.9's interpreter rejects that mask.
            mask = cols < tl.where(row < tokens, width, 0)
            h = tl.load(h_ptr + row * h_stride + cols, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(grad_ptr + row * grad_stride + cols, mask=mask, other=0.0)
            g = g.to(tl.float32)
            inv_x = tl.rsqrt(tl.maximum(tl.sum(x * x, axis=0), 1e-30))
            xn = x * inv_x
            u = h + a * (xn - h)
            inv_u = tl.rsqrt(tl.maximum(tl.sum(u * u, axis=0), 1e-30))
            out = u * inv_u
            du = inv_u * (g - out * tl.sum(out * g, axis=0))  # zero for rows past the end
            dxn = du * a
            tl.store(dh_ptr + row * dh_stride + cols, du - dxn, mask=mask)
            tl.store(dx_ptr + row * dx_stride + cols, inv_x * (dxn - xn * tl.sum(xn * dxn, axis=0)),
                     mask=mask)
            da += du * (xn - h)
        tl.store(da_partial_ptr + pid * width + cols, da, mask=col_ok)


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """`t` as ``[tokens, width]`` with unit stride along `width` (a view when possible)."""
    rows = t.reshape(-1, width)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 8)


HEAD_BLOCK_TOKENS = 64  # tokens per program of the q/k kernels (x head_dim 64: 4k elements)


def _partial_programs(tokens: int, device: torch.device) -> int:
    """Programs of the residual backward, each over a run of consecutive tokens whose d|alpha|
    it sums: enough to fill the GPU, few enough that their partial sums stay small."""
    if device.type != "cuda":
        return min(tokens, 4)
    return min(tokens, 8 * torch.cuda.get_device_properties(device).multi_processor_count)


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # computed in float32


def supports_normalize_heads(x: torch.Tensor, s: torch.Tensor) -> bool:
    """The kernel's case: one scale per element of every head (no grouped-query heads)."""
    return (HAS_TRITON and x.dtype in KERNEL_DTYPES and x.dim() >= 2
            and s.numel() == x.shape[-2] * x.shape[-1])


def supports_residual_update(h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> bool:
    return (HAS_TRITON and h.dtype in KERNEL_DTYPES and h.shape == x.shape
            and h.dtype == x.dtype and alpha.numel() == h.shape[-1])


@torch.library.custom_op("megatron_ngpt::normalize_heads", mutates_args=())
def normalize_heads(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x / ||x|| * s`` per head of ``x [..., heads, head_dim]``, `s` of ``heads * head_dim``."""
    heads, head_dim = x.shape[-2], x.shape[-1]
    rows = _rows(x, heads * head_dim)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out_rows = out.view(-1, heads * head_dim)
    block_d = triton.next_power_of_2(head_dim)
    grid = (triton.cdiv(rows.shape[0], HEAD_BLOCK_TOKENS), heads)
    _normalize_heads_fwd[grid](rows, s.contiguous(), out_rows, rows.shape[0],
            rows.stride(0), out_rows.stride(0), head_dim, BLOCK_T=HEAD_BLOCK_TOKENS,
            BLOCK_D=block_d, num_warps=_num_warps(HEAD_BLOCK_TOKENS * block_d))
    return out


@torch.library.custom_op("megatron_ngpt::normalize_heads_backward", mutates_args=())
def normalize_heads_backward(grad: torch.Tensor, x: torch.Tensor,
                             s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    heads, head_dim = x.shape[-2], x.shape[-1]
    width = heads * head_dim
    rows, grad_rows = _rows(x, width), _rows(grad, width)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dx_rows = dx.view(-1, width)
    blocks = triton.cdiv(rows.shape[0], HEAD_BLOCK_TOKENS)
    partial = torch.empty(blocks, width, dtype=torch.float32, device=x.device)
    block_d = triton.next_power_of_2(head_dim)
    _normalize_heads_bwd[(blocks, heads)](grad_rows, rows, s.contiguous(),
            dx_rows, partial, rows.shape[0], grad_rows.stride(0), rows.stride(0),
            dx_rows.stride(0), width, head_dim, BLOCK_T=HEAD_BLOCK_TOKENS, BLOCK_D=block_d,
            num_warps=_num_warps(HEAD_BLOCK_TOKENS * block_d))
    return dx, partial.sum(0).to(s.dtype).view(s.shape)


@torch.library.custom_op("megatron_ngpt::residual_update", mutates_args=())
def residual_update(h: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``norm(h + |alpha| * (norm(x) - h))`` over the last dimension, in one pass."""
    width = h.shape[-1]
    h_rows, x_rows = _rows(h, width), _rows(x, width)
    out = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    out_rows = out.view(-1, width)
    block_d = triton.next_power_of_2(width)
    _residual_update_fwd[(h_rows.shape[0],)](h_rows, x_rows,
            alpha.contiguous(), out_rows, h_rows.stride(0), x_rows.stride(0),
            out_rows.stride(0), width, BLOCK_D=block_d, num_warps=_num_warps(block_d))
    return out


@torch.library.custom_op("megatron_ngpt::residual_update_backward", mutates_args=())
def residual_update_backward(grad: torch.Tensor, h: torch.Tensor, x: torch.Tensor,
                             alpha: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = h.shape[-1]
    grad_rows, h_rows, x_rows = _rows(grad, width), _rows(h, width), _rows(x, width)
    dh = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dh_rows, dx_rows = dh.view(-1, width), dx.view(-1, width)
    tokens = h_rows.shape[0]
    rows = triton.cdiv(tokens, _partial_programs(tokens, h.device))
    programs = triton.cdiv(tokens, rows)
    partial = torch.empty(programs, width, dtype=torch.float32, device=h.device)
    block_d = triton.next_power_of_2(width)
    _residual_update_bwd[(programs,)](
        grad_rows, h_rows, x_rows, alpha.contiguous(), dh_rows, dx_rows, partial, tokens,
        grad_rows.stride(0), h_rows.stride(0), x_rows.stride(0), dh_rows.stride(0),
        dx_rows.stride(0), width, ROWS=rows, BLOCK_D=block_d, num_warps=_num_warps(block_d))
    dalpha = partial.sum(0) * torch.sign(alpha.float())  # d|alpha| / d alpha
    return dh, dx, dalpha.to(alpha.dtype).view(alpha.shape)


@normalize_heads.register_fake
def _(x, s):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@normalize_heads_backward.register_fake
def _(grad, x, s):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(s)


@residual_update.register_fake
def _(h, x, alpha):
    return torch.empty_like(h, memory_format=torch.contiguous_format)


@residual_update_backward.register_fake
def _(grad, h, x, alpha):
    return (torch.empty_like(h, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(alpha))


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _normalize_heads_grad(ctx, grad):
    x, s = ctx.saved_tensors
    return normalize_heads_backward(grad, x, s)


def _residual_update_grad(ctx, grad):
    h, x, alpha = ctx.saved_tensors
    return residual_update_backward(grad, h, x, alpha)


normalize_heads.register_autograd(_normalize_heads_grad, setup_context=_save_inputs)
residual_update.register_autograd(_residual_update_grad, setup_context=_save_inputs)
