"""Train under torchrun (or alone) with every BatchNorm on its running statistics, then save this
rank's final scores and model tensors to OUT/rank<r>.safetensors.

Run by test_distributed.py. In eval mode BN normalises with the running statistics, which are the
same on every rank, so nothing depends on how the global batch is cut into shards: one rank and
N ranks must then end with the same scores, masks and weights, up to float summation order.
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from training import distributed
from training.config import TrainConfig
from training.sources import load_domain
from training.trainer import Trainer


def main(config_path: Path, out: Path) -> None:
    ranks = distributed.setup("cpu")
    config = TrainConfig.load(config_path)
    data = [load_domain(entry, config.resize, config.crop) for entry in config.domains]
    run_dir = out / f"run-{ranks.world}"
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, run_dir, data, progress=False, ranks=ranks)
    model = trainer.model
    model.train = lambda mode=True: nn.Module.train(model, False)  # BN stays on running stats
    result = trainer.run()
    tensors = {f"model.{k}": v for k, v in result.model.state_dict().items()}
    tensors.update({f"scores.{i}": s for i, s in enumerate(result.scores)})
    tensors["duals"] = trainer.duals.values
    save_file(tensors, str(out / f"world{ranks.world}-rank{ranks.rank}.safetensors"))
    distributed.teardown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
