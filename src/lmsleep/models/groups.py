"""Parameter groups: the names a training stage can give to a set of a model's parameters.

A stage of :class:`lmsleep.callbacks.SleepSchedule` (``train: [ssm]``, ``freeze: [embed]``) names groups, and
the *model* says which of its parameters belong to each: a model with a ``parameter_groups()`` method returns,
for every name of ``named_parameters()``, the set of groups that parameter is in (always ``all``). Both
:class:`lmsleep.models.HybridLM` (from its block names) and :class:`lmsleep.models.hf.HFSleepLM` (from the
transformers layers it wraps and the fast-weight blocks it inserted) answer it, so the paper's staged recipe
(the fast-weight layers alone under hard eviction, then everything) runs unchanged on either.

The groups: ``embed`` (the token embedding), ``head`` (the LM head; a tied one is in both), ``norm`` (the
norms before each mixer and MLP and the final one, not those inside a mixer), ``attn`` (attention mixers),
``ssm`` (fast-weight layers: lmsleep's own, inserted ones, and a wrapped hybrid's linear / Mamba-2 layers),
``mlp`` (MLP and MoE blocks) and ``all``.
"""

from __future__ import annotations

from torch import nn

GROUPS = ("embed", "head", "norm", "attn", "ssm", "mlp", "all")


def groups_of(net: nn.Module) -> dict[str, set[str]]:
    """Every parameter name of ``net`` -> its groups; a model without ``parameter_groups`` has only ``all``."""
    answer = getattr(net, "parameter_groups", None)
    if answer is None:
        return {name: {"all"} for name, _ in net.named_parameters()}
    return answer()
