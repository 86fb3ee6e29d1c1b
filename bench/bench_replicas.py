"""Bulk encode over 1 and 3 local replicas: what `sketchserve encode` gets from more servers.

    .venv/bin/python bench/bench_replicas.py [--replicas 1,3] [--repeat 3] [--json bench/results/replicas.json]

For each replica count R: start R ``sketchserve serve`` processes on 127.0.0.1
(one torch thread each, defaults otherwise), then time one ``sketchserve encode``
command (a subprocess, ``--target ipv4:...`` listing every replica,
``--parallel`` chunks in flight, ``--out`` a .npy file) over every drawing
of the data file, listed ``--repeat`` times. Reported per row: wall
time and drawings/s of the command, and for each replica the CPU seconds it
used (from /proc/PID/stat, all its threads), the share of the wall time that
is, and the encode calls it answered (its Prometheus counter); the
command's own CPU time (its rusage). On a machine with fewer cores than
replicas + client the ceiling is the machine: the CPU columns say so.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from results import Table, finish, new_result
from serving_server import ServerProcess, process_cpu_seconds

log = logging.getLogger("bench_replicas")

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = REPO / "models" / "face"
DATA_FILE = REPO.parent / "shared" / "data" / "sketchrnn" / "face.npz"
DEFAULT_REPEAT = 3  # the shared face.npz holds 2,000 drawings: 6,000, several seconds of encode work
DEFAULT_PARALLEL = 4  # the command's default --parallel
CLIENT_TIMEOUT_S = 600.0
SERVER_ARGS = ["--torch-threads", "1"]
ENCODE_METHODS = ("Encode", "EncodeStream")  # a chunk of up to --batch-size drawings is one Encode, more a stream


@dataclass(frozen=True)
class Run:
    replicas: int
    parallel: int
    drawings: int
    wall_s: float
    replica_cpu_s: list[float]
    replica_calls: list[float]
    client_cpu_s: float
    command: str


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    parser.add_argument("--data", type=Path, default=DATA_FILE, help="a sketch-rnn .npz file")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="list the data file this many times")
    parser.add_argument("--replicas", default="1,3", help="comma-separated replica counts")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL, help="the command's --parallel")
    parser.add_argument("--json", type=Path, default=None, help="write the result (bench/results.py format)")
    return parser.parse_args(list(argv))


def encode_command(targets: list[str], args: argparse.Namespace, out: Path) -> list[str]:
    """The command, paths relative to the repository root (where the benchmark runs)."""
    data = os.path.relpath(args.data, REPO)
    return [
        *("sketchserve", "encode", "--target", "ipv4:" + ",".join(targets)),
        *("--parallel", str(args.parallel), "--out", str(out)),
        *[data] * args.repeat,
    ]


def run_client(command: list[str]) -> tuple[float, float]:
    """Run the command (``sketchserve`` as this tree's Python runs it); its wall and CPU seconds."""
    argv = [sys.executable, "-m", "sketchserve.cli", *command[1:]]
    with tempfile.TemporaryFile() as log_file:
        started = time.perf_counter()
        process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log_file)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            log_file.seek(0)
            raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {log_file.read().decode()}")
    return wall, usage.ru_utime + usage.ru_stime


def encode_calls(server: ServerProcess) -> float:
    """Encode and EncodeStream calls the server answered OK so far."""
    return sum(server.metric("sketchserve_requests_total", method=m, code="OK") for m in ENCODE_METHODS)


def measure(replicas: int, args: argparse.Namespace, scratch: Path) -> Run:
    with ExitStack() as stack:
        servers = [stack.enter_context(ServerProcess(args.model, SERVER_ARGS)) for _ in range(replicas)]
        for server in servers:
            server.wait_serving()
        out = scratch / f"mu-{replicas}.npy"
        command = encode_command([s.target for s in servers], args, out)
        cpu_before = [process_cpu_seconds(s.pid) for s in servers]
        calls_before = [encode_calls(s) for s in servers]
        log.info("%d replica(s): %s", replicas, " ".join(command))
        wall, client_cpu = run_client(command)
        cpu = [process_cpu_seconds(s.pid) - b for s, b in zip(servers, cpu_before)]
        calls = [encode_calls(s) - b for s, b in zip(servers, calls_before)]
    shown = encode_command([f"127.0.0.1:PORT{i + 1}" for i in range(replicas)], args, Path("mu.npy"))
    drawings = int(np.load(out).shape[0])
    return Run(replicas, args.parallel, drawings, wall, cpu, calls, client_cpu, " ".join(shown))


def table(runs: list[Run]) -> Table:
    rows = []
    for run in runs:
        rows.append(
            [
                str(run.replicas),
                str(run.parallel),
                str(run.drawings),
                f"{run.wall_s:.2f}",
                f"{run.drawings / run.wall_s:.0f}",
                " / ".join(f"{c:.2f}" for c in run.replica_cpu_s),
                " / ".join(f"{100 * c / run.wall_s:.0f}" for c in run.replica_cpu_s),
                " / ".join(f"{s:.0f}" for s in run.replica_calls),
                f"{run.client_cpu_s:.2f}",
            ]
        )
    columns = [
        "replicas",
        "--parallel",
        "drawings",
        "wall s",
        "drawings/s",
        "CPU s per replica",
        "CPU % of wall per replica",
        "calls per replica",
        "client CPU s",
    ]
    return Table(columns, rows)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not args.data.is_file():
        log.error("no data file at %s (--data)", args.data)
        return 1
    result = new_result("replicas", sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as scratch:
        runs = [measure(int(r), args, Path(scratch)) for r in args.replicas.split(",")]
    finish(result)
    result.tables = {"replicas": table(runs)}
    result.notes = [
        f"Model {args.model.name}; every drawing of {args.data.name}, {args.repeat} times; each "
        f"replica `sketchserve serve {' '.join(SERVER_ARGS)}` at its defaults otherwise, on 127.0.0.1; the "
        "client is one `sketchserve encode` process: " + "; ".join(f"`{r.command}`" for r in runs) + "."
    ]
    sys.stdout.write(result.tables["replicas"].markdown() + "\n\n" + "\n".join(result.notes) + "\n")
    if args.json is not None:
        result.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
