"""``lmsleep export-hf`` and ``lmsleep generate`` on a ``model=hf`` checkpoint: the exported folder loads in plain
transformers with the checkpoint's function, generate decodes as lmsleep's Stream does, bad inputs stop with
one line."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest

pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")

import torch  # noqa: E402

from lmsleep.data.gsm_inf_text import GSMInfTextTask  # noqa: E402
from lmsleep.models import SleepConfig, Stream  # noqa: E402
from lmsleep.models.hf import from_hf  # noqa: E402
from lmsleep.models.hf.kernels import modeling_modules, torch_ops_on_cpu  # noqa: E402
from lmsleep.train import train  # noqa: E402
from tests.support import compose_config  # noqa: E402

from .test_lightning import QWEN3_5  # noqa: E402
from .test_text_task import SMALL, gsm_text_fit  # noqa: E402
from .tiny import save_word_tokenizer  # noqa: E402


def save_model_folder(folder, vocab_size: int):
    """A tiny random Qwen3.5 as ``save_pretrained`` writes it, with weights of std 0.1 and slow decays
    (``A = 0.1``; transformers' init forgets a window within a token or two, so sleeping would change no
    output: tests/hf/tiny.py)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(QWEN3_5)
    config = AutoConfig.for_model(
        fields.pop("model_type"), **fields, vocab_size=vocab_size, initializer_range=0.1
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "A_log", None), torch.nn.Parameter):
                module.A_log.fill_(math.log(0.1))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory, one_thread):
    """A two-step fit of a tiny Qwen3.5 model folder on the GSM task rendered as text through the folder's
    word-level tokenizer.json (N = 2, windows of 32 tokens, hard eviction), with its last checkpoint; and the
    checkpoint's wrapped model rebuilt by hand (not through the code under test)."""
    root = tmp_path_factory.mktemp("hf_run")
    folder = save_word_tokenizer(root / "model")  # the tokenizer beside the model, as in a hub folder
    task = GSMInfTextTask(tokenizer=folder, **SMALL)
    save_model_folder(folder, task.vocab_size)
    overrides = [o for o in gsm_text_fit(folder) if not o.startswith(("model.net.config=", "callbacks="))]
    overrides += [f"model.net.path={folder}", "callbacks=model_checkpoint"]
    train(compose_config(overrides, "fit", root / "run"), overrides=overrides)
    last = root / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    net = from_hf(path=folder).eval()
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return SimpleNamespace(root=root, last=last, net=net, task=task, folder=folder)


