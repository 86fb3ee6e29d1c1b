"""deploy/kubernetes: every manifest validates against the Kubernetes schemas (offline, the ones
kubernetes-validate bundles), and the manifests agree with the server they run: its flags and
environment variables, its port and health service, its drain, its metric names.

The overlays are rendered by tests/kustomize.py (the subset of kustomize they use).
KServe's custom resources have no bundled schema: their containers are validated as core
Containers and their fields checked by name.
"""

from __future__ import annotations

import dataclasses
import inspect
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents
from kustomize import load_documents, render
from referencing import Registry, Resource

from sketchserve.server.config import ServerConfig, config_from_args, env_name
from sketchserve.server.main import OVERALL
from sketchserve.server.metrics import ServerMetrics
from sketchserve.server.service import SERVICE_NAME

pytestmark = pytest.mark.timeout(120)

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu", "gpu-tls")
PLAIN = ("monitoring", "training")
# The oldest Kubernetes the manifests are for (the preStop sleep action is on by default from 1.30),
# and the newest schemas bundled.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
KSERVE_GROUP = "serving.kserve.io"
# Fields of a KServe predictor model that are KServe's own; the rest are a core Container's.
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri"}
TLS_VARIABLES = (
    "SKETCHSERVE_TLS_CERT",
    "SKETCHSERVE_TLS_KEY",
    "SKETCHSERVE_TLS_CLIENT_CA",
    "SKETCHSERVE_AUTH_TOKENS_FILE",
)
# Seconds between SIGKILL's deadline and the end of the drain: the process exits and flushes logs.
EXIT_MARGIN_S = 3


def overlay(name: str) -> list[dict[str, Any]]:
    return render(DEPLOY / "overlays" / name)


def plain(folder: str) -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / folder).glob("*.yaml")) for doc in load_documents(path)]


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def core_objects() -> list[tuple[str, dict[str, Any]]]:
    rendered = [(f"overlays/{name}", obj) for name in OVERLAYS for obj in overlay(name)]
    rendered += [(folder, obj) for folder in PLAIN for obj in plain(folder)]
    return rendered


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version: str) -> None:
    objects = core_objects()
    kinds = {obj["kind"] for _, obj in objects}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"} <= kinds
    for where, obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']} at {path}: {error.message}")


def container_validator(version: str) -> jsonschema.protocols.Validator:
    """The strict core/v1 Container schema of ``version``, for containers inside custom resources."""
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    schema = schema_contents(f"{schema_dir}/container-v1.json", version)
    definitions = schema_contents(f"{schema_dir}/_definitions.json", version)
    registry: Registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def kserve() -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in plain("kserve")}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kserve_resources_carry_valid_containers(version: str) -> None:
    validator = container_validator(version)
    objects = kserve()
    runtime, service = objects["ServingRuntime"], objects["InferenceService"]
    assert runtime["apiVersion"] == f"{KSERVE_GROUP}/v1alpha1" and service["apiVersion"] == f"{KSERVE_GROUP}/v1beta1"
    for container in runtime["spec"]["containers"]:
        validator.validate(container)
    model = service["spec"]["predictor"]["model"]
    validator.validate({"name": "kserve-container"} | {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS})
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


def serving_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return only(objects, "Deployment", "sketchserve")["spec"]["template"]["spec"]["containers"][0]


