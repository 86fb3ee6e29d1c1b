"""``sketchserve encode|assign|reconstruct|score|info|clusters``: the client's command line.

The data commands read any drawing file ``sketchserve.data`` reads (sketch-rnn
``.npz``, simplified or raw ``.ndjson``), send the drawings to a server in
requests of ``--batch-size`` and write one JSON object per drawing (JSONL) to
stdout or ``--out``; ``encode --out FILE.npy`` writes the ``mu`` matrix instead,
``reconstruct --png FILE`` draws inputs and reconstructions side by side.
A progress bar on stderr follows large inputs. Any failure is one line on
stderr and exit status 1.

``--target`` is any gRPC target: ``host:port``, ``dns:///name:port`` (all the
addresses of a Kubernetes headless Service), ``ipv4:host:port,host:port``.
The data commands keep ``--parallel`` chunks of drawings in flight, each its
own call, which the client's round-robin balancing spreads over every replica;
the output keeps the input's order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any

import grpc
import numpy as np

from sketchserve import data, progress, render
from sketchserve.client.config import ClientConfig
from sketchserve.client.errors import SKETCH_INDEX, SketchServiceError
from sketchserve.client.plans import Sampling
from sketchserve.client.sync import SketchClient
from sketchserve.client.types import Cluster, Sketch

DEFAULT_TARGET = "localhost:50051"  # `make serve`'s address
TARGET_ENV = "SKETCHSERVE_TARGET"
# The bearer token comes from a file or this variable, never from argv (which `ps` shows).
TOKEN_ENV = "SKETCHSERVE_TOKEN"
BATCH_SIZE = 64  # drawings per request: well under the server's per-request limit
READ_CHUNK = 256  # drawings read, sent and written together: bounds memory on any file size
# Chunks in flight: one per replica of a 4-replica deployment; 4 x 256 drawings also fill, and no
# more than fill, a single default server's queue (--max-queue 1024).
PARALLEL = 4
DECIMALS = 6  # float32 carries ~7 significant digits; more in JSON is noise
PNG_LIMIT = 64  # drawings (pairs, for reconstruct) drawn in a --png grid
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class UsageError(ValueError):
    """A bad combination of options, reported like any other failure."""


def _parser(name: str, summary: str, *, files: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"sketchserve {name}", description=summary)
    parser.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV, DEFAULT_TARGET),
        help=f"server HOST:PORT, dns:///NAME:PORT or ipv4:HOST:PORT,HOST:PORT (env {TARGET_ENV}, default %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=ClientConfig.timeout, help="seconds per request (default %(default)s)"
    )
    parser.add_argument(
        "--retry-budget",
        type=float,
        default=ClientConfig.retry_budget,
        help="seconds of UNAVAILABLE (a server restart) to ride out (default %(default)s)",
    )
    parser.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs (implied by --tls-*)")
    parser.add_argument("--tls-ca", type=Path, default=None, help="CA bundle (PEM) the server's certificate chains to")
    parser.add_argument("--tls-cert", type=Path, default=None, help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", type=Path, default=None, help="key of --tls-cert (PEM)")
    parser.add_argument(
        "--token-file", type=Path, default=None, help=f"file holding the bearer token (else env {TOKEN_ENV})"
    )
    parser.add_argument("--out", type=Path, default=None, help="output file (default: stdout)")
    if files:
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help=".npz or .ndjson drawing files")
        parser.add_argument("--split", default=None, help="only this split of .npz files (train, valid, test)")
        parser.add_argument("--category", action="append", default=None, help="only this word (repeatable)")
        parser.add_argument(
            "--skip-bad",
            action="store_true",
            help="skip malformed lines, and drawings the server refuses, instead of failing",
        )
        parser.add_argument("--limit", type=int, default=None, help="stop after this many drawings")
        parser.add_argument(
            "--batch-size", type=int, default=BATCH_SIZE, help="drawings per request (default %(default)s)"
        )
        parser.add_argument(
            "--parallel",
            type=int,
            default=PARALLEL,
            help=f"chunks of {READ_CHUNK} drawings in flight, spread over the target's replicas (default %(default)s)",
        )
    return parser


def _client(args: argparse.Namespace) -> SketchClient:
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    batch = getattr(args, "batch_size", BATCH_SIZE)
    parallel = getattr(args, "parallel", PARALLEL)
    if parallel < 1:
        raise UsageError(f"--parallel must be >= 1, got {parallel}")
    try:
        return SketchClient(
            args.target,
            timeout=args.timeout,
            max_sketches_per_call=batch,
            max_calls_in_flight=parallel,
            retry_budget=args.retry_budget,
            tls=args.tls,
            tls_root_ca=args.tls_ca,
            tls_client_cert=args.tls_cert,
            tls_client_key=args.tls_key,
            auth_token=_token(args),
        )
    except (OSError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        return args.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"--token-file: {exc}") from None


def _records(args: argparse.Namespace, skipped: data.SkipCounter) -> Iterator[data.DrawingRecord]:
    """The drawings as stored (canonical=False): the server does the one canonical preprocessing."""
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    records = data.iter_drawings(
        args.files,
        split=args.split,
        categories=args.category,
        on_error="skip" if args.skip_bad else "raise",
        skipped=skipped,
        canonical=False,
    )
    return islice(records, args.limit)


def _chunks(records: Iterator[data.DrawingRecord], size: int) -> Iterator[list[data.DrawingRecord]]:
    while chunk := list(islice(records, size)):
        yield chunk


def _sketch(record: data.DrawingRecord) -> Sketch:
    return Sketch.from_stroke3(record.stroke3, id=record.key_id or "")


def _floats(values: np.ndarray) -> list[Any]:
    return np.round(np.asarray(values, dtype=np.float64), DECIMALS).tolist()


def _identity(record: data.DrawingRecord) -> dict[str, Any]:
    return {"source": str(record.source), "key_id": record.key_id, "word": record.word}


def _xy(sketch: Sketch) -> list[list[list[float]]]:
    """A drawing as simplified ndjson writes it: ``[[x...], [y...]]`` per stroke."""
    return [[_floats(stroke[:, 0]), _floats(stroke[:, 1])] for stroke in sketch.strokes]


def _write_jsonl(out: IO[str], rows: Sequence[dict[str, Any]]) -> None:
    out.write("".join(json.dumps(row) + "\n" for row in rows))


@dataclass(frozen=True)
class Batch:
    """What the server said about one chunk of input drawings."""

    rows: list[dict[str, Any]]  # one JSON object per drawing
    mu: np.ndarray | None = None  # encode: for .npy output
    drawings: tuple[Sketch, ...] = ()  # reconstruct: for --png
    kept: tuple[int, ...] | None = None  # --skip-bad: the chunk's drawings answered (None: all of them)
    refused: tuple[str, ...] = ()  # --skip-bad: why the server refused the others


@dataclass
class Collected:
    """What outlives the chunks: the mu rows (.npy) and the first pairs to draw (--png)."""

    count: int = 0
    mu: list[np.ndarray] = field(default_factory=list)
    inputs: list[np.ndarray] = field(default_factory=list)
    outputs: list[np.ndarray] = field(default_factory=list)

    def add(self, records: list[data.DrawingRecord], batch: Batch) -> None:
        self.count += len(records)
        if batch.mu is not None:
            self.mu.append(batch.mu)
        room = PNG_LIMIT - len(self.outputs)
        if batch.drawings and room > 0:
            self.inputs += [r.stroke3 for r in records[:room]]
            self.outputs += [d.to_stroke3() for d in batch.drawings[:room]]


Handler = Callable[[SketchClient, list[data.DrawingRecord], argparse.Namespace], Batch]


def _open_out(stack: ExitStack, path: Path | None) -> IO[str]:
    if path is None:
        return sys.stdout
    return stack.enter_context(path.open("w", encoding="utf-8"))


def _wants_npy(args: argparse.Namespace) -> bool:
    return args.out is not None and args.out.suffix == ".npy"


def _handle_naming_source(
    handle: Handler, client: SketchClient, chunk: list[data.DrawingRecord], args: argparse.Namespace
) -> Batch:
    """``handle(...)``; a server error about ``sketches[i]`` also names that drawing's file and line."""
    try:
        return handle(client, chunk, args)
    except SketchServiceError as exc:
        found = SKETCH_INDEX.search(exc.details)
        if found is None or int(found.group(1)) >= len(chunk):
            raise
        source = chunk[int(found.group(1))].source
        raise SketchServiceError(exc.method, exc.code, f"{source}: {exc.details}") from None


