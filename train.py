"""Fine-tune GPT-2 on a task: `python train.py task=sst2` (see README for overrides)."""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from finetune.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg) -> float:
    from finetune.run import run_and_report

    return run_and_report(cfg, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    main()
