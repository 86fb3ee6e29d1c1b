"""Health probe through the standard ``grpc.health.v1`` service (the Docker HEALTHCHECK).

``python -m sketchserve.client.health [--target HOST:PORT] [--service NAME]``
exits 0 when the server reports SERVING, 1 otherwise, writing one line.
Against a TLS port (the kubelet's own gRPC probe speaks plaintext only), give
``--tls-ca`` (and ``--server-name`` when the certificate does not name the
target; ``--tls-cert``/``--tls-key`` for mutual TLS).
It needs ``grpcio-health-checking`` (the ``server`` extra, present in the image).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_PORT = "50051"  # the server's default --port
PROBE_TIMEOUT_S = 3.0  # under the HEALTHCHECK's 5 s timeout, so the probe reports instead of being killed


@dataclass(frozen=True)
class ProbeTls:
    """What a probe needs to reach a TLS port: PEM file paths and the name the certificate carries."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=None if self.key is None else self.key.read_bytes(),
            certificate_chain=None if self.cert is None else self.cert.read_bytes(),
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _channel(target: str, tls: ProbeTls | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.credentials(), tls.options())


@dataclass(frozen=True)
class HealthStatus:
    serving: bool
    status: str  # SERVING, NOT_SERVING, ..., or the gRPC error code when the call failed


def check_health(
    target: str, service: str = "", timeout: float = PROBE_TIMEOUT_S, tls: ProbeTls | None = None
) -> HealthStatus:
    """Ask ``target``'s health service about ``service`` ("" is the whole server)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _channel(target, tls) as channel:
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
    parser.add_argument("--tls-ca", type=Path, default=None, help="CA bundle (PEM) to verify a TLS server with")
    parser.add_argument("--tls-cert", type=Path, default=None, help="client certificate (PEM), for mutual TLS")
    parser.add_argument("--tls-key", type=Path, default=None, help="client private key (PEM), for mutual TLS")
    parser.add_argument("--server-name", default="", help="the name the server certificate carries, if not the target")
    args = parser.parse_args(argv)
    tls = None if args.tls_ca is None else ProbeTls(args.tls_ca, args.tls_cert, args.tls_key, args.server_name)
    result = check_health(args.target, args.service, args.timeout, tls)
    sys.stdout.write(f"{args.target}: {result.status}\n")
    return 0 if result.serving else 1


if __name__ == "__main__":
    raise SystemExit(main())
