"""Sleep for pretrained transformers models (docs/pretrained.md). Needs the ``hf`` extra (transformers)."""

from lmsleep.utils.config import MissingExtraError

try:
    import transformers  # noqa: F401
except ImportError as exc:  # say which extra, not only which module: model=hf is where users meet it
    raise MissingExtraError(
        "model=hf (lmsleep.models.hf) needs transformers, which is not installed: pip install 'lmsleep[hf]'"
    ) from exc

from lmsleep.models.hf.cache import HFKV, WindowCache
from lmsleep.models.hf.families import FAMILIES, SUPPORTED, family_of
from lmsleep.models.hf.insert import FastWeightBlock
from lmsleep.models.hf.load import from_hf, load_hf_model, load_tokenizer
from lmsleep.models.hf.model import HFSleepLM

__all__ = [
    "FAMILIES",
    "HFKV",
    "SUPPORTED",
    "FastWeightBlock",
    "HFSleepLM",
    "WindowCache",
    "family_of",
    "from_hf",
    "load_hf_model",
    "load_tokenizer",
]
