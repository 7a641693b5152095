"""Fast-weight update ops: pure tensor functions with a torch reference and optional GPU kernels.

``gated_delta_rule`` (Gated DeltaNet, flash-linear-attention layout) and ``ssd`` (Mamba-2, Eq. 3 in
docs/design.md#fast-weights-and-update-rules, mamba-ssm layout), both ``(inputs..., initial_state=None,
output_final_state=False, backend="auto") -> (out, final_state)``, and the short causal convolution before
them, ``short_conv``, in the same convention. Kernel packages are imported only when a kernel backend is used.
"""

from .backend import BackendUnavailableError
from .gated_delta_rule import gated_delta_rule
from .short_conv import short_conv
from .ssd import ssd

__all__ = ["BackendUnavailableError", "gated_delta_rule", "short_conv", "ssd"]
