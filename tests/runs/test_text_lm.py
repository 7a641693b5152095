"""Language modelling on text: the per-window metrics against a hand computation, ``lmsleep fit data=text``
(fast_dev_run, and a short run with checkpoints and TensorBoard), ``lmsleep report`` of a text run, and
``lmsleep generate`` against the model's own streaming output."""

from __future__ import annotations

import math
import re
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmsleep.cli import main
from lmsleep.data import ByteTokenizer
from lmsleep.generate import generate
from lmsleep.lit.metrics import WindowLMMetrics
from lmsleep.models import Stream
from lmsleep.reporting.report import report
from lmsleep.train import train
from lmsleep.utils.config import ConfigError

LN2 = math.log(2.0)
# T = 32 bytes in windows of L = 8 (4 windows), shares large enough for a small corpus
TEXT = ["data=text", "data.seq_len=32", "data.window=8", "data.val_fraction=0.2", "data.test_fraction=0.2"]
HYBRID = ["model=hybrid", "model.net.ssm.rule=gated_delta", "model.sleep.passes=2"]


def write_corpus(root: Path, n: int = 40) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        lines = [f"def f{i}_{k}(x):\n    return x * {k} + {i}\n" for k in range(2 + i % 5)]
        (root / f"m{i:02d}.py").write_text("".join(lines))
    return root


# --- the metric by hand -----------------------------------------------------------------------------------
def hand_made_batch():
    """2 sequences of T = 6 positions in windows of L = 2, 3 classes. Every position puts logit ln 2 on its
    predicted class and 0 on the others: cross-entropy ln 2 where the label is the prediction, ln 4 where not.

    sequence 0: labels at t = 0 (right), 1 (wrong), 3 (right), 5 (wrong)
    sequence 1: labels at t = 2 (wrong), 4 (right), 5 (right); t = 0, 1, 3 carry no loss
    window 0 (t 0-1): ln2, ln4     window 1 (t 2-3): ln4, ln2     window 2 (t 4-5): ln4, ln2, ln2
    """
    pred = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 2, 2, 2, 2]])
    labels = torch.tensor([[0, 2, -100, 0, -100, 0], [-100, -100, 0, -100, 2, 2]])
    logits = torch.nn.functional.one_hot(pred, 3).float() * LN2
    return logits, labels


def test_window_metrics_by_hand_bytes():
    logits, labels = hand_made_batch()
    metric = WindowLMMetrics()
    metric.update(logits, labels, window=2)
    out = {k: v.item() for k, v in metric.compute().items()}
    ln4 = 2 * LN2
    nats = {0: LN2 + ln4, 1: ln4 + LN2, 2: ln4 + 2 * LN2}
    count = {0: 2, 1: 2, 2: 3}
    expected = {"loss": sum(nats.values()) / 7, "bpb": sum(nats.values()) / LN2 / 7}
    for w in nats:  # one byte per token: bits per byte are bits per token, and no "bpt" is logged
        expected[f"loss@window={w}"] = nats[w] / count[w]
        expected[f"bpb@window={w}"] = nats[w] / LN2 / count[w]
    assert out.keys() == expected.keys()
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-6), key
    assert out["bpb@window=0"] == pytest.approx(1.5) and out["bpb@window=2"] == pytest.approx(4 / 3)


def test_window_metrics_by_hand_with_bytes_per_token_and_batches():
    logits, labels = hand_made_batch()
    token_bytes = torch.tensor([[3, 1, 9, 2, 9, 1], [9, 9, 4, 9, 1, 2]])  # 9: unlabelled, never counted
    whole = WindowLMMetrics()
    whole.update(logits, labels, 2, token_bytes)
    parts = WindowLMMetrics()
    for b in range(2):
        parts.update(logits[b : b + 1], labels[b : b + 1], 2, token_bytes[b : b + 1])
    out = {k: v.item() for k, v in whole.compute().items()}
    assert out == pytest.approx({k: v.item() for k, v in parts.compute().items()})
    bits = {0: (LN2 + 2 * LN2) / LN2, 1: 3.0, 2: 4.0}  # window bits: 3, 3 and 4
    nbytes = {0: 3 + 1, 1: 4 + 2, 2: 1 + 1 + 2}
    assert out["bpb"] == pytest.approx(10 / 14) and out["bpt"] == pytest.approx(10 / 7)
    for w in bits:
        assert out[f"bpb@window={w}"] == pytest.approx(bits[w] / nbytes[w]), w
        assert out[f"bpt@window={w}"] == pytest.approx(bits[w] / (3 if w == 2 else 2)), w


