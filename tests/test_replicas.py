"""Several replicas behind one client target: calls spread round-robin, a drained replica fails no call,
a killed one's calls move to the others, and every result comes back exactly once.

Three steady replicas are shared by the module; each signal test adds a victim replica whose
batcher holds calls (a long --max-delay-ms), so calls are certainly in flight on it when the
signal arrives. Results are checked against the steady replicas' own answers (one artifact,
deterministic encoder).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from replicas import Replica, multi_target, replicas
from server_fixtures import random_sketches

from sketchserve import cli as dispatcher
from sketchserve.client import SketchClient, cli
from sketchserve.client.convert import sketch_from_pb

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

STEADY = 3
CALLS = 60  # per load run: enough for a spread within 20 %, few enough for a loaded 2-core box
SKETCHES_PER_CALL = 2
WORKERS = 6  # concurrent callers
SPREAD_TOLERANCE = 0.2
# The victim's batcher waits this long for company before computing: calls sit in it meanwhile.
DRAIN_HOLD_MS = "2000"
# ... and for the killed victim, longer than the test: nothing it accepts is ever answered.
KILL_HOLD_MS = "600000"
VICTIM_BATCH = "256"  # more sketches than a load run sends, so the hold is never cut short by a full batch
IN_FLIGHT_ON_VICTIM = 3


@pytest.fixture(scope="module")
def steady(tiny_model: Path) -> Iterator[list[Replica]]:
    with replicas(tiny_model, STEADY) as started:
        yield started


@pytest.fixture(scope="module")
def inputs(steady: list[Replica]) -> tuple[list, np.ndarray]:
    """The calls' sketches and the mu each must come back with (asked of one replica, one call each)."""
    sketches = [sketch_from_pb(s) for s in random_sketches(15, CALLS * SKETCHES_PER_CALL)]
    with SketchClient(steady[0].target) as client:
        expected = client.encode(sketches).mu
    return sketches, expected


def ok_encodes(replica: Replica) -> float:
    return replica.metric("sketchserve_requests_total", method="Encode", code="OK")


def ok_streams(replica: Replica) -> float:
    return replica.metric("sketchserve_requests_total", method="EncodeStream", code="OK")


def run_load(target: str, sketches: Sequence) -> list[Future]:
    """CALLS unary Encode calls of SKETCHES_PER_CALL sketches from WORKERS threads over one channel."""
    with SketchClient(target, max_sketches_per_call=SKETCHES_PER_CALL) as client:
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [
                pool.submit(client.encode, sketches[i : i + SKETCHES_PER_CALL])
                for i in range(0, len(sketches), SKETCHES_PER_CALL)
            ]
            for future in futures:
                future.exception()
    return futures


def check_every_result_once(futures: list[Future], expected: np.ndarray) -> None:
    failed = [f.exception() for f in futures if f.exception() is not None]
    assert failed == [], f"{len(failed)} of {len(futures)} calls failed, first: {failed[:1]}"
    mu = np.concatenate([f.result().mu for f in futures])
    assert mu.shape == expected.shape
    np.testing.assert_allclose(mu, expected, rtol=1e-5, atol=1e-5)


def test_round_robin_spreads_calls_within_20_percent(steady: list[Replica], inputs: tuple) -> None:
    sketches, expected = inputs
    before = [ok_encodes(r) for r in steady]
    futures = run_load(multi_target(steady), sketches)
    check_every_result_once(futures, expected)
    served = [ok_encodes(r) - b for r, b in zip(steady, before)]
    assert sum(served) == CALLS
    mean = CALLS / STEADY
    assert all(abs(s - mean) <= SPREAD_TOLERANCE * mean for s in served), served


def load_while(victim: Replica, steady: list[Replica], sketches: Sequence, signum: signal.Signals) -> list[Future]:
    """Load on steady + victim; once the victim holds IN_FLIGHT_ON_VICTIM calls, send it ``signum``."""
    with ThreadPoolExecutor(1) as runner:
        load = runner.submit(run_load, multi_target([*steady, victim]), sketches)
        victim.wait_accepted("Encode", IN_FLIGHT_ON_VICTIM)
        victim.signal(signum)
        return load.result()


