"""Every config composes, and every data, model, logger, callbacks and experiment config runs fast_dev_run.

Config options are discovered on disk, so a config added later is covered without editing this file. Data
without a task (``data=text``) reads a small corpus written to the test's folder and logs language-model
metrics instead of answer accuracy.
"""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from lmsleep.train import train
from lmsleep.utils.config import RENAMED, build_data_and_model, missing_keys, with_current_names
from tests.support import CONFIG_DIR, REPO, compose_config, config_names, csv_rows

options = config_names  # the options of a config group, found on disk


def shrink(cfg) -> None:
    """Clamp the sizes of a composed config that every data config has (paper-size experiments; a text
    split's size may be null, all of it)."""
    with open_dict(cfg):
        cfg.data.batch_size = min(int(cfg.data.batch_size), 2)
        cfg.data.val_size = min(int(cfg.data.val_size or 4), 4)
        cfg.data.test_size = min(int(cfg.data.test_size or 4), 4)
        cfg.data.num_workers = 0


def needs_model_folder(group: str, name: str) -> bool:
    """Configs for a pretrained model: a recipe that requires ``model.net.path`` or data read with the model
    folder's tokenizer. tests/hf/test_recipes.py runs them with a saved tiny model."""
    if group == "experiment":
        return "model.net.path" in dict(missing_keys(compose_config([f"experiment={name}"])))
    conf = OmegaConf.load(CONFIG_DIR / group / f"{name}.yaml")
    return "tokenizer" in (conf.get("task") or {})


def is_text(target: str) -> bool:
    return target.endswith("TextDataModule")


