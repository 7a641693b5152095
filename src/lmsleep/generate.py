"""``generate(cfg)``: continue a prompt with a checkpoint of a text run (``lmsleep generate``, docs/text.md).

The checkpoint carries its run's tokenizer (saved by :class:`~lmsleep.data.TextDataModule`) and its run's
data/model overrides (re-applied by the CLI, as for ``lmsleep test``), so the model is rebuilt as it was
trained, without reading the corpus. Decoding goes through :class:`~lmsleep.models.Stream`: the prompt and then
every new token is fed in, and whenever a window of L tokens fills the model sleeps on it (passes 2..N) and
evicts its KV cache, as in training. The text goes to stdout; the KV size and per-token latency to stderr.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from omegaconf import DictConfig, open_dict

from lmsleep.data.tokenizer import tokenizer_from_dict
from lmsleep.models.streaming import Stream
from lmsleep.utils.checkpoint import check_checkpoint, check_fits_model
from lmsleep.utils.config import ConfigError, build

TEXT_STATE = "TextDataModule"  # the key Lightning saves the text DataModule's state (its tokenizer) under


def load_text_model(cfg: DictConfig) -> tuple[Any, Any, dict[str, Any]]:
    """The trained LightningModule (eval mode, on ``cfg.device``) and tokenizer of ``cfg.ckpt_path``."""
    if not cfg.get("ckpt_path") or str(cfg.ckpt_path) == "???":
        raise ConfigError(
            "lmsleep generate needs ckpt_path=PATH (a .ckpt file of a `lmsleep fit data=text` run)"
        )
    ckpt = check_checkpoint(cfg.ckpt_path)
    if TEXT_STATE not in ckpt or "tokenizer" not in ckpt[TEXT_STATE]:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is not a checkpoint of a text run (it holds no tokenizer); generate "
            "continues text, so pass a checkpoint written by `lmsleep fit data=text ...` (task runs have none)"
        )
    tokenizer = tokenizer_from_dict(ckpt[TEXT_STATE]["tokenizer"])
    with open_dict(cfg):
        cfg.model.net.vocab_size = tokenizer.vocab_size
        cfg.model.metrics = "text"
    model = build(cfg.model, "model")
    check_fits_model(ckpt, model, cfg.ckpt_path)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(str(cfg.get("device", "cpu"))).eval(), tokenizer, ckpt


def read_prompt(cfg: DictConfig) -> str:
    """``cfg.prompt``, or the text of ``cfg.prompt_file``; either must hold some text."""
    prompt, file = cfg.get("prompt"), cfg.get("prompt_file")
    if prompt is not None and file is not None:
        raise ConfigError("pass prompt='...' or prompt_file=PATH, not both")
    if file is not None:
        path = Path(str(file)).expanduser()
        if not path.is_file():
            raise ConfigError(f"prompt_file={file} is not a file; pass the path of a text file")
        prompt = path.read_text(encoding="utf-8", errors="replace")
    if not prompt:
        raise ConfigError(
            "the prompt is empty; pass prompt='some text' (taken verbatim: quote it for the shell only) or "
            "prompt_file=PATH"
        )
    return str(prompt)


def generate(cfg: DictConfig, out: TextIO | None = None, err: TextIO | None = None) -> dict[str, Any]:
    """Continue the prompt; print the text (to ``out``) and the KV size and latency (to ``err``).

    Returns ``{"text", "prompt_ids", "new_ids", "kv_tokens", "max_kv_tokens", "ms_per_token"}``.
    """
    out, err = out or sys.stdout, err or sys.stderr
    prompt = read_prompt(cfg)
    if int(cfg.max_new_tokens) < 0:
        raise ConfigError(f"max_new_tokens={cfg.max_new_tokens} must be >= 0")
    temperature, top_k = float(cfg.temperature), cfg.get("top_k")
    if temperature < 0 or (top_k is not None and int(top_k) < 1):
        raise ConfigError(
            f"temperature={temperature} must be >= 0 (0 = greedy) and top_k={top_k} >= 1 or null"
        )
    if cfg.get("flush_denormal", True):
        torch.set_flush_denormal(True)  # as in training: subnormal fast weights are slow on CPUs
    model, tokenizer, _ = load_text_model(cfg)
    ids, _ = tokenizer.encode(prompt)
    if cfg.get("new_document", True):  # a document starts after <eod>, as in the packed training data
        ids = torch.cat([torch.tensor([tokenizer.eod_id], dtype=ids.dtype), ids])
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    stream = Stream(model.net, model.sleep)
    new, times, max_kv = [], [], 0
    start = time.perf_counter()
    for token in stream.decode(ids.long()[None], int(cfg.max_new_tokens), temperature, top_k, generator):
        now = time.perf_counter()
        times.append(now - start)
        start, max_kv = now, max(max_kv, stream.kv_length)
        if cfg.get("stop_at_eod", True) and int(token) == tokenizer.eod_id:
            break
        new.append(int(token))
    shown = ids.tolist()[1 if cfg.get("new_document", True) else 0 :] if cfg.get("echo_prompt", True) else []
    text = tokenizer.decode(shown + new)
    out.write(text + "\n")
    out.flush()
    # times[0]: the prompt (and the first pick); then per new token: feeding the previous one (sleeping when it
    # completes a window) and picking the next
    per_token = 1000 * statistics.median(times[1:]) if len(times) > 1 else float("nan")
    slowest = 1000 * max(times[1:], default=float("nan"))
    sleep = model.sleep
    kv = (
        "no eviction" if sleep.eviction == "none" else f"window L = {sleep.window}, {sleep.eviction} eviction"
    )
    err.write(
        f"lmsleep: {len(new)} new tokens after a prompt of {len(ids)}; KV held {stream.kv_length} tokens at the "
        f"end, at most {max_kv} ({kv}, N = {sleep.passes}); median {per_token:.2f} ms per new token "
        f"(max {slowest:.2f} ms), prompt {1000 * times[0] if times else 0.0:.1f} ms\n"
    )
    return {
        "text": text,
        "prompt_ids": ids.tolist(),
        "new_ids": new,
        "kv_tokens": stream.kv_length,
        "max_kv_tokens": max_kv,
        "ms_per_token": per_token,
    }