def test_a_replica_drained_by_sigterm_mid_load_fails_no_call(
    tiny_model: Path, steady: list[Replica], inputs: tuple
) -> None:
    sketches, expected = inputs
    hold = ["--max-delay-ms", DRAIN_HOLD_MS, "--max-batch-size", VICTIM_BATCH, "--grace-seconds", "30"]
    with replicas(tiny_model, 1, hold) as (victim,):
        before = sum(ok_encodes(r) for r in steady)
        futures = load_while(victim, steady, sketches, signal.SIGTERM)
        assert victim.wait_exit() == 0, victim.log_tail()
    check_every_result_once(futures, expected)
    # The calls the victim held finished there during its drain: they were not retried elsewhere.
    on_steady = sum(ok_encodes(r) for r in steady) - before
    assert on_steady <= CALLS - IN_FLIGHT_ON_VICTIM


def test_calls_in_flight_on_a_killed_replica_are_retried_elsewhere_exactly_once(
    tiny_model: Path, steady: list[Replica], inputs: tuple
) -> None:
    sketches, expected = inputs
    hold = ["--max-delay-ms", KILL_HOLD_MS, "--max-batch-size", VICTIM_BATCH]
    with replicas(tiny_model, 1, hold) as (victim,):
        before = sum(ok_encodes(r) for r in steady)
        futures = load_while(victim, steady, sketches, signal.SIGKILL)
        assert victim.wait_exit() == -signal.SIGKILL
    check_every_result_once(futures, expected)
    # The victim answered nothing (its batch never filled): every call, the ones it held included,
    # was answered by a steady replica, once.
    assert sum(ok_encodes(r) for r in steady) - before == CALLS


def write_ndjson(path: Path, sketches: Sequence) -> None:
    """Simplified ndjson drawings (``[[x...], [y...]]`` per stroke), key_id = the index."""
    rows = [
        {"word": "test", "key_id": str(i), "drawing": [[s[:, 0].tolist(), s[:, 1].tolist()] for s in sketch.strokes]}
        for i, sketch in enumerate(sketches)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


BULK_CHUNK = 8  # drawings per chunk here: 120 drawings are 15 chunks, each a stream of 2 requests
BULK_BATCH = 4


def test_bulk_encode_fans_out_over_every_replica_in_input_order(
    steady: list[Replica],
    inputs: tuple,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sketches, expected = inputs
    monkeypatch.setattr(cli, "READ_CHUNK", BULK_CHUNK)
    drawings = tmp_path / "drawings.ndjson"
    write_ndjson(drawings, sketches)
    before = [ok_streams(r) for r in steady]
    argv = ["--target", multi_target(steady), "--batch-size", str(BULK_BATCH), "--parallel", str(STEADY)]
    assert dispatcher.main(["encode", *argv, str(drawings)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["key_id"] for row in rows] == [str(i) for i in range(len(sketches))]
    np.testing.assert_allclose(np.array([row["mu"] for row in rows]), expected, atol=1e-5)
    streams = [ok_streams(r) - b for r, b in zip(steady, before)]
    assert sum(streams) == len(sketches) // BULK_CHUNK
    assert min(streams) > 0, streams


def test_a_dns_target_reaches_the_replica_behind_the_name(steady: list[Replica], inputs: tuple) -> None:
    """``dns:///name:port``, as for a headless Service (here the name resolves to the loopback)."""
    sketches, expected = inputs
    with SketchClient(f"dns:///localhost:{steady[0].port}") as client:
        np.testing.assert_allclose(client.encode(sketches[:4]).mu, expected[:4], atol=1e-5)


AGE_S = "0.5"  # the connection's age limit: far shorter than the hold below
AGED_CALLS = 4


def test_calls_outlive_their_connections_age_limit_within_the_grace(tiny_model: Path, inputs: tuple) -> None:
    """--max-connection-age-seconds closes a connection (GOAWAY) while its calls are held in the batcher:
    they finish within --grace-seconds, answered once each, and the next call takes a new connection."""
    sketches, expected = inputs
    hold = ["--max-delay-ms", DRAIN_HOLD_MS, "--max-batch-size", VICTIM_BATCH, "--grace-seconds", "30"]
    with replicas(tiny_model, 1, ["--max-connection-age-seconds", AGE_S, *hold]) as (replica,):
        with SketchClient(replica.target, max_sketches_per_call=SKETCHES_PER_CALL) as client:
            with ThreadPoolExecutor(AGED_CALLS) as pool:
                futures = [
                    pool.submit(client.encode, sketches[i : i + SKETCHES_PER_CALL])
                    for i in range(0, AGED_CALLS * SKETCHES_PER_CALL, SKETCHES_PER_CALL)
                ]
            check_every_result_once(futures, expected[: AGED_CALLS * SKETCHES_PER_CALL])
            assert ok_encodes(replica) == AGED_CALLS
            np.testing.assert_allclose(client.encode(sketches[:1]).mu, expected[:1], atol=1e-5)
