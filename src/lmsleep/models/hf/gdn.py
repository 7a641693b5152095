"""lmsleep's Gated DeltaNet from transformers' Qwen3.5 ``GatedDeltaNet`` weights.

transformers' layer (``Qwen3_5GatedDeltaNet``) and :class:`lmsleep.layers.fast_weight_mixer.FastWeightMixer`
with ``rule="gated_delta"`` compute the same function, parameter for parameter::

    [q; k; v] = SiLU(conv(W_qkv x))                 in_proj_qkv, conv1d (no bias)  -> qkv, conv (bias 0)
    q, k      = l2norm(q), l2norm(k), eps 1e-6      repeated over value heads      -> key_heads < heads
    b_t       = sigmoid(w_b . x_t)                  in_proj_b                      -> gate_b
    log a_t   = -exp(A_log) softplus(w_a . x_t + dt_bias)   in_proj_a, A_log, dt_bias -> gate_a, A_log, dt_bias
    S_t       = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,   o_t = K^-1/2 S_t^T q_t
    y         = W_out (RMSNorm(o) * SiLU(W_z x))    norm (eps 1e-6), in_proj_z, out_proj -> out_norm, out_gate, out

States match too: transformers' recurrent state is lmsleep's ``S`` ``[B, H_v, K, V]``; its conv state holds
the last ``W`` inputs where lmsleep keeps ``W - 1`` (:func:`conv_state_to_lmsleep`).
"""

from __future__ import annotations

import torch
from torch import nn

from lmsleep.layers.fast_weight_mixer import FastWeightMixer


def from_qwen3_5(layer: nn.Module, **mixer_kwargs) -> FastWeightMixer:
    """A :class:`FastWeightMixer` computing what transformers' ``Qwen3_5GatedDeltaNet`` ``layer`` computes
    (same dtype and device). ``mixer_kwargs`` go to the mixer (backend, chunk_size, ...)."""
    if layer.activation != "silu":
        raise ValueError(f"GatedDeltaNet with activation {layer.activation!r}: lmsleep's layer uses SiLU")
    if layer.head_v_dim % layer.head_k_dim:
        raise ValueError(
            f"GatedDeltaNet value head dim {layer.head_v_dim} must be a multiple of key head dim {layer.head_k_dim}"
        )
    weight = layer.in_proj_qkv.weight
    mixer = FastWeightMixer(
        layer.hidden_size,
        rule="gated_delta",
        heads=layer.num_v_heads,
        key_heads=layer.num_k_heads,
        head_dim=layer.head_k_dim,
        expand=layer.head_v_dim // layer.head_k_dim,
        conv_size=layer.conv_kernel_size,
        qk_norm_eps=1e-6,  # transformers' l2norm (and flash-linear-attention's)
        norm_eps=layer.norm.variance_epsilon,
        **mixer_kwargs,
    ).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        mixer.qkv.weight.copy_(layer.in_proj_qkv.weight)
        mixer.conv.weight.copy_(layer.conv1d.weight)
        if layer.conv1d.bias is None:
            mixer.conv.bias.zero_()
        else:
            mixer.conv.bias.copy_(layer.conv1d.bias)
        mixer.gate_a.weight.copy_(layer.in_proj_a.weight)
        mixer.gate_b.weight.copy_(layer.in_proj_b.weight)
        mixer.A_log.copy_(layer.A_log)
        mixer.dt_bias.copy_(layer.dt_bias)
        mixer.out_gate.weight.copy_(layer.in_proj_z.weight)
        mixer.out_norm.weight.copy_(layer.norm.weight)
        mixer.out.weight.copy_(layer.out_proj.weight)
    return mixer


def conv_state_to_lmsleep(conv: torch.Tensor, conv_size: int) -> torch.Tensor:
    """transformers' conv state ``[B, C, W]`` (the last W inputs) -> lmsleep's tail ``[B, C, W - 1]``."""
    return conv[..., conv.shape[-1] - (conv_size - 1) :]
