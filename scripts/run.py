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
from omegaconf import DictConfig

from common.data import DataMissingError
from scripts.build import build_run
from scripts.config import ConfigError

log = logging.getLogger("poisonlab")


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="config")
def main(cfg: DictConfig) -> None:
    """Check ``cfg`` completely and build its run once, then run it on the configured engine."""
    logging.getLogger("flwr").propagate = False  # Flower logs to the console itself
    try:
        run = build_run(cfg)
    except (ConfigError, DataMissingError) as err:
        print(f"poisonlab: configuration error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    out_dir = run.cfg["output_dir"] = HydraConfig.get().runtime.output_dir
    print(f"[poisonlab] run folder: {out_dir}", flush=True)
    run.engine.run(run)
    print(f"[poisonlab] done: {out_dir}/summary.json", flush=True)


if __name__ == "__main__":
    main()