def test_export_hf_loads_in_transformers_with_the_checkpoints_logits(hf_run, cli_in_process, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    args = ["export-hf", f"ckpt_path={hf_run.last}", f"out={out}"]
    result = cli_in_process(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"wrote the qwen3_5 model \([\d,]+ parameters, float32\) to ", result.stderr)
    assert (
        f"tokenizer: data.task.tokenizer={hf_run.folder} (tokenizer.json, tokenizer_config.json)"
        in result.stderr
    )
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    prompt, _ = hf_run.task.render(hf_run.task.sample("test", 0))
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids == hf_run.task.tokenizer.encode(prompt, add_special_tokens=False).ids  # the run's tokenizer
    x = torch.tensor([ids])
    with torch.no_grad(), torch_ops_on_cpu(modeling_modules(model), True):  # fla's kernels need a GPU
        exported = model(x).logits
    with torch.no_grad():
        wrapped, _ = hf_run.net(x)  # N = 1, no eviction, one full forward
    assert exported.shape == wrapped.shape and (exported - wrapped).abs().max() <= 1e-6
    saved = json.loads((out / "lmsleep.json").read_text())  # the sleep settings the weights were trained with
    assert (
        saved["sleep"] == SleepConfig(passes=2, window=32, eviction="hard").to_dict()
        and saved["loop"] == "0:2"
    )
    again = cli_in_process(*args, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert (
        f"out={out} exists and is not empty; pass an empty or new folder, or overwrite=true" in again.stderr
    )
    assert cli_in_process(*args, "overwrite=true", cwd=tmp_path).returncode == 0


def test_cli_generate_equals_streaming_decode_of_the_checkpoint(hf_run, cli, tmp_path):
    from transformers import PreTrainedTokenizerFast

    prompt, _ = hf_run.task.render(hf_run.task.sample("test", 1))
    args = ["max_new_tokens=12", "temperature=0"]
    result = cli("generate", f"ckpt_path={hf_run.last}", f"prompt={prompt}", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(hf_run.folder / "tokenizer.json"))
    ids = tokenizer.encode(prompt, add_special_tokens=False)  # no BOS token: nothing before the prompt
    stream = Stream(hf_run.net, SleepConfig(passes=2, window=32, eviction="hard"))
    new = stream.generate(torch.tensor([ids]), 12)[0].tolist()
    assert result.stdout == tokenizer.decode(ids + new, skip_special_tokens=False) + "\n"
    awake = Stream(hf_run.net, SleepConfig(passes=1, window=32, eviction="hard"))
    assert awake.generate(torch.tensor([ids]), 12)[0].tolist() != new  # the comparison sees the sleep passes
    stats = re.search(
        rf"12 new tokens after a prompt of {len(ids)}; KV held (\d+) tokens at the end, at most (\d+) "
        r"\(window L = 32, hard eviction, N = 2\); median ([\d.]+) ms per new token",
        result.stderr,
    )
    assert stats, result.stderr[-3000:]
    assert int(stats.group(1)) == stream.kv_length == (len(ids) + 12) % 32 and int(stats.group(2)) <= 32
    assert len(ids) > 64 and float(stats.group(3)) > 0  # the prompt alone filled windows (and slept on them)
    assert not list(tmp_path.iterdir())  # generating writes no run folder


def fake_checkpoint(path, overrides: list[str]):
    """A checkpoint holding no weights, only the overrides of the run that would have written it."""
    torch.save({"state_dict": {}, "lmsleep_run": {"overrides": overrides}}, path)
    return path


def _error(result) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_export_hf_and_generate_refuse_with_one_line(cli_in_process, tmp_path):
    hybrid = fake_checkpoint(tmp_path / "hybrid.ckpt", ["model=hybrid"])
    out = tmp_path / "out"
    line = _error(cli_in_process("export-hf", f"ckpt_path={hybrid}", f"out={out}", cwd=tmp_path))
    assert "is a checkpoint of lmsleep's own HybridLM, not of a model=hf run" in line
    inserted = fake_checkpoint(
        tmp_path / "ouro.ckpt", ["model=hf", f"model.net.path={tmp_path}", "model.net.insert=[0]"]
    )
    line = _error(cli_in_process("export-hf", f"ckpt_path={inserted}", f"out={out}", cwd=tmp_path))
    assert (
        "has inserted fast-weight blocks (model.net.insert=[0]), which no transformers architecture" in line
    )
    assert "from_hf(path=..., insert=..., insert_ssm=...)" in line
    line = _error(cli_in_process("export-hf", f"ckpt_path={hybrid}", cwd=tmp_path))
    assert "lmsleep export-hf needs out=DIR" in line
    assert not out.exists()

    no_tokenizer = fake_checkpoint(
        tmp_path / "ids.ckpt", ["data=rule110", "model=hf", f"model.net.path={tmp_path}"]
    )
    line = _error(cli_in_process("generate", f"ckpt_path={no_tokenizer}", "prompt=x", cwd=tmp_path))
    assert "is a model=hf run without a tokenizer" in line and "pass tokenizer=PATH" in line
    missing = tmp_path / "nowhere"
    line = _error(
        cli_in_process(
            "generate", f"ckpt_path={no_tokenizer}", "prompt=x", f"tokenizer={missing}", cwd=tmp_path
        )
    )
    assert f"tokenizer={missing} is neither a tokenizer.json nor a folder with one of" in line
    line = _error(cli_in_process("generate", f"ckpt_path={hybrid}", "prompt=x", cwd=tmp_path))
    assert "is not a checkpoint of a text run (it holds no tokenizer) nor of a model=hf run" in line
