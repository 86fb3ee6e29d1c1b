"""Health probe through the standard ``grpc.health.v1`` service (the Docker HEALTHCHECK).

``python -m sketchserve.client.health [--target HOST:PORT] [--service NAME]``
exits 0 when the server reports SERVING, 1 otherwise, writing one line.
It needs ``grpcio-health-checking`` (the ``server`` extra, present in the image).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import grpc

DEFAULT_PORT = "50051"  # the server's default --port
PROBE_TIMEOUT_S = 3.0  # under the HEALTHCHECK's 5 s timeout, so the probe reports instead of being killed


@dataclass(frozen=True)
class HealthStatus:
    serving: bool
    status: str  # SERVING, NOT_SERVING, ..., or the gRPC error code when the call failed


def check_health(target: str, service: str = "", timeout: float = PROBE_TIMEOUT_S) -> HealthStatus:
    """Ask ``target``'s health service about ``service`` ("" is the whole server)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            return HealthStatus(False, code.name)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return HealthStatus(response.status == health_pb2.HealthCheckResponse.SERVING, name)


def default_target() -> str:
    """The local server, on the port it was configured with (SKETCHSERVE_PORT)."""
    return f"127.0.0.1:{os.environ.get('SKETCHSERVE_PORT') or DEFAULT_PORT}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sketchserve.client.health", description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=default_target(), help="HOST:PORT (default: %(default)s)")
    parser.add_argument("--service", default="", help="service name to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=PROBE_TIMEOUT_S, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    result = check_health(args.target, args.service, args.timeout)
    sys.stdout.write(f"{args.target}: {result.status}\n")
    return 0 if result.serving else 1


if __name__ == "__main__":
    raise SystemExit(main())
