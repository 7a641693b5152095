"""Helpers shared by the entry points: building objects from the config, checking inputs early."""

from __future__ import annotations

import logging
import os
import re
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("lmsleep")

# A wheel or `pip install .` ships the configs inside the package (lmsleep/configs); a source checkout and an
# editable install keep them in the repository's top-level configs/ folder.
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
SOURCE_CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
# Folders of the user's own configs (os.pathsep-separated), searched after the package's.
USER_CONFIG_ENV = "LMSLEEP_CONFIG_DIR"

# ``${lmsleep.pid:}`` in configs/hydra: run folders are ``<time>_<pid>``, unique even for runs started in the
# same second. (DDP ranks launched by Lightning are handed rank 0's folder, so the pid is rank 0's.)
OmegaConf.register_new_resolver("lmsleep.pid", lambda: str(os.getpid()), replace=True)
# ``${lmsleep.stdlib:}``: the folder of the running Python's standard library, a corpus every machine has
# (configs/experiment/text_stdlib_*.yaml).
OmegaConf.register_new_resolver("lmsleep.stdlib", lambda: sysconfig.get_paths()["stdlib"], replace=True)


# model=hf's net: a transformers causal LM wrapped by lmsleep (lmsleep.models.hf.from_hf).
HF_NET_TARGET = "lmsleep.models.hf.from_hf"


def is_hf_net(net: Any) -> bool:
    """Whether a run's ``model.net`` config (a dict or DictConfig) builds a wrapped transformers model."""
    return str((net or {}).get("_target_", "")) == HF_NET_TARGET


class ConfigError(ValueError):
    """A configuration or input that cannot work; the message says what was wrong and how to fix it."""


class MissingExtraError(ImportError):
    """An optional package a config needs is not installed; the message is the line that installs it."""


REQUIRED = "${lmsleep.required:"


def _required(*hint: str) -> Any:
    raise ConfigError(f"a required setting was not given ({', '.join(hint)}); pass it on the command line")


# ``key: ${lmsleep.required:what to pass}`` in a recipe marks a value the user must give (a model folder, a
# tokenizer). OmegaConf's own ``???`` cannot: merged over a group's default (``path: null``) it is dropped.
# :func:`check_required` names every such key before any work; resolving one anyway raises.
OmegaConf.register_new_resolver("lmsleep.required", _required, replace=True)


# Config names of earlier releases -> today's (configs laid out by purpose: recipes, paper/, study/). The old
# names keep working for one release, with a one-line notice; checkpoints that stored them keep testing.
RENAMED: dict[str, dict[str, str]] = {
    "experiment": {
        "rule110_sleep_paper": "paper/rule110_sleep",
        "depo_sleep_paper": "paper/depo_sleep",
        "gsm_inf_sleep_paper": "paper/gsm_inf_sleep",
        "study_rule110_depth": "study/rule110_depth",
        "study_rule110_sleep": "study/rule110_sleep",
        "study_rule110_more_tokens": "study/rule110_sleep_more_tokens",
        "study_rule110_transformer": "study/rule110_sleep_transformer",
        "study_depo_sleep": "study/depo_sleep",
        "study_gsm_sleep": "study/gsm_inf_sleep",
        "text_stdlib_sleep": "study/text",
        "text_stdlib_sliding": "study/text_sliding",
        "text_stdlib_transformer": "study/text_transformer",
    }
}