# --- lmsleep fit data=text --------------------------------------------------------------------------------
def test_fit_text_fast_dev_run(compose_fit, tiny, tmp_path, one_thread, caplog):
    root = write_corpus(tmp_path / "corpus")
    cfg = compose_fit(*TEXT, f"data.paths=[{root}]", "debug=fdr", *tiny, *HYBRID)
    with caplog.at_level("INFO", logger="lmsleep"):
        metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 1
    assert "Text data: 40 documents from 40 files" in caplog.text  # the split is in the run's log
    assert re.search(r"  val +\d+ documents +[\d,]+ tokens +\d+ sequences \(8 used\)", caplog.text)
    assert cfg.model.metrics == "text" and objects["model"].net.embed.num_embeddings == 258
    for split in ("val", "test"):
        assert metrics[f"{split}/bpb"] == pytest.approx(metrics[f"{split}/loss"] / LN2, rel=1e-5)  # bytes
        windows = sorted(int(k.split("=")[1]) for k in metrics if k.startswith(f"{split}/bpb@window="))
        assert windows == [0, 1, 2, 3]  # 32 bytes in windows of 8
        assert not any(k.startswith(f"{split}/acc") or "bpt" in k for k in metrics)
    assert 7.0 < metrics["test/bpb"] < 9.0  # about log2(258) bits for an untrained model


def test_fit_text_with_a_tokenizer_file(compose_fit, tiny, tmp_path, one_thread):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    root = write_corpus(tmp_path / "corpus")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([p.read_text() for p in sorted(root.iterdir())], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    cfg = compose_fit(
        *TEXT, f"data.paths=[{root}]", f"data.tokenizer={tmp_path / 'tokenizer.json'}", "debug=fdr", *tiny
    )
    metrics, objects = train(cfg)
    assert objects["model"].net.embed.num_embeddings == tok.get_vocab_size() + 2  # + <eod> + <pad>
    for split in ("val", "test"):  # tokens stand for several bytes: fewer bits per byte than per token
        assert metrics[f"{split}/bpt"] == pytest.approx(metrics[f"{split}/loss"] / LN2, rel=1e-5)
        assert metrics[f"{split}/bpb"] < metrics[f"{split}/bpt"] / 1.5
        assert f"{split}/bpt@window=3" in metrics


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, compose, tiny, one_thread):
    """A two-step hybrid N = 2 fit on a small corpus, with checkpoints and TensorBoard."""
    root = tmp_path_factory.mktemp("text")
    corpus = write_corpus(root / "corpus")
    overrides = [
        *TEXT,
        f"data.paths=[{corpus}]",
        *tiny,
        *HYBRID,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1",
        "callbacks.rich_progress_bar=null",
        "task_name=tiny_text",
    ]
    out = root / "run"
    cfg = compose(overrides, output_dir=out)
    metrics, objects = train(cfg, overrides=overrides)
    return SimpleNamespace(root=root, out=out, metrics=metrics, objects=objects, overrides=overrides)


