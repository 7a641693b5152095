"""Build an :class:`HFSleepLM` from a local model folder or a transformers config.

Nothing is downloaded: ``path`` must be a folder on disk (what ``save_pretrained`` writes, or a hub snapshot
the user fetched), read with ``local_files_only``. ``trust_remote_code`` is False unless the caller sets it,
and it is passed to transformers only then; remote-code families are outside the supported list anyway, so
it matters only for a supported family whose folder ships its own code.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from lmsleep.models.hf.families import family_of
from lmsleep.models.hf.model import HFSleepLM
from lmsleep.utils.config import ConfigError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _dtype(dtype: str | torch.dtype | None) -> Any:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"model.net.dtype={dtype!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_hf_model(
    path: str | Path | None = None,
    config: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> torch.nn.Module:
    """A transformers causal LM from exactly one of ``path`` (a local folder) or ``config`` (a dict with
    ``model_type``, e.g. ``{"model_type": "qwen3", "hidden_size": 64, ...}``: random weights).

    The family is checked before any weights load; an unsupported one stops with one line.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = {"trust_remote_code": True} if trust_remote_code else {}
    if (path is None) == (config is None):
        raise ConfigError(
            "model=hf: set exactly one of model.net.path (a local model folder) or model.net.config"
        )
    if path is not None:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"model.net.path={str(path)!r} is not a model folder (no config.json); lmsleep downloads nothing: "
                "pass a folder written by save_pretrained or a hub download you made"
            )
        cfg = AutoConfig.from_pretrained(folder, local_files_only=True, **remote)
        family_of(cfg)
        return AutoModelForCausalLM.from_pretrained(
            folder,
            config=cfg,
            local_files_only=True,
            dtype=_dtype(dtype),
            attn_implementation=attn_implementation,
            **remote,
        )
    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ConfigError("model.net.config needs a model_type (e.g. qwen3_5_text, nemotron_h, qwen3)")
    try:
        cfg = AutoConfig.for_model(model_type, **config)
    except ValueError as exc:  # an unknown model_type
        raise ConfigError(f"model.net.config: {str(exc).splitlines()[0]}") from None
    family_of(cfg)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation, **remote)
    torch_dtype = _dtype(dtype)
    return model if torch_dtype in (None, "auto") else model.to(torch_dtype)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def has_tokenizer(folder: str | Path) -> bool:
    """Whether ``folder`` holds one of :data:`TOKENIZER_FILES` (what :func:`load_tokenizer` can read)."""
    where = Path(folder).expanduser()
    return any((where / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any | None:
    """The tokenizer of a model folder, or of a bare ``tokenizer.json`` (the file or a folder holding only
    that); None when the folder ships none.

    A folder with ``tokenizer_config.json`` (or a sentencepiece ``tokenizer.model``) loads with
    ``AutoTokenizer``, as transformers would. A bare ``tokenizer.json`` loads as it is
    (``PreTrainedTokenizerFast``): beside a ``config.json`` without ``tokenizer_config.json``, ``AutoTokenizer``
    would pick the family's tokenizer class, which rebuilds the vocabulary from that file in its own way.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    where = Path(path).expanduser()
    if where.is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(where))
    if not has_tokenizer(where):
        return None
    if not (where / "tokenizer_config.json").is_file() and not (where / "tokenizer.model").is_file():
        return PreTrainedTokenizerFast(tokenizer_file=str(where / "tokenizer.json"))
    remote = {"trust_remote_code": True} if trust_remote_code else {}
    return AutoTokenizer.from_pretrained(where, local_files_only=True, **remote)


DECAY_INITS = ("mamba2", "transformers")


def init_decays(model: torch.nn.Module) -> int:
    """Re-draw the decay parameters of every linear layer of ``model`` (modules with ``A_log`` and
    ``dt_bias``: Gated DeltaNet, Mamba-2) as Mamba-2 and flash-linear-attention initialise them, and as
    lmsleep's own fast-weight layers do: ``A`` uniform in [1, 16], ``dt = softplus(dt_bias)`` log-uniform in
    [1e-3, 1e-1], so a head's per-token log decay ``-A dt`` starts between -1.6 and -0.001 (a memory of one to
    thousands of tokens). transformers' Qwen3.5 init sets ``dt_bias = 1``, a log decay of -1.3 A per token
    with A up to 16: most heads forget within a token, so little crosses a window and a sleep pass changes
    little until training slows them, which short runs do not (results/pretrained_demo/LOG.md). Returns the
    layers re-drawn."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            A_log, dt_bias = getattr(module, "A_log", None), getattr(module, "dt_bias", None)
            if not isinstance(A_log, torch.nn.Parameter) or not isinstance(dt_bias, torch.nn.Parameter):
                continue
            A_log.copy_(torch.empty_like(A_log, dtype=torch.float32).uniform_(1, 16).log())
            dt = torch.empty_like(dt_bias, dtype=torch.float32).uniform_(math.log(1e-3), math.log(1e-1)).exp()
            dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus
            count += 1
    return count


def from_hf(
    path: str | Path | None = None,
    config: dict[str, Any] | None = None,
    loop: Any = "all",
    insert: Any = None,
    insert_ssm: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    vocab_size: int | None = None,
    decay_init: str = "mamba2",
) -> HFSleepLM:
    """:class:`HFSleepLM` around :func:`load_hf_model` (arguments as there and as :class:`HFSleepLM`).

    ``vocab_size`` is the data's (``model=hf`` fills it in): a ``config`` without one takes it; a loaded
    model must have at least that many token ids. ``decay_init`` applies to a model built from a ``config``
    (random weights) only: ``mamba2`` re-draws its linear layers' decays (:func:`init_decays`),
    ``transformers`` keeps transformers' own init. A loaded model keeps its trained weights.
    """
    if decay_init not in DECAY_INITS:
        raise ConfigError(f"model.net.decay_init={decay_init!r} is not one of {DECAY_INITS}")
    if config is not None and vocab_size is not None:
        config = {"vocab_size": int(vocab_size), **dict(config)}
    hf = load_hf_model(path, config, trust_remote_code, dtype, attn_implementation)
    if config is not None and decay_init == "mamba2":
        init_decays(hf)
    model_vocab = hf.get_input_embeddings().num_embeddings
    if vocab_size is not None and int(vocab_size) > model_vocab:
        raise ConfigError(
            f"the data has {vocab_size} token ids but the model only {model_vocab}; "
            "tokenise the data with the model's own tokenizer"
        )
    # from_pretrained hands the model back in eval mode; an nn.Module starts in train mode, and Lightning keeps
    # the modes it finds (dropout would stay off in training)
    return HFSleepLM(hf, loop=loop, insert=insert, insert_ssm=insert_ssm).train()
