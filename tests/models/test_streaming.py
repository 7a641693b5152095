"""Streaming inference (lmsleep.models.Stream): equal to the training forward, bounded memory, decoding,
long streams, and pausing a stream in one process and resuming it in another."""

from __future__ import annotations

import textwrap

import pytest
import torch

from lmsleep.models import SleepConfig, Stream
from lmsleep.ops.update_rule import UPDATE_RULES
from tests.support import run_python
from tests.support.models import Recorder, expected_events, fast_weights_of, make_model, random_ids

RULES = tuple(UPDATE_RULES)  # every rule of the one table
EVICTIONS = ("hard", "sliding", "none")
L = 6
EXACT = dict(atol=1e-12, rtol=0.0)


def feed_in(stream: Stream, ids: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    bounds = [0, *cuts, ids.shape[1]]
    return torch.cat([stream.feed(ids[:, a:b]) for a, b in zip(bounds, bounds[1:], strict=False)], dim=1)


# --- equal to the training forward ------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("eviction", EVICTIONS)
@pytest.mark.parametrize("passes", [1, 3])
def test_stream_logits_equal_the_training_forward(rule, eviction, passes):
    model = make_model(rule)
    cfg = SleepConfig(passes=passes, window=L, eviction=eviction)
    ids = random_ids(2, 4 * L + 1)
    expected, _ = model(ids, cfg)
    token_by_token = feed_in(Stream(model, cfg, batch_size=2), ids, list(range(1, ids.shape[1])))
    torch.testing.assert_close(token_by_token, expected, **EXACT)
    # uneven chunks: inside a window, across one boundary, across two, ending exactly on one
    chunked = feed_in(Stream(model, cfg, batch_size=2), ids, [4, 5, 13, 18, 24])
    torch.testing.assert_close(chunked, expected, **EXACT)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_stream_equals_the_chunked_training_forward(rule, eviction):
    """Windows of 12 tokens run the chunked fast-weight backend in training (3 chunks of 4 here), while a
    token-by-token stream runs the recurrent one: the same numbers up to float64 rounding."""
    model = make_model(rule, chunk_size=4)
    assert model.blocks[1].mixer.recurrent_below <= 12
    cfg = SleepConfig(passes=3, window=12, eviction=eviction)
    ids = random_ids(2, 40)
    expected, _ = model(ids, cfg)
    streamed = feed_in(Stream(model, cfg, batch_size=2), ids, list(range(1, 40)))
    torch.testing.assert_close(streamed, expected, **EXACT)


def test_stream_of_one_sequence_takes_1d_tokens_and_rejects_bad_shapes():
    model = make_model()
    cfg = SleepConfig(passes=2, window=L)
    ids = random_ids(1, 2 * L)
    expected, _ = model(ids, cfg)
    stream = Stream(model, cfg)
    torch.testing.assert_close(
        torch.cat([stream.feed(ids[0, :5]), stream.feed(ids[0, 5:].tolist())], 1), expected, **EXACT
    )
    assert stream.tokens_seen == 2 * L
    with pytest.raises(ValueError, match=r"feed expects tokens \[batch=1, T\], got shape \(2, 3\)"):
        stream.feed(random_ids(2, 3))
    with pytest.raises(ValueError, match="feed expects tokens"):
        Stream(model, cfg, batch_size=2).feed(ids[0])


def test_stream_hooks_follow_the_windows():
    model = make_model()
    rec = Recorder()
    stream = Stream(model, SleepConfig(passes=3, window=L), batch_size=1, hooks=rec)
    feed_in(stream, random_ids(1, 3 * L), [1, 2, 9, 10])
    # a stream sleeps as soon as a window is full, the last one included
    assert rec.events == expected_events(3, 3, sleeps_last=True)
    stream.feed(random_ids(1, 1))
    assert rec.events[-1] == ("wake_start", 3)


@pytest.mark.parametrize("eviction, bound", [("hard", L), ("sliding", 2 * L - 1)])
def test_kv_memory_is_bounded_during_a_stream(eviction, bound):
    class Peak(Recorder):
        def __init__(self):
            super().__init__()
            self.kv = []

        def on_wake_end(self, window, state):  # the fullest moment: a whole window, before eviction
            self.kv.append(state.kv_length())

    rec = Peak()
    model = make_model()
    stream = Stream(model, SleepConfig(passes=2, window=L, eviction=eviction), hooks=rec)
    after_feed = []
    for token in random_ids(1, 5 * L + 2)[0]:
        stream.feed(token[None])
        after_feed.append(stream.kv_length)
    assert max(after_feed) <= bound and rec.kv == [L] + [bound] * 4  # window 0 has no previous window
    steady = (L - 1) if eviction == "sliding" else 0
    assert after_feed[L - 1 :: L] == [steady] * 5  # right after every sleep
    # without eviction it grows with the stream
    unbounded = Stream(model, SleepConfig(passes=2, window=L, eviction="none"))
    unbounded.feed(random_ids(1, 5 * L))
    assert unbounded.kv_length == 5 * L


# --- decoding ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_greedy_generate_equals_argmax_of_the_training_forward(rule, eviction):
    model = make_model(rule)
    cfg = SleepConfig(passes=3, window=L, eviction=eviction)
    prompt = random_ids(2, 4)
    new = Stream(model, cfg, batch_size=2).generate(prompt, 2 * L + 3)
    assert new.shape == (2, 2 * L + 3) and new.dtype == torch.long
    seq = prompt
    for _ in range(2 * L + 3):
        logits, _ = model(seq, cfg)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(new, seq[:, prompt.shape[1] :])
    assert len(set(new.flatten().tolist())) > 1  # not a degenerate constant output


def test_sampling_is_reproducible_with_a_seeded_generator_and_respects_top_k():
    model = make_model()
    cfg = SleepConfig(passes=2, window=L)
    prompt = random_ids(2, 3)

    def sample(seed, **kwargs):
        gen = torch.Generator().manual_seed(seed)
        return Stream(model, cfg, batch_size=2).generate(prompt, 16, temperature=1.0, generator=gen, **kwargs)

    a, b, c = sample(1), sample(1), sample(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(sample(3, top_k=1), Stream(model, cfg, batch_size=2).generate(prompt, 16))
    # top_k=2: every sampled token is one of the two most likely under the training forward
    picked = sample(4, top_k=2)
    logits, _ = model(torch.cat([prompt, picked], dim=1), cfg)
    top2 = logits[:, prompt.shape[1] - 1 : -1].topk(2, dim=-1).indices
    assert (top2 == picked[..., None]).any(-1).all()
    assert not (top2[..., 0] == picked).all()  # and it is not greedy decoding


def test_generate_argument_edges():
    stream = Stream(make_model(), SleepConfig(window=L), batch_size=2)
    empty = stream.generate(random_ids(2, 3), 0)
    assert empty.shape == (2, 0) and stream.tokens_seen == 3
    with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
        stream.generate(random_ids(2, 3), -1)
    with pytest.raises(ValueError, match="generate needs a prompt of at least one token"):
        stream.generate(random_ids(2, 0), 2)


def test_an_empty_chunk_changes_nothing():
    model = make_model()
    cfg = SleepConfig(passes=2, window=L)
    ids = random_ids(2, 2 * L)
    stream = Stream(model, cfg, batch_size=2)
    first = stream.feed(ids[:, :L])  # ends on a boundary: the next feed starts a window
    none = stream.feed(ids[:, :0])
    assert none.shape == (2, 0, 13) and none.dtype == first.dtype and stream.tokens_seen == L
    rest = stream.feed(ids[:, L:])
    torch.testing.assert_close(torch.cat([first, none, rest], dim=1), model(ids, cfg)[0], **EXACT)


# --- long streams -----------------------------------------------------------------------------------------
def _long_stream(rule: str, tokens: int, eviction: str = "hard") -> None:
    window = 32
    model = make_model(rule, dim=16, dtype=torch.float32)
    stream = Stream(model, SleepConfig(passes=3, window=window, eviction=eviction), batch_size=1)
    gen = torch.Generator().manual_seed(0)
    norms = []
    for i in range(tokens // window):
        logits = stream.feed(torch.randint(0, 13, (1, window), generator=gen))
        if i % 25 == 0 or i == tokens // window - 1:
            assert torch.isfinite(logits).all(), f"non-finite logits after {stream.tokens_seen} tokens"
            assert all(torch.isfinite(t).all() for t in stream.state.tensors()), (
                f"state at {stream.tokens_seen}"
            )
            norms.append(max(float(S.norm()) for S in fast_weights_of(stream.state).values()))
    assert stream.tokens_seen == tokens and stream.kv_length == (window - 1 if eviction == "sliding" else 0)
    # S is bounded: after the first windows it stays within a small factor of its early size
    assert 0 < max(norms) < 4 * max(norms[: max(2, len(norms) // 10)]) + 1e-6, norms


@pytest.mark.parametrize("rule", RULES)
def test_state_stays_finite_over_10k_tokens(rule):
    _long_stream(rule, 10_016, eviction="sliding")


@pytest.mark.slow
@pytest.mark.parametrize("rule", RULES)
def test_state_stays_finite_over_100k_tokens(rule):
    _long_stream(rule, 100_000)


# --- pause and resume -------------------------------------------------------------------------------------
@pytest.mark.parametrize("eviction", ["hard", "sliding"])
def test_saved_stream_continues_exactly_in_a_fresh_stream(tmp_path, eviction):
    model = make_model("gated_delta")
    cfg = SleepConfig(passes=3, window=L, eviction=eviction)
    ids = random_ids(2, 4 * L)
    cuts = [L + 4, L + 5, 2 * L + 3]  # the first: mid-window, with KV, conv tails and wake features pending
    whole = feed_in(Stream(model, cfg, batch_size=2), ids, cuts)  # the same chunks: bit-identical arithmetic
    stream = Stream(model, cfg, batch_size=2)
    head = stream.feed(ids[:, : L + 4])
    stream.save(tmp_path / "stream.pt")
    stream.feed(random_ids(2, 5, seed=9))  # the original goes on elsewhere; the file must not care
    resumed = Stream.load(tmp_path / "stream.pt", model)
    assert resumed.tokens_seen == L + 4 and resumed.batch_size == 2 and resumed.cfg == cfg
    tail = feed_in(resumed, ids[:, L + 4 :], [c - (L + 4) for c in cuts[1:]])
    torch.testing.assert_close(torch.cat([head, tail], dim=1), whole, atol=0.0, rtol=0.0)


def test_loading_a_stream_with_other_settings_fails(tmp_path):
    model = make_model()
    stream = Stream(model, SleepConfig(passes=3, window=L), batch_size=2)
    stream.feed(random_ids(2, 3))
    data = stream.state_dict()
    with pytest.raises(ValueError, match="saved stream has batch size 2, this one 1"):
        Stream(model, SleepConfig(passes=3, window=L)).load_state_dict(data)
    with pytest.raises(ValueError, match="resume with the same settings"):
        Stream(model, SleepConfig(passes=2, window=L), batch_size=2).load_state_dict(data)


@pytest.mark.parametrize(
    "other",
    [
        dict(rule="mamba2"),  # K = V here: the state has the same shape under the other rule
        dict(dim=32),
        dict(layout="ssm,attn,ssm,attn"),
    ],
    ids=["rule", "width", "layout"],
)
def test_loading_a_stream_into_another_model_fails(tmp_path, other):
    stream = Stream(make_model("gated_delta"), SleepConfig(passes=2, window=L), batch_size=2)
    stream.feed(random_ids(2, L + 2))
    stream.save(tmp_path / "stream.pt")
    with pytest.raises(ValueError, match="saved stream belongs to another model"):
        Stream.load(tmp_path / "stream.pt", make_model(**{"rule": "gated_delta", **other}))


RESUME = textwrap.dedent(
    """
    import sys, torch
    from lmsleep.models import Stream
    from tests.support.models import make_model
    torch.set_num_threads(1)
    folder = sys.argv[1]
    model = make_model("gated_delta", strong=False)
    model.load_state_dict(torch.load(folder + "/model.pt", weights_only=True))
    stream = Stream.load(folder + "/stream.pt", model)
    tokens = torch.load(folder + "/rest.pt", weights_only=True)
    torch.save(torch.cat([stream.feed(tokens[:, :3]), stream.feed(tokens[:, 3:])], dim=1), folder + "/logits.pt")
    """
)


def test_saved_stream_continues_exactly_in_another_process(tmp_path):
    model = make_model("gated_delta", seed=3)
    cfg = SleepConfig(passes=3, window=L, eviction="sliding")
    ids = random_ids(2, 4 * L, seed=5)
    whole = feed_in(Stream(model, cfg, batch_size=2), ids, [2 * L + 1, 2 * L + 4])
    stream = Stream(model, cfg, batch_size=2)
    stream.feed(ids[:, : 2 * L + 1])
    stream.save(tmp_path / "stream.pt")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.save(ids[:, 2 * L + 1 :].clone(), tmp_path / "rest.pt")
    done = run_python(RESUME, str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    logits = torch.load(tmp_path / "logits.pt", weights_only=True)
    torch.testing.assert_close(logits, whole[:, 2 * L + 1 :], **EXACT)
