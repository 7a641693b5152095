"""The pretrained recipes (experiment=gsm_inf_pretrained_sleep and _sliding): their paper settings, the
required model folder, and a scaled-down fit and test of each on a tiny saved Qwen3.5 with its tokenizer."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from lmsleep.train import train  # noqa: E402
from lmsleep.utils.config import ConfigError  # noqa: E402

from .tiny import GSM_TEXT_DATA  # noqa: E402

RECIPES = ("gsm_inf_pretrained_sleep", "gsm_inf_pretrained_sleep_sliding")
# the paper's sizes scaled down to seconds: windows of 32 tokens, 90-100 context tokens, batch 2, 2 steps
SMALL = [
    *GSM_TEXT_DATA,
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.num_sanity_val_steps=0",
    "~callbacks.rich_progress_bar",  # the recipes' callbacks otherwise, checkpoints and sleep monitor included
]


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_state_the_papers_settings(compose, name):
    cfg = compose([f"experiment={name}", "model.net.path=/models/any"])
    sliding = name.endswith("sliding")
    assert cfg.model.net._target_ == "lmsleep.models.hf.from_hf" and cfg.model.net.loop == "middle"
    assert cfg.data.task._target_ == "lmsleep.data.gsm_inf_text.GSMInfTextTask"
    assert cfg.data.task.tokenizer == "/models/any" and cfg.data.task.lengths == "tokens"
    assert list(cfg.data.task.ops) == [1, 8] and list(cfg.data.task.context_tokens) == [2000, 3300]
    assert cfg.data.task.window == cfg.model.sleep.window == (512 if sliding else 2000)
    assert cfg.model.sleep.eviction == ("sliding" if sliding else "hard")
    assert cfg.model.sleep.passes == 1 and cfg.model.sleep.checkpoint_windows is True
    assert (cfg.model.optim.muon_lr, cfg.model.optim.adamw_lr) == (1e-3, 5e-5)
    assert cfg.global_batch_size == 256 == cfg.data.batch_size  # one CPU device
    assert cfg.trainer.precision == "32-true"
    split = compose([f"experiment={name}", "model.net.path=/m", "trainer=gpu", "trainer.devices=8"])
    assert split.trainer.precision == "bf16-mixed" and split.data.batch_size * 8 == 256
    schedule = instantiate(cfg.callbacks.sleep_schedule)
    if sliding:  # the warm-up: fast-weight layers alone under hard eviction, then everything, sliding
        assert schedule.stages[0]["train"] == ["ssm"] and schedule.at(0)[0]["eviction"] == "hard"
        later = schedule.stages[1]["at"]
        assert schedule.stages[1]["train"] == ["all"] and schedule.at(later)[0]["eviction"] == "sliding"
    else:
        assert schedule.mode == "constant"


@pytest.mark.parametrize("name", RECIPES)
def test_the_model_folder_is_required(compose_fit, cli_in_process, name, tmp_path):
    cfg = compose_fit(f"experiment={name}")
    with pytest.raises(ConfigError) as exc:
        train(cfg)
    assert str(exc.value).startswith("model.net.path is required: pass model.net.path=DIR (a model folder")
    assert not (tmp_path / "run").exists()  # stopped before any work
    done = cli_in_process("fit", f"experiment={name}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"lmsleep: error: {exc.value}"]


def test_text_data_without_a_tokenizer_is_one_line(compose_fit):
    cfg = compose_fit("data=gsm_inf_text", "model=hf", "model.net.config={model_type:qwen3}")
    with pytest.raises(ConfigError, match="pass model.net.path=DIR or data.task.tokenizer=DIR_OR_FILE"):
        train(cfg)


def test_hard_recipe_fits_and_tests_a_saved_model(compose_fit, one_thread, model_dir):
    metrics, objects = train(
        compose_fit("experiment=gsm_inf_pretrained_sleep", f"model.net.path={model_dir}", *SMALL)
    )
    assert objects["trainer"].global_step == 2
    assert objects["model"].sleep.checkpoint_windows and objects["model"].sleep.window == 32
    assert objects["datamodule"].task.tokenizer_path == str(model_dir)
    assert torch.isfinite(torch.tensor(metrics["test/loss"])) and "test_final/acc_exact" in metrics
    assert any(k.startswith("test/acc@ops=") for k in metrics)


def test_sliding_recipe_warms_up_the_linear_layers_alone(compose_fit, one_thread, model_dir):
    """Two steps are inside the warm-up: only the Gated DeltaNet layers (the group `ssm`) moved."""
    metrics, objects = train(
        compose_fit(
            "experiment=gsm_inf_pretrained_sleep_sliding",
            f"model.net.path={model_dir}",
            "model.sleep.passes=2",
            *SMALL,
        )
    )
    assert objects["cfg"].model.sleep.eviction == "sliding" and "test/loss" in metrics
    assert objects["model"].sleep.eviction == "hard"  # still the warm-up's
    saved = load_file(str(model_dir / "model.safetensors"))
    net = objects["model"].net
    moved = {name for name, p in net.hf.named_parameters() if not torch.equal(p.detach(), saved[name])}
    linear = {name for name, _ in net.hf.named_parameters() if ".linear_attn." in name}
    assert moved and moved <= linear


@pytest.mark.parametrize("name", ["study/pretrained_demo/sleep", "study/pretrained_demo/sleep_inserted"])
def test_the_demonstrations_fine_tuning_fits_a_saved_model(compose_fit, one_thread, model_dir, name):
    """results/pretrained_demo's step 2 on the tiny saved Qwen3.5 (the inserted variant inserts into it too),
    scaled down as the recipes are here, its own task settings kept."""
    small = [
        o
        for o in SMALL
        if not o.startswith(("data.task.context_tokens", "data.task.ops", "data.task.window"))
    ]
    if name.endswith("inserted"):  # after layers 1 and 3 of the demo's 4; the tiny model has 2
        small.append("model.net.insert=[1]")
    metrics, objects = train(
        compose_fit(f"experiment={name}", f"model.net.path={model_dir}", "model.sleep.passes=2", *small)
    )
    assert torch.isfinite(torch.tensor(metrics["test/loss"])) and "test_final/acc_exact" in metrics
    assert bool(objects["model"].net.inserted) == name.endswith("inserted")
