"""model.optim.schedule: cosine (the default, unchanged), constant and wsd after a linear warm-up."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmsleep.lit.optim import OptimConfig, lr_schedule, warmup_cosine, warmup_stable_decay
from lmsleep.train import train


def factors(cfg: OptimConfig, total: int) -> list[float]:
    f = lr_schedule(cfg, total)
    return [f(s) for s in range(total)]


def test_cosine_is_the_default_and_unchanged():
    cfg = OptimConfig()
    assert cfg.schedule == "cosine"
    assert factors(cfg, 300) == [warmup_cosine(300, 50, 0.1)(s) for s in range(300)]


def test_constant_holds_the_peak_after_warm_up():
    got = factors(OptimConfig(schedule="constant", warmup_steps=4, min_lr_ratio=0.1), 10)
    assert got == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 1])
    assert factors(OptimConfig(schedule="constant", warmup_steps=0), 3) == [1.0, 1.0, 1.0]


def test_wsd_decays_linearly_over_its_last_fraction():
    # 20 steps, warm-up 4, decay over the last 0.25 x 20 = 5 steps (15..19) to 0.1 at step 20
    cfg = OptimConfig(schedule="wsd", warmup_steps=4, min_lr_ratio=0.1, decay_fraction=0.25)
    got = factors(cfg, 20)
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert got[4:16] == pytest.approx([1.0] * 12)
    assert got[16:] == pytest.approx([1 - 0.9 * k / 5 for k in (1, 2, 3, 4)])
    assert lr_schedule(cfg, 20)(20) == pytest.approx(0.1) and lr_schedule(cfg, 20)(99) == pytest.approx(0.1)
    # decay_fraction 0 is constant; a decay longer than the run after warm-up starts at the warm-up's end
    assert factors(OptimConfig(schedule="wsd", warmup_steps=2, decay_fraction=0.0), 6) == pytest.approx(
        [0.5, 1, 1, 1, 1, 1]
    )
    long = warmup_stable_decay(10, warmup_steps=4, min_lr_ratio=0.0, decay_fraction=1.0)
    assert [long(s) for s in range(3, 11)] == pytest.approx(
        [1.0, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0]
    )


def test_a_total_read_when_training_starts():
    total = {"n": 1}
    f = lr_schedule(
        OptimConfig(schedule="wsd", warmup_steps=0, decay_fraction=0.5, min_lr_ratio=0.0), lambda: total["n"]
    )
    total["n"] = 10
    assert [f(s) for s in (0, 5, 6, 10)] == pytest.approx([1.0, 1.0, 0.8, 0.0])


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"schedule": "linear"}, r"optim.schedule='linear' is not one of \('cosine', 'constant', 'wsd'\)"),
        ({"decay_fraction": 1.5}, r"decay_fraction=1.5 must be in \[0, 1\]"),
    ],
)
def test_bad_schedule_settings_are_refused(values, match):
    with pytest.raises(ValueError, match=match):
        OptimConfig.from_dict(values)


def test_a_fit_follows_the_configured_schedule(compose, tiny, tmp_path, one_thread):
    overrides = [
        *tiny,
        *(
            "debug=limit",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
            "trainer.log_every_n_steps=1",
        ),
        *("model.optim.warmup_steps=1", "model.optim.schedule=wsd", "model.optim.decay_fraction=0.5"),
        *("model.optim.min_lr_ratio=0.2", "test=false"),
    ]
    cfg = compose(overrides, output_dir=tmp_path / "run")
    assert cfg.model.optim.schedule == "wsd"
    train(cfg, overrides)
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    # 4 steps: warm-up 1, peak at step 1, decay over steps 2..4 reaching 0.2 at step 4
    expected = [1.0, 1.0, 1.0, 0.6]
    for name, peak in (("lr-MuonAdamW/muon", 2e-3), ("lr-MuonAdamW/adamw", 1e-3)):
        assert [e.value for e in acc.Scalars(name)] == pytest.approx([peak * f for f in expected], rel=1e-5)
