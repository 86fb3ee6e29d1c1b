"""Training on real faces (tiny configs, few steps): loss goes down, runs repeat and resume exactly,
export and sample work end to end, and bad input is one clear line on stderr."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from sketchserve.artifact import load_artifact
from sketchserve.training.checkpoint import BEST, CHECKPOINT, load_checkpoint
from sketchserve.training.cli import export_main, sample_main, train_main

TINY_FLAGS = [
    "--enc-hidden",
    "16",
    "--dec-hidden",
    "32",
    "--latent-size",
    "8",
    "--num-mixtures",
    "3",
    "--max-seq-len",
    "128",
    "--batch-size",
    "16",
    "--log-every",
    "5",
    "--threads",
    "1",
]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def faces(data_dir: Path) -> Path:
    return data_dir / "sketchrnn" / "face.npz"


def evals(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "eval"]


def train(args: list[str]) -> None:
    assert train_main([*TINY_FLAGS, *args]) == 0


@pytest.fixture(scope="module")
def trained(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(["--data", str(faces), "--out", str(run), "--max-steps", "40", "--eval-every", "20", "--seed", "3"])
    return run


@pytest.mark.slow
def test_a_tiny_model_lowers_its_validation_loss_on_real_faces(trained: Path) -> None:
    records = evals(trained)
    assert [r["step"] for r in records] == [20, 40]
    assert records[-1]["valid_recon"] < records[0]["valid_recon"] - 0.03
    assert (trained / "loss.png").read_bytes().startswith(b"\x89PNG")
    ckpt = load_checkpoint(trained / CHECKPOINT)
    assert ckpt["step"] == 40 and ckpt["data"]["counts"] == {"train": 1700, "valid": 150, "test": 150}
    assert "--max-steps 40" in ckpt["spec"]["command"] and (trained / BEST).is_file()


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(faces: Path, trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--data", str(faces), "--out", str(run), "--eval-every", "20", "--seed", "3"]
    train([*common, "--max-steps", "20"])
    train([*common, "--max-steps", "40", "--resume"])
    straight = load_checkpoint(trained / CHECKPOINT)["model"]
    resumed = load_checkpoint(run / CHECKPOINT)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert evals(run)[-1]["valid_recon"] == evals(trained)[-1]["valid_recon"]
    command = load_checkpoint(run / CHECKPOINT)["spec"]["command"]
    assert "--max-steps 20" in command and command.endswith("--max-steps 40 --resume")


@pytest.mark.slow
def test_export_then_sample_end_to_end(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    assert export_main([str(trained), "--out", str(model_dir), "--name", "face-tiny", "--version", "7"]) == 0
    art = load_artifact(model_dir)
    manifest = art.manifest
    step = manifest.training["steps"]
    assert manifest.name == "face-tiny" and re.fullmatch(rf"7-{step}-[0-9a-f]{{8}}", manifest.version)
    assert manifest.data["files"][0]["sha256"] and manifest.data["categories"] == ["face"]
    assert set(manifest.metrics["test"]) >= {"recon", "kl", "loss"} and step > 0
    assert manifest.hparams["dec_hidden"] == 32 and manifest.hparams["batch_size"] == 16
    assert manifest.scale_factor == pytest.approx(load_checkpoint(trained / CHECKPOINT)["scale_factor"])
    out = tmp_path / "samples" / "s"
    around = data_dir / "simplified" / "face.ndjson"
    argv = [str(model_dir), "--n", "2", "--around", str(around), "--limit", "3", "--seed", "1", "--out", str(out)]
    assert sample_main(argv) == 0
    lines = out.with_suffix(".ndjson").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["word"] == "face"
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    first = out.with_suffix(".ndjson").read_text()
    assert sample_main(argv) == 0 and out.with_suffix(".ndjson").read_text() == first


@pytest.mark.slow
def test_export_replaces_an_artifact_only_when_forced_and_signs_it(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server_fixtures import ed25519_keypair

    from sketchserve.runtime import SketchRuntime

    model_dir = tmp_path / "model"
    assert export_main([str(trained), "--out", str(model_dir)]) == 0
    one_error_line(capsys, export_main([str(trained), "--out", str(model_dir)]), "not empty", "--force")
    private, public = ed25519_keypair(tmp_path, "release")
    assert export_main([str(trained), "--out", str(model_dir), "--force", "--sign-key", str(private)]) == 0
    assert SketchRuntime.load(model_dir, trusted_key=public).manifest.name == trained.name


def one_error_line(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    for needle in needles:
        assert needle in err[0]


def test_cli_errors_are_one_clear_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    one_error_line(capsys, train_main(["--data", str(tmp_path / "nope.npz")]), "nope.npz", "no such file")
    bad = tmp_path / "bad.ndjson"
    good = {"word": "face", "key_id": "1", "recognized": True, "drawing": [[[0, 10, 20], [0, 5, 9]]]}
    bad.write_text(json.dumps(good) + "\n{not json\n")
    one_error_line(capsys, train_main(["--data", str(bad), "--dry-run"]), f"{bad}:2")
    one_error_line(capsys, train_main(["--data", str(bad), "--dec-hidden", "0"]), "dec_hidden must be >= 1")
    one_error_line(capsys, train_main(["--data", str(bad), "--min-lr", "0.1"]), "min_lr")
    one_error_line(capsys, train_main(["--resume", "--out", str(tmp_path / "none")]), "no checkpoint")
    one_error_line(capsys, export_main([str(tmp_path), "--out", str(tmp_path / "m")]), "no checkpoint")
    one_error_line(capsys, sample_main([str(tmp_path)]), "no manifest")


@pytest.mark.slow
def test_cli_error_from_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sketchserve.cli", "train", "--data", str(tmp_path / "missing.ndjson")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"sketchserve train: error: {tmp_path / 'missing.ndjson'}: no such file or directory"
    ]


@pytest.mark.slow
def test_dry_run_reports_speed_and_writes_nothing(
    faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "dry"
    assert train_main([*TINY_FLAGS, "--data", str(faces), "--out", str(run), "--dry-run", "--max-minutes", "1"]) == 0
    assert "steps/s" in capsys.readouterr().out and not run.exists()


@pytest.mark.slow
def test_model_card_figures(trained: Path, faces: Path, tmp_path: Path) -> None:
    from sketchserve.training.figures import make_figures

    model_dir = tmp_path / "model"
    assert export_main([str(trained), "--out", str(model_dir)]) == 0
    paths = make_figures(model_dir, faces, "test", tmp_path / "docs", "face", (0, 1))
    assert [p.name for p in paths] == ["face_reconstructions.png", "face_interpolation.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT)["model"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# Evaluations and periodic checkpoints far apart: a checkpoint before step 1000 is the stop's own.
NO_PERIODIC = ["--eval-every", "1000", "--checkpoint-every", "1000", "--seed", "4"]


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_between_evaluations_checkpoints_the_stopped_step_and_resume_continues_exactly(
    stop_signal: signal.Signals, faces: Path, tmp_path: Path
) -> None:
    run = tmp_path / "stopped"
    command = [sys.executable, "-m", "sketchserve.cli", "train", *TINY_FLAGS, "--data", str(faces)]
    command += ["--out", str(run), "--max-steps", "100000", *NO_PERIODIC]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            if "step 1 done" in line:  # a step is done: the signal cannot come before the first
                break
        proc.send_signal(stop_signal)
        rest = proc.stderr.read()
        out = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, rest
    assert f"{stop_signal.name}: stopping after this step" in rest
    stopped_at = load_checkpoint(run / CHECKPOINT)["step"]
    assert 1 <= stopped_at < 1000 and f"trained {stopped_at} steps" in out
    assert [r["step"] for r in evals(run)] == [stopped_at]  # the stop evaluated the step it stopped at
    assert not (run / "ckpt.pt.tmp").exists()
    train(["--resume", "--out", str(run), "--max-steps", str(stopped_at + 3)])
    straight = tmp_path / "straight"
    train(["--data", str(faces), "--out", str(straight), "--max-steps", str(stopped_at + 3), *NO_PERIODIC])
    assert load_checkpoint(run / CHECKPOINT)["step"] == stopped_at + 3
    assert same_weights(weights(run), weights(straight))


@pytest.mark.slow
def test_evaluations_and_checkpoints_have_their_own_cadence(faces: Path, tmp_path: Path) -> None:
    evaluated, saved = tmp_path / "evaluated", tmp_path / "saved"
    common = ["--data", str(faces), "--max-steps", "4", "--seed", "4"]
    train([*common, "--out", str(evaluated), "--eval-every", "2", "--checkpoint-every", "1000"])
    train([*common, "--out", str(saved), "--eval-every", "1000", "--checkpoint-every", "2"])
    assert [r["step"] for r in evals(evaluated)] == [2, 4]  # evaluations every 2 steps
    assert [r["step"] for r in evals(saved)] == [4]  # checkpoints every 2 steps evaluate nothing (4: the end's)
    assert same_weights(weights(evaluated), weights(saved))  # neither changes the training


def test_a_second_ctrl_c_interrupts_at_once_and_the_handlers_are_restored() -> None:
    from sketchserve.training.train import StopSignals

    before = {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS}
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested.wait(timeout=10)  # the first asks for a stop after the step, and returns
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second is Python's own Ctrl-C
            threading.Event().wait(timeout=10)
    assert {sig: signal.getsignal(sig) for sig in StopSignals.SIGNALS} == before


@pytest.mark.slow
def test_max_minutes_stops_the_run_with_a_checkpoint_at_the_stopped_step(faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "budget"
    train(["--data", str(faces), "--out", str(run), "--max-steps", "100000", "--max-minutes", "0.001", *NO_PERIODIC])
    stopped_at = load_checkpoint(run / CHECKPOINT)["step"]
    assert 1 <= stopped_at < 1000 and [r["step"] for r in evals(run)] == [stopped_at]


@pytest.mark.slow
def test_train_out_refuses_a_run_it_holds_and_overwrite_starts_clean(
    faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "held"
    common = ["--data", str(faces), "--out", str(run), "--eval-every", "2"]
    train([*common, "--max-steps", "4"])
    capsys.readouterr()
    held = {p.name: p.read_bytes() for p in run.iterdir()}
    code = train_main([*TINY_FLAGS, *common, "--max-steps", "1"])
    one_error_line(capsys, code, str(run), "at step 4", "--resume", "--overwrite")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == held  # nothing touched
    one_error_line(capsys, train_main([*TINY_FLAGS, *common, "--resume", "--overwrite"]), "not both")
    train([*common, "--max-steps", "1", "--overwrite"])
    assert load_checkpoint(run / CHECKPOINT)["step"] == 1 and load_checkpoint(run / BEST)["step"] == 1
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1]  # the old run's history went with it


def test_train_help_explains_every_flag_and_lists_the_allowed_values(capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import fields

    from sketchserve.training.cli import train_parser
    from sketchserve.training.config import CHOICES, ModelConfig, TrainConfig

    actions = {a.dest: a for a in train_parser()._actions}
    for cls in (ModelConfig, TrainConfig):
        for f in fields(cls):
            text = actions[f.name].help or ""
            assert len(text.split("(default")[0].split()) >= 4, (f.name, text)  # a reason, not a bare default
            assert f"(default {getattr(cls(), f.name)!r})" in text
    assert actions["encoder_pool"].choices == CHOICES["encoder_pool"] == ("last", "last+mean")
    with pytest.raises(SystemExit):
        train_main(["--encoder-pool", "max"])
    assert "invalid choice: 'max' (choose from 'last', 'last+mean')" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(["--help"])
    assert "Paper: M = 20 bivariate Gaussians" in capsys.readouterr().out


def test_sample_help_explains_temperature_and_seed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sample_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--temperature TEMPERATURE randomness" in text and "(default 0.5)" in text
    assert "--seed SEED seed of the prior draws" in text and "(default 0)" in text


def test_sketchserve_without_a_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from sketchserve.cli import main

    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("usage: sketchserve COMMAND") and captured.out == ""
    assert main(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: sketchserve COMMAND")


@pytest.mark.slow
def test_export_records_which_checkpoint_it_took(trained: Path, tmp_path: Path) -> None:
    for which, expected in (("best", "lowest validation loss"), ("last", "last checkpoint")):
        out = tmp_path / which
        assert export_main([str(trained), "--out", str(out), "--checkpoint", which]) == 0
        training = json.loads((out / "manifest.json").read_text())["training"]
        assert training["selected_by"] == expected
    assert training["steps"] == load_checkpoint(trained / CHECKPOINT)["step"]


@pytest.mark.slow
def test_the_bundled_manifest_holds_only_what_the_export_code_writes(trained: Path, tmp_path: Path) -> None:
    """No hand-written fields: every key of models/face's manifest (and of its training record) is one that
    `sketchserve export` writes (the bundled model was exported from a run with a resume and a hand stop)."""
    assert export_main([str(trained), "--out", str(tmp_path / "model")]) == 0
    exported = json.loads((tmp_path / "model" / "manifest.json").read_text())
    bundled = json.loads((Path(__file__).resolve().parents[1] / "models" / "face" / "manifest.json").read_text())
    assert set(bundled) <= set(exported), set(bundled) - set(exported)
    assert set(bundled["training"]) <= set(exported["training"]), set(bundled["training"]) - set(exported["training"])


@pytest.mark.slow
def test_init_from_starts_from_the_artifacts_weights_and_refuses_what_does_not_fit(
    trained: Path, faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "base"
    assert export_main([str(trained), "--out", str(base), "--checkpoint", "last"]) == 0
    run = tmp_path / "init"
    common = ["--data", str(faces), "--init-from", str(base)]
    train([*common, "--out", str(run), "--max-steps", "1", "--learning-rate", "1e-12", "--min-lr", "0"])
    started, source = load_checkpoint(run / CHECKPOINT)["model"], load_checkpoint(trained / CHECKPOINT)["model"]
    assert all(torch.allclose(started[k], source[k], atol=1e-6) for k in source)  # one step at lr 1e-12
    capsys.readouterr()
    fresh = ["--out", str(tmp_path / "other")]
    assert train_main([*TINY_FLAGS, *common, *fresh, "--fine-tune", "--from-cluster", f"{base}:0"]) == 2
    assert "not both" in capsys.readouterr().err
    code = train_main([*TINY_FLAGS, *common, *fresh, "--latent-size", "4"])
    one_error_line(capsys, code, str(base), "do not fit this model")