def _refused_index(exc: SketchServiceError, chunk: list[data.DrawingRecord]) -> int | None:
    found = SKETCH_INDEX.search(exc.details)
    if exc.code != grpc.StatusCode.INVALID_ARGUMENT or found is None or int(found.group(1)) >= len(chunk):
        return None
    return int(found.group(1))


def _handle_skipping_refused(
    handle: Handler, client: SketchClient, chunk: list[data.DrawingRecord], args: argparse.Namespace
) -> Batch:
    """``_handle_naming_source``; with ``--skip-bad`` each drawing the server refuses (INVALID_ARGUMENT naming
    ``sketches[i]``) is dropped and the rest resent, the batch saying which were kept and why the others not."""
    kept = list(range(len(chunk)))
    refused: list[str] = []
    while kept:
        records = [chunk[i] for i in kept]
        try:
            batch = _handle_naming_source(handle, client, records, args)
        except SketchServiceError as exc:
            index = _refused_index(exc, records)
            if not args.skip_bad or index is None:
                raise
            refused.append(exc.details)
            del kept[index]
            continue
        return dataclasses.replace(batch, kept=tuple(kept), refused=tuple(refused)) if refused else batch
    return Batch(rows=[], kept=(), refused=tuple(refused))


def _in_order(
    sent: Iterator[tuple[list[data.DrawingRecord], Future[Batch]]], window: int
) -> Iterator[tuple[list[data.DrawingRecord], Batch]]:
    """Each chunk with its answer, in input order, while up to ``window`` chunks are in flight."""
    pending: deque[tuple[list[data.DrawingRecord], Future[Batch]]] = deque()
    for item in sent:
        pending.append(item)
        if len(pending) == window:
            chunk, future = pending.popleft()
            yield chunk, future.result()
    for chunk, future in pending:
        yield chunk, future.result()


