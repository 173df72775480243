"""Modes: what one command does over the shared setup (`python train.py mode=<name>`).

Each mode is a module with `check(cfg)` (what the config alone says it cannot do, run before any
work) and `run(cfg) -> Outcome`; `finetune.run` validates the config, calls both, and writes what
every run writes (metrics.json with the environment, the summary). configs/mode/<name>.yaml holds a
mode's options; a test checks the two lists agree.
"""

from finetune.modes import evaluate, predict, train, zeroshot

MODES = {
    "train": train,
    "evaluate": evaluate,
    "predict": predict,
    "zeroshot": zeroshot,
}
