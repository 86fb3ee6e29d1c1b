"""`sketchserve train` runs unchanged under torchrun: 2 CPU processes (gloo), only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from sketchserve.training.checkpoint import CHECKPOINT, load_checkpoint

STEPS = 6
LOG_EVERY = 2
TORCHRUN_TIMEOUT_S = 240


def test_two_cpu_processes_train_together(data_dir: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "sketchserve.cli",
        "train",
        "--data",
        str(data_dir / "sketchrnn" / "face.npz"),
        "--out",
        str(run),
        "--enc-hidden",
        "8",
        "--dec-hidden",
        "16",
        "--latent-size",
        "4",
        "--num-mixtures",
        "2",
        "--max-seq-len",
        "128",
        "--batch-size",
        "8",
        "--max-steps",
        str(STEPS),
        "--eval-every",
        "3",
        "--log-every",
        str(LOG_EVERY),
        "--threads",
        "1",
        "--device",
        "cpu",
        "--max-minutes",
        "5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TORCHRUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es) x batch 4" in done.stderr
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert ckpt["step"] == STEPS
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "ckpt.pt", "loss.png", "metrics.jsonl"]
