"""Server configuration: one frozen dataclass, settable by flag or environment.

Every field of :class:`ServerConfig` is a command-line flag (``--max-batch-size``;
a switch is ``--reflection`` / ``--no-reflection``) and an environment variable
(``SKETCHSERVE_MAX_BATCH_SIZE``; switches take true/false, 1/0, yes/no, on/off). Precedence: a flag
given on the command line beats the environment, which beats the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "SKETCHSERVE_"
DEVICE_CHOICES_HELP = "auto | cpu | cuda | cuda:N"
TOO_LONG_SIMPLIFY = "simplify"
TOO_LONG_REFUSE = "refuse"


@dataclass(frozen=True)
class ServerConfig:
    # The bundled model `make serve` uses; real deployments pass --model.
    model_dir: Path = field(default=Path("models/face"), metadata={"help": "artifact directory"})
    # None: checksums only. A key makes the server refuse an artifact whose manifest.sig it did not sign.
    trusted_key: Path | None = field(
        default=None, metadata={"help": "ed25519 public key (PEM); the artifact's manifest.sig must verify with it"}
    )
    # Loopback: a bare `sketchserve serve` is reachable from this machine only; the container
    # image sets SKETCHSERVE_HOST=0.0.0.0 (all interfaces) where the network policy decides.
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (gRPC, and metrics by default)"})
    # The conventional gRPC port; 0 asks the OS for a free one (tests).
    port: int = field(default=50051, metadata={"help": "gRPC port (0: any free port)"})
    # Where to write the bound port once listening, for supervisors and tests on port 0.
    port_file: Path | None = field(default=None, metadata={"help": "write the bound port to this file"})
    # auto takes CUDA when present: the same command serves on a laptop and a GPU box.
    device: str = field(default="auto", metadata={"help": DEVICE_CHOICES_HELP})
    # The scripted encoder gains ~2.4x throughput from batch 1 to 32 on 2 CPU cores (in-process, 483 -> 1,165
    # sketches/s: docs/benchmarks.md, "Serving") and little beyond.
    max_batch_size: int = field(default=32, metadata={"help": "most sketches in one forward pass"})
    # 0: a batch starts as soon as the worker is free; what arrives while it runs forms the next
    # batch, so batches grow with load by themselves and a lone call waits for nothing (the c=1
    # latency goal is within 1 ms of in-process). Raise it to trade latency for fuller batches.
    max_delay_ms: float = field(default=0.0, metadata={"help": "longest wait of a queued sketch for a batch"})
    # Admission is by time (server/admission.py: a call that the work ahead would push past its deadline is
    # refused at the door); this count is only the memory bound behind it: 16,384 sketches of a typical
    # ~1 KB, ~16 MB, and more than any closed loop the server can finish within a 30 s deadline (64 callers x
    # 32 sketches hold 2,048). It was 1,024 per stage until 2026-12-05, which refused 64 x 32 outright.
    max_queue: int = field(
        default=16_384,
        metadata={
            "help": "most sketches in flight in admitted calls; past it, or past a call's deadline, RESOURCE_EXHAUSTED"
        },
    )
    # Bounds one request's latency and memory; clients split larger inputs.
    max_sketches_per_request: int = field(default=256, metadata={"help": "most sketches in one request"})
    # 256 sketches of ~250 points as float32 protobufs fit in well under 16 MiB.
    max_message_bytes: int = field(default=16 * 1024 * 1024, metadata={"help": "largest request message in bytes"})
    # Prometheus scrape port; 0 picks a free port, a negative value turns metrics HTTP off.
    metrics_port: int = field(default=9090, metadata={"help": "Prometheus metrics port (0: any free, -1: off)"})
    # Empty: the same address as gRPC, so --host 127.0.0.1 keeps metrics local too.
    metrics_host: str = field(default="", metadata={"help": "address the metrics HTTP binds (empty: --host)"})
    # TLS is off unless the operator hands over a certificate and key (PEM files).
    tls_cert: Path | None = field(default=None, metadata={"help": "server certificate chain (PEM); turns on TLS"})
    tls_key: Path | None = field(default=None, metadata={"help": "private key of --tls-cert (PEM)"})
    # With a client CA every caller must present a certificate it signed (mutual TLS).
    tls_client_ca: Path | None = field(
        default=None, metadata={"help": "CA bundle (PEM) client certificates must chain to; turns on mutual TLS"}
    )
    # One token per line; callers send `authorization: Bearer <token>`. Off when unset.
    auth_tokens_file: Path | None = field(
        default=None, metadata={"help": "bearer tokens, one per line; calls without a listed token are refused"}
    )
    # Probes (kubelet, Docker HEALTHCHECK) carry no token; health says only SERVING or not.
    auth_health: bool = field(default=False, metadata={"help": "require a token for grpc.health.v1 too"})
    # On: grpcurl and other tools can list the API; operators may hide it.
    reflection: bool = field(default=True, metadata={"help": "serve gRPC server reflection"})
    # 1: on the shared 2-core box a second intra-op thread made the decoder 10x and the encoder
    # 4x slower at batch 1 (OpenMP threads fighting gRPC's and other processes'); server/README.md
    # has the measurement. 0 keeps torch's default (one thread per core), e.g. on a big box.
    torch_threads: int = field(default=1, metadata={"help": "torch intra-op threads (0: torch default)"})
    # Long enough for a full queue of batches to finish, short of Kubernetes' 30 s kill.
    grace_seconds: float = field(default=20.0, metadata={"help": "seconds to finish accepted calls on SIGTERM"})
    # A client keeps its connections (and so its replicas) until they close: closing each one after
    # 5 minutes (GOAWAY; its calls get --grace-seconds to finish) makes clients re-resolve and spread
    # onto pods added by a scale-up or a rollout. 0: connections live forever.
    max_connection_age_seconds: float = field(
        default=300.0, metadata={"help": "close client connections after this many seconds (0: never)"}
    )
    # Encodes and decodes each in flight per stream: overlap without unbounded buffering.
    stream_window: int = field(default=8, metadata={"help": "EncodeStream requests in flight per stream"})
    # Decoding a dummy batch makes the first real call as fast as the rest.
    warmup: bool = field(default=True, metadata={"help": "run dummy batches before SERVING"})
    # Every real drawing is accepted (issue 12): one longer than the model's max_seq_len after canonical
    # preprocessing is simplified further to fit (strokes.fit_stroke3_many); "refuse" answers INVALID_ARGUMENT.
    too_long: str = field(
        default=TOO_LONG_SIMPLIFY, metadata={"help": "a sketch longer than the model's maximum: simplify | refuse"}
    )
    # key=value lines read well in a terminal and parse in any log pipeline.
    log_format: str = field(default="kv", metadata={"help": "log line format: kv | json"})
    log_level: str = field(default="INFO", metadata={"help": "logging level"})

    def __post_init__(self) -> None:
        check_config(self)


class ConfigError(ValueError):
    """A configuration value is out of range; the message names the flag."""


def check_config(cfg: ServerConfig) -> None:
    positive = ("max_batch_size", "max_queue", "max_sketches_per_request", "max_message_bytes", "stream_window")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{flag_name(name)} must be at least 1, got {getattr(cfg, name)}")
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {cfg.port}")
    for name in ("max_delay_ms", "torch_threads", "grace_seconds", "max_connection_age_seconds"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{flag_name(name)} must be >= 0, got {getattr(cfg, name)}")
    if cfg.max_sketches_per_request > cfg.max_queue:
        raise ConfigError(
            f"--max-sketches-per-request ({cfg.max_sketches_per_request}) must not exceed --max-queue ({cfg.max_queue})"
        )
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
    if cfg.log_format not in {"kv", "json"}:
        raise ConfigError(f"--log-format must be kv or json, got {cfg.log_format!r}")
    if cfg.too_long not in {TOO_LONG_SIMPLIFY, TOO_LONG_REFUSE}:
        raise ConfigError(f"--too-long must be {TOO_LONG_SIMPLIFY} or {TOO_LONG_REFUSE}, got {cfg.too_long!r}")
    check_device(cfg.device)


def check_device(device: str) -> None:
    base, _, index = device.partition(":")
    valid = device in {"auto", "cpu", "cuda"} or (base == "cuda" and index.isdigit())
    if not valid:
        raise ConfigError(f"--device must be {DEVICE_CHOICES_HELP}, got {device!r}")


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _converter(f: dataclasses.Field) -> Callable[[str], Any]:
    converters: dict[str, Callable[[str], Any]] = {
        "int": int,
        "float": float,
        "str": str,
        "bool": _parse_bool,
        "Path": Path,
        "Path | None": _parse_optional_path,
    }
    return converters[str(f.type)]


def build_parser(prog: str = "sketchserve serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a sketchserve model artifact over gRPC. "
        f"Every flag can also be set by an environment variable {ENV_PREFIX}<FLAG>, e.g. {ENV_PREFIX}PORT.",
    )
    for f in dataclasses.fields(ServerConfig):
        flag = "--model" if f.name == "model_dir" else flag_name(f.name)
        text = f"{f.metadata['help']} (env {env_name(f.name)}, default {f.default})"
        if str(f.type) == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=_converter(f), default=None, help=text)
    return parser


def config_from_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags beat environment variables beat defaults; errors name the flag or variable."""
    env = os.environ if environ is None else environ
    parsed = vars(build_parser().parse_args(list(argv)))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        if parsed[f.name] is not None:
            values[f.name] = parsed[f.name]
            continue
        raw = env.get(env_name(f.name))
        if raw is None:
            continue
        try:
            values[f.name] = _converter(f)(raw)
        except ValueError as exc:
            raise ConfigError(f"{env_name(f.name)}={raw!r}: {exc}") from None
    return ServerConfig(**values)
