"""``model.compile`` in a run: off by default, a bad value stops before any work, a compiled fit says once
how long it compiled (log line and ``perf/compile_s``), and its checkpoints hold the eager model's keys, so
compiled and eager models load each other's weights."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from lmsleep.models.compilation import compiled_names
from lmsleep.train import train
from lmsleep.utils.config import build_data_and_model
from tests.support import compose_config, run_cli_in_process
from tests.support.models import TINY_HYBRID

RUN = [
    *TINY_HYBRID,
    "model.sleep.passes=2",
    "trainer.max_steps=2",
    "test=false",
    "++trainer.limit_val_batches=0",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """Two tiny fits of two steps each, one with model.compile=[mlp] (seconds to compile; true adds the
    fast-weight mixers, a minute or more), one without, and their checkpoints."""
    root = tmp_path_factory.mktemp("compile")
    fits = {}
    for name, setting in (("compiled", "[mlp]"), ("eager", "false")):
        overrides = [*RUN, f"model.compile={setting}"]
        # the run's INFO records, whatever an earlier test left of logging's setup (Hydra configures it)
        records, logger = [], logging.getLogger("lmsleep")
        handler, saved = logging.Handler(logging.INFO), (logger.level, logger.disabled)
        handler.emit = records.append
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.disabled = False
        try:
            cfg = compose_config(overrides, output_dir=root / name, keep_callbacks=[])
            _, objects = train(cfg, overrides)
        finally:
            logger.removeHandler(handler)
            logger.level, logger.disabled = saved
        path = root / f"{name}.ckpt"
        objects["trainer"].save_checkpoint(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        fits[name] = SimpleNamespace(**objects, ckpt=ckpt, log=[r.getMessage() for r in records])
    return fits


def test_the_switch_is_off_by_default():
    for model in ("hybrid", "hybrid_paper", "transformer"):
        assert compose_config([f"model={model}"]).model.compile is False


def test_a_bad_value_stops_before_any_work_with_one_line(tmp_path):
    out = run_cli_in_process("fit", "model.compile=fast", f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path)
    assert out.returncode == 2
    line = out.stderr.strip()
    assert (
        line.startswith("lmsleep: error: model.compile='fast' is not a choice: use false")
        and "\n" not in line
    )
    assert "['mlp', 'attn', 'ssm']" in line
    # Hydra's run folder holds the config and the log; no training began: no events, no checkpoint
    assert not [p for p in (tmp_path / "logs").rglob("*") if p.suffix == ".ckpt" or "tfevents" in p.name]


def test_a_compiled_fit_compiles_its_targets_and_says_once_how_long_it_took(runs):
    compiled, eager = runs["compiled"], runs["eager"]
    assert compiled_names(compiled.model.net) == [f"blocks.{i}.mlp" for i in range(4)]
    assert compiled_names(eager.model.net) == [] and eager.model.compile_s is None
    lines = [m for m in compiled.log if m.startswith("lmsleep: compiled")]
    assert len(lines) == 1 and lines[0].startswith("lmsleep: compiled mlp (4 modules) in ")
    assert compiled.model.compile_s > 0
    assert float(compiled.trainer.callback_metrics["perf/compile_s"]) == pytest.approx(
        compiled.model.compile_s
    )
    assert not [m for m in eager.log if m.startswith("lmsleep: compiled")]


def test_checkpoints_keep_the_eager_keys_and_load_both_ways(runs):
    compiled, eager = runs["compiled"], runs["eager"]
    keys = list(eager.ckpt["state_dict"])
    assert list(compiled.ckpt["state_dict"]) == keys and not [k for k in keys if "_orig_mod" in k]
    # a compiled run's weights into a fresh eager model, an eager run's weights into the compiled model
    _, fresh = build_data_and_model(compose_config([*RUN, "model.compile=false"]))
    fresh.load_state_dict(compiled.ckpt["state_dict"])
    compiled.model.load_state_dict(eager.ckpt["state_dict"])
    fresh.load_state_dict(eager.ckpt["state_dict"])
    # the same weights compute the same logits, compiled or not (with gradients on: the graphs already built)
    ids = next(iter(eager.datamodule.train_dataloader()))["input_ids"]
    got, want = compiled.model(ids)[0], fresh(ids)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
