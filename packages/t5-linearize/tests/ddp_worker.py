"""Worker of test_ddp.py: 3 fine-tuning steps of a tiny linearized SD3 on a fixed global batch of 4.

Run alone (one process) or under ``torchrun --nproc_per_node 2`` (gloo on the CPU); each rank saves its final
weights to ``OUT/rank<r>.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from t5lin_helpers import make_sd3, tiny_adapter

from flowcore.adapters import Conditioning
from t5_linearize import FinetuneConfig, finetune, linearize
from t5_linearize.training import TensorData


def main(out: Path) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(8, 4, 8, 8, generator=g),
                      Conditioning(torch.randn(8, 7, 64, generator=g), torch.randn(8, 64, generator=g)))
    model = linearize(make_sd3(), generator=torch.Generator().manual_seed(0))
    config = FinetuneConfig(steps=3, batch_size=4, lr=1e-3, warmup_steps=0, output_dir=str(out / "run"),
                            device="cpu", progress=False, save_every=100, save_final=False)
    result = finetune(model, data, config, adapter=tiny_adapter(make_sd3()))
    rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
    torch.save({"state": model.state_dict(), "world": result.world_size, "losses": result.losses},
               out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
