"""`sketchserve train` under torchrun: 2 CPU processes (gloo) average their gradients over different
sketches (each epoch split between them, none twice), only rank 0 writes, and a resumed run draws,
on every rank, what an uninterrupted one draws."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sketchserve.training.checkpoint import CHECKPOINT, load_checkpoint

pytestmark = pytest.mark.slow

STEPS = 12  # room for a stopped run to stop before it (test_sigterm_...)
LOG_EVERY = 2
TORCHRUN_TIMEOUT_S = 240
PROBE = Path(__file__).with_name("ddp_probe.py")
PROBE_EPOCHS = 2
END_ROW = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])  # stroke-5 padding


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TORCHRUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def train_flags(faces: Path, run: Path, max_steps: int) -> list[str]:
    return [
        *("-m", "sketchserve.cli", "train", "--data", str(faces), "--out", str(run)),
        *("--enc-hidden", "8", "--dec-hidden", "16", "--latent-size", "4", "--num-mixtures", "2"),
        *("--max-seq-len", "128", "--batch-size", "8", "--max-steps", str(max_steps), "--eval-every", "3"),
        *("--log-every", str(LOG_EVERY), "--threads", "1", "--device", "cpu", "--max-minutes", "5"),
    ]


@pytest.fixture(scope="module")
def faces(data_dir: Path) -> Path:
    return data_dir / "sketchrnn" / "face.npz"


@pytest.fixture(scope="module")
def straight(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A 2-process run of STEPS steps, uninterrupted; and its stderr."""
    run = tmp_path_factory.mktemp("ddp") / "straight"
    return run, torchrun(*train_flags(faces, run, STEPS)).stderr


def test_two_cpu_processes_train_together_and_only_rank_0_writes(straight: tuple[Path, str]) -> None:
    run, stderr = straight
    assert "2 process(es) x batch 4" in stderr
    ckpt = load_checkpoint(run / CHECKPOINT)
    assert ckpt["step"] == STEPS and len(ckpt["rng"]) == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert [r["step"] for r in records if r["kind"] == "eval"] == list(range(3, STEPS + 1, 3))
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "ckpt.pt", "loss.png", "metrics.jsonl"]


