"""ServerConfig: a flag beats the environment beats the default; bad values name the flag or variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sketchserve.server.config import ConfigError, ServerConfig, config_from_args, env_name, flag_name

pytestmark = pytest.mark.timeout(30)


def test_flag_beats_environment_beats_default() -> None:
    env = {"SKETCHSERVE_PORT": "7000", "SKETCHSERVE_MAX_BATCH_SIZE": "7", "SKETCHSERVE_WARMUP": "false"}
    cfg = config_from_args(["--port", "6000", "--model", "m"], env)
    assert cfg.port == 6000
    assert cfg.max_batch_size == 7
    assert cfg.warmup is False
    assert cfg.model_dir == Path("m")
    assert cfg.max_delay_ms == ServerConfig().max_delay_ms


def test_every_field_has_a_flag_and_a_variable() -> None:
    for f in dataclasses.fields(ServerConfig):
        assert f.metadata["help"], f.name
        assert env_name(f.name) == "SKETCHSERVE_" + f.name.upper()
        assert flag_name(f.name).startswith("--")
    cfg = config_from_args([], {"SKETCHSERVE_MODEL_DIR": "/models/x", "SKETCHSERVE_PORT_FILE": "/tmp/p"})
    assert cfg.model_dir == Path("/models/x") and cfg.port_file == Path("/tmp/p")
    assert config_from_args([], {}).too_long == "simplify"
    assert config_from_args([], {"SKETCHSERVE_TOO_LONG": "refuse"}).too_long == "refuse"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--max-batch-size", "0"], {}, "--max-batch-size must be at least 1"),
        (["--device", "tpu"], {}, "--device must be auto | cpu | cuda | cuda:N"),
        ([], {"SKETCHSERVE_PORT": "eighty"}, "SKETCHSERVE_PORT='eighty'"),
        (["--max-queue", "4", "--max-sketches-per-request", "8"], {}, "must not exceed --max-queue"),
        (["--max-delay-ms", "-1"], {}, "--max-delay-ms must be >= 0"),
        ([], {"SKETCHSERVE_TOO_LONG": "truncate"}, "--too-long must be simplify or refuse, got 'truncate'"),
    ],
)
def test_bad_values_are_refused_with_their_name(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        config_from_args(argv, env)


def test_cuda_index_is_a_valid_device() -> None:
    assert config_from_args(["--device", "cuda:1"], {}).device == "cuda:1"


def test_an_absent_cuda_device_is_a_clear_startup_error() -> None:
    torch = pytest.importorskip("torch")
    from sketchserve.runtime import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="--device cuda:1: CUDA is not available"):
        resolve_device("cuda:1")


def test_the_trusted_key_comes_from_the_flag_or_the_environment() -> None:
    assert config_from_args([], {}).trusted_key is None
    assert config_from_args([], {"SKETCHSERVE_TRUSTED_KEY": "ops.pub"}).trusted_key == Path("ops.pub")
    assert config_from_args(["--trusted-key", "flag.pub"], {"SKETCHSERVE_TRUSTED_KEY": "env.pub"}).trusted_key == Path(
        "flag.pub"
    )


def test_connection_age_and_ping_policy_become_grpc_server_options() -> None:
    from sketchserve.server.main import MIN_CLIENT_PING_INTERVAL_S, server_options

    cfg = config_from_args(["--max-connection-age-seconds", "60", "--grace-seconds", "7"], {})
    options = dict(server_options(cfg))
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_connection_age_grace_ms"] == 7_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == MIN_CLIENT_PING_INTERVAL_S * 1000
    never = dict(server_options(config_from_args([], {"SKETCHSERVE_MAX_CONNECTION_AGE_SECONDS": "0"})))
    assert "grpc.max_connection_age_ms" not in never


def test_the_clients_keepalive_pings_are_ones_the_server_accepts() -> None:
    """A client pinging more often than the server allows gets GOAWAY too_many_pings."""
    from sketchserve.client.config import ClientConfig
    from sketchserve.server.main import MIN_CLIENT_PING_INTERVAL_S

    assert ClientConfig().keepalive_seconds >= MIN_CLIENT_PING_INTERVAL_S
