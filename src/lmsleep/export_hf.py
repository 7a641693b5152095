"""``export_hf(cfg)``: a ``model=hf`` checkpoint back to a transformers model folder (``lmsleep export-hf``,
docs/pretrained.md).

The run's model is rebuilt as ``lmsleep generate`` does (:mod:`lmsleep.restore`), its trained weights loaded,
and the wrapped transformers model written with its own ``save_pretrained``: ``AutoModelForCausalLM
.from_pretrained(out)`` loads it with no lmsleep installed. The run's tokenizer goes beside it (a model folder's
tokenizer files copied as they are; a bare ``tokenizer.json`` with the ``tokenizer_config.json`` that makes
transformers read it as it is), and ``lmsleep.json`` records the sleep settings the weights were trained with
(window, passes, eviction, the looped blocks), which transformers ignores: it runs the folder as a plain model,
one full forward without windows or sleep.

A model with inserted fast-weight blocks (``model.net.insert``, the Ouro recipe) is no transformers
architecture, so it is refused; so is a checkpoint of lmsleep's own models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmsleep.restore import (
    check_tokenizer_fits,
    checkpoint_of,
    is_hf_run,
    load_run_tokenizer,
    load_trained_model,
    model_name,
    text_tokenizer,
    tokenizer_source,
)
from lmsleep.utils.config import ConfigError, check_writable_dir

SLEEP_FILE = "lmsleep.json"
# what a model folder's tokenizer may consist of (transformers' fast, sentencepiece and BPE files, templates),
# copied as they are (models/hf/load.py's TOKENIZER_FILES are the ones that say a folder has a tokenizer)
COPIED_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def check_out(cfg: DictConfig) -> Path:
    """``cfg.out``: a new or empty folder, or any folder with ``overwrite=true`` (nothing is created here)."""
    out = None if OmegaConf.is_missing(cfg, "out") else cfg.get("out")
    if out is None or str(out) == "":
        raise ConfigError("lmsleep export-hf needs out=DIR (the folder to write the transformers model to)")
    folder = Path(str(out)).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"out={out} is a file, not a folder; pass a folder path")
    if folder.is_dir() and any(folder.iterdir()) and not cfg.get("overwrite", False):
        raise ConfigError(
            f"out={out} exists and is not empty; pass an empty or new folder, or overwrite=true to write over "
            "its files"
        )
    return folder


def copy_tokenizer(source: tuple[Path, str], tokenizer: Any, out: Path) -> list[str]:
    """Write the run's tokenizer into ``out``; returns the files written."""
    path, _ = source
    if path.is_dir() and (path / "tokenizer_config.json").is_file():  # a model folder's tokenizer, as it is
        names = [n for n in COPIED_TOKENIZER_FILES if (path / n).is_file()]
        for name in names:
            if (out / name).resolve() != (path / name).resolve():  # out may be the model folder itself
                shutil.copyfile(path / name, out / name)
        return names
    # a bare tokenizer.json: with a tokenizer_config.json naming no family, transformers reads it as it is
    return sorted(Path(f).name for f in tokenizer.save_pretrained(out) if Path(f).parent == out)


def export_hf(cfg: DictConfig) -> dict[str, Any]:
    """Write the trained transformers model of ``cfg.ckpt_path`` (and its tokenizer) to ``cfg.out``.

    Returns ``{"out", "family", "parameters", "dtype", "tokenizer_files", "tokenizer_from"}``.
    """
    out = check_out(cfg)
    ckpt = checkpoint_of(cfg, "export-hf")
    if not is_hf_run(cfg):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is a checkpoint of lmsleep's own {model_name(cfg)}, not of a model=hf run; "
            "export-hf writes wrapped transformers models only (load this one with lmsleep: lmsleep test / "
            "generate ckpt_path=...)"
        )
    from lmsleep.models.hf.insert import asks_for_insertions  # the hf extra: imported once a run needs it

    insert = OmegaConf.select(cfg, "model.net.insert", default=None)
    if asks_for_insertions(insert):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} has inserted fast-weight blocks (model.net.insert={insert}), which no "
            "transformers architecture has, so AutoModelForCausalLM could not load them; load it with lmsleep "
            "instead: from_hf(path=..., insert=..., insert_ssm=...) and the checkpoint's weights, or lmsleep "
            "test / generate ckpt_path=..."
        )
    text = text_tokenizer(ckpt) is not None  # lmsleep's own text tokenizer: not a transformers one
    source = None if text else tokenizer_source(cfg)
    tokenizer = None if source is None else load_run_tokenizer(source)
    check_writable_dir(out, "out")  # created here, once the checkpoint is known to be exportable
    model = load_trained_model(cfg, ckpt)  # on cfg.device: cpu unless the user says otherwise
    del ckpt
    if tokenizer is not None:
        check_tokenizer_fits(tokenizer, source, model)
    net = model.net
    net.hf.save_pretrained(out)
    files = copy_tokenizer(source, tokenizer, out) if tokenizer is not None else []
    sleep = {
        "sleep": model.sleep.to_dict(),
        "loop": f"{net.loop_range.start}:{net.loop_range.stop}",
        "note": "transformers runs this folder as a plain model; with sleep: lmsleep.models.hf.from_hf(path=DIR, "
        "loop=loop) and Stream / forward with SleepConfig(**sleep)",
    }
    (out / SLEEP_FILE).write_text(json.dumps(sleep, indent=2) + "\n")
    weights = next(net.hf.parameters())
    return {
        "out": str(out),
        "family": net.family.name,
        "parameters": sum(p.numel() for p in net.hf.parameters()),
        "dtype": str(weights.dtype).removeprefix("torch."),
        "tokenizer_files": files,
        "tokenizer_from": "the run's text tokenizer is lmsleep's own: none written"
        if text
        else (
            "none (the run had none; pass tokenizer=PATH)" if source is None else f"{source[1]}={source[0]}"
        ),
    }