def server_environment(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The serving container's environment: the ConfigMap it reads, then its own env (which wins)."""
    container = serving_container(objects)
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env |= only(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    env |= {item["name"]: item["value"] for item in container["env"]}
    return env


def server_config(objects: list[dict[str, Any]]) -> ServerConfig:
    """The ServerConfig the pods will run with: every variable must be one of the server's."""
    env = server_environment(objects)
    known = {env_name(f.name) for f in dataclasses.fields(ServerConfig)}
    unknown = sorted(name for name in env if name.startswith("SKETCHSERVE_") and name not in known)
    assert unknown == [], f"not settings of sketchserve serve: {unknown}"
    return config_from_args([], env)


def configured(name: str) -> tuple[list[dict[str, Any]], ServerConfig]:
    """An overlay's objects and the config its pods run with."""
    objects = overlay(name)
    known = {env_name(f.name) for f in dataclasses.fields(ServerConfig)}
    if name.endswith("tls") and not set(TLS_VARIABLES) <= known:
        pytest.skip("ServerConfig has no TLS and token options yet (branch harden adds them)")
    return objects, server_config(objects)


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_deployment_agrees_with_the_servers_flags_ports_and_health(name: str) -> None:
    objects, cfg = configured(name)
    container = serving_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": cfg.port, "metrics": cfg.metrics_port}
    pod = only(objects, "Deployment", "sketchserve")["spec"]["template"]
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == cfg.metrics_port
    probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
    for kind, probe in probes.items():
        service = SERVICE_NAME if kind == "readiness" else OVERALL
        if "grpc" in probe:
            assert probe["grpc"] == {"port": cfg.port, "service": service}, kind
        else:
            command = probe["exec"]["command"]
            assert command[:3] == ["python", "-m", "sketchserve.client.health"], kind
            # No --target: the probe dials 127.0.0.1:$SKETCHSERVE_PORT, the server's own port.
            assert not any(word.startswith("--target") for word in command), kind
            assert (f"--service={service}" in command) == (service != OVERALL), kind
            assert getattr(cfg, "tls_cert", None) is not None, "exec probes are for TLS ports only"
    for service in ("sketchserve", "sketchserve-headless"):
        grpc_port = only(objects, "Service", service)["spec"]["ports"][0]
        assert grpc_port["port"] == cfg.port and grpc_port["targetPort"] == "grpc"
    assert only(objects, "Service", "sketchserve-headless")["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("name", OVERLAYS)
def test_termination_waits_for_the_servers_drain(name: str) -> None:
    """preStop, then SIGTERM and a drain of --grace-seconds, all inside terminationGracePeriodSeconds;
    liveness must not kill a pod whose health says NOT_SERVING because it is draining."""
    objects = overlay(name)
    env = server_environment(objects)
    grace = float(env.get(env_name("grace_seconds"), ServerConfig.grace_seconds))
    pod = only(objects, "Deployment", "sketchserve")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + grace + EXIT_MARGIN_S
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > grace
    age = float(env.get(env_name("max_connection_age_seconds"), ServerConfig.max_connection_age_seconds))
    assert age > 0, "without a connection age, clients never move to new pods"


def exported_metrics() -> set[str]:
    return {family.name for family in ServerMetrics().registry.collect()}


@pytest.mark.parametrize("name", OVERLAYS)
def test_autoscaling_reads_a_metric_the_server_exports(name: str) -> None:
    objects, cfg = configured(name)
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "sketchserve"
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods", "scale on the server's queue, not CPU"
    assert metric["pods"]["metric"]["name"] in exported_metrics()
    # The target is one full batch waiting per pod.
    assert int(metric["pods"]["target"]["averageValue"]) == cfg.max_batch_size
    adapter = yaml_rules()
    assert metric["pods"]["metric"]["name"] in {rule["name"]["as"] for rule in adapter}
    assert all(rule["seriesQuery"].split("{")[0] in exported_metrics() for rule in adapter)


def yaml_rules() -> list[dict[str, Any]]:
    config = only(plain("monitoring"), "ConfigMap")["data"]["config.yaml"]
    return yaml.safe_load(config)["rules"]


def test_the_serving_pods_run_locked_down() -> None:
    for name in OVERLAYS:
        pod = only(overlay(name), "Deployment", "sketchserve")["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {m["name"]: m.get("readOnly", False) for m in container["volumeMounts"]}["models"] is True
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpus == 1) == name.startswith("gpu"), name


def test_the_training_job_runs_torchrun_with_c10d_over_train_flags_that_exist() -> None:
    from sketchserve.training.cli import train_parser

    objects = plain("training")
    job = only(objects, "Job")["spec"]
    container = job["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == int(env["NNODES"])
    words = shlex.split(container["args"][0].split("exec ", 1)[1].replace(";", " ; "))
    assert words[0] == "torchrun" and "--rdzv_backend=c10d" in words
    service = only(objects, "Service")
    assert job["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    endpoint = next(w for w in words if w.startswith("--rdzv_endpoint=")).split("=", 1)[1]
    assert endpoint.startswith(f"{only(objects, 'Job')['metadata']['name']}-0.{service['metadata']['name']}:")
    assert int(endpoint.rsplit(":", 1)[1]) == service["spec"]["ports"][0]["port"]
    train_args = words[words.index("sketchserve.cli") + 2 :]
    parsed = train_parser().parse_args([w.replace("$resume", "--resume").strip('"') for w in train_args])
    assert parsed.resume is True and parsed.device == "cuda"


def make_certificates(directory: Path) -> None:
    """A CA (ca.crt) and a certificate it signed for 127.0.0.1, for server and client auth (tls.crt, tls.key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found: it makes the test certificates")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    (directory / "ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:sketchserve\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=sketchserve")
    run(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "ext",
    )


def tls_probe_commands() -> dict[str, list[str]]:
    patch = yaml.safe_load((DEPLOY / "components" / "tls" / "tls.yaml").read_text())
    return {
        op["path"].rsplit("/", 1)[1]: op["value"]["exec"]["command"]
        for op in patch
        if op["path"].endswith("Probe") and "exec" in op["value"]
    }


def test_the_tls_components_exec_probes_reach_a_mutual_tls_health_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run the component's probe commands, paths moved to a temporary directory, against a mutual-TLS
    grpc.health.v1 server holding the same kind of certificate (SERVING for the sketch service)."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from sketchserve.client import health as probe

    if "--tls-ca" not in inspect.getsource(probe):
        pytest.skip("the health probe has no TLS options yet (branch harden adds --tls-ca/--tls-cert/--tls-key)")
    commands = tls_probe_commands()
    assert set(commands) == {"startupProbe", "readinessProbe", "livenessProbe"}
    make_certificates(tmp_path)
    pem = {name: (tmp_path / name).read_bytes() for name in ("ca.crt", "tls.crt", "tls.key")}
    credentials = grpc.ssl_server_credentials(
        [(pem["tls.key"], pem["tls.crt"])], root_certificates=pem["ca.crt"], require_client_auth=True
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    servicer.set(OVERALL, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        monkeypatch.setenv("SKETCHSERVE_PORT", str(port))
        for kind, command in commands.items():
            args = [w.replace("/etc/sketchserve/tls/", f"{tmp_path}/") for w in command[3:]]
            assert probe.main(args) == 0, (kind, capsys.readouterr().out)
            assert capsys.readouterr().out == f"127.0.0.1:{port}: SERVING\n"
        without_client_certificate = [w for w in args if not w.startswith(("--tls-cert", "--tls-key"))]
        assert probe.main(without_client_certificate) == 1
        assert probe.main([]) == 1  # plaintext, as the kubelet's own gRPC probe speaks
    finally:
        server.stop(0)


def test_an_overlay_can_point_at_a_registry_as_kustomize_edit_set_image_writes(tmp_path: Path) -> None:
    overlay_dir = tmp_path / "mine"
    overlay_dir.mkdir()
    (overlay_dir / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(DEPLOY / "overlays" / "gpu")],
                "images": [{"name": "sketchserve", "newName": "registry.example/sketchserve", "newTag": "cuda-1"}],
            }
        )
    )
    assert serving_container(render(overlay_dir))["image"] == "registry.example/sketchserve:cuda-1"
