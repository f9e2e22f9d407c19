"""The ``poisonlab`` command: compose ``conf/`` with Hydra, validate, run one federation.

Examples
--------
``poisonlab`` (paper A's Fashion-MNIST federation on the local Ray simulation),
``poisonlab federation.num_rounds=50 strategy=fedavg_weighted``,
``poisonlab -m seed=0,1,2`` (a sweep, one run folder per job).
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from common.config import ConfigError, validate
from common.data import DataMissingError

log = logging.getLogger("poisonlab")


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Validate ``cfg`` completely, then run it on the configured engine."""
    logging.getLogger("flwr").propagate = False  # Flower logs to the console itself
    try:
        resolved = validate(cfg)
    except (ConfigError, DataMissingError) as err:
        print(f"poisonlab: configuration error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    resolved["output_dir"] = HydraConfig.get().runtime.output_dir
    engine = instantiate(cfg.engine)
    print(f"[poisonlab] run folder: {resolved['output_dir']}", flush=True)
    engine.run(resolved)
    print(f"[poisonlab] done: {resolved['output_dir']}/summary.json", flush=True)


if __name__ == "__main__":
    main()
