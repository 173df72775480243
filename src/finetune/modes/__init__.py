"""Modes: what one command does over the shared setup (`python train.py mode=<name>`).

Each mode is one function `run(cfg) -> Outcome` in its own module; `finetune.run` validates the
config, calls it, and writes what every run writes (metrics.json with the environment, the
summary). configs/mode/<name>.yaml holds a mode's options; a test checks the two lists agree.
"""

from finetune.modes import evaluate, predict, train, zeroshot

MODES = {
    "train": train.run,
    "evaluate": evaluate.run,
    "predict": predict.run,
    "zeroshot": zeroshot.run,
}
