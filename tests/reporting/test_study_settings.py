"""What lmsleep report records of a run's hyperparameters (raw JSON ``settings``), and how they group runs."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from lmsleep.reporting.report import load_raw, run_settings
from lmsleep.reporting.study_settings import HPARAMS


def settings_of(compose, overrides: list[str]) -> dict:
    cfg = compose(overrides)
    return run_settings(OmegaConf.to_container(cfg, resolve=True))["settings"]


def test_a_run_records_every_setting_a_study_varies_or_fixes(compose):
    s = settings_of(
        compose,
        [
            "experiment=study/rule110_sleep",
            *("model.optim.schedule=wsd", "model.optim.muon_lr=0.004", "model.optim.decay_fraction=0.3"),
            *("trainer.gradient_clip_val=0.5", "trainer.accumulate_grad_batches=2"),
            *("model.sleep.passes=3", "+model.sleep.grad_passes=2", "model.sleep.state_mode=restart"),
            "model.sleep.tbptt_windows=2",
        ],
    )
    assert set(HPARAMS) | {"token_budget"} <= set(s)
    assert (s["schedule"], s["muon_lr"], s["adamw_lr"], s["decay_fraction"]) == ("wsd", 0.004, 1e-3, 0.3)
    assert (s["warmup_steps"], s["min_lr_ratio"]) == (100, 0.1)  # experiment=rule110_sleep's warm-up
    assert (s["gradient_clip_val"], s["accumulate_grad_batches"], s["batch_size"]) == (0.5, 2, 64)
    assert (s["grad_passes"], s["state_mode"], s["tbptt_windows"]) == (2, "restart", 2)
    assert (s["rule"], s["loop"], s["layout"], s["eviction"], s["window"], s["dim"]) == (
        "gated_delta", "all", "attn,ssm,attn,ssm", "hard", 16, 64
    )  # fmt: skip
    assert s["passes"] == 3 and s["data"]["width"] == 16 and s["precision"] == "32-true"
    # 600 optimiser steps of 2 x 64 samples of 69 tokens (a logged step is an optimiser step)
    assert s["tokens_per_step"] == 2 * 64 * 69 and s["token_budget"] == 600 * 2 * 64 * 69


def test_defaults_are_recorded_and_a_transformer_has_no_fast_weight_settings(compose):
    s = settings_of(compose, ["model=transformer", "trainer.max_steps=-1"])
    assert (s["schedule"], s["grad_passes"], s["tbptt_windows"], s["state_mode"]) == (
        "cosine", None, None, "accumulate"
    )  # fmt: skip
    assert s["rule"] is None and s["loop"] is None and s["token_budget"] is None
    assert s["gradient_clip_val"] == 1.0


def write(folder: Path, name: str, seed: int, **settings) -> None:
    meta = {
        "label": "d hybrid N=1",
        "seed": seed,
        "settings": {"task_name": "d", "data": {"steps": 3}, **settings},
    }
    (folder / f"{name}.json").write_text(json.dumps(meta))
    (folder / f"{name}.csv").write_text("step,tokens,tag,value\n10,100,test/acc,0.5\n")


def test_runs_that_differ_in_a_recorded_setting_are_separate_configurations(tmp_path):
    write(tmp_path, "a", 0, schedule="cosine", muon_lr=0.002)
    write(tmp_path, "b", 1, schedule="cosine", muon_lr=0.002)
    write(tmp_path, "c", 0, schedule="constant", muon_lr=0.002)
    write(tmp_path, "e", 0, schedule="constant", muon_lr=0.004)
    assert {label: len(runs) for label, runs in load_raw(tmp_path).items()} == {
        "d hybrid N=1 muon_lr=0.002, schedule=constant": 1,
        "d hybrid N=1 muon_lr=0.002, schedule=cosine": 2,
        "d hybrid N=1 muon_lr=0.004, schedule=constant": 1,
    }


def test_a_raw_file_from_before_is_a_cosine_run_and_its_other_settings_unknown(tmp_path):
    # every run before model.optim.schedule existed had the cosine: beside constant-schedule runs it is
    # its own configuration; its learning rate is unknown, so it is left out of its label
    write(tmp_path, "old", 0)
    write(tmp_path, "old2", 1)
    write(tmp_path, "new", 0, schedule="constant", muon_lr=0.002)
    assert {label: len(runs) for label, runs in load_raw(tmp_path).items()} == {
        "d hybrid N=1 schedule=cosine": 2,
        "d hybrid N=1 schedule=constant": 1,
    }
    # beside new cosine runs it is one more seed of the same configuration
    write(tmp_path, "new", 2, schedule="cosine", muon_lr=0.002)
    assert {label: len(runs) for label, runs in load_raw(tmp_path).items()} == {"d hybrid N=1": 3}
    # alone (every committed study today), its label is what it always was
    (tmp_path / "new.json").unlink()
    assert list(load_raw(tmp_path)) == ["d hybrid N=1"]


def test_a_wrapped_model_records_its_folder_loop_and_inserted_rule(compose):
    from lmsleep.reporting.report import run_settings

    cfg = compose(
        ["model=hf", "model.net.config={model_type:qwen3}", "model.net.insert=[1]", "model.net.loop=middle"]
    )
    settings = run_settings(OmegaConf.to_container(cfg, resolve=True))["settings"]
    assert settings["hf"]["config"] == {"model_type": "qwen3"} and settings["hf"]["insert"] == [1]
    assert settings["loop"] == "middle" and settings["rule"] == "gated_delta"
    plain = compose(["model=hf", "model.net.path=/models/q"])
    assert run_settings(OmegaConf.to_container(plain, resolve=True))["settings"]["rule"] is None
