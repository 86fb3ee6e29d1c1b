"""Run by tests/test_ddp.py under ``torchrun``: one training step on each rank, then many draws.

Writes ``OUT/rank{R}.pt`` with the weights before and after one DDP step, that step's
draw (training-set indices, augmented batch, z noise) and the indices this rank draws
at each of the next steps (without training), so the test can compare the ranks.
Usage: ``torchrun --nproc_per_node 2 tests/ddp_probe.py DATA OUT STEPS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sketchserve.training.config import ModelConfig, TrainConfig
from sketchserve.training.distributed import leave_distributed, setup_distributed
from sketchserve.training.train import RunSpec, Trainer, _prepare

MODEL = ModelConfig(enc_hidden=8, dec_hidden=16, latent_size=4, num_mixtures=2, max_seq_len=128)
TRAIN = TrainConfig(batch_size=8, seed=2)


def main(data: str, out: Path, steps: int) -> None:
    torch.set_num_threads(1)
    spec, dataset, _ = _prepare(RunSpec(out_dir=out, data=(data,), model=MODEL, train=TRAIN, device="cpu"), None)
    dist = setup_distributed(spec.device)
    try:
        trainer = Trainer(spec, dataset, None, dist)
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        draw = trainer.draw()
        trainer.step(draw)
        picks = [trainer.draw(step).picks for step in range(steps)]
        torch.save(
            {
                "before": before,
                "after": trainer.model.state_dict(),
                "picks": draw.picks,
                "x": draw.batch.x,
                "lengths": draw.batch.lengths,
                "eps": draw.eps,
                "stream": picks,
                "train_size": len(dataset.train),
            },
            out / f"rank{dist.rank}.pt",
        )
    finally:
        leave_distributed(dist)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
