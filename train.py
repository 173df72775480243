"""Fine-tune GPT-2 on a task: `python train.py task=sst2` (see README for overrides)."""

import sys

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
    from finetune import cli, distributed, sweep

    # Multi-process launch: start the process group now and take rank 0's clock, so that every
    # rank composes the same ${ft.now:} run directory (see finetune.distributed).
    distributed.agree_on_launch_time()
    try:
        cli.main(main)  # Hydra's config errors: one line, exit code 2 (see finetune.cli)
    finally:
        distributed.shutdown()
    if sweep.failed_jobs():  # a -m sweep ran every job; exit 1 when some of them failed
        sys.exit(1)