def test_a_resumed_two_process_run_draws_on_every_rank_what_an_uninterrupted_one_draws(
    faces: Path, straight: tuple[Path, str], tmp_path: Path
) -> None:
    run = tmp_path / "resumed"
    torchrun(*train_flags(faces, run, STEPS // 2))
    halfway = load_checkpoint(run / CHECKPOINT)
    assert halfway["step"] == STEPS // 2 and len(halfway["rng"]) == 2
    assert halfway["rng"][0]["numpy"] != halfway["rng"][1]["numpy"]  # each rank's own state, not rank 0's twice
    torchrun(*train_flags(faces, run, STEPS), "--resume")
    resumed, uninterrupted = load_checkpoint(run / CHECKPOINT), load_checkpoint(straight[0] / CHECKPOINT)
    assert resumed["step"] == STEPS
    assert all(torch.equal(resumed["model"][k], uninterrupted["model"][k]) for k in uninterrupted["model"])
    for ours, theirs in zip(resumed["rng"], uninterrupted["rng"]):
        assert ours["numpy"] == theirs["numpy"] and torch.equal(ours["torch"], theirs["torch"])


def test_sigterm_to_torchrun_stops_every_rank_after_the_same_step_with_a_checkpoint_that_resumes_exactly(
    faces: Path, straight: tuple[Path, str], tmp_path: Path
) -> None:
    run = tmp_path / "stopped"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += train_flags(faces, run, 100_000)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "step 1 done" in line:  # rank 0 finished a step (the ranks step together)
                break
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
        rest = proc.stderr.read()
        proc.wait(timeout=TORCHRUN_TIMEOUT_S)  # torchrun itself exits 1 on a signal, whatever its ranks did
    assert rest.count("SIGTERM: stopping after this step") == 2, rest[-3000:]
    stopped = load_checkpoint(run / CHECKPOINT)
    assert 1 <= stopped["step"] < STEPS and len(stopped["rng"]) == 2, stopped["step"]
    torchrun(*train_flags(faces, run, STEPS), "--resume")
    resumed, uninterrupted = load_checkpoint(run / CHECKPOINT), load_checkpoint(straight[0] / CHECKPOINT)
    assert all(torch.equal(resumed["model"][k], uninterrupted["model"][k]) for k in uninterrupted["model"])


def test_resuming_with_another_number_of_processes_is_refused(straight: tuple[Path, str], tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(straight[0], run)
    done = subprocess.run(
        [sys.executable, "-m", "sketchserve.cli", "train", "--resume", "--out", str(run), "--device", "cpu"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "was written by 2 process(es): resume it with as many (this run has 1), or each rank would draw "
            "other batches than the run it continues"
        )
    )


@pytest.fixture(scope="module")
def probe(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One DDP step and PROBE_EPOCHS epochs of draws on each of 2 ranks (tests/ddp_probe.py)."""
    out = tmp_path_factory.mktemp("probe")
    steps = PROBE_EPOCHS * 1700 // 8  # the face training set, 8 sketches a step over both ranks
    torchrun(str(PROBE), str(faces), str(out), str(steps))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def pad_to(x: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.cat([x, END_ROW.expand(x.shape[0], steps - x.shape[1], 5)], dim=1)


def single_process_step(before: dict, x: torch.Tensor, lengths: torch.Tensor, eps: torch.Tensor) -> dict:
    """The same first step in one process, on the batch given."""
    from ddp_probe import MODEL, TRAIN

    from sketchserve.training.dataset import Batch, Dataset
    from sketchserve.training.distributed import Dist
    from sketchserve.training.train import Draw, RunSpec, Trainer

    sketches = [np.array([[1.0, 1.0, 0.0], [2.0, 0.0, 1.0]], dtype=np.float32)]
    spec = RunSpec(out_dir=Path("unused"), model=MODEL, train=TRAIN, device="cpu")
    trainer = Trainer(spec, Dataset(sketches, [], []), None, Dist(0, 1, torch.device("cpu")))
    trainer.model.load_state_dict(before)
    trainer.step(Draw(np.arange(len(lengths)), Batch(x, lengths), eps))
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def distance(a: dict, b: dict) -> float:
    return float(sum((a[k].float() - b[k].float()).pow(2).sum() for k in a)) ** 0.5


def test_after_one_step_the_ranks_agree_on_weights_that_averaged_both_ranks_gradients(probe: list[dict]) -> None:
    rank0, rank1 = probe
    assert all(torch.equal(rank0["before"][k], rank1["before"][k]) for k in rank0["before"])
    assert all(torch.equal(rank0["after"][k], rank1["after"][k]) for k in rank0["after"])
    assert set(rank0["picks"].tolist()).isdisjoint(rank1["picks"].tolist())  # the ranks' batches differ
    moved = distance(rank0["after"], rank0["before"])
    alone = single_process_step(rank0["before"], rank0["x"], rank0["lengths"], rank0["eps"])
    assert distance(alone, rank0["after"]) > 0.1 * moved  # not rank 0's data alone
    width = max(rank0["x"].shape[1], rank1["x"].shape[1])
    both = single_process_step(
        rank0["before"],
        torch.cat([pad_to(rank0["x"], width), pad_to(rank1["x"], width)]),
        torch.cat([rank0["lengths"], rank1["lengths"]]),
        torch.cat([rank0["eps"], rank1["eps"]]),
    )
    assert distance(both, rank0["after"]) < 1e-3 * moved  # but both ranks' halves of the batch


def test_in_each_epoch_the_ranks_draw_the_whole_training_set_once(probe: list[dict]) -> None:
    size, local = probe[0]["train_size"], len(probe[0]["picks"])
    by_epoch: list[list[int]] = [[] for _ in range(PROBE_EPOCHS)]
    for rank, result in enumerate(probe):
        for step, picks in enumerate(result["stream"]):
            for j, index in enumerate(picks.tolist()):
                by_epoch[((step * 2 + rank) * local + j) // size].append(index)  # stream position -> epoch
    for drawn in by_epoch:
        assert sorted(drawn) == list(range(size))  # all of it, none twice
    assert by_epoch[0] != by_epoch[1]  # each epoch shuffled anew
