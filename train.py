"""Evolve a NAMM with CMA-ES: `python train.py [task=...] [evo=...] [experiment=stage1] [-m ...]`.

The loop lives in `namm/evolution/trainer.py`; this file only hands Hydra's config to it.
"""

import hydra
from omegaconf import DictConfig

from namm.evolution.checkpoint import CheckpointError
from namm.evolution.config import ConfigError, register_configs
from namm.evolution.trainer import train

register_configs()


@hydra.main(version_base=None, config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the best validation fitness, so Hydra sweepers can optimise over runs."""
    try:
        return train(cfg).best_validation_fitness
    except (ConfigError, CheckpointError) as error:  # the message says what to fix; a traceback would bury it
        raise SystemExit(f"train.py: {error}") from error


if __name__ == "__main__":
    main()
