"""The Triton kernels of nGPT's normalizations give the math's values and gradients.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 where
there is no CUDA); on a GPU machine the same cases run the compiled kernels (marker `gpu`). The
reference is the eager definition evaluated in float64 on the same inputs.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from megatron_ngpt.models import triton_ops  # noqa: E402
from megatron_ngpt.models.fused import normalize_qk, residual_update  # noqa: E402

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1",
        reason="on CPU the kernels run only in Triton's interpreter (TRITON_INTERPRET=1)")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device")]),
]
DTYPES = [torch.float32, torch.bfloat16]
# Odd sizes: tokens not a multiple of the q/k kernel's 64-token blocks nor of the residual
# backward's programs, head and model widths not powers of two.
QK_SHAPE = (37, 3, 5, 24)  # s, b, heads, d_head: 111 tokens, two blocks
RESIDUAL_SHAPE = (13, 5, 100)  # s, b, d: 65 tokens


def _qk_inputs(dtype, device, shape=QK_SHAPE):
    gen = torch.Generator().manual_seed(0)
    s, b, heads, d_head = shape
    return [torch.randn(s, b, heads, d_head, generator=gen).to(device, dtype),
            torch.randn(s, b, heads, d_head, generator=gen).to(device, dtype),
            (torch.rand(heads * d_head, generator=gen) + 0.5).to(device)]


def _residual_inputs(dtype, device, shape=RESIDUAL_SHAPE):
    gen = torch.Generator().manual_seed(0)
    h = F.normalize(torch.randn(*shape, generator=gen), dim=-1)
    alpha = 0.05 * torch.randn(shape[-1], generator=gen)
    alpha[:3] = torch.tensor([0.0, -0.3, 0.9])  # |alpha|'s kink, a negative rate, a large one
    return [h.to(device, dtype), torch.randn(*shape, generator=gen).to(device, dtype),
            alpha.to(device)]


def _values_and_grads(fn, inputs, cotangents=None):
    """(outputs, then the gradient of every input; the cotangents used): random cotangents in
    the outputs' dtype unless given."""
    xs = [x.detach().requires_grad_() for x in inputs]
    out = fn(*xs)
    outs = list(out) if isinstance(out, tuple) else [out]
    if cotangents is None:
        gen = torch.Generator().manual_seed(1)
        cotangents = [torch.randn(o.shape, generator=gen).to(o.device, o.dtype) for o in outs]
    torch.autograd.backward(outs, [c.to(o.dtype) for c, o in zip(cotangents, outs, strict=True)])
    return [o.detach() for o in outs] + [x.grad for x in xs], cotangents


def _check_against_math(kernel, definition, inputs) -> list[torch.Tensor]:
    """Run `kernel`, and `definition` in float64 on the same (already rounded) inputs and
    cotangents; every output and gradient must be within rounding of the float64 values:
    float32 results within 1e-6 of the largest value, bf16 ones within one bf16 ulp of each
    value (computed in float32 and rounded once; the interpreter truncates, the GPU rounds to
    nearest). Returns the kernel's results."""
    got, cotangents = _values_and_grads(kernel, inputs)
    ref, _ = _values_and_grads(definition, [x.double() for x in inputs], cotangents)
    for g, r in zip(got, ref, strict=True):
        r = r.to(g.device)
        scale = r.abs().max().item()
        bound = 1e-6 * scale + (2.0**-7 * r.abs() if g.dtype == torch.bfloat16 else 0.0)
        err = (g.double() - r).abs()
        worst = (err - bound).argmax()
        assert bool((err <= bound).all()), (
            f"{g.dtype} result: error {err.flatten()[worst].item():.3g} at value "
            f"{r.flatten()[worst].item():.4g} (largest {scale:.4g})")
    return got


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_heads_matches_the_math(device, dtype):
    got = _check_against_math(normalize_qk.triton, normalize_qk.eager, _qk_inputs(dtype, device))
    assert [g.dtype for g in got] == [dtype, dtype, dtype, dtype, torch.float32]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_update_matches_the_math(device, dtype):
    got = _check_against_math(residual_update.triton, residual_update.eager,
                              _residual_inputs(dtype, device))
    assert [g.dtype for g in got] == [dtype, dtype, dtype, torch.float32]
    assert got[-1][0] == 0  # d|alpha|/d alpha is 0 at alpha = 0, as for torch.abs


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_take_strided_token_layouts(device):
    """q and k as megatron slices them out of the fused QKV output: token rows with a stride."""
    q, _, s_qk = _qk_inputs(torch.float32, device)
    wide = torch.cat([q, torch.randn_like(q)], dim=-2)[..., : q.shape[-2], :]
    assert not wide.is_contiguous()
    _check_against_math(triton_ops.normalize_heads, lambda x, s: normalize_qk.eager(x, x, s)[0],
                        [wide, s_qk])


@pytest.mark.parametrize("device", DEVICES)
def test_custom_ops_pass_torch_library_checks(device):
    """Schema, fake (meta) kernels and autograd registration hold, so compiled graphs can call
    the kernels (`torch.library.opcheck`)."""
    q, _, s_qk = _qk_inputs(torch.float32, device, shape=(3, 2, 2, 8))
    torch.library.opcheck(triton_ops.normalize_heads, (q.requires_grad_(), s_qk.requires_grad_()))
    h, x, alpha = _residual_inputs(torch.float32, device, shape=(3, 2, 16))
    torch.library.opcheck(triton_ops.residual_update,
                          (h.requires_grad_(), x.requires_grad_(), alpha.requires_grad_()))
