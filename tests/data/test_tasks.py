"""Task determinism, disjoint splits, distinct samples per worker / rank / epoch, collate, Vocab, parse_range."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torch.utils.data import DataLoader, DistributedSampler, get_worker_info

from lmsleep.data import Rule110Task, TaskDataModule, TaskDataset, Vocab, collate
from lmsleep.data.task import IGNORE_INDEX, parse_range
from lmsleep.utils.config import ConfigError, build_data_and_model
from tests.support import CONFIG_DIR

# the configs of task data (data=text has no task: tests/data/test_text.py; data=gsm_inf_text reads a model
# folder's tokenizer: tests/hf/test_text_task.py)
DATA_CONFIGS = sorted(
    p.stem
    for p in (CONFIG_DIR / "data").glob("*.yaml")
    if "task" in (conf := OmegaConf.load(p)) and "tokenizer" not in conf.task
)


def task_from_config(name: str, seed: int = 0):
    """The task of ``configs/data/<name>.yaml`` at its configured (smoke) size."""
    conf = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
    conf.task.seed = seed
    return instantiate(conf.task)


# --- determinism ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_same_seed_same_samples_different_seed_different(name):
    a, b, c = task_from_config(name, seed=0), task_from_config(name, seed=0), task_from_config(name, seed=1)
    random.seed(123)  # generation must not depend on the global random state
    first = [a.sample("train", i) for i in range(30)]
    random.seed(456)
    torch.manual_seed(456)
    assert [b.sample("train", i) for i in range(30)] == first
    assert [a.sample("train", i) for i in reversed(range(30))] == first[::-1]  # no hidden order dependence
    other = [c.sample("train", i) for i in range(30)]
    assert sum(x != y for x, y in zip(first, other, strict=True)) >= 25


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_splits_are_disjoint(name, disjoint_splits):
    disjoint_splits(task_from_config(name), 200)


def test_splits_are_disjoint_in_a_small_problem_space(disjoint_splits):
    """512 problems in all: thousands of draws cover almost all of each split's share, and still no key is in
    two splits, and every sample's key hashes to its own split."""
    task = Rule110Task(width=4, num_states=2, steps=[0, 1], seed=5)
    found = disjoint_splits(task, 1000)
    assert len(found["train"]) > 300  # covers most of the ~460 train problems: collisions were possible
    assert len(found["val"]) > 10 and len(found["test"]) > 10
    assert len(found["train"] | found["val"] | found["test"]) <= 512


def test_sample_arguments_are_checked():
    task = Rule110Task()
    with pytest.raises(ValueError, match=r"unknown split 'dev'.*\['test', 'train', 'val'\]"):
        task.sample("dev", 0)
    with pytest.raises(ValueError, match="index must be >= 0, got -1"):
        task.sample("train", -1)


# --- datasets, workers, ranks, epochs ------------------------------------------------------------------------
def test_task_dataset():
    task = Rule110Task(seed=2)
    ds = TaskDataset(task, "val", size=5, offset=10)
    assert len(ds) == 5
    assert ds[0] == task.sample("val", 10) and ds[4] == task.sample("val", 14)
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="val dataset size must be >= 1, got 0"):
        TaskDataset(task, "val", size=0)


def _collate_with_worker(samples):
    batch = collate(samples)
    info = get_worker_info()
    batch["worker"] = torch.full((len(samples),), -1 if info is None else info.id)
    return batch


def test_dataloader_workers_produce_distinct_samples():
    task = Rule110Task(seed=4)
    ds = TaskDataset(task, "train", size=32)
    serial = list(DataLoader(ds, batch_size=4, collate_fn=_collate_with_worker))
    parallel = list(DataLoader(ds, batch_size=4, num_workers=2, collate_fn=_collate_with_worker))
    assert {int(w) for b in parallel for w in b["worker"]} == {0, 1}  # both workers took part
    for s, p in zip(serial, parallel, strict=True):
        assert torch.equal(s["input_ids"], p["input_ids"]) and torch.equal(s["labels"], p["labels"])
    rows = [tuple(r.tolist()) for b in parallel for r in b["input_ids"]]
    assert len(set(rows)) == 32


