"""Helpers shared by the entry points: building objects from the config, checking inputs early."""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("lmsleep")

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"

# ``${lmsleep.pid:}`` in configs/hydra: run folders are ``<time>_<pid>``, unique even for runs started in the
# same second. (DDP ranks launched by Lightning are handed rank 0's folder, so the pid is rank 0's.)
OmegaConf.register_new_resolver("lmsleep.pid", lambda: str(os.getpid()), replace=True)


class ConfigError(ValueError):
    """A configuration or input that cannot work; the message says what was wrong and how to fix it."""


def config_dir() -> str:
    if not CONFIG_DIR.is_dir():
        raise ConfigError(
            f"lmsleep's configs/ folder was not found at {CONFIG_DIR}; install lmsleep from a clone with "
            "`pip install -e .` so the configs stay beside the package"
        )
    return str(CONFIG_DIR)


def instantiate_group(cfg: DictConfig | None, kind: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (None or empty -> [])."""
    objects = []
    for name, conf in (cfg or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info(f"Instantiating {kind} <{conf._target_}>")
            objects.append(instantiate(conf))
        elif conf is not None:
            raise ConfigError(f"{kind} entry {name!r} has no _target_; every {kind} entry must name a class")
    return objects


def check_checkpoint(path: str | None, what: str = "ckpt_path") -> dict[str, Any] | None:
    """Load a Lightning checkpoint to check it before any work starts; returns its contents (None if no path).

    Loads with ``weights_only=True``: a checkpoint that holds pickled Python objects (which could run code
    when loaded) is refused, as every load in lmsleep does.
    """
    if path is None:
        return None
    file = Path(str(path)).expanduser()
    if file.is_dir():
        inside = sorted(p.name for p in file.glob("*.ckpt")) or sorted(
            str(p.relative_to(file)) for p in file.glob("*/*.ckpt")
        )
        hint = f" (it holds {', '.join(inside[:4])})" if inside else ""
        raise ConfigError(f"{what}={path} is a directory{hint}; pass the path of a .ckpt file inside it")
    if not file.is_file():
        raise ConfigError(
            f"{what}={path} does not exist; pass the path of a .ckpt file written by `lmsleep fit`"
        )
    if file.stat().st_size == 0:
        raise ConfigError(
            f"{what}={path} is an empty file (0 bytes; an interrupted copy or save?); pass a complete .ckpt file"
        )
    try:
        # mmap: tensors stay on disk, so checking (and reading the stored overrides) costs no full read;
        # Lightning loads the checkpoint for real afterwards.
        ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{what}={path} holds pickled Python objects, which lmsleep does not load (loading them could run "
            "code); checkpoints written by this lmsleep hold only tensors and plain containers"
        ) from exc
    except Exception as exc:  # any unreadable file is the same user error
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(
            f"{what}={path} is not a readable checkpoint ({type(exc).__name__}: {first_line})"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{what}={path} is not a Lightning checkpoint (it holds no 'state_dict')")
    return ckpt


def check_fits_model(ckpt: dict[str, Any] | None, model: torch.nn.Module, path: str) -> None:
    """Check that a checkpoint's weights have the names and shapes of ``model``'s, before any work starts."""
    if ckpt is None:
        return
    mine = model.state_dict()
    theirs = ckpt["state_dict"]
    missing = [k for k in mine if k not in theirs]
    extra = [k for k in theirs if k not in mine]
    shapes = [
        f"{k} is {list(theirs[k].shape)} there but {list(mine[k].shape)} here"
        for k in mine
        if k in theirs and tuple(theirs[k].shape) != tuple(mine[k].shape)
    ]
    if missing or extra or shapes:
        problems = shapes[:2] + [f"{k} is missing there" for k in missing[:2]]
        problems += [f"{k} is not in this model" for k in extra[:2]]
        raise ConfigError(
            f"ckpt_path={path} does not fit the configured model ({'; '.join(problems)}"
            f"{', ...' if len(missing) + len(extra) + len(shapes) > len(problems) else ''}); "
            "drop the model overrides that differ from the run that wrote it (its overrides are re-applied "
            "unless you pass others)"
        )


# Trainer settings that Lightning compares with numbers: a string there fails deep inside Lightning with a
# message that does not name the key.
TRAINER_INTS = (
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "num_nodes",
    "log_every_n_steps",
    "check_val_every_n_epoch",
    "num_sanity_val_steps",
    "accumulate_grad_batches",
    "reload_dataloaders_every_n_epochs",
)


def build(conf: DictConfig, key: str, **kwargs: Any) -> Any:
    """``instantiate(conf, **kwargs)``, with a value the object rejects reported as a one-line :class:`ConfigError`
    naming the config key (``data``, ``model``, ``trainer``...) instead of a stack trace."""
    try:
        return instantiate(conf, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, (ValueError, TypeError)):  # Lightning's MisconfigurationException is one
            found = re.search(r"full_key: (\S+)", str(exc))
            where, message = found.group(1) if found else key, str(cause)
            raise ConfigError(message if message.startswith(f"{where}.") else f"{where}: {message}") from exc
        raise


def check_trainer(cfg: DictConfig) -> None:
    """The trainer settings that must be integers are (``trainer.max_steps=abc`` fails here, by name)."""
    for name in TRAINER_INTS:
        value = cfg.trainer.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"trainer.{name}={value!r} must be an integer (e.g. trainer.{name}=1000)")


def check_writable_dir(path: str | Path, what: str) -> None:
    """Create the folder ``path`` (and its parents) if needed and check that files can be written in it, so
    a log folder that is read-only, a file or cannot be created stops the run before any work."""
    folder = Path(str(path)).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError as exc:
        raise ConfigError(f"{what}={path} is a file, not a folder; pass a folder path") from exc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{what}={path} cannot be written ({reason}: {exc.filename or folder}); pass a writable folder"
        ) from exc


def build_data_and_model(cfg: DictConfig) -> tuple[Any, Any]:
    """The DataModule, then the LightningModule with the data's vocabulary size and depth axis filled in."""
    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule = build(cfg.data, "data")
    with open_dict(cfg):
        cfg.model.net.vocab_size = datamodule.vocab_size
        cfg.model.depth_name = datamodule.task.depth_name
    log.info(f"Instantiating model <{cfg.model._target_}>")
    model = build(cfg.model, "model")
    return datamodule, model


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config flattened to ``a/b/c: scalar`` for TensorBoard's HPARAMS tab."""
    container = OmegaConf.to_container(cfg, resolve=True)
    keep = {
        k: container[k] for k in ("data", "model", "trainer", "seed", "task_name", "tags") if k in container
    }

    def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(obj, dict):
            out: dict[str, Any] = {}
            for k, v in obj.items():
                if k == "_target_":
                    continue
                out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
            return out
        if isinstance(obj, (int, float, str, bool)) or obj is None:
            return {prefix: "null" if obj is None else obj}
        return {prefix: str(obj)}

    return flatten(keep)
