"""Keeping strangers out: TLS, mutual TLS, bearer tokens, reflection switch, metrics address, safe defaults."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_fixtures import CALL_TIMEOUT_S, RunningServer, random_sketches, running_server, server_config

from sketchserve import cli as dispatcher
from sketchserve.client import SketchClient, SketchServiceError, health
from sketchserve.client.types import Sketch
from sketchserve.pb.inference import open_inference_grpc_pb2 as oip_pb2
from sketchserve.pb.inference import open_inference_grpc_pb2_grpc as oip_pb2_grpc
from sketchserve.pb.sketch.v1 import sketch_pb2, sketch_pb2_grpc
from sketchserve.server.config import ConfigError, ServerConfig, config_from_args
from sketchserve.server.security import Grant, bearer_token, check_call, find_grant, read_tokens

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-token"
READ_ONLY_TOKEN = "read-only-token"
ENCODE = "/sketch.v1.SketchService/Encode"


@dataclass(frozen=True)
class Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    out = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("caller@sketchserve.test")
    stranger = other_ca.issue_cert("stranger@elsewhere.test")
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    server.private_key_pem.write_to_path(str(out / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(out / "server.pem"))
    client.private_key_pem.write_to_path(str(out / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(out / "client.pem"))
    stranger.private_key_pem.write_to_path(str(out / "stranger.key"))
    stranger.cert_chain_pems[0].write_to_path(str(out / "stranger.pem"))
    return Pki(
        out / "ca.pem",
        out / "server.pem",
        out / "server.key",
        out / "client.pem",
        out / "client.key",
        out / "stranger.pem",
        out / "stranger.key",
    )


def one_sketch() -> list[Sketch]:
    pb = random_sketches(0, 1)[0]
    return [Sketch(tuple(np.column_stack([s.x, s.y]) for s in pb.strokes))]


def test_tls_refuses_plaintext_and_serves_a_client_trusting_the_ca(tiny_model: Path, pki: Pki) -> None:
    cfg = server_config(tiny_model, tls_cert=pki.server_cert, tls_key=pki.server_key)
    with running_server(cfg) as server:
        with SketchClient(server.target, retry_attempts=1) as plain:
            with pytest.raises(SketchServiceError) as info:
                plain.model_info()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        with SketchClient(server.target, tls_root_ca=pki.ca) as client:
            assert client.encode(one_sketch()).mu.shape[0] == 1


def test_mutual_tls_refuses_callers_without_a_trusted_certificate(tiny_model: Path, pki: Pki) -> None:
    cfg = server_config(tiny_model, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    with running_server(cfg) as server:
        for cert, key in ((None, None), (pki.stranger_cert, pki.stranger_key)):
            with SketchClient(
                server.target, retry_attempts=1, tls_root_ca=pki.ca, tls_client_cert=cert, tls_client_key=key
            ) as refused:
                with pytest.raises(SketchServiceError) as info:
                    refused.model_info()
            assert info.value.code == grpc.StatusCode.UNAVAILABLE, cert
        with SketchClient(
            server.target, tls_root_ca=pki.ca, tls_client_cert=pki.client_cert, tls_client_key=pki.client_key
        ) as client:
            assert client.encode(one_sketch()).mu.shape[0] == 1


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(f"# callers of the sketch service\n{TOKEN}\n\n{READ_ONLY_TOKEN} GetModelInfo ListClusters\n")
    return path


@pytest.fixture(scope="module")
def token_server(tiny_model: Path, tokens_file: Path) -> Iterator[RunningServer]:
    with running_server(server_config(tiny_model, auth_tokens_file=tokens_file)) as server:
        yield server


def encoded_sketches(server: RunningServer) -> float:
    return server.metric("sketchserve_batch_size_sum", batcher="preprocess")


def raw_encode(server: RunningServer, body: bytes, metadata: tuple[tuple[str, str], ...]) -> grpc.RpcError:
    call = server.channel.unary_unary(ENCODE)
    with pytest.raises(grpc.RpcError) as caught:
        call(body, metadata=metadata, timeout=CALL_TIMEOUT_S)
    return caught.value


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", "Bearer wrong-token"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Basic {TOKEN}"),), grpc.StatusCode.UNAUTHENTICATED),
        ((("authorization", f"Bearer {READ_ONLY_TOKEN}"),), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_calls_without_an_allowed_token_are_refused_before_any_work(
    token_server: RunningServer, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    before = (
        encoded_sketches(token_server),
        token_server.metric("sketchserve_requests_total", method="Encode", code=code.name),
    )
    good = sketch_pb2.EncodeRequest(sketches=random_sketches(1, 2)).SerializeToString()
    assert raw_encode(token_server, good, metadata).code() == code
    # Bytes that do not even parse get the same answer: the request was never decoded.
    assert raw_encode(token_server, b"\xff", metadata).code() == code
    after = (
        encoded_sketches(token_server),
        token_server.metric("sketchserve_requests_total", method="Encode", code=code.name),
    )
    assert after[0] == before[0]
    assert after[1] - before[1] == 2


def test_a_listed_token_is_served_and_scoped_tokens_reach_their_methods(token_server: RunningServer) -> None:
    with SketchClient(token_server.target, auth_token=TOKEN) as client:
        assert client.encode(one_sketch()).mu.shape[0] == 1
    with SketchClient(token_server.target, auth_token=READ_ONLY_TOKEN) as reader:
        assert reader.model_info().latent_size > 0
        with pytest.raises(SketchServiceError) as info:
            reader.encode(one_sketch())
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_health_is_exempt_by_default_and_reflection_is_not(token_server: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(token_server.channel)
    status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        list_services(token_server.channel)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_the_token_when_configured(tiny_model: Path, tokens_file: Path) -> None:
    cfg = server_config(tiny_model, auth_tokens_file=tokens_file, auth_health=True)
    with running_server(cfg) as server:
        health = health_pb2_grpc.HealthStub(server.channel)
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        answer = health.Check(
            health_pb2.HealthCheckRequest(service=""),
            metadata=(("authorization", f"Bearer {TOKEN}"),),
            timeout=CALL_TIMEOUT_S,
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def list_services(channel: grpc.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=CALL_TIMEOUT_S)))
    return [s.name for s in response.list_services_response.service]


def test_reflection_can_be_turned_off(tiny_model: Path) -> None:
    with running_server(server_config(tiny_model, reflection=False)) as server:
        with pytest.raises(grpc.RpcError) as caught:
            list_services(server.channel)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        stub = sketch_pb2_grpc.SketchServiceStub(server.channel)
        assert stub.GetModelInfo(sketch_pb2.GetModelInfoRequest(), timeout=CALL_TIMEOUT_S).latent_size > 0
    assert config_from_args(["--no-reflection"], {}).reflection is False
    assert config_from_args([], {"SKETCHSERVE_REFLECTION": "false"}).reflection is False


@pytest.mark.slow
def test_metrics_bind_the_grpc_host_unless_told_otherwise(tiny_model: Path) -> None:
    with running_server(server_config(tiny_model, metrics_port=0)) as server:
        assert server.built.metrics_http is not None
        assert server.built.metrics_http.server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.built.metrics_port}/metrics", timeout=10) as page:
            assert b"sketchserve_requests_total" in page.read()
    with running_server(server_config(tiny_model, metrics_port=0, metrics_host="0.0.0.0")) as server:
        assert server.built.metrics_http is not None
        assert server.built.metrics_http.server.server_address[0] == "0.0.0.0"


def test_safe_defaults_and_the_deploy_variable_names(tmp_path: Path) -> None:
    assert ServerConfig().host == "127.0.0.1"
    assert ServerConfig().reflection is True and ServerConfig().auth_health is False
    env = {
        "SKETCHSERVE_TLS_CERT": "/run/tls/tls.crt",
        "SKETCHSERVE_TLS_KEY": "/run/tls/tls.key",
        "SKETCHSERVE_TLS_CLIENT_CA": "/run/tls/ca.crt",
        "SKETCHSERVE_AUTH_TOKENS_FILE": "/run/tokens",
    }
    cfg = config_from_args([], env)
    assert (cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca, cfg.auth_tokens_file) == tuple(Path(v) for v in env.values())
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key go together"):
        config_from_args(["--tls-cert", "c.pem"], {})
    with pytest.raises(ConfigError, match="--tls-client-ca needs --tls-cert"):
        config_from_args(["--tls-client-ca", "ca.pem"], {})
    empty = tmp_path / "tokens"
    empty.write_text("# nobody yet\n\n")
    with pytest.raises(ConfigError, match="no tokens"):
        read_tokens(empty)
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    assert "SKETCHSERVE_HOST=0.0.0.0" in dockerfile


def test_token_checks() -> None:
    grants = (Grant(b"a", frozenset()), Grant(b"b", frozenset({"GetModelInfo"})))
    assert bearer_token((("authorization", "bearer  a "),)) == b"a"
    assert bearer_token((("x-other", "Bearer a"),)) is None
    assert find_grant(grants, b"b") == grants[1]
    assert find_grant(grants, b"ab") is None
    check_call(grants, (("authorization", "Bearer b"),), "GetModelInfo")


def test_the_command_line_speaks_mutual_tls_and_tokens(
    tiny_model: Path, pki: Pki, tokens_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = server_config(
        tiny_model,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
        auth_tokens_file=tokens_file,
    )
    token = tmp_path / "token"
    token.write_text(f"{READ_ONLY_TOKEN}\n")
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    with running_server(cfg) as server:
        base = ["info", "--target", server.target, "--retry-budget", "0"]
        assert dispatcher.main([*base, *tls, "--token-file", str(token)]) == 0
        assert json.loads(capsys.readouterr().out)["latent_size"] > 0
        assert dispatcher.main([*base, *tls]) == 1
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert dispatcher.main([*base, "--token-file", str(token)]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err


def test_the_health_probe_speaks_mutual_tls(tiny_model: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = server_config(tiny_model, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca)
    with running_server(cfg) as server:
        tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
        assert health.main(["--target", server.target, *tls]) == 0
        assert health.main(["--target", server.target]) == 1
    assert capsys.readouterr().out.splitlines() == [f"{server.target}: SERVING", f"{server.target}: UNAVAILABLE"]


def test_inference_probes_are_exempt_like_health_and_inference_is_not(token_server: RunningServer) -> None:
    oip = oip_pb2_grpc.GRPCInferenceServiceStub(token_server.channel)
    assert oip.ServerReady(oip_pb2.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
    assert oip.ServerLive(oip_pb2.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live
    with pytest.raises(grpc.RpcError) as caught:
        oip.ServerMetadata(oip_pb2.ServerMetadataRequest(), timeout=CALL_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        oip.ModelInfer(oip_pb2.ModelInferRequest(model_name="sketch-encoder"), timeout=CALL_TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
