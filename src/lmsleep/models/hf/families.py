"""Which transformers model families lmsleep can sleep, and how to find their parts (docs/pretrained.md).

A family is supported when it was checked against transformers' own forward (``tests/hf``): its decoder
layers are called one by one with a per-call cache (:mod:`lmsleep.models.hf.cache`), so lmsleep must know
each layer's kind (attention: KV evicted at window boundaries; linear: a recurrent state ``S`` that crosses
them, the fast weights; stateless: an MLP or MoE block), where the final norm lives and whether attention
uses rotary positions. Anything else stops with one line that lists the supported families.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lmsleep.utils.config import ConfigError

# transformers' per-layer type names -> lmsleep's block kinds
ATTN, LINEAR, STATELESS = "attn", "linear", "stateless"
LAYER_KINDS = {
    "full_attention": ATTN,
    "sliding_attention": ATTN,
    "attention": ATTN,
    "linear_attention": LINEAR,
    "mamba": LINEAR,
    "mlp": STATELESS,
    "moe": STATELESS,
}

# Parameter groups (lmsleep.models.groups) of each kind's mixer, and of the parts of a decoder layer by their
# attribute name in the supported families: MIXER is the layer's mixer, whose group follows the layer's kind
# (Nemotron-H's `mixer` is attention, Mamba-2 or an MLP); a part named nowhere here has no group.
KIND_GROUPS = {ATTN: "attn", LINEAR: "ssm", STATELESS: "mlp"}
MIXER = "mixer"
LAYER_PARTS = {
    "self_attn": MIXER,  # qwen3_5, bamba, qwen3, llama attention
    "linear_attn": MIXER,  # qwen3_5 Gated DeltaNet
    "mamba": MIXER,  # bamba Mamba-2
    "mixer": MIXER,  # nemotron_h: every layer's one mixer
    "mlp": "mlp",
    "feed_forward": "mlp",  # bamba
    "input_layernorm": "norm",
    "post_attention_layernorm": "norm",
    "pre_ff_layernorm": "norm",  # bamba
    "norm": "norm",  # nemotron_h
}


@dataclass(frozen=True)
class Family:
    """How to drive one transformers family layer by layer.

    Args:
        name: the family as users call it.
        model_types: ``config.model_type`` values of its causal LMs.
        final_norm: attribute of the inner model (``hf.model``) holding the norm before the LM head.
        rotary: whether attention rotates q/k by position (``hf.model.rotary_emb``); NoPE models (Nemotron-H)
            have no positions at all.
        linear: what its linear layers are (for the docs and errors).
    """

    name: str
    model_types: tuple[str, ...]
    final_norm: str = "norm"
    rotary: bool = True
    linear: str = "none"


FAMILIES = (
    Family("qwen3_5", ("qwen3_5_text", "qwen3_5"), linear="Gated DeltaNet"),
    Family("nemotron_h", ("nemotron_h",), final_norm="norm_f", rotary=False, linear="Mamba-2"),
    Family("bamba", ("bamba",), final_norm="final_layernorm", linear="Mamba-2"),
    Family("qwen3", ("qwen3",)),
    Family("llama", ("llama",)),
)
SUPPORTED = ", ".join(f.name for f in FAMILIES)


def family_of(config: Any) -> Family:
    """The :class:`Family` of a transformers config, or a one-line :class:`ConfigError`."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ConfigError(
        f"model=hf: transformers family {model_type!r} is not supported; supported families: {SUPPORTED} "
        "(docs/pretrained.md says how to add one)"
    )


def layer_kinds(config: Any) -> list[str]:
    """One lmsleep kind (``attn``, ``linear``, ``stateless``) per decoder layer of ``config``."""
    n = int(config.num_hidden_layers)
    types = getattr(config, "layer_types", None)
    if types is None:  # attention-only families without a per-layer list (llama)
        return [ATTN] * n
    unknown = sorted({t for t in types if t not in LAYER_KINDS})
    if unknown:
        raise ConfigError(
            f"model=hf: layer types {unknown} of {config.model_type!r} are not supported; "
            f"known types: {sorted(LAYER_KINDS)}"
        )
    return [LAYER_KINDS[t] for t in types]


def native_sliding_window(config: Any, index: int) -> int | None:
    """The model's own sliding window of attention layer ``index`` (``sliding_attention``), else None."""
    types = getattr(config, "layer_types", None)
    if types is not None and types[index] == "sliding_attention":
        return int(config.sliding_window)
    return None
