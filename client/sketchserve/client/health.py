"""Health probe through the standard ``grpc.health.v1`` service (the Docker HEALTHCHECK).

``python -m sketchserve.client.health [--target HOST:PORT] [--service NAME]``
exits 0 when the server reports SERVING, 1 otherwise, writing one line. Against a
TLS server give ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for mutual TLS);
health needs no token unless the server runs with ``--auth-health``.
It needs ``grpcio-health-checking`` (the ``server`` extra, present in the image).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from sketchserve.client.config import ClientConfig, channel_credentials

DEFAULT_PORT = "50051"  # the server's default --port
PROBE_TIMEOUT_S = 3.0  # under the HEALTHCHECK's 5 s timeout, so the probe reports instead of being killed


@dataclass(frozen=True)
class HealthStatus:
    serving: bool
    status: str  # SERVING, NOT_SERVING, ..., or the gRPC error code when the call failed


def check_health(
    target: str, service: str = "", timeout: float = PROBE_TIMEOUT_S, config: ClientConfig | None = None
) -> HealthStatus:
    """Ask ``target``'s health service about ``service`` ("" is the whole server); TLS as ``config`` says."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = None if config is None else channel_credentials(config)
    channel = grpc.insecure_channel(target) if credentials is None else grpc.secure_channel(target, credentials)
    with channel:
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
    parser.add_argument("--tls-ca", type=Path, default=None, help="CA bundle (PEM) of the server's certificate")
    parser.add_argument("--tls-cert", type=Path, default=None, help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", type=Path, default=None, help="key of --tls-cert (PEM)")
    args = parser.parse_args(argv)
    config = ClientConfig(tls_root_ca=args.tls_ca, tls_client_cert=args.tls_cert, tls_client_key=args.tls_key)
    result = check_health(args.target, args.service, args.timeout, config)
    sys.stdout.write(f"{args.target}: {result.status}\n")
    return 0 if result.serving else 1


if __name__ == "__main__":
    raise SystemExit(main())
