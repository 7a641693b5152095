"""Checkpoints from the outside world: finding them, checking them before any work, and the overrides they carry.

A checkpoint written by ``lmsleep fit`` stores the overrides its run was started with, so that ``lmsleep test``,
``lmsleep generate`` and a resumed ``lmsleep fit`` rebuild the same data and model. Those overrides are data
from whoever wrote the file, and Hydra's ``instantiate`` calls any ``_target_`` a config names: re-applying a
stored ``+model.net.evil={_target_:shutil.copyfile,...}`` would run code. So stored overrides are re-applied
only when each one is a *plain setting* (:func:`check_stored_overrides`); anything else stops before any
instantiation, unless the user says ``trust_checkpoint=true`` for a checkpoint they wrote themselves.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import Container, OmegaConf

from lmsleep.utils.config import ConfigError, config_dir, with_current_names, with_user_searchpath

# Hydra's instantiation keys: a config node that holds one of them is code, not a setting.
HYDRA_CALL_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
# Keys a checkpoint may never set, even with trust_checkpoint=true: the user must say them on the command line.
NEVER_STORED = ("trust_remote_code",)
# ``${name:...}`` calls a resolver (environment, files, the config's own resolvers); ``${a.b}`` is a reference.
RESOLVER = re.compile(r"\$\{\s*[\w.\-]+\s*:")
REFERENCE = re.compile(r"\$\{\s*([\w.\-\[\]]+)\s*\}")
TRUST_HINT = (
    "if you wrote this checkpoint yourself, pass trust_checkpoint=true; otherwise pass the settings you want "
    "by hand (your own overrides replace the stored ones of the same key)"
)


# --- finding and loading ---------------------------------------------------------------------------------
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


def newest_checkpoint(run_dirs: list[Path]) -> Path | None:
    """The newest ``.ckpt`` (by modification time) that ``lmsleep fit`` saved in any of ``run_dirs``: the
    ModelCheckpoint files under ``checkpoints/`` and Lightning's ``hpc_ckpt_*.ckpt`` of a preempted run."""
    found = [p for r in run_dirs for p in (*r.glob("checkpoints/*.ckpt"), *r.glob("hpc_ckpt_*.ckpt"))]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def last_value(args: list[str], key: str) -> str | None:
    """The value of the last ``key=value`` (or ``+key=value``) in ``args``, None if there is none."""
    values = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith(f"{key}=")]
    return values[-1] if values else None


def find_last_checkpoint(args: list[str]) -> Path:
    """The newest ``.ckpt`` (by modification time) of the run folder ``hydra.run.dir`` if given, else of every
    run of the task the other arguments compose to (``<paths.log_dir>/<task_name>/runs/*/``)."""
    run_dir = last_value(args, "hydra.run.dir")
    if run_dir is not None:
        roots, where = [Path(run_dir)], f"hydra.run.dir={run_dir}"
    else:
        from hydra import compose, initialize_config_dir

        rest = [a for a in args if not a.startswith(("ckpt_path=", "hydra.", "-"))]
        try:
            with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
                cfg = compose("fit", overrides=rest)
        except Exception as exc:  # a sweep's a,b values, an unknown config name: not one run to look up
            raise ConfigError(
                f"ckpt_path=last: cannot tell which runs to look in ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); pass ckpt_path=PATH"
            ) from exc
        base = Path(str(cfg.paths.log_dir)) / str(cfg.task_name) / "runs"
        roots, where = sorted(base.glob("*")), str(base)
    found = newest_checkpoint(roots)
    if found is None:
        raise ConfigError(
            f"ckpt_path=last: no checkpoint found under {where}; pass the experiment (or task_name) of the run "
            "to resume, ckpt_path=PATH, or no ckpt_path to start a new run"
        )
    return found


# --- does it fit what is configured -----------------------------------------------------------------------
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