def test_text_run_logs_window_scalars_and_the_bar_chart(text_run):
    acc = EventAccumulator(str(text_run.out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"val/bpb", "val/loss", "test/bpb", "val/bpb@window=0", "val/bpb@window=3"} <= set(scalars)
    assert acc.Images("pictures/bpb_by_window")[-1].encoded_image_string.startswith(b"\x89PNG")
    assert "pictures/acc_by_depth" not in acc.Tags()["images"]
    ckpt = torch.load(text_run.out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["TextDataModule"]["tokenizer"] == {"kind": "bytes"}  # generate reads the run's tokenizer


def test_report_of_a_text_run(text_run, tmp_path):
    out = tmp_path / "results"
    written = report([str(text_run.out)], str(out))
    assert out / "window.png" in written and (out / "window.png").stat().st_size > 1000
    (meta,) = (out / "raw").glob("*.json")
    info = OmegaConf.load(meta)
    assert info.label == "tiny_text hybrid N=2"
    assert info.settings.tokens_per_step == 4 * 32  # batch x seq_len x one device
    assert info.settings.data.seq_len == 32 and info.settings.data.window == 8
    summary = (out / "summary.md").read_text()
    assert "| tiny_text hybrid N=2 | 1 |" in summary and "| test/bpb |" in summary


# --- lmsleep generate -------------------------------------------------------------------------------------
def test_cli_generate_equals_the_models_streaming_output(text_run, cli, tmp_path):
    last = text_run.out / "checkpoints" / "last.ckpt"
    prompt = "def f(x):\n    return"  # parentheses, a colon and a newline: no Hydra parsing of the prompt
    args = ["max_new_tokens=40", "temperature=1.0", "top_k=20", "seed=7", "stop_at_eod=false"]
    result = cli("generate", f"ckpt_path={last}", f"prompt={prompt}", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    model = text_run.objects["model"].eval()
    tok = ByteTokenizer()
    ids = torch.tensor([[tok.eod_id, *prompt.encode()]])  # a new document starts after <eod>
    stream = Stream(model.net, model.sleep)
    new = stream.generate(ids, 40, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7))
    expected = tok.decode([*prompt.encode(), *new[0].tolist()]) + "\n"
    # The subprocess's stdout is read in text mode, whose universal newlines turn a sampled "\r" into "\n".
    assert result.stdout == expected.replace("\r\n", "\n").replace("\r", "\n")
    stats = re.search(
        r"40 new tokens after a prompt of 21; KV held (\d+) tokens at the end, at most (\d+) "
        r"\(window L = 8, hard eviction, N = 2\); median ([\d.]+) ms per new token",
        result.stderr,
    )
    assert stats, result.stderr
    assert int(stats.group(1)) == stream.kv_length == (21 + 40) % 8 and int(stats.group(2)) <= 8
    assert not list(tmp_path.iterdir())  # generating writes no run folder


def test_generate_in_process_and_its_errors(text_run, compose, tmp_path, capsys):
    last = text_run.out / "checkpoints" / "last.ckpt"
    base = [*TEXT, *HYBRID, "model.net.dim=16", "model.net.heads=2", f"ckpt_path={last}"]
    cfg = compose([*base, "prompt=abc", "max_new_tokens=5", "temperature=0"], config_name="generate")
    first = generate(cfg)
    again = generate(
        compose([*base, "prompt=abc", "max_new_tokens=5", "temperature=0"], config_name="generate")
    )
    assert first["new_ids"] == again["new_ids"] and len(first["new_ids"]) <= 5  # greedy: the same twice
    assert first["text"].startswith("abc") and first["prompt_ids"][0] == ByteTokenizer.eod_id
    with pytest.raises(ConfigError, match="the prompt is empty"):
        generate(compose([*base, "prompt=''"], config_name="generate"))
    (tmp_path / "p.txt").write_text("x = 1\n")
    from_file = generate(
        compose([*base, f"prompt_file={tmp_path / 'p.txt'}", "max_new_tokens=2"], "generate")
    )
    assert from_file["prompt_ids"][1:] == list(b"x = 1\n")
    task_ckpt = tmp_path / "task.ckpt"
    torch.save({"state_dict": {}}, task_ckpt)  # a checkpoint without a tokenizer (as a task run's)
    with pytest.raises(
        ConfigError, match=r"task.ckpt is not a checkpoint of a text run \(it holds no tokenizer\)"
    ):
        generate(compose([*base, f"ckpt_path={task_ckpt}", "prompt=x"], config_name="generate"))
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "prompt=x"])
    assert exit_info.value.code == 2
    assert "lmsleep: error: lmsleep generate needs ckpt_path=PATH" in capsys.readouterr().err


def test_stdlib_resolver_names_this_pythons_standard_library(compose):
    assert OmegaConf.create({"p": "${lmsleep.stdlib:}"}).p == sysconfig.get_paths()["stdlib"]
    cfg = compose(["experiment=study/text"])
    assert cfg.data.paths == [sysconfig.get_paths()["stdlib"]] and Path(cfg.data.paths[0]).is_dir()
    assert cfg.model.sleep.window == cfg.data.window == 128 and cfg.model.sleep.eviction == "hard"
    budgets = set()
    for name in ("study/text", "study/text_transformer", "study/text_sliding"):
        c = compose([f"experiment={name}"])
        budgets.add((c.trainer.max_steps, c.data.batch_size, c.data.seq_len))
    assert budgets == {(400, 16, 1024)}  # one token budget for the study and its baselines


def test_export_data_of_text_is_a_clear_error(compose):
    from lmsleep.export import export_data

    with pytest.raises(ConfigError, match=r"export-data writes the samples of a task .* has no task"):
        export_data(compose(["data=text"], config_name="export"))
