"""lmsleep's Gated DeltaNet held to transformers' Qwen3.5 ``GatedDeltaNet`` (item 7 of issue 31).

transformers computes this layer in float32 whatever the input dtype (its gated delta rule, gates and gated
RMSNorm cast to fp32), so parity is at fp32 round-off: lmsleep's layer in float64 against transformers'.
"""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

import sys  # noqa: E402, I001

import torch  # noqa: E402
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig  # noqa: E402
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet  # noqa: E402

from lmsleep.layers.fast_weight_mixer import FastWeights  # noqa: E402
from lmsleep.models.hf.cache import WindowCache  # noqa: E402
from lmsleep.models.hf.gdn import conv_state_to_lmsleep, from_qwen3_5  # noqa: E402
from lmsleep.models.hf.kernels import torch_ops_on_cpu  # noqa: E402

D, T = 48, 20
TOL = 2e-6  # fp32 round-off, relative to the largest value compared


def hf_layer(key_heads: int = 2, value_heads: int = 4, seed: int = 0) -> Qwen3_5GatedDeltaNet:
    torch.manual_seed(seed)
    config = Qwen3_5TextConfig(
        hidden_size=D,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
        linear_num_key_heads=key_heads,
        linear_num_value_heads=value_heads,
        linear_key_head_dim=8,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
    )
    layer = Qwen3_5GatedDeltaNet(config, 0)
    with torch.no_grad():  # visible writes, slow decays, non-trivial norm weights
        for p in layer.parameters():
            p.normal_(0, 0.3 if p.dim() > 1 else 1.0)
        layer.A_log.uniform_(-3, 0)
        layer.norm.weight.uniform_(0.5, 1.5)
    return layer


def run_hf(layer, x: torch.Tensor, state: FastWeights | None):
    """transformers' forward from a state (its recurrent state and conv inputs), through lmsleep's cache."""
    cache = WindowCache({}, {0: state})
    with torch_ops_on_cpu([sys.modules[type(layer).__module__]], True):
        y = layer(x, cache_params=cache)
    return y, cache.state(0)


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().max()
    assert (ours.double() - theirs.double()).abs().max() <= TOL * scale, float(
        (ours.double() - theirs.double()).abs().max() / scale
    )


@pytest.mark.parametrize("key_heads", [2, 4])
def test_same_outputs_and_states_full_chunks_and_tokens(key_heads):
    layer = hf_layer(key_heads=key_heads)
    mixer = from_qwen3_5(layer, chunk_size=8).double()
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # the whole sequence
        y_hf, s_hf = run_hf(layer, x, None)
        y, s = mixer(x.double())
        close(y, y_hf)
        close(s.S, s_hf.S)
        # two chunks, the state carried
        y1_hf, s1_hf = run_hf(layer, x[:, :13], None)
        y2_hf, s2_hf = run_hf(layer, x[:, 13:], s1_hf)
        y1, s1 = mixer(x[:, :13].double())
        close(s1.conv, conv_state_to_lmsleep(s1_hf.conv, mixer.conv_size))
        close(s1.S, s1_hf.S)
        y2, s2 = mixer(x[:, 13:].double(), s1)
        close(torch.cat([y1, y2], 1), torch.cat([y1_hf, y2_hf], 1))
        close(s2.S, s2_hf.S)
        close(torch.cat([y1, y2], 1), y_hf)
        # token by token (transformers' recurrent kernel; lmsleep's token loop)
        state_hf, state, ys_hf, ys = None, None, [], []
        for t in range(T):
            y_t, state_hf = run_hf(layer, x[:, t : t + 1], state_hf)
            ys_hf.append(y_t)
            y_t, state = mixer(x[:, t : t + 1].double(), state)
            ys.append(y_t)
        close(torch.cat(ys, 1), torch.cat(ys_hf, 1))
        close(state.S, state_hf.S)
        close(torch.cat(ys, 1), y_hf)


def test_gradients_match():
    layer = hf_layer()
    mixer = from_qwen3_5(layer, chunk_size=8)
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(2))
    y_hf, _ = run_hf(layer, x, None)
    y, _ = mixer(x)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    (y_hf * weights).sum().backward()
    (y * weights).sum().backward()
    pairs = [
        (mixer.qkv.weight, layer.in_proj_qkv.weight),
        (mixer.A_log, layer.A_log),
        (mixer.dt_bias, layer.dt_bias),
        (mixer.gate_b.weight, layer.in_proj_b.weight),
        (mixer.out_norm.weight, layer.norm.weight),
    ]
    for ours, theirs in pairs:
        assert (ours.grad - theirs.grad).abs().max() <= 1e-4 * theirs.grad.abs().max()


def test_the_old_epsilons_differ_on_small_outputs():
    """Machine-epsilon RMSNorm and F.normalize (lmsleep's values before): visible where a head's output is
    small (here one value head scaled down 1000x); the standard values match transformers."""
    layer = hf_layer()
    with torch.no_grad():
        v0 = 2 * layer.key_dim  # the first value head's rows of the qkv projection
        layer.in_proj_qkv.weight[v0 : v0 + layer.head_v_dim] *= 1e-3
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(4))
    old = from_qwen3_5(layer)
    old.qk_norm_eps = None
    old.out_norm.eps = None
    with torch.no_grad():
        y_hf, _ = run_hf(layer, x, None)
        close(from_qwen3_5(layer).double()(x.double())[0], y_hf)
        y_old, _ = old(x)
    assert (y_old - y_hf).abs().max() > 1e-3 * y_hf.abs().max()