def text_corpus(root: Path) -> list[str]:
    """Overrides that point data=text at a few dozen small files written under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(40):
        (root / f"doc{i}.txt").write_text(f"document {i}: " + "abc " * (10 + i))
    return [f"data.paths=[{root}]", "data.seq_len=32", "data.val_fraction=0.2", "data.test_fraction=0.2"]


@pytest.fixture(scope="session")
def required(tmp_path_factory):
    """``required(name) -> overrides`` giving the values an experiment marks as required (a tokenizer; its text
    then comes from a small corpus instead of the whole standard library, to keep the test fast)."""
    root = tmp_path_factory.mktemp("required")

    def overrides(name: str) -> list[str]:
        cfg = compose_config([f"experiment={name}"])
        given = []
        for key, _ in missing_keys(cfg):
            if key != "data.tokenizer":
                raise AssertionError(f"experiment={name} requires {key}: give the test a value for it")
            tokenizer = root / "tokenizer.json"
            if not tokenizer.is_file():
                (root / "src").mkdir(exist_ok=True)
                (root / "src" / "a.py").write_text("def f(x):\n    return x + 1\n" * 20)
                train_tokenizer = runpy.run_path(str(REPO / "scripts" / "train_tokenizer.py"))
                train_tokenizer["main"]([str(tokenizer), str(root / "src"), "--vocab-size", "300"])
            given += [f"data.tokenizer={tokenizer}", *text_corpus(root / "corpus"), "data.glob=**/*"]
            given += ["data.val_size=4", "data.test_size=4"]
        return given

    return overrides


def check_metrics(metrics: dict[str, float], datamodule) -> None:
    assert math.isfinite(metrics["train/loss"])
    task = getattr(datamodule, "task", None)
    if task is None:  # text: loss and bits per byte, overall and by window
        for split in ("val", "test"):
            assert math.isfinite(metrics[f"{split}/bpb"]) and metrics[f"{split}/bpb"] > 0
            assert math.isfinite(metrics[f"{split}/loss"]) and f"{split}/bpb@window=0" in metrics
        return
    depth_name = task.depth_name
    for split in ("val", "test"):
        assert 0.0 <= metrics[f"{split}/acc"] <= 1.0
        assert 0.0 <= metrics[f"{split}/acc_exact"] <= 1.0
        assert math.isfinite(metrics[f"{split}/loss"]) and metrics[f"{split}/loss"] > 0
    assert math.isfinite(metrics["train/loss"])
    # depth-stratified test metrics use the task's depth axis name (t, k, ops)
    assert any(k.startswith(f"test/acc@{depth_name}=") for k in metrics), sorted(metrics)


def run_fdr(cfg) -> tuple[dict[str, float], dict]:
    metrics, objects = train(cfg)
    trainer = objects["trainer"]
    assert trainer.fast_dev_run, "the run must be a fast_dev_run"
    assert trainer.global_step == 1, "fast_dev_run trains exactly one batch"
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt")), "debug=fdr writes no checkpoint"
    saved = OmegaConf.load(Path(cfg.paths.output_dir) / "config.yaml")
    assert saved.data._target_ == cfg.data._target_
    assert OmegaConf.select(saved, "data.task._target_") == OmegaConf.select(cfg, "data.task._target_")
    check_metrics(metrics, objects["datamodule"])
    return metrics, objects


def test_groups_are_discovered():
    assert "rule110_transformer" in options("experiment")
    assert {"rule110", "depo", "gsm_inf", "text"} <= set(options("data"))
    assert "transformer" in options("model")
    assert {"cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"tensorboard", "csv", "many"} <= set(options("logger"))
    assert {"default", "none"} <= set(options("callbacks"))
    assert {"fdr", "limit", "overfit"} <= set(options("debug"))


def test_default_fit_config(compose):
    cfg = compose([])
    assert cfg.data.task._target_ == "lmsleep.data.Rule110Task"
    assert cfg.model._target_ == "lmsleep.lit.LitLM"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    # the window of the model follows the data's window
    assert cfg.model.sleep.window == cfg.data.task.window == cfg.data.task.width
    assert cfg.ckpt_path is None and cfg.train and cfg.test


@pytest.mark.parametrize("name", ["test", "export"])
def test_other_entry_configs_compose(compose, name):
    cfg = compose([], config_name=name)
    assert cfg.data.task._target_ == "lmsleep.data.Rule110Task"
    if name == "test":
        assert OmegaConf.is_missing(cfg, "ckpt_path")
        assert cfg.get("callbacks") is None
    else:
        assert cfg.out == "-" and cfg.split == "test" and cfg.n == 100


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_composes_and_builds(compose, name, one_thread, required):
    """Every experiment (paper sizes too) composes and its data module and model can be built."""
    if needs_model_folder("experiment", name):
        pytest.skip("needs a model folder: tests/hf/test_recipes.py")
    cfg = compose([f"experiment={name}", *required(name)])
    assert cfg.data._target_.startswith("lmsleep.")
    datamodule, model = build_data_and_model(cfg)
    if is_text(cfg.data._target_):
        sample = datamodule.streams["train"].sample(0)
        assert sample["input_ids"].shape == (cfg.data.seq_len,)
    else:
        sample = datamodule.task.sample("train", 0)
        assert len(sample["input_ids"]) <= datamodule.task.max_length
    hf = getattr(model.net, "hf", None)  # a wrapped transformers model keeps its embedding there
    embedding = model.net.embed if hf is None else hf.get_input_embeddings()
    assert embedding.num_embeddings == datamodule.vocab_size


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n.startswith("paper/") else n for n in options("experiment")],
)
def test_experiment_runs_fast_dev_run(compose_fit, name, one_thread, required):
    if needs_model_folder("experiment", name):
        pytest.skip("needs a model folder: tests/hf/test_recipes.py")
    cfg = compose_fit(f"experiment={name}", "debug=fdr", *required(name))
    shrink(cfg)
    run_fdr(cfg)


@pytest.mark.parametrize("name", options("data"))
def test_data_config_runs_fast_dev_run(compose_fit, tiny, name, one_thread, tmp_path):
    if needs_model_folder("data", name):
        pytest.skip("needs a model folder's tokenizer: tests/hf/test_recipes.py")
    config = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
    extra = text_corpus(tmp_path / "corpus") if is_text(config._target_) else []
    metrics, objects = run_fdr(compose_fit(f"data={name}", "debug=fdr", *tiny, *extra))
    made = getattr(objects["datamodule"], "task", objects["datamodule"])  # the task, or the text DataModule
    assert type(made).__name__ == (config.get("task") or config)._target_.rsplit(".")[-1]
    assert objects["model"].net.embed.num_embeddings == objects["datamodule"].vocab_size


@pytest.mark.parametrize("name", options("model"))
def test_model_config_runs_fast_dev_run(compose_fit, tiny, name, one_thread):
    if name == "hf":  # a transformers model: its own folder or config, not `tiny`'s model.net.dim=...
        pytest.skip("model=hf is run by tests/hf/test_lightning.py")
    _, objects = run_fdr(compose_fit(f"model={name}", "debug=fdr", *tiny))
    expected = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml")
    if "layout" in expected.get("net", {}):
        kinds = [k.strip() for k in expected.net.layout.split(",")]
        assert len(objects["model"].net.blocks) == len(kinds)


def test_trainer_cpu_runs(compose_fit, tiny, one_thread):
    cfg = compose_fit("trainer=cpu", "debug=fdr", *tiny)
    _, objects = run_fdr(cfg)
    assert type(objects["trainer"].accelerator).__name__ == "CPUAccelerator"


def test_trainer_gpu_composes(compose):
    cfg = compose(["trainer=gpu"])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.reload_dataloaders_every_n_epochs == 1  # from trainer/default


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trainer_gpu_runs(compose_fit, tiny):
    run_fdr(compose_fit("trainer=gpu", "debug=fdr", *tiny))


def test_trainer_ddp_composes_and_instantiates(compose):
    cfg = compose(["trainer=ddp", "trainer.accelerator=cpu"])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2
    assert cfg.trainer.use_distributed_sampler is True
    assert cfg.trainer.reload_dataloaders_every_n_epochs == 1
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer.world_size == 2
    assert type(trainer.strategy).__name__ == "DDPStrategy"


LIMIT_1 = ["debug=limit", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
LIMIT_1 += ["trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]


@pytest.mark.parametrize("name", options("logger"))
def test_logger_config_records_the_run(compose_fit, tiny, name, one_thread):
    """fast_dev_run swaps loggers for a dummy, so this is a (one-epoch, two-batch) limited run."""
    cfg = compose_fit(f"logger={name}", *LIMIT_1, *tiny)
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    configured = {c._target_.rsplit(".", 1)[-1] for c in cfg.logger.values()}
    assert {type(lg).__name__ for lg in objects["trainer"].loggers} == configured
    if name == "many":
        assert configured == {"TensorBoardLogger", "CSVLogger"}
    if "TensorBoardLogger" in configured:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    if "CSVLogger" in configured:
        rows = csv_rows(out / "csv" / "metrics.csv")
        tested = [r for r in rows if r.get("test/acc")]
        assert len(tested) == 1
        for key in ("test/acc", "test/loss", "test/acc_exact"):
            assert float(tested[0][key]) == pytest.approx(metrics[key], rel=1e-6, abs=1e-7)
        assert (out / "csv" / "hparams.yaml").is_file()


@pytest.mark.parametrize("name", options("callbacks"))
def test_callbacks_config_runs_fast_dev_run(compose_fit, tiny, name, one_thread):
    # callbacks written for sleeping hybrids need the hybrid model; the others run with the default model
    model = "hybrid" if name not in ("default", "none") and "hybrid" in options("model") else "transformer"
    cfg = compose_fit(f"callbacks={name}", f"model={model}", "debug=fdr", *tiny)
    _, objects = run_fdr(cfg)
    configured = {c._target_.rsplit(".", 1)[-1] for c in (cfg.callbacks or {}).values() if c is not None}
    present = {type(c).__name__ for c in objects["trainer"].callbacks}
    assert configured <= present
    if name == "none":
        assert not configured


@pytest.mark.parametrize("name", options("debug"))
def test_debug_config_composes(compose, name):
    cfg = compose([f"debug={name}"])
    t = cfg.trainer
    if name == "fdr":
        assert t.fast_dev_run is True and cfg.data.num_workers == 0
    elif name == "limit":
        assert (t.max_epochs, t.limit_train_batches, t.limit_val_batches, t.limit_test_batches) == (
            2,
            5,
            2,
            2,
        )
    elif name == "overfit":
        assert t.overfit_batches == 2 and cfg.data.fresh_train_samples is False
    # every debug preset instantiates a Trainer
    instantiate(t, logger=False, enable_progress_bar=False)


def test_debug_fdr_runs(cfg_fit):
    run_fdr(cfg_fit)


@pytest.mark.parametrize("eviction", ["sliding", "hard"])
def test_staged_recipe_warms_up_hard_then_trains_under_the_configured_eviction(compose, eviction):
    """The paper's sliding-window recipe: SSM-only warm-up with hard eviction, then the full model (and the
    test) under the configured eviction."""
    cfg = compose(["experiment=rule110_sleep", "callbacks=staged", f"model.sleep.eviction={eviction}"])
    schedule = instantiate(cfg.callbacks.sleep_schedule)
    warm_up, later = schedule.stages[0]["at"], schedule.stages[1]["at"]
    assert schedule.at(warm_up)[0]["eviction"] == "hard"
    assert schedule.at(later)[0]["eviction"] == eviction
    assert schedule.at(later + 10_000)[0]["eviction"] == eviction


def test_paper_rule110_budget_is_the_papers_five_billion_tokens(compose):
    cfg = compose(["experiment=paper/rule110_sleep"])
    task = instantiate(cfg.data.task)
    tokens = cfg.trainer.max_steps * cfg.data.batch_size * task.max_length
    assert task.max_length == 101
    assert 4.9e9 < tokens < 5.1e9


@pytest.mark.parametrize("name", ["paper/rule110_sleep", "paper/depo_sleep", "paper/gsm_inf_sleep"])
def test_paper_experiments_state_a_global_batch_split_over_devices(compose, name):
    cfg = compose([f"experiment={name}"])
    assert cfg.data.batch_size == cfg.global_batch_size  # one CPU device
    cfg = compose([f"experiment={name}", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    assert cfg.data.batch_size * 8 == cfg.global_batch_size
    cfg = compose([f"experiment={name}", "trainer.devices=3"])
    with pytest.raises(Exception, match="does not split evenly over 3 devices"):
        _ = cfg.data.batch_size


@pytest.mark.parametrize("old", sorted(RENAMED["experiment"]))
def test_renamed_experiments_compose_what_their_new_names_do(compose, old, capsys):
    """The names of an earlier release keep working (one release) through the CLI, with a one-line notice."""
    new = RENAMED["experiment"][old]
    assert new in options("experiment")
    assert with_current_names([f"experiment={old}", "seed=1"]) == [f"experiment={new}", "seed=1"]
    assert capsys.readouterr().err == (
        f"lmsleep: experiment={old} is now experiment={new}; the old name goes in the next release\n"
    )


def test_studies_do_not_inherit_from_recipes():
    """Editing a recipe (experiment/*.yaml) must not change a finished study (experiment/study/*.yaml): a study's
    defaults are itself, group overrides (data, model, ...) and other configs of the same study folder."""
    for path in sorted((CONFIG_DIR / "experiment" / "study").glob("*.yaml")):
        for entry in OmegaConf.load(path).get("defaults", []):
            if isinstance(entry, str):
                assert entry == "_self_" or entry.startswith("/experiment/study/"), f"{path.name}: {entry}"
            else:
                (key,) = entry
                assert key.startswith("override /") and "experiment" not in key, f"{path.name}: {entry}"


def test_a_required_value_is_named_before_any_work(compose_fit, tmp_path):
    """``${lmsleep.required:...}`` in a recipe: a run without the value stops with one line saying what to
    pass, before the data or model is built (and ``???`` cannot do this: merged over a default it is lost)."""
    from lmsleep.utils.config import ConfigError

    cfg = compose_fit("experiment=study/pretrained_demo/pretrain")
    with pytest.raises(
        ConfigError,
        match=r"^data.tokenizer is required: pass data.tokenizer=FILE \(the tokenizer.json of scripts/train_tok",
    ):
        train(cfg)
    assert not (tmp_path / "run").exists()