def test_ddp_ranks_read_disjoint_samples():
    task = Rule110Task(seed=4)
    ds = TaskDataset(task, "train", size=40)
    per_rank = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        per_rank.append(list(sampler))
    assert len(per_rank[0]) == len(per_rank[1]) == 20
    assert not set(per_rank[0]) & set(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == set(range(40))
    keys0 = {task.key(ds[i]) for i in per_rank[0]}
    keys1 = {task.key(ds[i]) for i in per_rank[1]}
    assert len(keys0) == len(keys1) == 20 and not keys0 & keys1


def test_each_epoch_reads_fresh_training_samples():
    task = Rule110Task(seed=1)
    dm = TaskDataModule(task, batch_size=4, train_size=12, val_size=4, test_size=4)
    dm.trainer = SimpleNamespace(current_epoch=0)
    epoch0 = dm.train_dataloader()
    dm.trainer = SimpleNamespace(current_epoch=1)
    epoch1 = dm.train_dataloader()
    assert (epoch0.dataset.offset, epoch1.dataset.offset) == (0, 12)
    assert epoch1.dataset[0] == task.sample("train", 12)
    k0 = {task.key(s) for s in epoch0.dataset}
    k1 = {task.key(s) for s in epoch1.dataset}
    assert len(k0) == len(k1) == 12 and not k0 & k1
    # evaluation splits do not move
    assert dm.val_dataloader().dataset.offset == 0 and dm.test_dataloader().dataset.offset == 0
    # overfitting keeps the same samples every epoch
    fixed = TaskDataModule(task, batch_size=4, train_size=12, fresh_train_samples=False)
    fixed.trainer = SimpleNamespace(current_epoch=3)
    assert fixed.train_dataloader().dataset.offset == 0


def test_datamodule_loaders():
    task = Rule110Task(width=6, num_states=3, steps=[1, 2], seed=0)
    dm = TaskDataModule(task, batch_size=4, train_size=10, val_size=6, test_size=5)
    assert dm.vocab_size == task.vocab_size
    batches = list(dm.test_dataloader())
    assert [b["input_ids"].shape[0] for b in batches] == [4, 1]
    assert batches[0]["input_ids"].shape[1] == task.max_length
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        TaskDataModule(task, batch_size=0)


def test_data_window_is_the_tasks(compose):
    task = Rule110Task(width=6, num_states=2)
    assert TaskDataModule(task, window=6).window == TaskDataModule(task).window == 6
    with pytest.raises(ValueError, match=r"data.window=4 differs from the task's window data.task.window=6"):
        TaskDataModule(task, window=4)
    cfg = compose(["data.task.window=5"])  # the model's window follows the task's through data.window
    assert cfg.data.window == cfg.model.sleep.window == 5
    with open_dict(cfg):  # a user's data config written before data.window existed
        del cfg.data["window"]
    with pytest.raises(
        ConfigError, match=r"the data config has no `window`, which model.sleep.window follows"
    ):
        build_data_and_model(cfg)


# --- collate ----------------------------------------------------------------------------------------------
def test_collate_pads_ids_and_labels():
    samples = [
        {"input_ids": [5, 6, 7], "labels": [-100, 2, 3], "depth": 1},
        {"input_ids": [8, 9, 10, 11, 12], "labels": [-100, -100, -100, 4, 1], "depth": 4},
    ]
    batch = collate(samples, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, -100], [-100, -100, -100, 4, 1]]
    assert batch["depth"].tolist() == [1, 4]
    assert all(t.dtype == torch.long for t in batch.values())
    padded = collate(samples, pad_id=9, multiple_of=4)
    assert padded["input_ids"].tolist() == [[5, 6, 7, 9, 9, 9, 9, 9], [8, 9, 10, 11, 12, 9, 9, 9]]
    assert padded["labels"][0].tolist() == [-100, 2, 3] + [IGNORE_INDEX] * 5


# --- Vocab -----------------------------------------------------------------------------------------------------
def test_vocab_round_trip():
    vocab = Vocab(["a", "b", "t=3", "<pad>", "Q0"])
    assert vocab.tokens == ["<pad>", "a", "b", "t=3", "Q0"] and len(vocab) == 5 and vocab.pad_id == 0
    tokens = ["a", "Q0", "<pad>", "t=3", "b", "a"]
    ids = vocab.encode(tokens)
    assert ids == [1, 4, 0, 3, 2, 1]
    assert vocab.decode(ids) == "a Q0 <pad> t=3 b a"
    assert vocab.encode(vocab.decode(ids).split()) == ids
    assert vocab.decode(ids, skip_pad=True) == "a Q0 t=3 b a"
    assert "t=3" in vocab and "c" not in vocab
    with pytest.raises(KeyError, match="'c' is not in the vocabulary"):
        vocab.id("c")


@pytest.mark.parametrize(
    ("tokens", "message"), [(["a", "a"], "duplicate token 'a'"), (["a b"], "whitespace"), ([""], "non-empty")]
)
def test_vocab_rejects_bad_tokens(tokens, message):
    with pytest.raises(ValueError, match=message):
        Vocab(tokens)


# --- parse_range ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [(4, (4, 4)), ("4", (4, 4)), ("4-16", (4, 16)), (" 4 - 16 ", (4, 16)), ([4, 16], (4, 16)), ((2, 2), (2, 2)),
     ([7], (7, 7)), ("-1", (-1, -1)), ("-3-2", (-3, 2)), (OmegaConf.create([1, 8]), (1, 8))],
)  # fmt: skip
def test_parse_range(value, expected):
    assert parse_range(value, "x") == expected


@pytest.mark.parametrize("value", [[16, 4], "16-4", [1, 2, 3], "1-2-3", "abc", "4-"])
def test_parse_range_rejects(value):
    with pytest.raises(ValueError, match=r"^steps must be an int"):
        parse_range(value, "steps")


# --- export of every task ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_export_data_of_every_task(compose, tmp_path, name):
    from lmsleep.export import export_data

    out = tmp_path / "samples.jsonl"
    cfg = compose(
        [f"data={name}", "split=val", "n=4", "start=2", "seed=3", f"out={out}"], config_name="export"
    )
    assert export_data(cfg) == 4
    records = [json.loads(line) for line in out.read_text().splitlines()]
    task = task_from_config(name, seed=3)
    assert records == [json.loads(json.dumps(task.export("val", i))) for i in range(2, 6)]
    for r in records:
        assert {"input_ids", "labels", "text", "depth", "split", "index"} <= set(r)
        assert len(r["input_ids"]) == len(r["labels"]) == len(r["text"].split()) <= task.max_length
        assert task.vocab.encode(r["text"].split()) == r["input_ids"]
        assert any(y != IGNORE_INDEX for y in r["labels"])
