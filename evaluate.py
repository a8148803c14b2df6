"""Score saved NAMMs and baseline policies side by side: `python evaluate.py [checkpoint=...] [task=...] [compare=[...]]`.

The work lives in `tasks/evaluation/`; this file only hands Hydra's config to it.
"""

import hydra
from omegaconf import DictConfig

from namm.evolution.sweep import run_job
from tasks.evaluation import evaluate, register_configs

register_configs()


@hydra.main(version_base=None, config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """A bad input exits with its message alone (it names the setting and the fix), as train.py does."""
    run_job(cfg, evaluate, program="evaluate.py")


if __name__ == "__main__":
    main()
