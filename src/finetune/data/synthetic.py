"""The project's own small data: synthetic sentiment sentences and a tiny BPE tokenizer.

Neither needs the network or ../shared, so the quickstart and the tests run on any machine.
Regenerate the committed files with `python -m finetune.data.synthetic data/`.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

POSITIVE = ["good", "great", "wonderful", "charming", "delightful", "moving", "brilliant", "funny", "warm", "superb"]
NEGATIVE = ["bad", "awful", "boring", "dull", "tedious", "clumsy", "terrible", "flat", "weak", "dreadful"]
SUBJECTS = ["the film", "this movie", "the story", "the cast", "the script", "the ending", "the director", "every scene"]
VERBS = ["is", "was", "feels", "seems", "looks", "remains"]
FILLERS = ["", "quite", "really", "rather", "truly", "mostly", "simply"]
TAILS = ["", " from start to finish", " in the end", " for most of its length", " despite the hype", " overall"]


def sentence(rng: random.Random) -> tuple[str, str]:
    """One review sentence; negation ('not') flips the sentiment word, as real reviews do."""
    positive = rng.random() < 0.5
    negated = rng.random() < 0.25
    word = rng.choice(POSITIVE if positive != negated else NEGATIVE)
    filler = rng.choice(FILLERS)
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS)] + (["not"] if negated else []) + ([filler] if filler else []) + [word]
    text = " ".join(parts) + rng.choice(TAILS) + " ."
    return text, "positive" if positive else "negative"


def write_split(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"] + ["\t".join(sentence(rng)) for _ in range(rows)]
    path.write_text("\n".join(lines) + "\n")


def train_tiny_tokenizer(corpus: list[str], out_dir: Path, vocab_size: int = 1024) -> None:
    """Byte-level BPE (GPT-2's scheme, so any text encodes) with `<|endoftext|>` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    wrapped = GPT2TokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
        model_max_length=1024,
    )
    wrapped.save_pretrained(out_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args()
    quickstart = args.data_dir / "quickstart"
    quickstart.mkdir(parents=True, exist_ok=True)
    write_split(quickstart / "train.tsv", 2000, seed=1)
    write_split(quickstart / "dev.tsv", 400, seed=2)
    rng = random.Random(3)
    corpus = [sentence(rng)[0] for _ in range(3000)]
    corpus += [" ".join(POSITIVE + NEGATIVE + SUBJECTS + VERBS + FILLERS + TAILS)]
    corpus += ["The quick brown fox jumps over the lazy dog. It is a man, a plan, a canal: Panama! 0123456789"]
    train_tiny_tokenizer(corpus, args.data_dir / "tiny-tokenizer")


if __name__ == "__main__":
    main()
