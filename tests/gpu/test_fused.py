"""nGPT's fused ops: the eager definitions are the math, the compiled versions give their numbers
(compiled here on CPU), and each call picks the implementation the module docstring names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_ngpt.models import triton_ops
from megatron_ngpt.models.fused import FusedOp, l2_normalize, normalize_qk, residual_update


def _inputs(dtype: torch.dtype) -> dict[str, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    s, b, heads, d_head = 8, 2, 4, 16
    d = heads * d_head
    h = F.normalize(torch.randn(s, b, d, generator=gen), dim=-1)
    return {
        "residual_update": [h.to(dtype), torch.randn(s, b, d, generator=gen).to(dtype),
                            0.05 * torch.randn(d, generator=gen)],
        "normalize_qk": [torch.randn(s, b, heads, d_head, generator=gen).to(dtype),
                         torch.randn(s, b, heads, d_head, generator=gen).to(dtype),
                         torch.rand(d, generator=gen) + 0.5],
    }


OPS = {"residual_update": residual_update, "normalize_qk": normalize_qk}


def _outputs_and_grads(fn, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    xs = [x.detach().requires_grad_() for x in inputs]
    out = fn(*xs)
    outs = list(out) if isinstance(out, tuple) else [out]
    gen = torch.Generator().manual_seed(1)
    torch.autograd.backward(outs, [torch.randn(o.shape, generator=gen).to(o.dtype) for o in outs])
    return [o.detach() for o in outs] + [x.grad for x in xs]


def test_eager_definitions_are_the_ngpt_math():
    h, x, alpha = _inputs(torch.float64)["residual_update"]
    expected = h + alpha.abs() * (x / x.norm(dim=-1, keepdim=True) - h)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(residual_update.eager(h, x, alpha), expected)
    q, k, s_qk = _inputs(torch.float64)["normalize_qk"]
    q_out, k_out = normalize_qk.eager(q, k, s_qk)
    torch.testing.assert_close(q_out, q / q.norm(dim=-1, keepdim=True) * s_qk.view(4, 16))
    torch.testing.assert_close(k_out, k / k.norm(dim=-1, keepdim=True) * s_qk.view(4, 16))
    torch.testing.assert_close(l2_normalize(q).norm(dim=-1), torch.ones(8, 2, 4, dtype=q.dtype))


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("name", OPS)
def test_compiled_equals_eager(name, dtype, tol):
    inputs = _inputs(dtype)[name]
    op = OPS[name]
    eager = _outputs_and_grads(op.eager, inputs)
    compiled = _outputs_and_grads(op.compiled, inputs)
    for c, e in zip(compiled, eager, strict=True):
        assert c.dtype == e.dtype
        torch.testing.assert_close(c.float(), e.float(), atol=tol * e.abs().max().item(), rtol=0)


def test_cpu_tensors_run_eagerly(monkeypatch):
    def must_not_run(*args):
        raise AssertionError("fused op used for CPU tensors")

    monkeypatch.setitem(residual_update.__dict__, "compiled", must_not_run)
    monkeypatch.setattr(residual_update, "triton", must_not_run)
    h, x, alpha = _inputs(torch.float32)["residual_update"]
    assert torch.equal(residual_update(h, x, alpha, fused=True),
                       residual_update.eager(h, x, alpha))


class _CudaStandIn:
    """What the selection reads from its first argument (no CUDA tensor exists on CPU)."""

    is_cuda = True


@pytest.mark.parametrize("name", OPS)
def test_selection_order_on_cuda(monkeypatch, name):
    """Outside compiled graphs: the Triton kernel where it applies, else torch.compile; inside a
    compiled layer, the eager definition (traced and fused by inductor); unfused: eager."""
    op = FusedOp(OPS[name].eager, triton=lambda *a: None, supports=lambda *a: True)
    monkeypatch.setitem(op.__dict__, "compiled", lambda *a: None)
    cuda = _CudaStandIn()
    if op.triton is not None:  # Triton installed
        assert op.implementation(cuda) is op.triton
    monkeypatch.setattr(op, "supports", lambda *a: False)
    assert op.implementation(cuda) is op.compiled
    assert op.implementation(cuda, fused=False) is op.eager
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert op.implementation(cuda) is op.eager


def test_triton_kernels_are_wired_to_both_ops():
    if not triton_ops.HAS_TRITON:
        pytest.skip("Triton is not installed")
    assert residual_update.triton is triton_ops.residual_update
    h, x, alpha = _inputs(torch.float32)["residual_update"]
    assert residual_update.supports(h, x, alpha)
    assert not residual_update.supports(h.double(), x.double(), alpha)  # float64: eager only
    q, k, s_qk = _inputs(torch.float32)["normalize_qk"]
    assert normalize_qk.supports(q, k, s_qk)
    assert not normalize_qk.supports(q, k[:, :, :2], s_qk)  # grouped k heads: eager only