def with_current_names(args: list[str], notice: bool = True) -> list[str]:
    """``args`` with config-group choices of :data:`RENAMED` replaced by today's names (a notice on stderr
    for each, unless ``notice`` is false)."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        new = RENAMED.get(key.lstrip("+"), {}).get(value) if sep else None
        if new is not None:
            if notice:
                print(
                    f"lmsleep: {key}={value} is now {key}={new}; the old name goes in the next release",
                    file=sys.stderr,
                )
            arg = f"{key}={new}"
        out.append(arg)
    return out


def per_device_batch(global_batch: int, devices: Any, num_nodes: Any = 1) -> int:
    """``${per_device_batch:<global>,${trainer.devices},${trainer.num_nodes}}``: the per-device batch that
    makes a global batch across all ranks (Lightning's ``data.batch_size`` is per device under DDP).

    ``devices`` is an int, a list of device ids, or ``auto``/``-1`` (all visible GPUs, else 1).
    """
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        devices = int(devices)
    if devices in ("auto", -1):
        devices = max(1, torch.cuda.device_count())
    count = int(devices) if isinstance(devices, int) else len(devices)
    world = count * int(num_nodes)
    if world < 1 or int(global_batch) % world:
        raise ConfigError(
            f"global batch {global_batch} does not split evenly over {world} devices "
            f"(trainer.devices={devices}, trainer.num_nodes={num_nodes}); choose a device count that divides "
            "it or set data.batch_size (per device) yourself"
        )
    return int(global_batch) // world


if not OmegaConf.has_resolver("per_device_batch"):
    OmegaConf.register_new_resolver("per_device_batch", per_device_batch)


def config_dir() -> str:
    """lmsleep's own config folder: inside the installed package, else the source checkout's configs/."""
    for folder in (PACKAGED_CONFIG_DIR, SOURCE_CONFIG_DIR):
        if (folder / "fit.yaml").is_file():
            return str(folder)
    raise ConfigError(
        f"lmsleep's configs were found neither in the package ({PACKAGED_CONFIG_DIR}) nor in a source "
        f"checkout ({SOURCE_CONFIG_DIR}); reinstall lmsleep (`pip install lmsleep` or `pip install -e .`)"
    )


def user_config_dirs() -> list[str]:
    """The folders named by ``LMSLEEP_CONFIG_DIR`` (absolute paths); each must exist."""
    folders = []
    for entry in os.environ.get(USER_CONFIG_ENV, "").split(os.pathsep):
        if not entry.strip():
            continue
        folder = Path(entry).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(
                f"{USER_CONFIG_ENV} names {entry}, which is not a folder; point it at a folder of configs laid "
                "out like lmsleep's (experiment/NAME.yaml, data/NAME.yaml, ...)"
            )
        folders.append(str(folder))
    return folders


def with_user_searchpath(args: list[str]) -> list[str]:
    """``args`` with the ``LMSLEEP_CONFIG_DIR`` folders added to Hydra's ``hydra.searchpath`` (after the
    entries of a ``hydra.searchpath=[...]`` override in ``args``, without repeating one)."""
    folders = [f"file://{f}" for f in user_config_dirs()]
    if not folders:
        return args
    given: list[str] = []
    rest = []
    for arg in args:
        if arg.startswith("hydra.searchpath="):
            value = OverridesParser.create().parse_override(arg).value()
            if not isinstance(value, list):
                raise ConfigError(
                    f"{arg}: hydra.searchpath must be a list, e.g. hydra.searchpath=[file:///my/configs]"
                )
            given = [str(v) for v in value]
        else:
            rest.append(arg)
    entries = given + [f for f in folders if f not in given]
    quoted = ",".join("'" + e.replace("'", "\\'") + "'" for e in entries)
    # First: Hydra's parser takes overrides only before a flag such as `--cfg job`.
    return [f"hydra.searchpath=[{quoted}]", *rest]


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
        while cause is not None:  # hydra wraps the import's error in its own ImportError
            if isinstance(cause, MissingExtraError):  # its install line, not hydra's trace
                raise ConfigError(str(cause)) from exc
            cause = cause.__cause__
        raise


def missing_keys(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, what to pass)`` of each value of ``node`` left at ``???`` or at
    ``${lmsleep.required:...}``, depth first."""
    found = []
    for key, value in node.items_ex(resolve=False):
        name = f"{prefix}{key}"
        if name == "hydra":
            continue
        child = node._get_node(key)
        if OmegaConf.is_missing(node, key):
            found.append((name, ""))
        elif isinstance(child, DictConfig):
            found += missing_keys(child, name + ".")
        elif isinstance(value, str) and value.startswith(REQUIRED) and value.endswith("}"):
            found.append((name, value[len(REQUIRED) : -1].strip().strip("'\"")))
    return found


