"""The ``lmsleep`` command: ``fit``, ``test``, ``generate``, ``export-data``, ``export-hf`` and ``report``, thin
Hydra wrappers around plain functions."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from lmsleep.utils.checkpoint import (
    check_checkpoint,
    check_stored_overrides,
    find_last_checkpoint,
    last_value,
    stored_overrides,
)
from lmsleep.utils.config import (
    ConfigError,
    check_writable_dir,
    config_dir,
    with_current_names,
    with_user_searchpath,
)

log = logging.getLogger("lmsleep")

USAGE = """usage: lmsleep COMMAND [hydra overrides]

commands:
  fit           train, then test the best checkpoint     lmsleep fit experiment=rule110_transformer
  test          evaluate a checkpoint on the test split  lmsleep test ckpt_path=logs/fit/runs/<run>/checkpoints/last.ckpt
  generate      continue a prompt (text or model=hf run) lmsleep generate ckpt_path=PATH prompt='def main():' max_new_tokens=200
  export-data   write task samples as JSON lines         lmsleep export-data data=rule110 split=test n=100 out=FILE.jsonl
  export-hf     a model=hf run as a transformers folder  lmsleep export-hf ckpt_path=PATH out=DIR
  report        tables and plots of runs (mean over seeds) lmsleep report logs/rule110_sleep/runs/* out=results/

Every value in the configs can be overridden (key=value); `lmsleep fit --cfg job` prints the composed config,
`lmsleep fit --help` lists the config groups, `-m key=a,b` runs a sweep. Your own configs (for example
experiment/my_run.yaml) go in a folder named by LMSLEEP_CONFIG_DIR (or hydra.searchpath=[file:///that/folder]):
`LMSLEEP_CONFIG_DIR=~/my_configs lmsleep fit experiment=my_run`.

A checkpoint's stored overrides are re-applied (test, generate, export-hf, fit ckpt_path=) only when each is a plain
setting; trust_checkpoint=true re-applies all of them, for a checkpoint you wrote yourself.
"""

COMMANDS = (
    "fit",
    "test",
    "generate",
    "export-data",
    "export_data",
    "export",
    "export-hf",
    "export_hf",
    "report",
)
# Lightning's DDP launcher starts ranks > 0 as `python <sys.argv[0]> <sys.argv[1:]>` (or `python -m <main module>
# ...`), and Hydra's overrides must be all of sys.argv[1:]; the command reaches those processes through this variable.
COMMAND_ENV = "LMSLEEP_COMMAND"

# Overrides of a training run that decide the data and the model; `lmsleep test` re-applies them.
MODEL_KEYS = ("data", "model", "experiment", "seed")


def _config_error_exit(exc: ConfigError) -> None:
    print(f"lmsleep: error: {exc}", file=sys.stderr)
    sys.exit(2)


def _reporting_config_errors(job):
    """A Hydra task function that reports a ConfigError raised inside the job like those found before it."""

    @functools.wraps(job)
    def task(cfg: DictConfig) -> None:
        try:
            job(cfg)
        except ConfigError as exc:
            _config_error_exit(exc)

    return task


@_reporting_config_errors
def _fit(cfg: DictConfig) -> None:
    from lmsleep.callbacks.preemption import Preempted
    from lmsleep.lit.module import NonFiniteError
    from lmsleep.train import train

    try:
        metrics, objects = train(cfg, overrides=list(HydraConfig.get().overrides.task))
    except NonFiniteError as exc:  # a run that failed, not a bad input: status 1
        print(f"lmsleep: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except Preempted as exc:  # 143 for SIGTERM: schedulers see an unfinished run
        print(f"lmsleep: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if objects["trainer"].is_global_zero:
        _report(metrics, cfg)


@_reporting_config_errors
def _test(cfg: DictConfig) -> None:
    from lmsleep.callbacks.preemption import Preempted
    from lmsleep.evaluate import evaluate

    try:
        metrics, objects = evaluate(cfg)
    except Preempted as exc:
        print(f"lmsleep: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if objects["trainer"].is_global_zero:
        _report(metrics, cfg)


@_reporting_config_errors
def _export(cfg: DictConfig) -> None:
    from lmsleep.export import export_data

    n = export_data(cfg)
    if cfg.out != "-":
        print(
            f"wrote {n} {cfg.split} samples of {cfg.data.task._target_.rsplit('.', 1)[-1]} to {cfg.out}",
            file=sys.stderr,
        )


@_reporting_config_errors
def _export_hf(cfg: DictConfig) -> None:
    from lmsleep.export_hf import export_hf

    done = export_hf(cfg)
    files = ", ".join(done["tokenizer_files"]) or "none"
    print(
        f"wrote the {done['family']} model ({done['parameters']:,} parameters, {done['dtype']}) to {done['out']}; "
        f"tokenizer: {done['tokenizer_from']} ({files}); transformers loads it with "
        f"AutoModelForCausalLM.from_pretrained({done['out']!r}), without sleep (settings in lmsleep.json)",
        file=sys.stderr,
    )


def _generating(prompt: str | None):
    """The Hydra task of ``lmsleep generate``, with the prompt taken verbatim from the command line."""

    @_reporting_config_errors
    def _generate(cfg: DictConfig) -> None:
        from omegaconf import open_dict

        from lmsleep.generate import generate

        if prompt is not None:
            with open_dict(cfg):
                cfg.prompt = prompt
        generate(cfg)

    return _generate


def _take_prompt(args: list[str]) -> tuple[list[str], str | None]:
    """``prompt=TEXT`` is not a Hydra override: code and prose hold characters Hydra's grammar reserves
    (``()``, ``:``, quotes, ``,``), so the text after ``prompt=`` is taken verbatim (the last one wins)."""
    prompts = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("prompt=")]
    rest = [a for a in args if not a.lstrip("+").startswith("prompt=")]
    return rest, (prompts[-1] if prompts else None)


def _report(metrics: dict[str, float], cfg: DictConfig) -> None:
    tests = {
        k: v for k, v in sorted(metrics.items()) if k.startswith(("test/", "test_final/")) and "@" not in k
    }
    print("\n" + "\n".join(f"  {k:<22} {v:.4f}" for k, v in tests.items()))
    print(f"run folder:  {cfg.paths.output_dir}")
    print(f"TensorBoard: tensorboard --logdir {cfg.paths.output_dir}/tensorboard")


def _with_checkpoint_overrides(
    args: list[str], command: str, trust: bool, config_name: str | None = None
) -> list[str]:
    """Prepend the data/model overrides stored in the checkpoint named by ``ckpt_path=`` (the user's win),
    once each is known to be a plain setting (or the user trusts the checkpoint); ``config_name`` is the root
    config the command composes (default: the command's name)."""
    paths = [a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")]
    if not paths:
        raise ConfigError(f"lmsleep {command} needs ckpt_path=PATH (a .ckpt file written by `lmsleep fit`)")
    stored = stored_overrides(check_checkpoint(paths[-1]), args, MODEL_KEYS)
    return _checked(stored, args, config_name or command, trust) + args


def _checked(stored: list[str], args: list[str], command: str, trust: bool) -> list[str]:
    check_stored_overrides(stored, args, command, trust=trust)
    return stored


def _resuming(args: list[str], trust: bool) -> list[str]:
    """``lmsleep fit ... ckpt_path=PATH|last``: the run goes on with the overrides it was started with (the
    user's win) in the run folder the checkpoint lies in (``<run>/checkpoints/x.ckpt``), unless the user names
    another with ``hydra.run.dir``. ``last`` is the newest checkpoint of this task's runs."""
    value = last_value(args, "ckpt_path")
    if value in (None, "null", "None") or any(a in ("--help", "-h", "--cfg", "-c", "--info") for a in args):
        return args
    path = find_last_checkpoint(args) if value == "last" else Path(value).expanduser()
    ckpt = check_checkpoint(str(path))
    args = [a for a in args if not a.startswith("ckpt_path=")] + [f"ckpt_path={path}"]
    multirun = any(a in ("-m", "--multirun") for a in args)
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if not multirun and last_value(args, "hydra.run.dir") is None and (run / ".hydra").is_dir():
        args.append(f"hydra.run.dir={run}")
    stored = _checked(stored_overrides(ckpt, args, None), args, "fit", trust)
    if not os.environ.get("LOCAL_RANK"):  # once, not from every DDP rank
        print(f"lmsleep: resuming {path} (step {ckpt.get('global_step')})", file=sys.stderr)
    return stored + args


def _take_trust(args: list[str]) -> tuple[list[str], bool]:
    """``trust_checkpoint=true|false`` is not a Hydra override: it is the user's word on this command line,
    so it is never stored in a checkpoint (and a checkpoint can never say it of itself)."""
    values = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("trust_checkpoint=")]
    rest = [a for a in args if not a.lstrip("+").startswith("trust_checkpoint=")]
    if values and values[-1].lower() not in ("true", "false"):
        raise ConfigError(
            f"trust_checkpoint={values[-1]}: pass trust_checkpoint=true or trust_checkpoint=false"
        )
    return rest, bool(values) and values[-1].lower() == "true"


def _check_log_dir(args: list[str]) -> None:
    """The folder the run will write to must be creatable and writable (checked before Hydra makes it)."""
    if any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help") for a in args):
        return  # prints, runs nothing
    multirun = any(a in ("-m", "--multirun") for a in args)
    for key in ("hydra.sweep.dir" if multirun else "hydra.run.dir", "paths.log_dir"):
        value = last_value(args, key)
        if value is not None and "${" not in value:
            check_writable_dir(value, key)
            return
    check_writable_dir("logs", "paths.log_dir")


def _run(config_name: str, task, args: list[str], command: str) -> None:
    # argv[0] stays the real program so that DDP ranks > 0 can be started from it (see COMMAND_ENV).
    os.environ[COMMAND_ENV] = command
    # Hydra's parser stops reading overrides at a flag, so `fit experiment=x -m a=1,2` would lose `a`:
    # flags go first, wherever the user put them.
    args = with_user_searchpath(args)
    flags = [a for a in args if a in ("-m", "--multirun")]
    sys.argv = [sys.argv[0], *flags, *(a for a in args if a not in flags)]
    hydra.main(version_base="1.3", config_path=config_dir(), config_name=config_name)(task)()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:  # a usage error: the help, on stderr, and status 2
        print(f"lmsleep: error: no command given\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    if args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if args[0] not in COMMANDS and os.environ.get("LOCAL_RANK") and os.environ.get(COMMAND_ENV) in COMMANDS:
        args = [os.environ[COMMAND_ENV], *args]  # a DDP rank > 0 started by Lightning's launcher
    command, rest = args[0], args[1:]
    try:
        if command != "report":
            rest = with_current_names(rest, notice=not os.environ.get("LOCAL_RANK"))
        if command in ("fit", "test", "generate", "export-hf", "export_hf"):
            rest, trust = _take_trust(rest)
        if command == "fit":
            rest = _resuming(rest, trust)
            _check_log_dir(rest)
            _run("fit", _fit, rest, "fit")
        elif command == "test":
            if not any(a in ("--help", "-h", "--cfg", "-c", "--info") for a in rest):
                rest = _with_checkpoint_overrides(rest, "test", trust)
            _check_log_dir(rest)
            _run("test", _test, rest, "test")
        elif command == "generate":
            rest, prompt = _take_prompt(rest)
            if not any(a in ("--help", "-h", "--cfg", "-c", "--info") for a in rest):
                rest = _with_checkpoint_overrides(rest, "generate", trust)
            _run("generate", _generating(prompt), rest, "generate")
        elif command in ("export-data", "export_data", "export"):
            _run("export", _export, rest, "export-data")
        elif command in ("export-hf", "export_hf"):
            if not any(a in ("--help", "-h", "--cfg", "-c", "--info") for a in rest):
                rest = _with_checkpoint_overrides(rest, "export-hf", trust, config_name="export_hf")
            _run("export_hf", _export_hf, rest, "export-hf")
        elif command == "report":
            from lmsleep.reporting.report import main as report_main

            report_main(rest)
        else:
            raise ConfigError(
                f"unknown command {command!r}; use one of: fit, test, export-data, export-hf, report, "
                f"generate\n\n{USAGE}"
            )
    except ConfigError as exc:
        _config_error_exit(exc)


if __name__ == "__main__":
    main()
