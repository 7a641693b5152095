"""SleepSchedule (when N and the trainable parameters change), SleepMonitor (what it writes to TensorBoard) and
LitLM's dispatch of the wake/sleep hooks to callbacks, in unit tests and short in-process fits."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import lmsleep.run
import lmsleep.train
from lmsleep.callbacks import SleepSchedule
from lmsleep.lit import LitLM
from lmsleep.models import SleepConfig
from lmsleep.models.hybrid import parameter_group
from tests.support import compose_config
from tests.support.models import TINY_HYBRID, StepRecorder, group_of, make_model, random_ids

# one torch thread and a fixed seed, as for the model tests this sat beside
pytestmark = pytest.mark.usefixtures("one_thread_and_seed")


# --- SleepSchedule.at -------------------------------------------------------------------------------------
def test_constant_schedule():
    schedule = SleepSchedule(mode="constant", settings={"passes": 4, "eviction": "sliding"})
    for t in (0, 1, 10_000):
        assert schedule.at(t) == ({"passes": 4, "eviction": "sliding"}, None)
    assert SleepSchedule().at(5) == ({}, None)


def test_ramp_schedule_goes_linearly_from_start_to_end():
    schedule = SleepSchedule(mode="ramp", start=1, end=4, begin=10, until=40, settings={"window": 8})
    values = {t: schedule.at(t)[0]["passes"] for t in range(0, 60)}
    assert all(values[t] == 1 for t in range(0, 11))
    assert all(values[t] == 4 for t in range(40, 60))
    assert values[20] == 2 and values[30] == 3
    assert all(values[t] <= values[t + 1] for t in range(59))
    assert set(values.values()) == {1, 2, 3, 4}
    assert schedule.at(25) == ({"window": 8, "passes": round(2.5)}, None)
    down = SleepSchedule(mode="ramp", start=4, end=1, begin=0, until=3)
    assert [down.at(t)[0]["passes"] for t in range(5)] == [4, 3, 2, 1, 1]


def test_stage_schedule_holds_each_stage_from_its_step():
    schedule = SleepSchedule(
        mode="stages",
        settings={"window": 8},
        stages=[  # given out of order: sorted by `at`
            {"at": 3, "passes": 2, "train": ["all"]},
            {"at": 0, "passes": 1, "eviction": "hard", "train": ["ssm"]},
            {"at": 10, "passes": 4, "freeze": ["embed"]},
        ],
    )
    assert schedule.at(0) == ({"window": 8, "passes": 1, "eviction": "hard"}, 0)
    assert schedule.at(2) == ({"window": 8, "passes": 1, "eviction": "hard"}, 0)
    # Settings are cumulative: eviction set by stage 0 holds until a later stage names it.
    assert schedule.at(3) == ({"window": 8, "passes": 2, "eviction": "hard"}, 1)
    assert schedule.at(9) == ({"window": 8, "passes": 2, "eviction": "hard"}, 1)
    assert schedule.at(10) == ({"window": 8, "passes": 4, "eviction": "hard"}, 2)
    assert schedule.at(10**6)[1] == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "cyclic"}, "mode='cyclic' is not one of"),
        ({"interval": "batch"}, "interval='batch' must be 'step' or 'epoch'"),
        (
            {"mode": "ramp", "start": 1, "end": 4, "begin": 5, "until": 5},
            "ramp needs passes start, end >= 1 and until > begin",
        ),
        ({"mode": "ramp", "start": 0, "end": 4, "begin": 0, "until": 5}, "ramp needs passes start, end >= 1"),
        ({"mode": "stages"}, "needs a non-empty `stages` list"),
        ({"mode": "stages", "stages": [{"at": 0, "paces": 2}]}, r"stage 0 has unknown keys \['paces'\]"),
        ({"mode": "stages", "stages": [{"at": 0, "passes": 0}]}, "sleep.passes must be >= 1"),
        ({"settings": {"loops": 2}}, r"settings has unknown settings \['loops'\]"),
        ({"settings": {"eviction": "soft"}}, "sleep.eviction='soft' is not one of"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SleepSchedule(**kwargs)


@pytest.mark.parametrize(
    "name, groups",
    [
        ("embed.weight", {"all", "embed"}),
        ("head.weight", {"all", "head"}),
        ("norm.weight", {"all", "norm"}),
        ("blocks.0.mixer.qkv.weight", {"all", "attn"}),
        ("blocks.1.mixer.A_log", {"all", "ssm"}),
        ("blocks.1.mixer.out_norm.weight", {"all", "ssm"}),
        ("blocks.1.mixer_norm.weight", {"all", "norm"}),
        ("blocks.2.mlp.up.weight", {"all", "mlp"}),
        ("blocks.2.mlp_norm.weight", {"all", "norm"}),
    ],
)
def test_parameter_groups(name, groups):
    assert parameter_group(name, ["attn", "ssm", "attn", "ssm"]) == groups


def _trainable(module: LitLM) -> dict[str, set[bool]]:
    out: dict[str, set[bool]] = {}
    for name, p in module.net.named_parameters():
        out.setdefault(group_of(name, module.net.kinds), set()).add(p.requires_grad)
    return out


def test_stages_set_trainable_parameters_by_group_and_pattern():
    module = LitLM(make_model(), sleep={"window": 4})
    SleepSchedule._set_trainable(module, {"train": ["ssm"]})
    assert {g for g, v in _trainable(module).items() if v == {True}} == {"ssm.mixer"}
    assert all(len(v) == 1 for v in _trainable(module).values())
    SleepSchedule._set_trainable(module, {"train": ["all"], "freeze": ["attn", "embed"]})
    frozen = {g for g, v in _trainable(module).items() if v == {False}}
    assert frozen == {"attn.mixer", "embed"}
    SleepSchedule._set_trainable(module, {"train": ["blocks.3.*", "head"]})
    on = {n for n, p in module.net.named_parameters() if p.requires_grad}
    assert on == {
        n for n, _ in module.net.named_parameters() if n.startswith("blocks.3.") or n == "head.weight"
    }
    with pytest.raises(ValueError, match="leaves no trainable parameter"):
        SleepSchedule._set_trainable(module, {"train": ["ssm"], "freeze": ["all"]})


def test_schedule_applies_settings_and_stage_to_the_module():
    module = LitLM(make_model(), sleep={"window": 4, "passes": 3})
    schedule = SleepSchedule(
        mode="stages", stages=[{"at": 0, "passes": 1, "train": ["ssm"]}, {"at": 2, "passes": 2}]
    )
    for step, passes, ssm_only in ((0, 1, True), (1, 1, True), (2, 2, False), (3, 2, False)):
        schedule._apply(SimpleNamespace(global_step=step, current_epoch=0), module)
        assert module.sleep == SleepConfig(window=4, passes=passes)
        assert (_trainable(module)["attn.mixer"] == {False}) == ssm_only
    epochs = SleepSchedule(mode="ramp", interval="epoch", start=1, end=3, begin=0, until=2)
    epochs._apply(SimpleNamespace(global_step=1000, current_epoch=1), module)
    assert module.sleep.passes == 2


# --- LitLM outside a trainer ------------------------------------------------------------------------------
def test_litlm_forward_is_the_net_with_its_sleep_config():
    net = make_model()
    module = LitLM(net, sleep={"passes": 3, "window": 5, "eviction": "sliding"})
    ids = random_ids(2, 17)
    logits, _ = module(ids)  # no trainer: the hooks go nowhere
    expected, _ = net(ids, SleepConfig(passes=3, window=5, eviction="sliding"))
    torch.testing.assert_close(logits, expected, atol=0.0, rtol=0.0)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["sleep_config"] == module.sleep.to_dict()
    module.sleep = SleepConfig(passes=1, window=5)
    module.on_load_checkpoint(checkpoint)  # not fitting: keeps the configured sleep settings
    assert module.sleep.passes == 1


# --- short fits -------------------------------------------------------------------------------------------
STAGES = "[{at:0,passes:1,train:[ssm]},{at:3,passes:2,train:[all]}]"
STEPS = 5
L = 4
WINDOWS = 3  # Rule 110 with 2 states of 4 bits and L = 4: 2 context windows + 1 answer window


def _fit(output_dir: Path, *overrides: str) -> tuple[dict, dict, StepRecorder]:
    """``train`` on the tiny staged config with a StepRecorder added to the callbacks."""
    cfg = compose_config(
        [
            *TINY_HYBRID,
            "callbacks=staged",
            f"callbacks.sleep_schedule.stages={STAGES}",
            "callbacks.sleep_monitor.every_n_steps=1",
            "callbacks.model_checkpoint.monitor=null",
            "callbacks.model_checkpoint.save_top_k=-1",
            "+callbacks.model_checkpoint.every_n_train_steps=1",
            "callbacks.model_checkpoint.filename='step_{step}'",
            f"trainer.max_steps={STEPS}",
            "trainer.max_epochs=100",
            "++trainer.limit_val_batches=0",
            "test=false",
            *overrides,
        ],
        output_dir=output_dir,
        keep_callbacks=["model_checkpoint", "sleep_monitor", "sleep_schedule"],
    )
    recorder = StepRecorder()
    original = lmsleep.run.instantiate_group

    def with_recorder(group, kind):
        objects = original(group, kind)
        return [*objects, recorder] if kind == "callback" else objects

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lmsleep.run, "instantiate_group", with_recorder)
        metrics, objects = lmsleep.train.train(cfg)
    return metrics, objects, recorder


@pytest.fixture(scope="module")
def staged_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("staged") / "run"
    metrics, objects, recorder = _fit(out)
    return SimpleNamespace(out=out, metrics=metrics, objects=objects, recorder=recorder)


def _expect_stage(record: dict, step: int) -> None:
    ssm_only = step < 3
    assert record["passes"] == (1 if ssm_only else 2), step
    assert record["passes_run"] == (0 if ssm_only else (WINDOWS - 1) * 1), step  # sleeps x (N - 1)
    for group, flags in record["groups"].items():
        assert flags == {group == "ssm.mixer" or not ssm_only}, (step, group, flags)


def test_stages_change_passes_and_trainable_parameters_at_their_steps(staged_run):
    steps = staged_run.recorder.steps
    assert sorted(steps) == list(range(STEPS))
    for step, record in steps.items():
        _expect_stage(record, step)
    assert staged_run.objects["trainer"].global_step == STEPS


def test_frozen_parameters_do_not_move_while_frozen(staged_run):
    steps = staged_run.recorder.steps
    start, end_frozen, end = (
        steps[0]["params_before"],
        steps[2]["params_after"],
        steps[STEPS - 1]["params_after"],
    )
    kinds = staged_run.objects["model"].net.kinds
    for name in start:
        moved_while_frozen = not torch.equal(start[name], end_frozen[name])
        assert moved_while_frozen == (group_of(name, kinds) == "ssm.mixer"), name
        assert not torch.equal(end_frozen[name], end[name]), f"{name} did not train in stage 1"


def test_litlm_dispatches_wake_and_sleep_hooks_with_windows_and_passes(staged_run):
    calls = staged_run.recorder.calls
    assert all(c[-1] is True for c in calls)  # training only (no validation in this run)
    # Without sleep passes the windows run as one span: one wake from the first window to the last.
    per_step_n1 = [("wake_start", 0, True), ("wake_end", WINDOWS - 1, True)]
    per_step_n2 = []
    for w in range(WINDOWS):
        per_step_n2 += [("wake_start", w, True), ("wake_end", w, True)]
        if w < WINDOWS - 1:
            per_step_n2 += [
                ("sleep_start", w, 2, True),
                ("sleep_pass", w, 2, True),
                ("sleep_end", w, 2, True),
            ]
    assert calls == per_step_n1 * 3 + per_step_n2 * (STEPS - 3)


def test_sleep_monitor_writes_scalars_and_gate_histograms(staged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((staged_run.out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])

    def series(tag):
        return {e.step: e.value for e in acc.Scalars(tag)}

    assert series("sleep_monitor/passes") == {0: 1.0, 1: 1.0, 2: 1.0, 3: 2.0, 4: 2.0}
    assert series("sleep_monitor/sleeps") == {0: 0.0, 1: 0.0, 2: 0.0, 3: 2.0, 4: 2.0}
    # Hard eviction: at most one window of KV. With sleep (steps 3, 4) the full context windows end a wake;
    # at N = 1 the windows wake as one span, whose end is the shorter answer window.
    peak = series("sleep_monitor/peak_kv")
    assert peak[3] == peak[4] == float(L) and 0 < peak[0] < L
    for tag in (
        "seconds_per_sleep",
        "fast_weight_norm/layer1",
        "fast_weight_norm/layer3",
        "rel_change/layer1/pass2",
        "rel_change/layer3/pass2",
    ):
        values = series(f"sleep_monitor/{tag}")
        assert sorted(values) == [3, 4], tag  # only steps that slept
        assert all(v > 0 for v in values.values()), tag
    assert not any("layer0" in t or "layer2" in t for t in scalars)  # attention layers have no fast weights
    # the schedule's N is logged by LitLM too
    assert [v for _, v in sorted(series("sleep/passes").items())] == [1.0, 1.0, 1.0, 2.0, 2.0]
    histograms = set(acc.Tags()["histograms"])
    assert {f"sleep_monitor/gates/layer{i}/{g}" for i in (1, 3) for g in ("decay", "write")} <= histograms
    decay = acc.Histograms("sleep_monitor/gates/layer1/decay")
    assert [h.step for h in decay] == list(range(STEPS))
    assert all(0 < h.histogram_value.min <= h.histogram_value.max < 1 for h in decay)  # a_t in (0, 1)


def test_resume_continues_with_the_schedule_in_force(staged_run, tmp_path):
    ckpt = staged_run.out / "checkpoints" / "step_2.ckpt"
    assert ckpt.is_file(), sorted(p.name for p in (staged_run.out / "checkpoints").iterdir())
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2 and saved["sleep_config"]["passes"] == 1
    # the config says N = 2 (rule110_sleep) and trains everything: only the schedule can put step 2 back
    # into stage 0
    _, objects, recorder = _fit(tmp_path / "resumed", f"ckpt_path={ckpt}", "model.sleep.passes=3")
    assert sorted(recorder.steps) == [2, 3, 4]
    for step, record in recorder.steps.items():
        _expect_stage(record, step)
    assert objects["trainer"].global_step == STEPS
    # the resumed step 2 starts from the weights the first run had after step 1
    for name, value in recorder.steps[2]["params_before"].items():
        torch.testing.assert_close(
            value, staged_run.recorder.steps[2]["params_before"][name], atol=0.0, rtol=0.0
        )


def test_resume_without_a_schedule_keeps_the_checkpoint_sleep_settings(tmp_path):
    """LitLM restores the sleep settings a fit had (a schedule may have set them) when the fit resumes."""
    _fit(tmp_path / "first", "callbacks.sleep_schedule.mode=constant", f"trainer.max_steps={2}")
    ckpt = tmp_path / "first" / "checkpoints" / "step_2.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["sleep_config"]["passes"] == 2
    _, objects, recorder = _fit(
        tmp_path / "second",
        "callbacks.sleep_schedule.mode=constant",
        "model.sleep.passes=3",
        f"ckpt_path={ckpt}",
    )
    assert sorted(recorder.steps) == [2, 3, 4]
    assert all(r["passes"] == 2 and r["passes_run"] == WINDOWS - 1 for r in recorder.steps.values())
    assert all(flags == {True} for r in recorder.steps.values() for flags in r["groups"].values())
