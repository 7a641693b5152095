"""Mixed-depth Rule 110 (issue 32 Part 2): each sample draws its own t from ``data.task.steps=[lo,hi]``, and
the depth token opens the answer window, after every state's window, so under hard eviction the model reads t
only once the states are out of its attention. Fixed-t samples stay what they were."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from lmsleep.data import Rule110Task
from lmsleep.train import train


def simulate(state: str, steps: int) -> list[int]:
    """Rule 110 by its table (111 -> 0, 110 -> 1, 101 -> 1, 100 -> 0, 011 -> 1, 010 -> 1, 001 -> 1, 000 -> 0),
    periodic boundary; independent of lmsleep's implementation."""
    table = {"111": 0, "110": 1, "101": 1, "100": 0, "011": 1, "010": 1, "001": 1, "000": 0}
    row = state
    for _ in range(steps):
        row = "".join(str(table[row[i - 1] + row[i] + row[(i + 1) % len(row)]]) for i in range(len(row)))
    return [int(c) for c in row]


MIXED = dict(width=16, num_states=4, steps=[1, 6], window=16, seed=0)


def test_fixed_t_samples_are_unchanged():
    """A digest of 150 samples of t = 3 as the first study trained on them (W = L = 16, 4 states, seed 0)."""
    task = Rule110Task(width=16, num_states=4, steps=3, window=16, seed=0)
    samples = [task.sample(split, i) for split in ("train", "val", "test") for i in range(50)]
    digest = hashlib.sha256(json.dumps(samples, sort_keys=True).encode()).hexdigest()
    assert digest == "43088c6faa71faa0bf06bce05480813d616ab2c019cf8855435474940fafd8a5"
    assert task.vocab.decode([task.vocab.id("t=3")]) == "t=3" and task.vocab_size == 8


def test_each_sample_draws_its_own_depth_and_its_answers_follow_it():
    task = Rule110Task(**MIXED)
    samples = [task.sample("train", i) for i in range(600)]
    counts = Counter(s["steps"] for s in samples)
    assert sorted(counts) == [1, 2, 3, 4, 5, 6]
    assert all(60 <= c <= 140 for c in counts.values()), counts  # uniform: 100 each on average
    for s in samples[:100]:
        assert s["depth"] == s["steps"]
        assert s["answer"] == [int(simulate(state, s["steps"])[0]) for state in s["states"]]


@pytest.mark.parametrize(("width", "window"), [(16, 16), (6, 8), (12, 5)])
def test_the_depth_token_opens_the_answer_window_after_every_state(width, window):
    task = Rule110Task(width=width, num_states=4, steps=[1, 6], window=window, seed=2)
    for i in range(30):
        s = task.sample("val", i)
        tokens = [task.vocab.decode([t]) for t in s["input_ids"]]
        where = tokens.index(f"t={s['steps']}")
        # the first token of the window after the last state's: no state token shares its window
        assert where % window == 0 and where == 4 * task.state_span
        assert all(tok in ("0", "1", "<pad>") for tok in tokens[:where])
        assert not any(tok.startswith("t=") for tok in tokens[:where] + tokens[where + 1 :])
        labelled = [p for p, label in enumerate(s["labels"]) if label != -100]
        assert labelled == list(range(where + 1, where + 5))  # the queries follow it, in the same window


def test_generation_is_deterministic_and_splits_are_disjoint():
    task, again = Rule110Task(**MIXED), Rule110Task(**MIXED)
    assert [task.sample("test", i) for i in range(20)] == [again.sample("test", i) for i in range(20)]
    other_seed = Rule110Task(**{**MIXED, "seed": 1})
    assert [task.sample("test", i)["states"] for i in range(5)] != [
        other_seed.sample("test", i)["states"] for i in range(5)
    ]
    keys = {
        split: {task.key(task.sample(split, i)) for i in range(300)} for split in ("train", "val", "test")
    }
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"])
    # the key holds t: the same states at another depth are another problem
    s = task.sample("train", 0)
    assert task.key(s) != task.key({**s, "steps": s["steps"] % 6 + 1})


def test_export_carries_t():
    record = Rule110Task(**MIXED).export("test", 3)
    assert record["steps"] == record["depth"] and 1 <= record["steps"] <= 6
    assert f"t={record['steps']}" in record["text"]
    json.dumps(record)


def test_a_fit_reports_metrics_by_depth(compose, tiny, tmp_path, one_thread):
    overrides = [
        *tiny,
        *("debug=limit", "trainer.max_steps=2", "model=hybrid", "data.task.width=6", "data.task.steps=[1,3]"),
        *(
            "data.val_size=24",
            "data.test_size=24",
            "trainer.limit_val_batches=6",
            "trainer.limit_test_batches=6",
        ),
    ]
    metrics, _ = train(compose(overrides, output_dir=tmp_path / "run"), overrides)
    for prefix in ("val", "test", "test_final"):
        for t in (1, 2, 3):
            assert f"{prefix}/acc_exact@t={t}" in metrics and f"{prefix}/acc@t={t}" in metrics, (prefix, t)


def test_the_study_config_is_the_study_model_on_mixed_depths_with_a_constant_rate(compose):
    cfg = compose(["experiment=study/rule110_mixed_depth"])
    assert list(cfg.data.task.steps) == [1, 6] and cfg.data.task.width == cfg.data.task.window == 16
    assert cfg.model.optim.schedule == "constant" and cfg.model.sleep.passes == 1
    assert cfg.model.net.ssm.rule == "gated_delta" and cfg.model.sleep.eviction == "hard"
    assert cfg.trainer.max_steps == 2400 and "final_validation" in cfg.callbacks
    assert cfg.trainer.max_steps % cfg.callbacks.step_checkpoint.every_n_train_steps == 0  # last step on disk
    assert cfg.data.val_size == 6 * 256 and cfg.data.test_size == 6 * 512


def test_the_pilot_and_the_compute_baseline_differ_from_the_study_only_where_they_say(compose):
    study = compose(["experiment=study/rule110_mixed_depth"])
    pilot = compose(["experiment=study/rule110_mixed_depth_pilot"])
    more = compose(["experiment=study/rule110_mixed_depth_more_tokens"])
    assert study.task_name != pilot.task_name != more.task_name != study.task_name  # three labels in a report
    for cfg in (pilot, more):
        assert (
            cfg.data == study.data
            and cfg.model.net == study.model.net
            and cfg.model.optim == study.model.optim
        )
    assert more.model.sleep.passes == 1 and more.trainer.max_steps == 4 * study.trainer.max_steps
    assert more.trainer.max_steps % more.callbacks.step_checkpoint.every_n_train_steps == 0
