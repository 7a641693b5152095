"""``generate(cfg)``: continue a prompt with a checkpoint of a text run or a ``model=hf`` run (``lmsleep generate``,
docs/text.md, docs/pretrained.md).

The CLI re-applies the run's data/model overrides (as for ``lmsleep test``), so the model is rebuilt as it was
trained (:mod:`lmsleep.restore`). Two ways to the tokenizer, one decode loop: a text run's checkpoint carries
lmsleep's tokenizer; a ``model=hf`` run uses a transformers tokenizer (``tokenizer=PATH``, the data's, or the
model folder's). Decoding goes through :class:`~lmsleep.models.Stream`: the prompt and then every new token is
fed in, and whenever a window of L tokens fills the model sleeps on it (passes 2..N) and evicts its KV cache,
as in training. The text goes to stdout; the KV size and per-token latency to stderr.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from omegaconf import DictConfig

from lmsleep.models.streaming import Stream
from lmsleep.restore import (
    check_tokenizer_fits,
    checkpoint_of,
    is_hf_run,
    load_run_tokenizer,
    load_trained_model,
    model_name,
    text_tokenizer,
    tokenizer_source,
)
from lmsleep.utils.config import ConfigError


@dataclass(frozen=True)
class Codec:
    """What decoding needs of a tokenizer.

    Args:
        encode: text -> token ids, no special tokens.
        decode: token ids -> text.
        start: ids fed before a prompt that starts a document (``new_document=true``).
        stop: the id that ends a document (``stop_at_eod=true`` stops there), None if there is none.
    """

    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    start: tuple[int, ...]
    stop: int | None


def text_codec(tokenizer: Any) -> Codec:
    """lmsleep's text tokenizer: documents are separated by ``<eod>`` in the packed training data."""
    eod = tokenizer.eod_id
    return Codec(lambda text: tokenizer.encode(text)[0].tolist(), tokenizer.decode, (eod,), eod)


def hf_codec(tokenizer: Any) -> Codec:
    """A transformers tokenizer: a document starts with its BOS token where it has one (as a pretrained model
    saw documents start) and ends with its EOS token."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return Codec(
        lambda text: tokenizer.encode(text, add_special_tokens=False),
        lambda ids: tokenizer.decode(ids, skip_special_tokens=False),
        () if bos is None else (int(bos),),
        None if eos is None else int(eos),
    )


def load_generator(cfg: DictConfig) -> tuple[Any, Codec]:
    """The trained LightningModule of ``cfg.ckpt_path`` (eval, on ``cfg.device``) and its run's tokenizer."""
    ckpt = checkpoint_of(cfg, "generate")
    text = text_tokenizer(ckpt)
    if text is not None:
        if cfg.get("tokenizer"):
            raise ConfigError(
                f"tokenizer={cfg.tokenizer}: ckpt_path={cfg.ckpt_path} is a text run's checkpoint, which carries "
                "the tokenizer it was trained with; drop tokenizer="
            )
        return load_trained_model(cfg, ckpt), text_codec(text)
    if not is_hf_run(cfg):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is not a checkpoint of a text run (it holds no tokenizer) nor of a "
            f"model=hf run (its model is {model_name(cfg)}); generate continues text, so pass a checkpoint written "
            "by `lmsleep fit data=text ...` or `lmsleep fit model=hf ...` (task runs of lmsleep's models have none)"
        )
    source = tokenizer_source(cfg)
    if source is None:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is a model=hf run without a tokenizer (no tokenizer in its data or "
            "model folder); generate needs one to read the prompt: pass tokenizer=PATH (a model folder or a "
            "tokenizer.json whose ids the run was trained on)"
        )
    tokenizer = load_run_tokenizer(source)
    model = load_trained_model(cfg, ckpt)
    check_tokenizer_fits(tokenizer, source, model)
    return model, hf_codec(tokenizer)


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
    model, codec = load_generator(cfg)
    opening = codec.start if cfg.get("new_document", True) else ()
    ids = torch.tensor([*opening, *codec.encode(prompt)], dtype=torch.long)
    if len(ids) == 0:
        raise ConfigError(f"the prompt {prompt!r} encodes to no tokens; pass some text the tokenizer knows")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(int(cfg.seed))
    stream = Stream(model.net, model.sleep)
    new, times, max_kv = [], [], 0
    start = time.perf_counter()
    for token in stream.decode(ids[None], int(cfg.max_new_tokens), temperature, top_k, generator):
        now = time.perf_counter()
        times.append(now - start)
        start, max_kv = now, max(max_kv, stream.kv_length)
        if cfg.get("stop_at_eod", True) and int(token) == codec.stop:
            break
        new.append(int(token))
    shown = ids.tolist()[len(opening) :] if cfg.get("echo_prompt", True) else []
    text = codec.decode(shown + new)
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