def check_required(cfg: DictConfig) -> None:
    """Every value a config marks as required (``${lmsleep.required:...}`` or ``???``) was given, else one
    line naming each and what to pass: a recipe that needs a model folder or a tokenizer says so before any
    work, not as a confusing failure later."""
    missing = missing_keys(cfg)
    if missing:
        wanted = "; ".join(f"pass {key}={hint or 'VALUE'}" for key, hint in missing)
        keys = ", ".join(key for key, _ in missing)
        raise ConfigError(f"{keys} {'is' if len(missing) == 1 else 'are'} required: {wanted}")


def check_trainer(cfg: DictConfig) -> None:
    """The trainer settings that must be integers are (``trainer.max_steps=abc`` fails here, by name)."""
    for name in TRAINER_INTS:
        value = cfg.trainer.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"trainer.{name}={value!r} must be an integer (e.g. trainer.{name}=1000)")


def check_kernel_backend(cfg: DictConfig) -> None:
    """An explicit kernel backend (``model.net.ssm.backend=fla`` or ``mamba_ssm``) must be the rule's kernel,
    importable, and have a GPU to run on; otherwise stop before any work, with the install command.
    ``auto`` (the default) never stops: it takes the kernel on CUDA when it imports, else the torch path."""
    from lmsleep.ops.backend import INSTALL_HINT, KERNELS, TORCH_BACKENDS, kernel_import_error
    from lmsleep.ops.update_rule import UPDATE_RULES

    net = cfg.get("model", {}).get("net") or {}
    ssm = net.get("ssm") or {}
    backend, rule = str(ssm.get("backend", "auto")), str(ssm.get("rule", "gated_delta"))
    if backend == "auto" or backend in TORCH_BACKENDS or "ssm" not in str(net.get("layout", "")):
        return
    spec = KERNELS.get(UPDATE_RULES[rule].op) if rule in UPDATE_RULES else None
    if spec is None or backend != spec.backend:
        kernel = f"{spec.backend!r}" if spec else "none"
        raise ConfigError(
            f"model.net.ssm.backend={backend} is not a kernel of rule {rule!r} (its kernel: {kernel}); use "
            "model.net.ssm.backend=auto, chunked or recurrent, or the rule's kernel"
        )
    err = kernel_import_error(UPDATE_RULES[rule].op)
    if err is not None:
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(
            f"model.net.ssm.backend={backend} needs the {spec.package} package, which does not import here "
            f"({type(err).__name__}: {first_line}); {INSTALL_HINT} (docs/gpu.md), or use "
            "model.net.ssm.backend=auto"
        )
    if cfg.get("trainer", {}).get("accelerator") == "cpu" or not torch.cuda.is_available():
        raise ConfigError(
            f"model.net.ssm.backend={backend} is a GPU kernel and this run has no CUDA device "
            f"(trainer.accelerator={cfg.get('trainer', {}).get('accelerator')}, "
            f"CUDA available: {torch.cuda.is_available()}); use trainer=gpu on a GPU machine, or "
            "model.net.ssm.backend=auto (the torch chunked path on CPU)"
        )


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
    """The DataModule, then the LightningModule with the data's vocabulary size and depth axis (tasks) or
    language-model metrics (text) filled in."""
    sleep = OmegaConf.to_container(cfg.model.get("sleep") or {}, resolve=False)
    if "window" not in cfg.data and "${data.window}" in str(sleep.get("window")):
        raise ConfigError(
            "the data config has no `window`, which model.sleep.window follows: every data config defines "
            "data.window (a task's: `window: ${.task.window}`); add it, or set model.sleep.window"
        )
    log.info(f"Instantiating datamodule <{cfg.data._target_}>")
    datamodule = build(cfg.data, "data")
    with open_dict(cfg):
        cfg.model.net.vocab_size = datamodule.vocab_size
        task = getattr(datamodule, "task", None)
        if task is not None:
            cfg.model.depth_name = task.depth_name
        else:  # text: loss and bits per byte by window instead of answer accuracy by depth
            cfg.model.metrics = datamodule.metrics
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