def check_fits_data(ckpt: dict[str, Any] | None, datamodule: Any, path: str) -> None:
    """Check that a checkpoint's saved data state (a text run's tokenizer) is the configured data's, before any
    work starts (Lightning restores it later, inside the fit or test)."""
    saved = (ckpt or {}).get(type(datamodule).__qualname__)
    if saved is None:  # task data saves no state
        return
    try:
        datamodule.load_state_dict(saved)
    except ValueError as exc:
        raise ConfigError(f"ckpt_path={path} does not fit the configured data: {exc}") from exc


# --- the overrides a checkpoint carries -------------------------------------------------------------------
def override_key(override: str) -> str:
    """The top-level key of an override string: ``+model.net.dim=3`` -> ``model``."""
    return override.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("@", 1)[0]


def stored_overrides(ckpt: dict[str, Any], args: list[str], keys: tuple[str, ...] | None) -> list[str]:
    """The overrides a checkpoint's run was started with (those of ``keys``, or all but the checkpoint and
    Hydra's own), minus the keys the user passes now: the user's win. Not yet checked: see
    :func:`check_stored_overrides`."""
    run = ckpt.get("lmsleep_run")
    stored = run.get("overrides", []) if isinstance(run, dict) else []
    if not isinstance(stored, list) or not all(isinstance(o, str) for o in stored):
        raise ConfigError(
            "the checkpoint's stored overrides are not a list of strings (not written by `lmsleep fit`); "
            + TRUST_HINT.split("; otherwise ")[1]
        )
    stored = with_current_names(stored, notice=False)  # a checkpoint of an earlier release names old configs
    user_keys = {a.lstrip("+~").split("=", 1)[0] for a in args}
    return [
        o
        for o in stored
        if (override_key(o) in keys if keys else override_key(o) not in ("ckpt_path", "hydra"))
        and o.lstrip("+~").split("=", 1)[0] not in user_keys
    ]


def _calls_code(value: Any) -> str | None:
    """Why a parsed override value is not plain data (None if it is): a dict, or a Hydra call key inside."""
    if isinstance(value, dict):
        return "its value is a config node (a dict), not a setting"
    if isinstance(value, list):
        return next((why for v in value if (why := _calls_code(v))), None)
    if isinstance(value, str):
        if any(k in value for k in HYDRA_CALL_KEYS):
            return f"its value names {next(k for k in HYDRA_CALL_KEYS if k in value)}"
        if RESOLVER.search(value):
            return "its value calls an interpolation resolver (${name:...})"
        return None
    if value is None or isinstance(value, (bool, int, float)):
        return None
    return f"its value is a {type(value).__name__}, not a number, string, boolean, null or list of those"


def _references(value: Any) -> list[str]:
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return REFERENCE.findall(value) if isinstance(value, str) else []


def _plain_setting_problem(override: Override, groups: Any) -> str | None:
    """Why one parsed stored override is not a plain setting, judged before composing (None if it may be)."""
    key = override.key_or_group
    if override.type == OverrideType.DEL:
        return "it deletes a config node (~)"
    if override.type == OverrideType.ADD:
        return "it adds a config node (+)"
    if override.package is not None:
        return "it places a config group under another package (@)"
    if override.is_sweep_override():
        return "it is a sweep, not one value"
    if any(k in key for k in HYDRA_CALL_KEYS):
        return f"its key names {next(k for k in HYDRA_CALL_KEYS if k in key)}"
    value = override.value()
    why = _calls_code(value)
    if why:
        return why
    if groups.repository.group_exists(key):  # a config-group choice: it must name a config that exists
        if override.type == OverrideType.FORCE_ADD:
            return "it adds a config group (++)"
        name = str(value)
        folder, _, option = name.rpartition("/")
        if (
            not isinstance(value, str)
            or name.startswith(("/", "~", "."))
            or ".." in name.split("/")
            or "\\" in name
            or option not in groups.get_group_options(f"{key}/{folder}" if folder else key)
        ):
            return (
                f"{key}={name} names no config of the {key} group that lmsleep ships or your config folders "
                "(LMSLEEP_CONFIG_DIR) hold"
            )
    return None


