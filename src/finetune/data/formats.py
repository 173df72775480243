"""GPT-1 style input transformations, done by the tokenizer itself.

The tokenizer's post-processor wraps every input: `start text extract` for one text and
`start text_a delim text_b extract` for a pair. Because the template lives in the saved
tokenizer, `transformers.pipeline` applies exactly the same format as training did.

Without `model.gpt1_tokens` there is no start or extract token and the delimiter is GPT-2's
`<|endoftext|>` (the GPT-2 tokenizer itself joins pairs with no separator at all). With it, three
learned tokens are added to the vocabulary as in GPT-1.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers.processors import TemplateProcessing

GPT1_TOKENS = {"start": "<|start|>", "delim": "<|delim|>", "extract": "<|extract|>"}


@dataclass(frozen=True)
class FormatTokens:
    start: str | None
    delim: str
    extract: str | None


def configure_tokenizer(tokenizer, gpt1_tokens: bool) -> FormatTokens:
    """Set the pad token, right padding and the input template on a fast GPT-2 tokenizer."""
    if tokenizer.eos_token is None:
        raise ValueError("the tokenizer has no end-of-text token to use as delimiter and padding")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if gpt1_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(GPT1_TOKENS.values())})
        tokens = FormatTokens(GPT1_TOKENS["start"], GPT1_TOKENS["delim"], GPT1_TOKENS["extract"])
    else:
        tokens = FormatTokens(None, tokenizer.eos_token, None)
    start = f"{tokens.start} " if tokens.start else ""
    extract = f" {tokens.extract}" if tokens.extract else ""
    extract_b = f" {tokens.extract}:1" if tokens.extract else ""
    used = {t for t in (tokens.start, tokens.delim, tokens.extract) if t}
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{start}$A{extract}",
        pair=f"{start}$A {tokens.delim} $B:1{extract_b}",
        special_tokens=[(t, tokenizer.convert_tokens_to_ids(t)) for t in sorted(used)],
    )
    return tokens


def encode(tokenizer, texts, pairs=None, max_length: int = 1024, truncation: str = "longest_first"):
    """Tokenize with the template; truncate only the rows that are too long, and say which."""
    full = tokenizer(texts, pairs, truncation=False, add_special_tokens=True, verbose=False)
    too_long = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > max_length]
    groups = {truncation: too_long}
    if too_long and truncation == "only_first" and pairs is not None:
        # `only_first` must leave at least one token of the first text, or tokenizers raises a bare
        # Exception for the whole batch: rows whose second text alone is that long (a multiple-choice
        # answer longer than the window) are cut `longest_first` instead.
        def first_can_absorb(i):
            return sum(s == 0 for s in full.sequence_ids(i)) > len(full["input_ids"][i]) - max_length

        groups = {
            "only_first": [i for i in too_long if first_can_absorb(i)],
            "longest_first": [i for i in too_long if not first_can_absorb(i)],
        }
    for strategy, rows in groups.items():
        if not rows:
            continue
        cut = tokenizer(
            [texts[i] for i in rows],
            [pairs[i] for i in rows] if pairs is not None else None,
            truncation=strategy,
            max_length=max_length,
        )
        for j, i in enumerate(rows):
            full["input_ids"][i] = cut["input_ids"][j]
            full["attention_mask"][i] = cut["attention_mask"][j]
    return {"input_ids": full["input_ids"], "attention_mask": full["attention_mask"]}, set(too_long)
