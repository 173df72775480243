"""Score text under a causal LM: log-likelihoods of continuations, and greedy continuations.

Tokenization follows lm-evaluation-harness (`TemplateLM._encode_pair`, `HFLM._loglikelihood_tokens`)
so that scores are the numbers the harness reports for the same model, data and prompt:
* trailing whitespace of the context moves to the front of the continuation;
* the context and context+continuation are each encoded as one string (no special tokens), and the
  continuation's tokens are the tail of the whole encoding beyond the context's token count;
* an empty context is the end-of-text token (BOS if the tokenizer has one) unless the continuation
  itself starts with it;
* context+continuation longer than the context window is cut from the left (window + 1 tokens, the
  last one dropped from the input);
* the score is the sum of the continuation tokens' log-probabilities (log-softmax in fp32), and
  `is_greedy` says whether every continuation token is the argmax.

Requests are deduplicated, sorted longest first and run in batches; logits are computed only at the
continuation positions (`logits_to_keep`), which on GPT-2's 50k vocabulary is most of the work saved.
Under a multi-process launch each process scores a share of the requests and the results are
gathered, so every request counts once and every process returns all of them.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from finetune.errors import DataError
from finetune.models.heads import skip_padding_check

@dataclass
class ScoringStats:
    """What scoring did, for the log and metrics.json."""

    requests: int = 0  # as asked
    scored: int = 0  # after removing duplicates
    tokens: int = 0  # model input tokens (unpadded), all processes
    truncated: int = 0  # requests cut from the left to fit the window
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: "ScoringStats") -> None:
        for name in ("requests", "scored", "tokens", "truncated", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict:
        return {"requests": self.requests, "scored": self.scored, "tokens": self.tokens, "truncated": self.truncated,
                "seconds": round(self.seconds, 3), "tokens_per_second": round(self.tokens_per_second, 1)}


def context_window(model, tokenizer=None) -> int:
    """The model's maximum sequence length (the harness's order: n_positions, max_position_embeddings, n_ctx)."""
    config = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 10**9 else 2048


def prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per (context, continuation), batch-encoded."""
    moved = []
    for context, continuation in pairs:
        kept = context.rstrip()
        moved.append((kept, context[len(kept):] + continuation))
    with_context = [i for i, (context, _) in enumerate(moved) if context]
    without = [i for i, (context, _) in enumerate(moved) if not context]
    contexts = _encode(tokenizer, [moved[i][0] for i in with_context])
    wholes = _encode(tokenizer, [moved[i][0] + moved[i][1] for i in with_context])
    encoded: list = [None] * len(pairs)
    for i, context_ids, whole_ids in zip(with_context, contexts, wholes):
        encoded[i] = (context_ids, whole_ids[len(context_ids):])
    prefix = prefix_token_id(tokenizer)
    for i, continuation_ids in zip(without, _encode(tokenizer, [moved[i][1] for i in without])):
        if continuation_ids and continuation_ids[0] == prefix:
            encoded[i] = (continuation_ids[:1], continuation_ids[1:])
        else:
            encoded[i] = ([prefix], continuation_ids)
    for (context, continuation), (_, continuation_ids) in zip(pairs, encoded):
        if not continuation_ids:
            raise DataError(f"the answer {continuation!r} after the prompt ending {context[-40:]!r} adds no token of its own "
                            f"(it merges into the prompt's last token); put a delimiter between them (task.prompt.delimiter)")
    return encoded


def _shares(order: list[int], accelerator) -> list[int]:
    """This process's requests: every num_processes-th of the length-sorted order (similar lengths per step)."""
    if accelerator is None or accelerator.num_processes == 1:
        return order
    return order[accelerator.process_index::accelerator.num_processes]


def _gather(accelerator, items: list) -> list:
    if accelerator is None or accelerator.num_processes == 1:
        return items
    from accelerate.utils import gather_object

    return gather_object(items)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _autocast(accelerator):
    return accelerator.autocast() if accelerator is not None else nullcontext()