def _process(args: argparse.Namespace, handle: Handler) -> Collected:
    """Send every drawing in chunks, writing JSONL as it goes (unless ``--out`` is ``.npy``)."""
    collected = Collected()
    skipped = data.SkipCounter()
    refused: tuple[str, ...] = ()
    with ExitStack() as stack:
        client = stack.enter_context(_client(args))
        out = None if _wants_npy(args) else _open_out(stack, args.out)
        bar: progress.Progress | None = None
        pool = ThreadPoolExecutor(args.parallel, thread_name_prefix="sketchserve-send")
        stack.callback(pool.shutdown, cancel_futures=True)
        sent = (
            (chunk, pool.submit(_handle_skipping_refused, handle, client, chunk, args))
            for chunk in _chunks(_records(args, skipped), READ_CHUNK)
        )
        for chunk, batch in _in_order(sent, args.parallel):
            if out is not None:
                _write_jsonl(out, batch.rows)
            refused += batch.refused
            collected.add(chunk if batch.kept is None else [chunk[i] for i in batch.kept], batch)
            if bar is None and len(chunk) == READ_CHUNK:  # a large input: more chunks follow
                bar = stack.enter_context(progress.Progress(total=None, desc=f"sketchserve {args.command}"))
            if bar is not None:
                bar.update(len(chunk))
    if skipped.count:
        first = f" (first: {skipped.examples[0]})" if skipped.examples else ""
        sys.stderr.write(f"sketchserve {args.command}: skipped {skipped.count} bad drawings{first}\n")
    if refused:
        reason = f" (first: {refused[0]})"
        sys.stderr.write(f"sketchserve {args.command}: skipped {len(refused)} drawings the server refused{reason}\n")
    if collected.count == 0:
        raise UsageError("no drawings found in the given files")
    return collected