def _config_loader():
    """Hydra's config loader over lmsleep's configs and the user's (``LMSLEEP_CONFIG_DIR``)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path

    search = create_config_search_path(config_dir())
    for entry in with_user_searchpath([])[:1]:  # ["hydra.searchpath=['file://a','file://b']"] or []
        for folder in OverridesParser.create().parse_override(entry).value():
            search.append("lmsleep-user", str(folder))
    return ConfigLoaderImpl(config_search_path=search)


def check_stored_overrides(
    overrides: list[str], args: list[str], config_name: str, trust: bool = False
) -> None:
    """Raise :class:`ConfigError` (one line, naming the override) unless every stored override is a plain
    setting: an existing key set to a number, string, boolean, null or a list of those (a ``${a.b}`` reference
    only to such a value), or a config-group choice naming a config that lmsleep ships or the user's config
    folders hold. Runs before anything is instantiated; composing a config calls no ``_target_``.

    Args:
        overrides: the stored overrides about to be re-applied (after the user's keys were taken out).
        args: the user's own command-line overrides (they may choose groups the stored settings refer to).
        config_name: the root config the command composes (``fit``, ``test``, ``generate``).
        trust: the user's ``trust_checkpoint=true``: anything goes but a key of ``NEVER_STORED``.
    """
    never = [o for o in overrides if any(k in o.split("=", 1)[0] for k in NEVER_STORED)]
    if never:
        raise ConfigError(
            f"the checkpoint's stored override {never[0]!r} sets a key that only the command line may set; "
            "pass it yourself if you mean it"
        )
    if trust:
        return
    parser = OverridesParser.create()
    groups = _config_loader()
    parsed: list[tuple[str, Override]] = []
    for text in overrides:
        try:
            override = parser.parse_override(text)
            why = _plain_setting_problem(override, groups)
        except Exception as exc:  # unparsable, or a cast function that fails
            why = f"it does not parse as an override ({type(exc).__name__})"
        if why:
            raise ConfigError(
                f"the checkpoint's stored override {text!r} is not a plain setting: {why}; {TRUST_HINT}"
            )
        parsed.append((text, override))

    settings = [(t, o) for t, o in parsed if not groups.repository.group_exists(o.key_or_group)]
    if not settings:
        return
    from hydra import compose, initialize_config_dir

    choices = [t for t, o in parsed if groups.repository.group_exists(o.key_or_group)]
    user = [a for a in with_user_searchpath(args) if not a.startswith("-") and not _is_sweep(parser, a)]
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose(config_name, overrides=[*choices, *user])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"the checkpoint's stored overrides do not compose ({first}); {TRUST_HINT}"
        ) from exc
    raw = OmegaConf.to_container(cfg, resolve=False)  # judge what is written, without calling resolvers
    for text, override in settings:
        node = _raw_node(raw, override.key_or_group)
        if node is _MISSING:
            why = "it sets a key that the composed config does not have (an added node)"
        elif isinstance(node, dict):
            why = "it replaces a config node, not a setting"
        else:
            refs = [r for r in _references(override.value()) if not _plain_reference(cfg, r)]
            why = f"its value refers to ${{{refs[0]}}}, which is not a plain setting" if refs else None
        if why:
            raise ConfigError(
                f"the checkpoint's stored override {text!r} is not a plain setting: {why}; {TRUST_HINT}"
            )


_MISSING = object()


def _raw_node(tree: Any, key: str) -> Any:
    """The node at dotted ``key`` of a plain container (``_MISSING`` if there is none); list items by index."""
    for part in key.split("."):
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return _MISSING
    return tree


def _is_sweep(parser: OverridesParser, arg: str) -> bool:
    try:
        return parser.parse_override(arg).is_sweep_override()
    except Exception:  # Hydra reports it when it composes the command for real
        return True


def _plain_reference(cfg: Any, key: str) -> bool:
    """``${key}`` resolves to a plain value. The composed config holds only lmsleep's and the user's configs
    and the user's overrides at this point (no stored setting is in it), so resolving it runs only their code."""
    if any(k in key for k in HYDRA_CALL_KEYS):
        return False
    node = OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False)
    return node is not _MISSING and not isinstance(node, Container)
