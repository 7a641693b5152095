"""nn.Modules with slow weights only; per-sequence state is passed in and out."""

from lmsleep.layers.attention import Attention, KVCache
from lmsleep.layers.block import Block
from lmsleep.layers.mlp import SwiGLU
from lmsleep.layers.rotary import Rotary

__all__ = ["Attention", "Block", "KVCache", "Rotary", "SwiGLU"]
