"""A checkpoint's trained model and its run's tokenizer, for the commands that run no Trainer (``lmsleep
generate``, ``lmsleep export-hf``).

The CLI has already re-applied the run's stored data/model overrides (the plain ones, as for ``lmsleep test``:
:mod:`lmsleep.utils.checkpoint`), so ``cfg`` composes the model as it was trained. A text run's checkpoint
carries its tokenizer (saved by :class:`~lmsleep.data.TextDataModule`), which gives the vocabulary size without
reading the corpus. Any other run rebuilds its data first, as ``lmsleep test`` does, for the vocabulary size a
model such as ``model=hf``'s ``config`` takes from it.

A ``model=hf`` run's tokenizer is, first found first: ``tokenizer=PATH`` on the command line, the data's own
(``data.task.tokenizer`` of the GSM task rendered as text), the model folder's (``model.net.path``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lmsleep.data.tokenizer import tokenizer_from_dict
from lmsleep.utils.checkpoint import check_checkpoint, check_fits_model
from lmsleep.utils.config import ConfigError, build, build_data_and_model, check_kernel_backend, is_hf_net

TEXT_STATE = "TextDataModule"  # the key Lightning saves the text DataModule's state (its tokenizer) under


def is_hf_run(cfg: DictConfig) -> bool:
    """Whether ``cfg`` (with the run's overrides applied) builds a wrapped transformers model (``model=hf``)."""
    return is_hf_net(OmegaConf.select(cfg, "model.net", default=None))


def model_name(cfg: DictConfig) -> str:
    """The configured network as users know it: ``HybridLM``, ``Transformer``, ``from_hf``."""
    return str(OmegaConf.select(cfg, "model.net._target_", default="?")).rsplit(".", 1)[-1]


def checkpoint_of(cfg: DictConfig, command: str) -> dict[str, Any]:
    """The checked contents of ``cfg.ckpt_path`` (one line when it is missing or unreadable)."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.get("ckpt_path"):
        raise ConfigError(f"lmsleep {command} needs ckpt_path=PATH (a .ckpt file written by `lmsleep fit`)")
    return check_checkpoint(cfg.ckpt_path)


def text_tokenizer(ckpt: dict[str, Any]) -> Any | None:
    """The lmsleep tokenizer a text run's checkpoint carries, None for any other run."""
    saved = ckpt.get(TEXT_STATE)
    return (
        tokenizer_from_dict(saved["tokenizer"]) if isinstance(saved, dict) and "tokenizer" in saved else None
    )


def load_trained_model(cfg: DictConfig, ckpt: dict[str, Any]) -> Any:
    """The trained LightningModule of ``ckpt`` (eval mode, on ``cfg.device``, default cpu): built from ``cfg``
    with the vocabulary size of the run (a text run's tokenizer, else the rebuilt data's), its weights checked
    against the checkpoint's names and shapes, then loaded. A kernel backend that cannot run here stops first,
    as in ``fit`` and ``test``."""
    check_kernel_backend(cfg)
    tokenizer = text_tokenizer(ckpt)
    if tokenizer is not None:
        with open_dict(cfg):
            cfg.model.net.vocab_size = tokenizer.vocab_size
            cfg.model.metrics = "text"
        model = build(cfg.model, "model")
    else:
        _, model = build_data_and_model(cfg)
    check_fits_model(ckpt, model, cfg.ckpt_path)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(str(cfg.get("device", "cpu"))).eval()


def tokenizer_source(cfg: DictConfig) -> tuple[Path, str] | None:
    """Where a ``model=hf`` run's tokenizer is (a ``tokenizer.json`` or a folder) and which setting said so, or
    None when the run had none (task data on its own token ids, a model built from ``model.net.config``)."""
    from lmsleep.models.hf.load import TOKENIZER_FILES, has_tokenizer

    explicit = cfg.get("tokenizer")
    if explicit:
        path = Path(str(explicit)).expanduser()
        if not (path.is_file() or has_tokenizer(path)):
            raise ConfigError(
                f"tokenizer={explicit} is neither a tokenizer.json nor a folder with one of "
                f"{', '.join(TOKENIZER_FILES)}; pass a model folder's path or its tokenizer.json"
            )
        return path, "tokenizer"
    data = OmegaConf.select(cfg, "data.task.tokenizer", default=None)
    if data:  # the task checked it when the run started
        return Path(str(data)).expanduser(), "data.task.tokenizer"
    folder = OmegaConf.select(cfg, "model.net.path", default=None)
    if folder and has_tokenizer(str(folder)):
        return Path(str(folder)).expanduser(), "model.net.path"
    return None


def load_run_tokenizer(source: tuple[Path, str]) -> Any:
    """The transformers tokenizer at ``source`` (from :func:`tokenizer_source`)."""
    from lmsleep.models.hf.load import load_tokenizer

    path, where = source
    try:
        tokenizer = load_tokenizer(path)
    except Exception as exc:  # a file that is not a tokenizer.json, a folder transformers cannot read
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}={path} does not load as a tokenizer ({first})") from exc
    if tokenizer is None:
        raise ConfigError(f"{where}={path} holds no tokenizer files; pass tokenizer=PATH")
    return tokenizer


def check_tokenizer_fits(tokenizer: Any, source: tuple[Path, str], model: Any) -> None:
    """A tokenizer must not produce ids the wrapped model has no embedding for."""
    rows = model.net.hf.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        path, where = source
        raise ConfigError(
            f"the tokenizer at {where}={path} has {len(tokenizer)} token ids but the model only {rows}; "
            "pass the tokenizer the run was trained with (tokenizer=PATH)"
        )
