"""``export_data(cfg)``: write task samples as JSON lines (``lmsleep export-data``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from lmsleep.data.task import SPLIT_BUCKETS
from lmsleep.utils.config import ConfigError


def export_data(cfg: DictConfig) -> int:
    """Write samples ``start .. start + n - 1`` of ``cfg.split`` to ``cfg.out`` (``-`` = stdout); returns n."""
    if cfg.split not in SPLIT_BUCKETS:
        raise ConfigError(f"split={cfg.split!r} is not one of {sorted(SPLIT_BUCKETS)}")
    if int(cfg.n) < 0 or int(cfg.start) < 0:
        raise ConfigError(f"n={cfg.n} and start={cfg.start} must be >= 0")
    if "task" not in cfg.data:
        raise ConfigError(
            f"export-data writes the samples of a task (data=rule110, depo, gsm_inf); data "
            f"<{cfg.data.get('_target_')}> has no task (your own text is already in your files)"
        )
    task = instantiate(cfg.data.task)
    out = str(cfg.out)
    stream = sys.stdout if out == "-" else None
    if stream is None:
        file = Path(out).expanduser()
        if file.is_dir():
            raise ConfigError(
                f"out={out} is a folder; pass a file path (e.g. out={out}/samples.jsonl) or out=-"
            )
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            stream = open(file, "w")  # noqa: SIM115 - closed below
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(
                f"out={out} cannot be written ({reason}: {exc.filename or file}); pass a writable file path "
                "or out=- for stdout"
            ) from exc
    try:
        for index in range(int(cfg.start), int(cfg.start) + int(cfg.n)):
            stream.write(json.dumps(task.export(cfg.split, index)) + "\n")
    finally:
        if stream is not sys.stdout:
            stream.close()
    return int(cfg.n)
