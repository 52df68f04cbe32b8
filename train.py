"""Train one grid cell, or a grid with -m.

python train.py                                   # one run on the defaults (conf/config.yaml)
python train.py -m bits=1,2,4,6 qat_frac=0.1,0.3,0.5 model=nano tokens=2M
python train.py -m grid=smoke                     # a grid defined in conf/grid/
python train.py --help                            # every key, its allowed values, the launchers
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from qat.orchestration.entry import run_from_hydra

    return run_from_hydra(cfg)


if __name__ == "__main__":
    from qat.orchestration.command_line import main_with_checks

    main_with_checks(main)
