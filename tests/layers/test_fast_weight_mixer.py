"""FastWeightMixer.forward equals its formula written out by hand in float64, token by token, for both update
rules (module docstring and SPEC section 1): projections, causal depthwise conv (continuing from a saved
tail), SiLU, L2-normalised q and k, the decay and write gates, the recurrence, the read-out, the gated RMSNorm
and the output projection. A change anywhere in the layer (a gate moved, a normalisation dropped) fails here,
not only through its side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmsleep.layers.fast_weight_mixer import FastWeightMixer, FastWeights

B, T, D, H, K = 2, 11, 12, 2, 4


def by_hand(m: FastWeightMixer, x: torch.Tensor, S0: torch.Tensor, tail: torch.Tensor):
    """``y [B, T, D]``, the final fast weights and conv tail, written out without the layer's code paths."""
    V, W = m.value_dim, m.conv_size
    u = x @ m.qkv.weight.T  # [B, T, C]
    seq = torch.cat([tail.transpose(1, 2), u], dim=1)  # the saved tail holds the W-1 inputs before x
    weight, bias = m.conv.weight[:, 0, :], m.conv.bias  # depthwise: one [W] kernel per channel
    conv = torch.stack([(seq[:, t : t + W] * weight.T).sum(1) + bias for t in range(T)], dim=1)
    q, k, v = F.silu(conv).split((H * K, H * K, H * V), dim=-1)
    q = q.view(B, T, H, K)
    k = k.view(B, T, H, K)
    eps_qk = m.qk_norm_eps or 0.0  # None: F.normalize (its 1e-12 clamp never binds here)
    q = q / torch.sqrt((q**2).sum(-1, keepdim=True) + eps_qk)
    k = k / torch.sqrt((k**2).sum(-1, keepdim=True) + eps_qk)
    v = v.view(B, T, H, V)
    dt = torch.log1p(torch.exp(x @ m.gate_a.weight.T + m.dt_bias))  # softplus
    a = torch.exp(-torch.exp(m.A_log) * dt)  # decay a_t in (0, 1)
    b = dt if m.rule == "mamba2" else torch.sigmoid(x @ m.gate_b.weight.T)  # write strength b_t
    S = S0.clone() if m.rule == "gated_delta" else S0.transpose(-1, -2).clone()  # as K x V per head
    o = torch.zeros(B, T, H, V, dtype=x.dtype)
    eye = torch.eye(K, dtype=x.dtype)
    for t in range(T):
        for bi in range(B):
            for h in range(H):
                kk, vv, at, bt = k[bi, t, h, :, None], v[bi, t, h, None, :], a[bi, t, h], b[bi, t, h]
                if m.rule == "gated_delta":  # S_t = a_t (I - b_t k k^T) S_{t-1} + b_t k v^T
                    S[bi, h] = at * (eye - bt * kk @ kk.T) @ S[bi, h] + bt * kk @ vv
                else:  # S_t = a_t S_{t-1} + b_t k v^T
                    S[bi, h] = at * S[bi, h] + bt * kk @ vv
                o[bi, t, h] = K**-0.5 * S[bi, h].T @ q[bi, t, h]  # o_t = scale S_t^T q_t
    eps = m.out_norm.eps if m.out_norm.eps is not None else torch.finfo(x.dtype).eps
    normed = o / torch.sqrt((o**2).mean(-1, keepdim=True) + eps) * m.out_norm.weight
    gated = normed * F.silu(x @ m.out_gate.weight.T).view(B, T, H, V)
    y = gated.reshape(B, T, H * V) @ m.out.weight.T
    S_final = S if m.rule == "gated_delta" else S.transpose(-1, -2)
    return y, S_final, seq[:, -(W - 1) :].transpose(1, 2)


@pytest.mark.parametrize("rule", ["mamba2", "gated_delta"])
@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
def test_forward_is_the_formula(rule, backend):
    torch.manual_seed(0)
    m = FastWeightMixer(
        D, rule=rule, heads=H, head_dim=K, conv_size=4, backend=backend, chunk_size=4
    ).double()
    with torch.no_grad():  # visible gates and norms: writes ~0.5, decays ~0.8, non-trivial norm weights
        for p in m.parameters():
            p.normal_(0, 0.5)
        m.A_log.fill_(-1.0)
        m.out_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(B, T, D, dtype=torch.float64)
    S0 = torch.randn_like(m.initial_state(B).S.double()) * 0.3
    tail = torch.randn(B, m.qkv.out_features, m.conv_size - 1, dtype=torch.float64)
    y, state = m(x, FastWeights(S0, tail))
    y_ref, S_ref, tail_ref = by_hand(m, x, S0, tail)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(state.S.double(), S_ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(state.conv, tail_ref, atol=0, rtol=0)
