"""Evolve a NAMM with CMA-ES: `python train.py [task=...] [evo=...] [experiment=stage1] [-m ...]`.

The loop lives in `namm/evolution/trainer.py`; this file only hands Hydra's config to it.
"""

import hydra
from omegaconf import DictConfig

from namm.evolution.config import register_configs
from namm.evolution.sweep import run_job
from namm.evolution.trainer import train

register_configs()


@hydra.main(version_base=None, config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns the best validation fitness, so Hydra sweepers can optimise over runs."""
    return run_job(cfg, lambda job_cfg: train(job_cfg).best_validation_fitness)


if __name__ == "__main__":
    main()