@torch.no_grad()
def loglikelihood(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int, accelerator=None,
                  stats: ScoringStats | None = None) -> list[tuple[float, bool]]:
    """(sum of the continuation's token log-probabilities, whether greedy decoding gives it) per pair.

    Every process returns the results of all pairs, in the order given.
    """
    start = time.perf_counter()
    window = context_window(model, tokenizer)
    encoded = encode_pairs(tokenizer, pairs)
    unique: dict[tuple, int] = {}
    for context_ids, continuation_ids in encoded:
        unique.setdefault((tuple(context_ids), tuple(continuation_ids)), len(unique))
    requests = list(unique)
    too_long = [r for r in requests if len(r[1]) > window]
    if too_long:
        raise DataError(f"an answer of {len(too_long[0][1])} tokens is longer than the model's context window ({window})")
    # Longest first (the harness's order): the first batch shows the memory peak, padding stays small.
    order = sorted(range(len(requests)), key=lambda i: (-(len(requests[i][0]) + len(requests[i][1])), requests[i][0] + requests[i][1]))
    mine = _shares(order, accelerator)
    was_training = model.training
    model.eval()
    skip_padding_check(model.base_model)  # right-padded rows, no mask: exact under causal attention (see heads.encode_last)
    device = _device(model)
    results, tokens, truncated = [], 0, 0
    for begin in range(0, len(mine), batch_size):
        batch = mine[begin:begin + batch_size]
        rows = []
        for i in batch:
            context_ids, continuation_ids = requests[i]
            whole = list(context_ids + continuation_ids)
            truncated += len(whole) > window + 1
            rows.append(whole[-(window + 1):][:-1])
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), tokenizer.eos_token_id, dtype=torch.long)
        for j, row in enumerate(rows):
            input_ids[j, :len(row)] = torch.tensor(row)
        # Right padding under causal attention: a real token never attends to the pads after it.
        lengths = [len(r) for r in rows]
        spans = [(n - len(requests[i][1]), n) for i, n in zip(batch, lengths)]
        low, high = min(s for s, _ in spans), max(e for _, e in spans)
        with _autocast(accelerator):
            logits = model(input_ids=input_ids.to(device), use_cache=False,
                           logits_to_keep=torch.arange(low, high, device=device)).logits
        logprobs = F.log_softmax(logits.float(), dim=-1)  # (rows, high - low, vocab)
        # Every continuation token of the batch at once: its row, its kept position, its id.
        row_of = torch.tensor([j for j, (s, e) in enumerate(spans) for _ in range(s, e)], device=device)
        position = torch.tensor([p - low for s, e in spans for p in range(s, e)], device=device)
        target = torch.tensor([t for i in batch for t in requests[i][1]], device=device)
        chosen = logprobs[row_of, position]
        token_scores = chosen.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        misses = (chosen.argmax(-1) != target).float()
        scores = torch.zeros(len(batch), device=device).index_add_(0, row_of, token_scores)
        greedy = torch.zeros(len(batch), device=device).index_add_(0, row_of, misses) == 0
        results += [(i, s, g) for i, s, g in zip(batch, scores.tolist(), greedy.tolist())]
        tokens += sum(lengths)
    model.train(was_training)
    gathered = _gather(accelerator, results)
    counts = _gather(accelerator, [(tokens, truncated)])
    by_request = {i: (score, greedy) for i, score, greedy in gathered}
    if sorted(by_request) != list(range(len(requests))):
        raise RuntimeError(f"scoring gathered {len(by_request)} results for {len(requests)} requests")
    if stats is not None:
        stats.add(ScoringStats(len(pairs), len(requests), sum(c[0] for c in counts), sum(c[1] for c in counts),
                               time.perf_counter() - start))
    return [by_request[unique[(tuple(c), tuple(k))]] for c, k in encoded]


@torch.no_grad()
def greedy_until(model, tokenizer, prompts: list[str], max_new_tokens: int, stop: list[str], batch_size: int,
                 accelerator=None, stats: ScoringStats | None = None) -> list[str]:
    """The greedy continuation of each prompt, up to the first stop string, end-of-text or max_new_tokens.

    Prompts are cut from the left to leave room for max_new_tokens in the window, sorted longest first
    and left-padded per batch (generate() derives the positions from the attention mask).
    """
    start = time.perf_counter()
    window = context_window(model, tokenizer)
    room = window - max_new_tokens
    if room < 1:
        raise DataError(f"task.prompt.max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                        f"context window ({window} tokens)")
    encoded = _encode(tokenizer, prompts)
    truncated = sum(len(ids) > room for ids in encoded)
    encoded = [ids[-room:] if ids else [prefix_token_id(tokenizer)] for ids in encoded]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), encoded[i]))
    mine = _shares(order, accelerator)
    was_training = model.training
    model.eval()
    device = _device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    results, tokens = [], 0
    for begin in range(0, len(mine), batch_size):
        batch = mine[begin:begin + batch_size]
        width = max(len(encoded[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, i in enumerate(batch):
            ids = encoded[i]
            input_ids[j, width - len(ids):] = torch.tensor(ids)
            attention_mask[j, width - len(ids):] = 1
        with _autocast(accelerator):
            output = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                stop_strings=list(stop) or None, tokenizer=tokenizer,
            )
        new_tokens = output[:, width:].cpu()
        for j, i in enumerate(batch):
            ids = new_tokens[j].tolist()
            if tokenizer.eos_token_id in ids:  # generation ended: the rest is padding
                ids = ids[:ids.index(tokenizer.eos_token_id)]
            text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for marker in stop:
                text = text.split(marker)[0]
            results.append((i, text))
            tokens += len(encoded[i]) + len(ids)
    model.train(was_training)
    gathered = dict(_gather(accelerator, results))
    if sorted(gathered) != list(range(len(prompts))):
        raise RuntimeError(f"generation gathered {len(gathered)} answers for {len(prompts)} prompts")
    token_total = sum(_gather(accelerator, [tokens]))
    if stats is not None:
        stats.add(ScoringStats(len(prompts), len(prompts), token_total, truncated, time.perf_counter() - start))
    return [gathered[i] for i in range(len(prompts))]