def _run(
    name: str, parser: argparse.ArgumentParser, argv: Sequence[str], body: Callable[[argparse.Namespace], None]
) -> int:
    args = parser.parse_args(list(argv))
    args.command = name
    try:
        body(args)
    except (SketchServiceError, data.DataFormatError, ValueError, OSError) as exc:
        sys.stderr.write(f"sketchserve {name}: error: {exc}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write(f"sketchserve {name}: interrupted\n")
        return EXIT_INTERRUPTED
    return 0


def _check_jsonl(args: argparse.Namespace) -> None:
    if _wants_npy(args):
        raise UsageError(f"sketchserve {args.command} writes JSON lines; .npy output is for encode")


def _jsonl_only(handle: Handler) -> Callable[[argparse.Namespace], None]:
    def body(args: argparse.Namespace) -> None:
        _check_jsonl(args)
        _process(args, handle)

    return body


def _encode_batch(client: SketchClient, records: list[data.DrawingRecord], args: argparse.Namespace) -> Batch:
    result = client.encode([_sketch(r) for r in records])
    rows = [
        {**_identity(r), "mu": _floats(mu), "sigma": _floats(sigma), "model_version": result.model_version}
        for r, mu, sigma in zip(records, result.mu, result.sigma)
    ]
    return Batch(rows, mu=result.mu)


def _encode(args: argparse.Namespace) -> None:
    collected = _process(args, _encode_batch)
    if _wants_npy(args):
        np.save(args.out, np.concatenate(collected.mu))


def encode_main(argv: Sequence[str]) -> int:
    parser = _parser("encode", "Latent codes (mu, sigma) of each drawing: JSONL, or the mu matrix with --out FILE.npy.")
    return _run("encode", parser, argv, _encode)


def _assign_batch(client: SketchClient, records: list[data.DrawingRecord], args: argparse.Namespace) -> Batch:
    result = client.assign([_sketch(r) for r in records], top_k=args.top_k)
    rows = []
    for i, record in enumerate(records):
        nearest = zip(result.nearest_cluster[i].tolist(), _floats(result.nearest_distance[i]))
        rows.append(
            {
                **_identity(record),
                "cluster": int(result.cluster[i]),
                "distance": _floats(result.distance[i]),
                "nearest": [list(pair) for pair in nearest],
                "model_version": result.model_version,
            }
        )
    return Batch(rows)


def assign_main(argv: Sequence[str]) -> int:
    parser = _parser("assign", "The nearest stored cluster of each drawing, as JSONL.")
    parser.add_argument("--top-k", type=int, default=1, help="also list this many nearest clusters (default 1)")
    return _run("assign", parser, argv, _jsonl_only(_assign_batch))


def _score_batch(client: SketchClient, records: list[data.DrawingRecord], args: argparse.Namespace) -> Batch:
    result = client.score([_sketch(r) for r in records])
    rows = [
        {**_identity(r), "reconstruction_nll": _floats(nll), "kl": _floats(kl), "model_version": result.model_version}
        for r, nll, kl in zip(records, result.reconstruction_nll, result.kl)
    ]
    return Batch(rows)


def score_main(argv: Sequence[str]) -> int:
    parser = _parser("score", "How well the model explains each drawing (reconstruction NLL, KL), as JSONL.")
    return _run("score", parser, argv, _jsonl_only(_score_batch))


def _reconstruct_batch(client: SketchClient, records: list[data.DrawingRecord], args: argparse.Namespace) -> Batch:
    sampling = Sampling(temperature=args.temperature, max_points=args.max_points, seed=args.seed)
    result = client.reconstruct([_sketch(r) for r in records], sampling=sampling)
    rows = [
        {**_identity(r), "drawing": _xy(sketch), "model_version": result.model_version}
        for r, sketch in zip(records, result.sketches)
    ]
    return Batch(rows, drawings=result.sketches)


def _reconstruct(args: argparse.Namespace) -> None:
    _check_jsonl(args)
    collected = _process(args, _reconstruct_batch)
    if args.png is not None:
        pairs = [d for pair in zip(collected.inputs, collected.outputs) for d in pair]
        render.render_png(pairs, args.png, columns=2)


def reconstruct_main(argv: Sequence[str]) -> int:
    parser = _parser("reconstruct", "Redraw each drawing through the model: simplified ndjson, optionally a PNG.")
    parser.add_argument("--temperature", type=float, default=0.0, help="in [0, 2]; 0 draws the most likely drawing")
    parser.add_argument("--seed", type=int, default=0, help="same seed and input give the same drawing")
    parser.add_argument("--max-points", type=int, default=0, help="longest output drawing (0: the model's maximum)")
    parser.add_argument("--png", type=Path, default=None, help=f"draw the first {PNG_LIMIT} inputs and reconstructions")
    return _run("reconstruct", parser, argv, _reconstruct)


def _write_json(args: argparse.Namespace, rows: Sequence[dict[str, Any]]) -> None:
    with ExitStack() as stack:
        _write_jsonl(_open_out(stack, args.out), rows)


def _info(args: argparse.Namespace) -> None:
    _check_jsonl(args)
    with _client(args) as client:
        info = client.model_info()
    _write_json(args, [dataclasses.asdict(info)])


def info_main(argv: Sequence[str]) -> int:
    parser = _parser("info", "The served model's description (one JSON object).", files=False)
    return _run("info", parser, argv, _info)


def _cluster_row(cluster: Cluster, model_version: str) -> dict[str, Any]:
    return {
        "id": cluster.id,
        "size": cluster.size,
        "centroid": _floats(cluster.centroid),
        "prototype": None if cluster.prototype is None else _xy(cluster.prototype),
        "exemplars": [_xy(s) for s in cluster.exemplars],
        "model_version": model_version,
    }


def _clusters(args: argparse.Namespace) -> None:
    _check_jsonl(args)
    if args.exemplars < 0:
        raise UsageError(f"--exemplars must be >= 0, got {args.exemplars}")
    with _client(args) as client:
        result = client.clusters(exemplars=args.exemplars)
    _write_json(args, [_cluster_row(c, result.model_version) for c in result.clusters])
    if args.png is not None:
        empty = Sketch(())  # holds a missing prototype's or exemplar's place, so each cluster is one row
        grid = [
            s.to_stroke3()
            for c in result.clusters
            for s in (c.prototype or empty, *c.exemplars, *[empty] * (args.exemplars - len(c.exemplars)))
        ]
        render.render_png(grid, args.png, columns=1 + args.exemplars)


def clusters_main(argv: Sequence[str]) -> int:
    parser = _parser("clusters", "The server's stored clusters, one JSON object each.", files=False)
    parser.add_argument("--exemplars", type=int, default=0, help="member drawings to include per cluster")
    parser.add_argument("--png", type=Path, default=None, help="draw each cluster's prototype and exemplars in a row")
    return _run("clusters", parser, argv, _clusters)
