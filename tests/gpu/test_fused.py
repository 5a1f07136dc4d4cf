"""The compiled nGPT ops give the numbers of their eager definitions (compiled here on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_ngpt.models.fused import l2_normalize, normalize_qk, residual_update


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
        raise AssertionError("compiled op used for CPU tensors")

    monkeypatch.setitem(residual_update.__dict__, "compiled", must_not_run)
    h, x, alpha = _inputs(torch.float32)["residual_update"]
    assert torch.equal(residual_update(h, x, alpha, use_compiled=True),
                       residual_update.eager(h, x, alpha))
