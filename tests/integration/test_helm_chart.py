"""Renders the Helm chart with the real helm binary and checks what Kubernetes would get.

helm is the one scripts/helm-check installs (GATEWAY_TOOLS_DIR, default
~/.cache/dicom-gateway/tools). Without it these tests fail: run scripts/helm-check.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import cli
from gateway.settings import ROLES

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "dicom-gateway"
SPLIT_CI = CHART / "ci" / "split-values.yaml"
SINGLE_CI = CHART / "ci" / "single-values.yaml"
# Kafka, S3, PostgreSQL and shared API tokens: what every non-embedded install needs.
API_TOKENS_SECRET = "dicomgw-api-tokens"
BACKENDS = (
    "kafka.bootstrapServers=kafka-bootstrap.kafka.svc:9092,"
    "s3.endpoint=minio.storage.svc:9000,database.existingSecret=dicomgw-postgres,"
    f"gateway.http.auth.tokens.existingSecret={API_TOKENS_SECRET}"
)
WORKER_ROLES = ("store", "register", "notify", "forward")
# Worker roles values.yaml enables; register is off until an XDS repository is configured, forward until
# destinations are.
ENABLED_WORKER_ROLES = ("store", "notify")
OPTIONAL_ROLES = ("register", "forward")
# The audit trail is on by default (gateway.audit.enabled): split mode deploys the audit role.
AUDIT_ROLE = "audit"
SPLIT_ROLES = ("receiver", *ENABLED_WORKER_ROLES, AUDIT_ROLE, "api")
# The roles hl7.enabled deploys in split mode: the MLLP listener and the role that applies ADT.
HL7_ROLES = ("hl7", "patient")
# Roles that read a topic with one used partition (one key keeps the order): one replica does all the work, so
# values.yaml pins them at 1 without an autoscaler.
ONE_PARTITION_ROLES = ("patient", AUDIT_ROLE)
# ci/split-values.yaml also forwards and takes HL7 (register needs an XDS repository).
SPLIT_CI_ROLES = (*SPLIT_ROLES, "forward", *HL7_ROLES)
# One destination: what forward.enabled needs.
FORWARD_DESTINATION = (
    "gateway.forward.destinations[0].name=national,gateway.forward.destinations[0].ae_title=NATARCH,"
    "gateway.forward.destinations[0].host=archive.example.org,gateway.forward.destinations[0].port=104"
)
ENABLE_OPTIONAL_ROLES = (*(f"{role}.enabled=true" for role in OPTIONAL_ROLES), FORWARD_DESTINATION)
SECRET_SETTINGS = {
    "GATEWAY_S3__ACCESS_KEY",
    "GATEWAY_S3__SECRET_KEY",
    "GATEWAY_DATABASE__URL",
    "GATEWAY_KAFKA__SASL_USERNAME",
    "GATEWAY_KAFKA__SASL_PASSWORD",
}
# (value files, --set values) covering both modes and the embedded default.
VALUE_SETS = {
    "embedded-default": ((), ()),
    "single-ci": ((SINGLE_CI,), ()),
    "split-ci": ((SPLIT_CI,), ()),
    "split-minimal": ((), ("mode=split", BACKENDS)),
}

Manifest = dict[str, Any]


def _tools_dir() -> Path:
    configured = os.environ.get("GATEWAY_TOOLS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "dicom-gateway" / "tools"


def _helm() -> Path:
    helm = _tools_dir() / "bin" / "helm"
    if not os.access(helm, os.X_OK):
        pytest.fail(
            f"helm not found at {helm}: run scripts/helm-check once to install it "
            "(set GATEWAY_TOOLS_DIR if you use another tools directory)",
            pytrace=False,
        )
    return helm


def _run_template(values: tuple[Path, ...], sets: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    command = [str(_helm()), "template", "gw", str(CHART), "--namespace", "dicom"]
    for path in values:
        command += ["--values", str(path)]
    for assignment in sets:
        command += ["--set", assignment]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def render(*sets: str, values: tuple[Path, ...] = ()) -> list[Manifest]:
    result = _run_template(values, sets)
    if result.returncode != 0:
        pytest.fail(f"helm template failed:\n{result.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(*sets: str, values: tuple[Path, ...] = ()) -> str:
    result = _run_template(values, sets)
    assert result.returncode != 0, "helm template was expected to refuse these values"
    return result.stderr


def render_set(name: str) -> list[Manifest]:
    values, sets = VALUE_SETS[name]
    return render(*sets, values=values)


def of_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def component(manifest: Manifest) -> str:
    return manifest["metadata"]["labels"]["app.kubernetes.io/component"]


def containers(deployment: Manifest) -> list[Manifest]:
    return deployment["spec"]["template"]["spec"]["containers"]


def config_map(manifests: list[Manifest]) -> dict[str, str]:
    (cm,) = of_kind(manifests, "ConfigMap").values()
    return cm["data"]


# How each value set's pods are probed: httpGet with a scheme, or tcpSocket (HTTPS requiring client certificates,
# which the kubelet cannot present).
PROBE_KINDS = {"embedded-default": "HTTP", "single-ci": "HTTPS", "split-ci": "tcpSocket", "split-minimal": "HTTP"}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_probes_are_http_on_the_http_port(value_set: str) -> None:
    deployments = of_kind(render_set(value_set), "Deployment")
    assert deployments
    for name, deployment in deployments.items():
        for container in containers(deployment):
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["http"] == 8080, name
            expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
            for probe_name, path in expected.items():
                probe = container[probe_name]
                assert "exec" not in probe, (name, probe_name)
                if PROBE_KINDS[value_set] == "tcpSocket":
                    assert "httpGet" not in probe, (name, probe_name)
                    assert probe["tcpSocket"]["port"] == "http", (name, probe_name)
                    continue
                assert "tcpSocket" not in probe, (name, probe_name)
                assert probe["httpGet"]["path"] == path, (name, probe_name)
                assert probe["httpGet"]["scheme"] == PROBE_KINDS[value_set], (name, probe_name)
                port = probe["httpGet"]["port"]
                assert ports.get(port, port) == 8080, (name, probe_name, port)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_pods_and_containers_run_locked_down_as_non_root(value_set: str) -> None:
    for name, deployment in of_kind(render_set(value_set), "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"].get("runAsUser", 1) != 0, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in containers(deployment):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc.get("runAsUser", 1) != 0, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc.get("privileged", False) is False, name
            assert "ALL" in sc["capabilities"]["drop"], name
            assert not sc["capabilities"].get("add"), name


def test_chart_schema_refuses_weakened_security_context() -> None:
    error = render_error("containerSecurityContext.readOnlyRootFilesystem=false")
    assert "readOnlyRootFilesystem" in error
    error = render_error("podSecurityContext.runAsNonRoot=false")
    assert "runAsNonRoot" in error


@pytest.mark.parametrize(("drain", "margin", "sets"), [(30, 15, ()), (120, 20, ("mode=split", BACKENDS))])
def test_termination_grace_period_outlasts_the_drain(drain: int, margin: int, sets: tuple[str, ...]) -> None:
    manifests = render(*sets, f"gateway.drainTimeoutSeconds={drain}", f"gateway.terminationGraceMarginSeconds={margin}")
    assert config_map(manifests)["GATEWAY_RUNTIME__DRAIN_TIMEOUT_SECONDS"] == str(drain)
    for name, deployment in of_kind(manifests, "Deployment").items():
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= drain + margin, name


INTERNAL_SECRET = "GATEWAY_INTERNAL__SECRET"
GENERATED_INTERNAL_SECRET = "gw-dicom-gateway-internal"
# The roles at either end of the internal port: they alone get the internal secret.
INTERNAL_SECRET_ROLES = ("single", "receiver", "notify")


@pytest.mark.parametrize("delivery", ["files", "env"])
@pytest.mark.parametrize("values", [SINGLE_CI, SPLIT_CI])
def test_secrets_are_referenced_never_inlined(delivery: str, values: Path) -> None:
    manifests = render(f"secretDelivery={delivery}", values=(values,))
    # The one Secret the chart may create holds a value it generated: the internal secret (single-ci does not
    # name one; split-ci uses gateway.internal.existingSecret).
    created = of_kind(manifests, "Secret")
    assert set(created) == ({GENERATED_INTERNAL_SECRET} if values == SINGLE_CI else set())
    assert SECRET_SETTINGS.isdisjoint(config_map(manifests))
    assert INTERNAL_SECRET not in config_map(manifests)
    existing = {"dicomgw-s3", "dicomgw-postgres", "dicomgw-kafka-user", "dicomgw-dicom-tls", "dicomgw-kafka-cluster-ca",
                "dicomgw-internal", *created}
    for name, deployment in of_kind(manifests, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = containers(deployment)
        env = {e["name"]: e for e in container.get("env", [])}
        for entry in env.values():
            if entry["name"] in {*SECRET_SETTINGS, INTERNAL_SECRET}:
                assert "value" not in entry, (name, entry)
                assert entry["valueFrom"]["secretKeyRef"]["name"] in existing, (name, entry)
        volumes = {v["name"]: v for v in pod["volumes"]}
        projected = volumes["secrets"].get("projected", {}).get("sources", [])
        delivered_files = {item["path"] for source in projected for item in source["secret"]["items"]}
        assert {source["secret"]["name"] for source in projected} <= existing
        delivered = delivered_files if delivery == "files" else set(env) & {*SECRET_SETTINGS, INTERNAL_SECRET}
        expected = SECRET_SETTINGS | ({INTERNAL_SECRET} if component(deployment) in INTERNAL_SECRET_ROLES else set())
        assert delivered == expected, name
        if delivery == "env":
            assert not delivered_files, name
        if "dicom-tls" in volumes:
            assert volumes["dicom-tls"]["secret"]["secretName"] == "dicomgw-dicom-tls"
        (ca_source,) = volumes["kafka-tls"]["projected"]["sources"]
        assert ca_source["secret"]["name"] == "dicomgw-kafka-cluster-ca"


def test_split_mode_runs_one_deployment_per_enabled_role() -> None:
    manifests = render_set("split-ci")
    deployments = of_kind(manifests, "Deployment")
    assert sorted(component(d) for d in deployments.values()) == sorted(SPLIT_CI_ROLES)
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject", "NetworkPolicy"):
        rendered = {component(m) for m in of_kind(manifests, kind).values()}
        assert rendered.isdisjoint(set(OPTIONAL_ROLES) - set(SPLIT_CI_ROLES)), (kind, rendered)
    selectors = set()
    for deployment in deployments.values():
        role = component(deployment)
        (container,) = containers(deployment)
        assert container["args"] == ["run", "--role", role]
        ports = {p["name"] for p in container["ports"]}
        # DICOM-TLS closes the plain DICOM port (gateway.dicom.tls.tlsOnly defaults to true); reports on the same
        # association open the internal port on the receivers; the hl7 pods listen for MLLP.
        expected = {"receiver": {"http", "dicom-tls", "internal"}, "hl7": {"http", "hl7"}}.get(role, {"http"})
        assert ports == expected, role
        selectors.add(tuple(sorted(deployment["spec"]["selector"]["matchLabels"].items())))
    assert len(selectors) == len(SPLIT_CI_ROLES), "each role needs its own pod selector"


def test_split_mode_exposes_dicom_tls_on_the_receiver_service() -> None:
    services = of_kind(render_set("split-ci"), "Service")
    receiver = services["gw-dicom-gateway-receiver"]
    assert receiver["spec"]["type"] == "NodePort"
    assert receiver["spec"]["selector"]["app.kubernetes.io/component"] == "receiver"
    ports = {p["name"]: (p["port"], p.get("nodePort")) for p in receiver["spec"]["ports"]}
    assert ports == {"dicom-tls": (2762, 32762)}, "tlsOnly: no plain DICOM port, nor its node port"
    both = of_kind(render("gateway.dicom.tls.tlsOnly=false", values=(SPLIT_CI,)), "Service")
    ports = {p["name"]: (p["port"], p.get("nodePort")) for p in both["gw-dicom-gateway-receiver"]["spec"]["ports"]}
    assert ports == {"dicom": (11112, 31112), "dicom-tls": (2762, 32762)}
    lb = of_kind(render("mode=split", BACKENDS), "Service")["gw-dicom-gateway-receiver"]
    assert lb["spec"]["type"] == "LoadBalancer"
    assert lb["spec"]["externalTrafficPolicy"] == "Local"


def test_single_mode_runs_every_role_in_one_deployment() -> None:
    (deployment,) = of_kind(render_set("single-ci"), "Deployment").values()
    (container,) = containers(deployment)
    assert container["args"] == ["run"]


def _role_args(deployment: Manifest) -> list[str]:
    """The roles named with --role (or --role=X) in the args and command of every container of a Deployment."""
    pod = deployment["spec"]["template"]["spec"]
    roles = []
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        argv = [*container.get("command", []), *container.get("args", [])]
        for index, arg in enumerate(argv):
            if arg == "--role":
                assert index + 1 < len(argv), f"{deployment['metadata']['name']}: --role without a value"
                roles.append(argv[index + 1])
            elif arg.startswith("--role="):
                roles.append(arg.split("=", 1)[1])
    return roles


# (value files, --set values, roles explicitly enabled beyond gateway.settings.ROLES)
ROLE_VALUE_SETS = {
    **{name: (values, sets, ()) for name, (values, sets) in VALUE_SETS.items()},
    "single-minimal": ((), (BACKENDS,), ()),
    "single-ci-optional-roles": ((SINGLE_CI,), ENABLE_OPTIONAL_ROLES, OPTIONAL_ROLES),
    "split-minimal-optional-roles": ((), ("mode=split", BACKENDS, *ENABLE_OPTIONAL_ROLES), OPTIONAL_ROLES),
    "split-ci-optional-roles": ((SPLIT_CI,), ENABLE_OPTIONAL_ROLES, (*OPTIONAL_ROLES, *HL7_ROLES)),
}


@pytest.mark.parametrize("value_set", sorted(ROLE_VALUE_SETS))
def test_every_rendered_role_is_one_the_gateway_runs(value_set: str) -> None:
    """`dicom-gateway run --role X` refuses roles outside ROLES: a pod with one would crash-loop."""
    values, sets, future = ROLE_VALUE_SETS[value_set]
    manifests = render(*sets, values=values)
    deployments = of_kind(manifests, "Deployment")
    assert deployments
    rendered = {name: _role_args(deployment) for name, deployment in deployments.items()}
    for name, roles in rendered.items():
        for role in roles:
            assert role in ROLES or role in future, f"{name} runs --role {role}, not in gateway.settings.ROLES {ROLES}"
        if component(deployments[name]) == "single":
            assert roles == [], "single mode runs every role of the image, without --role"
        else:
            assert roles == [component(deployments[name])], name
    if future and any(component(d) != "single" for d in deployments.values()):
        split_roles = {role for roles in rendered.values() for role in roles}
        assert split_roles == {*SPLIT_ROLES, *future}, "explicitly enabled roles get Deployments"
        pdbs = {component(m) for m in of_kind(manifests, "PodDisruptionBudget").values()}
        autoscaled = {component(m) for kind in ("HorizontalPodAutoscaler", "ScaledObject")
                      for m in of_kind(manifests, kind).values()}
        assert set(future) <= pdbs and set(future) <= autoscaled


def test_worker_roles_enabled_by_default_are_those_that_need_no_extra_configuration() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    enabled = {role: values[role]["enabled"] for role in WORKER_ROLES}
    assert enabled == {"store": True, "register": False, "notify": True, "forward": False}
    assert set(WORKER_ROLES) <= set(ROLES)


@pytest.mark.parametrize("value_set", ["split-minimal", "split-ci", "single-ci"])
def test_every_deployment_has_a_pdb_and_an_autoscaler(value_set: str) -> None:
    manifests = render_set(value_set)
    deployments = of_kind(manifests, "Deployment")
    pdbs = of_kind(manifests, "PodDisruptionBudget")
    hpas = of_kind(manifests, "HorizontalPodAutoscaler")
    scaled = of_kind(manifests, "ScaledObject")
    for name, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert pdbs[name]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        autoscalers = [m for m in (hpas.get(name), scaled.get(name)) if m]
        if not autoscalers and component(deployment) in ONE_PARTITION_ROLES:
            assert deployment["spec"]["replicas"] == 1, f"{name}: one partition, one replica"
            continue
        assert len(autoscalers) == 1, f"{name} needs exactly one autoscaler"
        assert autoscalers[0]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert "replicas" not in deployment["spec"], "an autoscaled Deployment must not pin replicas"
    for hpa in hpas.values():
        (metric,) = hpa["spec"]["metrics"]
        assert metric["resource"]["name"] == "cpu"


def _rules_for(policy: Manifest, port: str) -> list[Manifest]:
    return [rule for rule in policy["spec"]["ingress"] if {"port": port, "protocol": "TCP"} in rule["ports"]]


def test_network_policy_unless_disabled() -> None:
    assert not of_kind(render("mode=split", BACKENDS, "networkPolicy.enabled=false"), "NetworkPolicy")
    # On by default, with sources that keep what worked without it: DICOM from anywhere, the API from the
    # release's namespace, metrics from any namespace.
    manifests = render("mode=split", BACKENDS)
    policies = of_kind(manifests, "NetworkPolicy")
    assert set(policies) == set(of_kind(manifests, "Deployment"))
    (dicom,) = _rules_for(policies["gw-dicom-gateway-receiver"], "dicom")
    assert "from" not in dicom, "dicomFrom [] admits any source"
    (api_metrics, api) = _rules_for(policies["gw-dicom-gateway-api"], "http")
    assert api_metrics["from"] == [{"namespaceSelector": {}}]
    assert api["from"] == [{"podSelector": {}}]
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open unless networkPolicy.egress"
        assert not _rules_for(policy, "internal"), "no internal port without reportOnSameAssociation"

    manifests = render_set("split-ci")
    policies = of_kind(manifests, "NetworkPolicy")
    assert set(policies) == set(of_kind(manifests, "Deployment"))
    receiver = policies["gw-dicom-gateway-receiver"]
    (rule,) = _rules_for(receiver, "dicom-tls")
    # dicomFrom, then reportsFrom (the forward destinations' storage-commitment reports).
    assert [peer["ipBlock"]["cidr"] for peer in rule["from"]] == ["10.20.0.0/16", "192.0.2.0/24", "198.51.100.0/24"]
    for role in (*ENABLED_WORKER_ROLES, "forward", "patient", AUDIT_ROLE):
        ports = [p["port"] for r in policies[f"gw-dicom-gateway-{role}"]["spec"]["ingress"] for p in r["ports"]]
        assert ports == ["http"], role
    ports = [p["port"] for r in policies["gw-dicom-gateway-hl7"]["spec"]["ingress"] for p in r["ports"]]
    assert ports == ["http", "hl7"]
    # The API pods: metricsFrom (default) and apiFrom (ingress-nginx) on the one HTTP port.
    (metrics_rule, api_rule) = _rules_for(policies["gw-dicom-gateway-api"], "http")
    assert metrics_rule["from"] == [{"namespaceSelector": {}}]
    assert api_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert policies["gw-dicom-gateway-api"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    error = render_error("mode=split", BACKENDS, "networkPolicy.dicomCIDRs={10.20.0.0/16}")
    assert "dicomCIDRs" in error, "the former value is refused, not ignored"


def test_keda_scaled_objects_only_when_enabled() -> None:
    assert not of_kind(render("mode=split", BACKENDS), "ScaledObject")
    assert not of_kind(render(BACKENDS), "ScaledObject")
    manifests = render("mode=split", BACKENDS, "store.keda.enabled=true")
    (scaled,) = of_kind(manifests, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "gw-dicom-gateway-store"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == "dicomgw-store"
    assert trigger["metadata"]["topic"] == "dicomgw.instances"
    assert "gw-dicom-gateway-store" not in of_kind(manifests, "HorizontalPodAutoscaler")

    # Single mode: one trigger per consumer group of an enabled worker role (and of the audit role, on by default).
    single = render(BACKENDS, "single.keda.enabled=true")
    (scaled,) = of_kind(single, "ScaledObject").values()
    groups = sorted(t["metadata"]["consumerGroup"] for t in scaled["spec"]["triggers"])
    assert groups == ["dicomgw-audit-log", "dicomgw-notify", "dicomgw-store"]
    single = render(BACKENDS, "single.keda.enabled=true", *ENABLE_OPTIONAL_ROLES)
    (scaled,) = of_kind(single, "ScaledObject").values()
    topics = {t["metadata"]["consumerGroup"]: t["metadata"]["topic"] for t in scaled["spec"]["triggers"]}
    assert topics == {"dicomgw-store": "dicomgw.instances", "dicomgw-register": "dicomgw.events",
                      "dicomgw-notify": "dicomgw.events", "dicomgw-forward": "dicomgw.events",
                      "dicomgw-audit-log": "dicomgw.audit"}, \
        "each group's lag is measured on the topic it reads"
    assert "enable at least one" in render_error(BACKENDS, "single.keda.enabled=true", "store.enabled=false",
                                                 "notify.enabled=false", "gateway.audit.enabled=false")

    # A disabled role's keda switch renders nothing.
    split = render("mode=split", BACKENDS, "register.keda.enabled=true")
    assert not of_kind(split, "ScaledObject")
    split = render("mode=split", BACKENDS, "register.enabled=true", "register.keda.enabled=true")
    (scaled,) = of_kind(split, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "gw-dicom-gateway-register"


def test_embedded_mode_keeps_one_replica_on_a_volume() -> None:
    manifests = render_set("embedded-default")
    (deployment,) = of_kind(manifests, "Deployment").values()
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "GATEWAY_KAFKA__BOOTSTRAP_SERVERS" not in config_map(manifests)
    (claim,) = of_kind(manifests, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim
    for refused in ("single.replicas=2", "single.autoscaling.enabled=true", "single.keda.enabled=true"):
        assert "embedded bus" in render_error(refused), refused


def test_split_mode_requires_kafka() -> None:
    assert "kafka.bootstrapServers" in render_error("mode=split")


def test_service_monitor_scrapes_metrics_when_enabled() -> None:
    assert not of_kind(render_set("embedded-default"), "ServiceMonitor")
    manifests = render_set("split-ci")
    (monitor,) = of_kind(manifests, "ServiceMonitor").values()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    metrics = of_kind(manifests, "Service")["gw-dicom-gateway-metrics"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()


def _leaf_paths(values: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in values.items():
        path = (*prefix, key)
        paths += _leaf_paths(value, path) if isinstance(value, dict) and value else [path]
    return paths


def _schema_node(schema: dict[str, Any], root: dict[str, Any], key: str) -> dict[str, Any] | None:
    if "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    assert schema.get("additionalProperties", True) is not False, f"schema refuses {key}"
    return None


def test_every_value_is_documented_and_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    roles = {"single", "receiver", "api", *WORKER_ROLES, *HL7_ROLES, AUDIT_ROLE}
    for path in _leaf_paths(values):
        # A role's values are documented for every role (<role>.replicas) or for that role (hl7.service.type).
        doc_paths = [("<role>", *path[1:]), path] if path[0] in roles else [path]
        prefixes = [".".join(doc_path[:n]) for doc_path in doc_paths for n in range(len(doc_path), 0, -1)]
        assert any(f"| `{prefix}` |" in readme for prefix in prefixes), f"{'.'.join(path)} is not documented"
        node: dict[str, Any] | None = schema
        for key in path:
            node = _schema_node(node, schema, key)
            if node is None:
                break


SecretValues = dict[tuple[str, str], str]


def _secret_value(secret: str, key: str, secret_values: SecretValues | None) -> str:
    return (secret_values or {}).get((secret, key), f"from-{secret}-{key}")


def _pod_settings(deployment: Manifest, config: dict[str, str], secrets_dir: Path,
                  secret_values: SecretValues | None = None) -> dict[str, str]:
    """The GATEWAY_* environment a pod of this Deployment starts with; secret files land in secrets_dir.

    A Secret key holds secret_values[(secret, key)], or "from-<secret>-<key>".
    """
    pod = deployment["spec"]["template"]["spec"]
    (container,) = containers(deployment)
    env = {**config, "GATEWAY_SECRETS_DIR": str(secrets_dir)}
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        field = entry.get("valueFrom", {}).get("fieldRef")
        if field is not None:
            env[entry["name"]] = "10.1.2.3" if field["fieldPath"] == "status.podIP" else "from-field"
            continue
        value = entry["value"].replace("$(POD_IP)", env.get("POD_IP", "")) if not ref else ""
        env[entry["name"]] = _secret_value(ref["name"], ref["key"], secret_values) if ref else value
    for volume in pod["volumes"]:
        if volume["name"] != "secrets" or "projected" not in volume:
            continue
        for source in volume["projected"]["sources"]:
            for item in source["secret"]["items"]:
                value = _secret_value(source["secret"]["name"], item["key"], secret_values)
                (secrets_dir / item["path"]).write_text(value + "\n")
    return env


def _gateway_settings(deployment: Manifest, config: dict[str, str], secrets_dir: Path,
                      secret_values: SecretValues | None = None) -> tuple[dict[str, Any], str]:
    """What `dicom-gateway settings` prints in a pod of this Deployment, and its raw output: the command's own
    code run here with the pod's environment only (a process per Deployment cost seconds of imports each)."""
    secrets_dir.mkdir()
    env = _pod_settings(deployment, config, secrets_dir, secret_values)
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update({**{k: v for k, v in saved.items() if not k.startswith("GATEWAY_")}, **env})
        with contextlib.chdir(REPO_ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["settings"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert code == 0, f"{deployment['metadata']['name']}: {err.getvalue()}"
    return json.loads(out.getvalue()), out.getvalue()


def test_the_gateway_accepts_the_embedded_defaults(tmp_path: Path) -> None:
    manifests = render_set("embedded-default")
    (deployment,) = of_kind(manifests, "Deployment").values()
    settings, _ = _gateway_settings(deployment, config_map(manifests), tmp_path / "secrets")
    assert settings["kafka"]["bootstrap_servers"] is None
    assert settings["data_dir"] == "/var/lib/dicom-gateway"


@pytest.mark.parametrize("delivery", ["files", "env"])
@pytest.mark.parametrize("values", [SINGLE_CI, SPLIT_CI])
def test_the_gateway_accepts_the_rendered_configuration(delivery: str, values: Path, tmp_path: Path) -> None:
    manifests = render(f"secretDelivery={delivery}", values=(values,))
    config = config_map(manifests)
    for name, deployment in of_kind(manifests, "Deployment").items():
        settings, output = _gateway_settings(deployment, config, tmp_path / name)
        assert settings["kafka"]["bootstrap_servers"] == config["GATEWAY_KAFKA__BOOTSTRAP_SERVERS"]
        assert settings["kafka"]["sasl_username"] == "from-dicomgw-kafka-user-username"
        assert settings["kafka"]["ssl_ca_file"] == "/etc/dicom-gateway/kafka-tls/ca.crt"
        assert settings["runtime"]["drain_timeout_seconds"] == 30
        assert settings["data_dir"] == "/var/lib/dicom-gateway"
        # the pods that receive DICOM or open DICOM associations (notify, forward) have the certificate
        opens_dicom = component(deployment) in ("single", "receiver", "notify", "forward")
        tls_cert = "/etc/dicom-gateway/tls/tls.crt" if opens_dicom else None
        assert settings["dicom"]["tls"]["cert_file"] == tls_cert, name
        # every pod records audit events; only the audit pods (split-ci: tls://) get the repository's TLS files
        assert settings["audit"]["enabled"] is True, name
        assert settings["audit"]["repository_url"] == config["GATEWAY_AUDIT__REPOSITORY_URL"], name
        audit_ca = "/etc/dicom-gateway/audit-tls/ca.crt" if component(deployment) == AUDIT_ROLE else None
        assert settings["audit"]["ca_file"] == audit_ca, name
        assert "from-dicomgw-s3-secret-key" not in output, "secrets must stay masked"
        assert settings["s3"]["secret_key"] and settings["database"]["url"], name


# DICOM negotiation and User Identity Negotiation (gateway.dicom.*).
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
PRIVATE_STORAGE = "1.2.826.0.1.3680043.9.7433.1.1"
USER_IDENTITY_SECRETS = {"GATEWAY_DICOM__USER_IDENTITY__USERS", "GATEWAY_DICOM__USER_IDENTITY__TOKEN_KEYS"}
IDENTITY_SECRET = "dicomgw-dicom-users"
# JSON as the Secret holds it (the gateway parses both settings as JSON).
IDENTITY_SECRET_VALUES = {
    (IDENTITY_SECRET, "users"): json.dumps({"modality1": "s3cret-passcode", "viewer": ""}),
    (IDENTITY_SECRET, "token-keys"): json.dumps(["an-hmac-secret-of-at-least-32-bytes!"]),
}


def _dicom_values(tmp_path: Path) -> Path:
    """A values file with every new DICOM setting (a file: --set would turn some UIDs into numbers)."""
    path = tmp_path / "dicom-values.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"dicom": {
        "allowedAEs": [{"ae_title": "MODALITY1", "networks": ["10.20.0.0/16"],
                        "transfer_syntax_preference": [JPEG_BASELINE]}],
        "transferSyntaxPreference": [EXPLICIT_LE, JPEG_BASELINE],
        "extraStorageSopClasses": [PRIVATE_STORAGE],
        "acceptAnyStorageClass": True,
        "userIdentity": {"required": True, "existingSecret": IDENTITY_SECRET, "tokenAudience": "dicom-gateway",
                         "tokenIssuer": "https://idp.example.org"},
    }}}))
    return path


def _receives_dicom(deployment: Manifest) -> bool:
    return component(deployment) in ("single", "receiver")


def test_dicom_negotiation_settings_are_rendered_into_the_config_map(tmp_path: Path) -> None:
    config = config_map(render(values=(_dicom_values(tmp_path),)))
    assert json.loads(config["GATEWAY_DICOM__TRANSFER_SYNTAX_PREFERENCE"]) == [EXPLICIT_LE, JPEG_BASELINE]
    assert json.loads(config["GATEWAY_DICOM__EXTRA_STORAGE_SOP_CLASSES"]) == [PRIVATE_STORAGE]
    (allowed,) = json.loads(config["GATEWAY_DICOM__ALLOWED_AES"])
    assert allowed["transfer_syntax_preference"] == [JPEG_BASELINE]
    assert config["GATEWAY_DICOM__ACCEPT_ANY_STORAGE_CLASS"] == "true"
    assert config["GATEWAY_DICOM__USER_IDENTITY__REQUIRED"] == "true"
    assert config["GATEWAY_DICOM__USER_IDENTITY__TOKEN_AUDIENCE"] == "dicom-gateway"
    assert config["GATEWAY_DICOM__USER_IDENTITY__TOKEN_ISSUER"] == "https://idp.example.org"
    assert USER_IDENTITY_SECRETS.isdisjoint(config), "secrets never go into the ConfigMap"

    defaults = config_map(render_set("embedded-default"))
    assert defaults["GATEWAY_DICOM__ACCEPT_ANY_STORAGE_CLASS"] == "false"
    assert defaults["GATEWAY_DICOM__USER_IDENTITY__REQUIRED"] == "false"
    for unset in ("TRANSFER_SYNTAX_PREFERENCE", "EXTRA_STORAGE_SOP_CLASSES", "USER_IDENTITY__TOKEN_AUDIENCE",
                  "USER_IDENTITY__TOKEN_ISSUER"):
        assert f"GATEWAY_DICOM__{unset}" not in defaults, "empty values leave the gateway's defaults"


def _identity_delivery(deployment: Manifest) -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]]:
    """The user-identity settings a Deployment's pods get: {env: (secret, key)} as env vars and as files."""
    pod = deployment["spec"]["template"]["spec"]
    (container,) = containers(deployment)
    env = {}
    for entry in container.get("env", []):
        if entry["name"] in USER_IDENTITY_SECRETS:
            assert "value" not in entry, entry
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = (ref["name"], ref["key"])
    (volume,) = [v for v in pod["volumes"] if v["name"] == "secrets"]
    files = {item["path"]: (source["secret"]["name"], item["key"])
             for source in volume.get("projected", {}).get("sources", []) for item in source["secret"]["items"]
             if item["path"] in USER_IDENTITY_SECRETS}
    return env, files


@pytest.mark.parametrize("delivery", ["files", "env"])
@pytest.mark.parametrize("values", [SINGLE_CI, SPLIT_CI])
def test_user_identity_secrets_reach_only_the_pods_that_receive_dicom(delivery: str, values: Path) -> None:
    manifests = render(f"secretDelivery={delivery}", f"gateway.dicom.userIdentity.existingSecret={IDENTITY_SECRET}",
                       "gateway.dicom.userIdentity.tokenKeysKey=jwt-keys", values=(values,))
    assert set(of_kind(manifests, "Secret")) <= {GENERATED_INTERNAL_SECRET}, "the chart creates no other Secret"
    expected = {"GATEWAY_DICOM__USER_IDENTITY__USERS": (IDENTITY_SECRET, "users"),
                "GATEWAY_DICOM__USER_IDENTITY__TOKEN_KEYS": (IDENTITY_SECRET, "jwt-keys")}
    deployments = of_kind(manifests, "Deployment")
    assert any(not _receives_dicom(d) for d in deployments.values()) == (values == SPLIT_CI)
    for name, deployment in deployments.items():
        env, files = _identity_delivery(deployment)
        delivered, other = (files, env) if delivery == "files" else (env, files)
        assert delivered == (expected if _receives_dicom(deployment) else {}), name
        assert other == {}, name
        # The other secrets keep their delivery.
        (container,) = containers(deployment)
        secret_env = {e["name"] for e in container.get("env", []) if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}
        assert ("GATEWAY_DATABASE__URL" in secret_env) == (delivery == "env"), name

    # "" leaves one of the two keys out.
    manifests = render(f"secretDelivery={delivery}", f"gateway.dicom.userIdentity.existingSecret={IDENTITY_SECRET}",
                       "gateway.dicom.userIdentity.tokenKeysKey=", values=(values,))
    for name, deployment in of_kind(manifests, "Deployment").items():
        env, files = _identity_delivery(deployment)
        users = {"GATEWAY_DICOM__USER_IDENTITY__USERS": (IDENTITY_SECRET, "users")}
        assert {**env, **files} == (users if _receives_dicom(deployment) else {}), name
    error = render_error(f"gateway.dicom.userIdentity.existingSecret={IDENTITY_SECRET}",
                         "gateway.dicom.userIdentity.usersKey=", "gateway.dicom.userIdentity.tokenKeysKey=")
    assert "usersKey or tokenKeysKey" in error


@pytest.mark.parametrize("delivery", ["files", "env"])
def test_the_gateway_accepts_the_rendered_dicom_settings(delivery: str, tmp_path: Path) -> None:
    manifests = render(f"secretDelivery={delivery}", values=(SPLIT_CI, _dicom_values(tmp_path)))
    config = config_map(manifests)
    for name, deployment in of_kind(manifests, "Deployment").items():
        settings, output = _gateway_settings(deployment, config, tmp_path / name, IDENTITY_SECRET_VALUES)
        dicom = settings["dicom"]
        assert dicom["transfer_syntax_preference"] == [EXPLICIT_LE, JPEG_BASELINE], name
        assert dicom["extra_storage_sop_classes"] == [PRIVATE_STORAGE], name
        assert dicom["accept_any_storage_class"] is True, name
        assert dicom["allowed_aes"][0]["transfer_syntax_preference"] == [JPEG_BASELINE], name
        identity = dicom["user_identity"]
        assert identity["required"] is True, name
        assert (identity["token_audience"], identity["token_issuer"]) == ("dicom-gateway", "https://idp.example.org")
        if _receives_dicom(deployment):
            assert sorted(identity["users"]) == ["modality1", "viewer"], name
            assert len(identity["token_keys"]) == 1, name
        else:
            assert identity["users"] == {} and identity["token_keys"] == [], name
        assert "s3cret-passcode" not in output and "an-hmac-secret" not in output, "secrets must stay masked"


def test_chart_schema_refuses_wrong_dicom_values(tmp_path: Path) -> None:
    error = render_error("gateway.dicom.acceptAnyStorageClass=yes")
    assert "acceptAnyStorageClass" in error
    error = render_error("gateway.dicom.userIdentity.required=maybe")
    assert "userIdentity" in error and "required" in error
    error = render_error(f"gateway.dicom.transferSyntaxPreference={EXPLICIT_LE}")
    assert "transferSyntaxPreference" in error, "a list, not a single UID"
    error = render_error("gateway.dicom.userIdentity.users=x")
    assert "users" in error, "passcodes are never values: only existingSecret"
    for setting, uid in (("transferSyntaxPreference", "ExplicitVRLittleEndian"), ("extraStorageSopClasses", "1.2.03"),
                         ("extraStorageSopClasses", "1." + "2" * 64)):
        path = tmp_path / f"{setting}.yaml"
        path.write_text(yaml.safe_dump({"gateway": {"dicom": {setting: [uid]}}}))
        assert setting in render_error(values=(path,)), (setting, uid)
    path = tmp_path / "allowed.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"dicom": {"allowedAEs": [
        {"ae_title": "MODALITY1", "transfer_syntax_preference": "1.2.840.10008.1.2.1"}]}}}))
    assert "transfer_syntax_preference" in render_error(values=(path,))


# DICOM-TLS only (gateway.dicom.tls.tlsOnly, GATEWAY_DICOM__TLS_ONLY): with TLS the plain port is closed by default.
PLAIN_DICOM_PORT = 11112
DICOM_TLS_PORT = 2762
TLS_ON = ("gateway.dicom.tls.enabled=true", "gateway.dicom.tls.existingSecret=dicomgw-dicom-tls")
# (value files, --set values) with DICOM TLS enabled and tlsOnly left at its default, per mode.
TLS_VALUE_SETS = {
    "embedded": ((), TLS_ON),
    "single-kafka": ((), (BACKENDS, *TLS_ON)),
    "split-ci": ((SPLIT_CI,), ()),
    "split-minimal": ((), ("mode=split", BACKENDS, *TLS_ON)),
}
PORT_FIELDS = ("port", "containerPort", "targetPort", "nodePort")
DICOM_FROM = "networkPolicy.dicomFrom[0].ipBlock.cidr=10.20.0.0/16"
NOT_DICOM_PORTS = {"http", "internal", "hl7"}


def _exposed_ports(manifests: list[Manifest]) -> set[tuple[str, str, Any]]:
    """Every port value (number or name) anywhere in the rendered objects but the ConfigMap: (kind, name, port)."""
    found: set[tuple[str, str, Any]] = set()

    def walk(node: Any, manifest: Manifest) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in PORT_FIELDS and isinstance(value, (int, str)):
                    found.add((manifest["kind"], manifest["metadata"]["name"], value))
                walk(value, manifest)
        elif isinstance(node, list):
            for item in node:
                walk(item, manifest)

    for manifest in manifests:
        if manifest["kind"] != "ConfigMap":
            walk(manifest, manifest)
    return found


def _of_dicom_role(manifest: Manifest) -> bool:
    """Whether an object belongs to a role that receives DICOM (the metrics Service belongs to none)."""
    return manifest["metadata"]["labels"].get("app.kubernetes.io/component") in ("single", "receiver")


def _dicom_ports(manifests: list[Manifest]) -> dict[str, set[Any]]:
    """The DICOM ports of the DICOM-receiving containers, the DICOM Service and the NetworkPolicy ingress."""
    ports: dict[str, set[Any]] = {"containers": set(), "services": set(), "networkPolicies": set()}
    for deployment in of_kind(manifests, "Deployment").values():
        if _of_dicom_role(deployment):
            for container in containers(deployment):
                ports["containers"] |= {(p["name"], p["containerPort"]) for p in container["ports"]
                                        if p["name"] not in NOT_DICOM_PORTS}
    for service in of_kind(manifests, "Service").values():
        if _of_dicom_role(service):
            ports["services"] |= {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]
                                  if p["name"] not in NOT_DICOM_PORTS}  # the api and hl7 Services select single pods too
    for policy in of_kind(manifests, "NetworkPolicy").values():
        if _of_dicom_role(policy):
            ports["networkPolicies"] |= {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]
                                         if p["port"] not in NOT_DICOM_PORTS}
    return ports


@pytest.mark.parametrize("value_set", sorted(TLS_VALUE_SETS))
def test_dicom_tls_closes_the_plain_dicom_port_everywhere_by_default(value_set: str, tmp_path: Path) -> None:
    values, sets = TLS_VALUE_SETS[value_set]
    manifests = render(*sets, "networkPolicy.enabled=true", DICOM_FROM,
                       "service.type=NodePort", "service.nodePorts.dicom=31112", values=values)
    config = config_map(manifests)
    assert config["GATEWAY_DICOM__TLS_ONLY"] == "true"
    exposed = {port for _, _, port in _exposed_ports(manifests)}
    assert exposed.isdisjoint({"dicom", PLAIN_DICOM_PORT, 31112}), _exposed_ports(manifests)
    assert _dicom_ports(manifests) == {
        "containers": {("dicom-tls", DICOM_TLS_PORT)},
        "services": {("dicom-tls", DICOM_TLS_PORT, "dicom-tls")},
        "networkPolicies": {"dicom-tls"},
    }
    for name, deployment in of_kind(manifests, "Deployment").items():
        settings, _ = _gateway_settings(deployment, config, tmp_path / name)
        assert settings["dicom"]["tls_only"] is True, name


@pytest.mark.parametrize("value_set", sorted(TLS_VALUE_SETS))
def test_dicom_tls_only_false_keeps_both_dicom_ports(value_set: str, tmp_path: Path) -> None:
    values, sets = TLS_VALUE_SETS[value_set]
    manifests = render(*sets, "gateway.dicom.tls.tlsOnly=false", "networkPolicy.enabled=true", DICOM_FROM,
                       values=values)
    config = config_map(manifests)
    assert config["GATEWAY_DICOM__TLS_ONLY"] == "false"
    assert _dicom_ports(manifests) == {
        "containers": {("dicom", PLAIN_DICOM_PORT), ("dicom-tls", DICOM_TLS_PORT)},
        "services": {("dicom", PLAIN_DICOM_PORT, "dicom"), ("dicom-tls", DICOM_TLS_PORT, "dicom-tls")},
        "networkPolicies": {"dicom", "dicom-tls"},
    }
    for name, deployment in of_kind(manifests, "Deployment").items():
        settings, _ = _gateway_settings(deployment, config, tmp_path / name)
        assert settings["dicom"]["tls_only"] is False, name


@pytest.mark.parametrize("sets", [(), (BACKENDS,), ("mode=split", BACKENDS)], ids=["embedded", "single-kafka", "split"])
@pytest.mark.parametrize("tls_only", ["true", "false"])
def test_without_dicom_tls_the_plain_dicom_port_stays(sets: tuple[str, ...], tls_only: str) -> None:
    manifests = render(*sets, f"gateway.dicom.tls.tlsOnly={tls_only}", "networkPolicy.enabled=true", DICOM_FROM)
    config = config_map(manifests)
    assert "GATEWAY_DICOM__TLS_ONLY" not in config, "tlsOnly means nothing without TLS: the gateway's default"
    assert config["GATEWAY_DICOM__PORT"] == str(PLAIN_DICOM_PORT)
    assert _dicom_ports(manifests) == {
        "containers": {("dicom", PLAIN_DICOM_PORT)},
        "services": {("dicom", PLAIN_DICOM_PORT, "dicom")},
        "networkPolicies": {"dicom"},
    }
    exposed = {port for _, _, port in _exposed_ports(manifests)}
    assert exposed.isdisjoint({"dicom-tls", DICOM_TLS_PORT})


def test_chart_refuses_tls_only_outside_its_value() -> None:
    error = render_error(*TLS_ON, "gateway.dicom.tls.tlsOnly=maybe")
    assert "tlsOnly" in error
    error = render_error(*TLS_ON, "gateway.extraConfig.GATEWAY_DICOM__TLS_ONLY=false")
    assert "gateway.dicom.tls.tlsOnly" in error, "the chart would expose ports the gateway does not open"


# The API port: bind address, bearer tokens (tokens file, OpenID Connect), HTTPS; the internal port between roles.
def _container(deployment: Manifest) -> Manifest:
    (container,) = containers(deployment)
    return container


def _env(deployment: Manifest) -> dict[str, Manifest]:
    return {entry["name"]: entry for entry in _container(deployment).get("env", [])}


def _volumes(deployment: Manifest) -> dict[str, Manifest]:
    return {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}


def _mounts(deployment: Manifest) -> dict[str, Manifest]:
    return {mount["name"]: mount for mount in _container(deployment).get("volumeMounts", [])}


def _by_component(manifests: list[Manifest], kind: str = "Deployment") -> dict[str, Manifest]:
    return {component(m): m for m in of_kind(manifests, kind).values()}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_the_http_port_binds_every_interface(value_set: str, tmp_path: Path) -> None:
    """The gateway binds 127.0.0.1 by default: probes from the kubelet and the Services need 0.0.0.0."""
    manifests = render_set(value_set)
    config = config_map(manifests)
    assert config["GATEWAY_HTTP__HOST"] == "0.0.0.0"
    for name, deployment in of_kind(manifests, "Deployment").items():
        assert "GATEWAY_HTTP__HOST" not in _env(deployment), name
        settings, _ = _gateway_settings(deployment, config, tmp_path / name)
        assert settings["http"]["host"] == "0.0.0.0", name


def test_the_image_binds_the_http_port_on_every_interface() -> None:
    lines = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    stages = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    assert "AS runtime" in lines[stages[-1]], "the last stage is the runtime image"
    runtime_env = " ".join(line for line in lines[stages[-1]:] if line.upper().startswith("ENV "))
    assert "GATEWAY_HTTP__HOST=0.0.0.0" in runtime_env.split()


@pytest.mark.parametrize("value_set", [*sorted(VALUE_SETS), "split-internal"])
def test_no_advertised_http_url_anywhere(value_set: str) -> None:
    """GATEWAY_HTTP__ADVERTISED_URL is gone from the gateway (it refuses unknown settings)."""
    values, sets = VALUE_SETS.get(value_set, ((), ("mode=split", BACKENDS, "gateway.notify.reportOnSameAssociation=true")))
    result = _run_template(values, sets)
    assert result.returncode == 0, result.stderr
    assert "GATEWAY_HTTP__ADVERTISED_URL" not in result.stdout


@pytest.mark.parametrize("sets", [("mode=split", BACKENDS), (BACKENDS,)], ids=["split", "single-kafka"])
def test_api_tokens_secret_is_mounted_as_a_directory(sets: tuple[str, ...], tmp_path: Path) -> None:
    manifests = render(*sets, "gateway.http.auth.tokens.key=api.tokens")
    config = config_map(manifests)
    tokens_file = Path(config["GATEWAY_HTTP__AUTH__TOKENS_FILE"])
    for name, deployment in of_kind(manifests, "Deployment").items():
        # Every pod authenticates its HTTP port alike (/metrics with publicMetrics false).
        volume = _volumes(deployment)["api-tokens"]["secret"]
        assert volume["secretName"] == API_TOKENS_SECRET, name
        assert volume["items"] == [{"key": "api.tokens", "path": tokens_file.name}], name
        mount = _mounts(deployment)["api-tokens"]
        # A subPath mount would never see the Secret change: tokens could not be rotated without a restart.
        assert "subPath" not in mount and "subPathExpr" not in mount, name
        assert mount["readOnly"] is True, name
        assert Path(mount["mountPath"]) == tokens_file.parent, name
        other_mounts = [m["mountPath"] for m in _container(deployment)["volumeMounts"] if m["name"] != "api-tokens"]
        assert str(tokens_file.parent) not in other_mounts, name
        settings, _ = _gateway_settings(deployment, config, tmp_path / name)
        assert settings["http"]["auth"]["tokens_file"] == str(tokens_file), name
    assert config["GATEWAY_HTTP__AUTH__PUBLIC_METRICS"] == "true"


def test_the_api_needs_tokens_its_pods_share() -> None:
    """Without a tokens file or OpenID Connect each pod would generate its own admin token."""
    for sets in (("mode=split", BACKENDS.replace(API_TOKENS_SECRET, "")), (BACKENDS.replace(API_TOKENS_SECRET, ""),)):
        error = render_error(*sets)
        assert "gateway.http.auth.tokens.existingSecret" in error and "oidc" in error, sets
    # Split mode without the api role serves no API.
    render("mode=split", BACKENDS.replace(API_TOKENS_SECRET, ""), "api.enabled=false")
    # Embedded single mode keeps the generated token on its volume.
    manifests = render_set("embedded-default")
    config = config_map(manifests)
    assert not {key for key in config if key.startswith("GATEWAY_HTTP__AUTH__") and key != "GATEWAY_HTTP__AUTH__PUBLIC_METRICS"}
    (deployment,) = of_kind(manifests, "Deployment").values()
    assert "api-tokens" not in _volumes(deployment)


OIDC_VALUES = {
    "issuer": "https://idp.example.org/realms/hospital",
    "audience": "dicom-gateway-api",
    "jwksUrl": "https://idp.example.org/realms/hospital/protocol/openid-connect/certs",
    "rolesClaim": "realm_access.roles",
    "roleMap": {"pacs-admins": "admin", "radiographers": "operator", "viewers": "reader"},
    "algorithms": ["RS256", "ES256"],
    "clockSkewSeconds": 30,
    "keysMaxAgeSeconds": 900,
    "caSecret": "dicomgw-idp-ca",
    "caKey": "bundle.pem",
}


def _oidc_values(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "oidc-values.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"http": {"auth": {"oidc": {**OIDC_VALUES, **extra},
                                                                 "publicMetrics": False}}}}))
    return path


def test_oidc_values_become_the_gateway_settings(tmp_path: Path) -> None:
    manifests = render("mode=split", BACKENDS.replace(API_TOKENS_SECRET, ""), values=(_oidc_values(tmp_path),))
    config = config_map(manifests)
    assert config["GATEWAY_HTTP__AUTH__OIDC__ISSUER"] == OIDC_VALUES["issuer"]
    assert config["GATEWAY_HTTP__AUTH__OIDC__AUDIENCE"] == OIDC_VALUES["audience"]
    assert config["GATEWAY_HTTP__AUTH__OIDC__JWKS_URL"] == OIDC_VALUES["jwksUrl"]
    assert config["GATEWAY_HTTP__AUTH__OIDC__ROLES_CLAIM"] == "realm_access.roles"
    assert json.loads(config["GATEWAY_HTTP__AUTH__OIDC__ROLE_MAP"]) == OIDC_VALUES["roleMap"]
    assert json.loads(config["GATEWAY_HTTP__AUTH__OIDC__ALGORITHMS"]) == ["RS256", "ES256"]
    assert config["GATEWAY_HTTP__AUTH__OIDC__CLOCK_SKEW_SECONDS"] == "30"
    assert config["GATEWAY_HTTP__AUTH__OIDC__KEYS_MAX_AGE_SECONDS"] == "900"
    assert config["GATEWAY_HTTP__AUTH__PUBLIC_METRICS"] == "false"
    assert "GATEWAY_HTTP__AUTH__TOKENS_FILE" not in config
    ca_file = Path(config["GATEWAY_HTTP__AUTH__OIDC__CA_FILE"])
    for name, deployment in of_kind(manifests, "Deployment").items():
        assert _volumes(deployment)["oidc-ca"]["secret"]["items"] == [{"key": "bundle.pem", "path": ca_file.name}]
        assert _volumes(deployment)["oidc-ca"]["secret"]["secretName"] == "dicomgw-idp-ca"
        assert Path(_mounts(deployment)["oidc-ca"]["mountPath"]) == ca_file.parent
        settings, _ = _gateway_settings(deployment, config, tmp_path / name)
        oidc = settings["http"]["auth"]["oidc"]
        assert oidc == {"issuer": OIDC_VALUES["issuer"], "audience": OIDC_VALUES["audience"],
                        "jwks_url": OIDC_VALUES["jwksUrl"], "roles_claim": "realm_access.roles",
                        "role_map": OIDC_VALUES["roleMap"], "algorithms": ["RS256", "ES256"],
                        "clock_skew_seconds": 30.0, "keys_max_age_seconds": 900.0, "ca_file": str(ca_file)}, name
        assert settings["http"]["auth"]["public_metrics"] is False, name

    # Unset values leave the gateway's defaults; no issuer renders no OpenID Connect setting at all.
    minimal = tmp_path / "minimal"
    minimal.mkdir()
    path = minimal / "values.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"http": {"auth": {"oidc": {"issuer": OIDC_VALUES["issuer"],
                                                                            "audience": "api"}}}}}))
    config = config_map(render("mode=split", BACKENDS, values=(path,)))
    for unset in ("JWKS_URL", "ROLE_MAP", "ALGORITHMS", "CA_FILE"):
        assert f"GATEWAY_HTTP__AUTH__OIDC__{unset}" not in config, unset
    assert not [key for key in config_map(render("mode=split", BACKENDS)) if "OIDC" in key]
    error = render_error("mode=split", BACKENDS, f"gateway.http.auth.oidc.issuer={OIDC_VALUES['issuer']}")
    assert "gateway.http.auth.oidc.audience" in error


def _internal_secret_refs(deployment: Manifest) -> set[tuple[str, str, str]]:
    """Where a Deployment's pods get GATEWAY_INTERNAL__SECRET: {(delivery, secret, key)}."""
    refs = set()
    entry = _env(deployment).get(INTERNAL_SECRET)
    if entry is not None:
        assert "value" not in entry, "the internal secret is never inlined"
        ref = entry["valueFrom"]["secretKeyRef"]
        refs.add(("env", ref["name"], ref["key"]))
    for source in _volumes(deployment)["secrets"].get("projected", {}).get("sources", []):
        for item in source["secret"]["items"]:
            if item["path"] == INTERNAL_SECRET:
                refs.add(("files", source["secret"]["name"], item["key"]))
    return refs


REPORT_ON_SAME_ASSOCIATION = "gateway.notify.reportOnSameAssociation=true"


@pytest.mark.parametrize("delivery", ["files", "env"])
def test_the_internal_secret_is_shared_by_receivers_and_notify_pods(delivery: str, tmp_path: Path) -> None:
    manifests = render("mode=split", BACKENDS, REPORT_ON_SAME_ASSOCIATION, f"secretDelivery={delivery}")
    config = config_map(manifests)
    assert config["GATEWAY_NOTIFY__REPORT_ON_SAME_ASSOCIATION"] == "true"
    assert config["GATEWAY_INTERNAL__PORT"] == "8081"
    (secret,) = of_kind(manifests, "Secret").values()
    assert secret["metadata"]["name"] == GENERATED_INTERNAL_SECRET
    value = base64.b64decode(secret["data"]["secret"]).decode()
    assert len(value) == 48 and value.isalnum()
    deployments = _by_component(manifests)
    refs = {role: _internal_secret_refs(deployment) for role, deployment in deployments.items()}
    assert refs["receiver"] == refs["notify"] == {(delivery, GENERATED_INTERNAL_SECRET, "secret")}
    assert {role for role, found in refs.items() if found} == {"receiver", "notify"}, "no other role needs it"

    receiver = deployments["receiver"]
    ports = {p["name"]: p["containerPort"] for p in _container(receiver)["ports"]}
    assert ports["internal"] == 8081
    env = _env(receiver)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["GATEWAY_INTERNAL__HOST"]["value"] == "0.0.0.0"
    assert env["GATEWAY_INTERNAL__ADVERTISED_URL"]["value"] == "http://$(POD_IP):8081"
    names = [entry["name"] for entry in _container(receiver)["env"]]
    assert names.index("POD_IP") < names.index("GATEWAY_INTERNAL__ADVERTISED_URL"), "$(POD_IP) needs POD_IP first"
    for role in ("notify", "store", "api"):
        assert "internal" not in {p["name"] for p in _container(deployments[role])["ports"]}, role
        assert not {"POD_IP", "GATEWAY_INTERNAL__HOST", "GATEWAY_INTERNAL__ADVERTISED_URL"} & set(_env(deployments[role]))

    secret_values = {(GENERATED_INTERNAL_SECRET, "secret"): value}
    for role in ("receiver", "notify"):
        settings, output = _gateway_settings(deployments[role], config, tmp_path / role, secret_values)
        assert settings["internal"]["secret"], role
        assert value not in output, "the internal secret stays masked"
        if role == "receiver":
            assert settings["internal"]["host"] == "0.0.0.0"
            assert settings["internal"]["advertised_url"] == "http://10.1.2.3:8081"


@pytest.mark.parametrize("delivery", ["files", "env"])
def test_an_existing_internal_secret_is_used_as_is(delivery: str) -> None:
    manifests = render("mode=split", BACKENDS, REPORT_ON_SAME_ASSOCIATION, f"secretDelivery={delivery}",
                       "gateway.internal.existingSecret=my-internal", "gateway.internal.existingSecretKey=shared")
    assert not of_kind(manifests, "Secret")
    deployments = _by_component(manifests)
    assert _internal_secret_refs(deployments["receiver"]) == {(delivery, "my-internal", "shared")}
    assert _internal_secret_refs(deployments["notify"]) == {(delivery, "my-internal", "shared")}
    # Single mode with Kafka: every pod runs both ends.
    manifests = render(BACKENDS, REPORT_ON_SAME_ASSOCIATION, f"secretDelivery={delivery}")
    (deployment,) = of_kind(manifests, "Deployment").values()
    assert _internal_secret_refs(deployment) == {(delivery, GENERATED_INTERNAL_SECRET, "secret")}
    assert "internal" in {p["name"] for p in _container(deployment)["ports"]}


@pytest.mark.parametrize("sets", [("mode=split", BACKENDS), (REPORT_ON_SAME_ASSOCIATION,)],
                         ids=["split-without-reports", "embedded-with-reports"])
def test_no_internal_port_where_no_pod_calls_another(sets: tuple[str, ...], tmp_path: Path) -> None:
    """Without reports on the same association nothing opens the port; in embedded mode both ends share a process
    (the gateway's 127.0.0.1 default and its generated secret are right)."""
    manifests = render(*sets, "networkPolicy.enabled=true")
    assert not of_kind(manifests, "Secret")
    config = config_map(manifests)
    for name, deployment in of_kind(manifests, "Deployment").items():
        assert "internal" not in {p["name"] for p in _container(deployment)["ports"]}, name
        assert not _internal_secret_refs(deployment), name
        assert not {"GATEWAY_INTERNAL__HOST", "GATEWAY_INTERNAL__ADVERTISED_URL"} & set(_env(deployment)), name
        settings, _ = _gateway_settings(deployment, config, tmp_path / name)
        assert settings["internal"]["host"] == "127.0.0.1", name
    for policy in of_kind(manifests, "NetworkPolicy").values():
        assert not _rules_for(policy, "internal")


@pytest.mark.parametrize(("sets", "values", "caller"), [
    (("mode=split", BACKENDS, REPORT_ON_SAME_ASSOCIATION), (), "notify"),
    ((), (SPLIT_CI,), "notify"),
    ((), (SINGLE_CI,), "single"),
], ids=["split", "split-ci", "single-ci"])
def test_network_policy_admits_only_notify_pods_to_the_internal_port(sets: tuple[str, ...], values: tuple[Path, ...],
                                                                    caller: str) -> None:
    manifests = render(*sets, values=values)
    policies = _by_component(manifests, "NetworkPolicy")
    deployments = _by_component(manifests)
    receiving = "single" if caller == "single" else "receiver"
    (rule,) = _rules_for(policies[receiving], "internal")
    assert rule["ports"] == [{"port": "internal", "protocol": "TCP"}], "the rule opens nothing else"
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "the release's own namespace, no namespaceSelector"
    selector = peer["podSelector"]["matchLabels"]
    assert selector["app.kubernetes.io/component"] == caller
    for role, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert (selector.items() <= pod_labels.items()) == (role == caller), role
    # The named port is the receiving container's internal port, and no other rule or policy opens it.
    assert {"internal"} <= {p["name"] for p in _container(deployments[receiving])["ports"]}
    for role, policy in policies.items():
        found = [r for r in policy["spec"]["ingress"] if any(p["port"] in ("internal", 8081) for p in r["ports"])]
        assert found == ([rule] if role == receiving else []), role


def test_https_probes_use_scheme_https(tmp_path: Path) -> None:
    tls = ("gateway.http.tls.existingSecret=dicomgw-http-tls",)
    for sets in (("mode=split", BACKENDS, *tls), (*tls,)):
        manifests = render(*sets)
        config = config_map(manifests)
        assert config["GATEWAY_HTTP__TLS__CERT_FILE"] == "/etc/dicom-gateway/http-tls/tls.crt"
        assert config["GATEWAY_HTTP__TLS__KEY_FILE"] == "/etc/dicom-gateway/http-tls/tls.key"
        assert config["GATEWAY_HTTP__TLS__REQUIRE_CLIENT_CERT"] == "false"
        assert "GATEWAY_HTTP__TLS__CA_FILE" not in config
        for name, deployment in of_kind(manifests, "Deployment").items():
            container = _container(deployment)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[probe]["httpGet"]["scheme"] == "HTTPS", (name, probe)
            volume = _volumes(deployment)["http-tls"]["secret"]
            assert volume["secretName"] == "dicomgw-http-tls"
            assert [item["path"] for item in volume["items"]] == ["tls.crt", "tls.key"]
            assert _mounts(deployment)["http-tls"]["mountPath"] == "/etc/dicom-gateway/http-tls"
            settings, _ = _gateway_settings(deployment, config, tmp_path / f"{len(sets)}-{name}")
            assert settings["http"]["tls"]["cert_file"] == "/etc/dicom-gateway/http-tls/tls.crt", name
    # Plain HTTP keeps scheme HTTP.
    (deployment,) = of_kind(render(), "Deployment").values()
    assert _container(deployment)["readinessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_required_client_certificates_turn_probes_to_tcp(tmp_path: Path) -> None:
    """The kubelet presents no client certificate: httpGet probes would fail every handshake."""
    manifests = render("mode=split", BACKENDS, "gateway.http.tls.existingSecret=dicomgw-http-tls",
                       "gateway.http.tls.caKey=ca.crt", "gateway.http.tls.requireClientCert=true")
    config = config_map(manifests)
    assert config["GATEWAY_HTTP__TLS__REQUIRE_CLIENT_CERT"] == "true"
    assert config["GATEWAY_HTTP__TLS__CA_FILE"] == "/etc/dicom-gateway/http-tls/ca.crt"
    for name, deployment in of_kind(manifests, "Deployment").items():
        container = _container(deployment)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["tcpSocket"] == {"port": "http"}, (name, probe)
            assert "httpGet" not in container[probe], (name, probe)
        items = _volumes(deployment)["http-tls"]["secret"]["items"]
        assert {"key": "ca.crt", "path": "ca.crt"} in items
        settings, _ = _gateway_settings(deployment, config, tmp_path / name)
        assert settings["http"]["tls"]["require_client_cert"] is True, name
    assert "caKey" in render_error("gateway.http.tls.existingSecret=x", "gateway.http.tls.requireClientCert=true")
    assert "existingSecret" in render_error("gateway.http.tls.caKey=ca.crt", "gateway.http.tls.requireClientCert=true")


def test_service_monitor_follows_https_and_metrics_auth() -> None:
    (monitor,) = of_kind(render_set("single-ci"), "ServiceMonitor").values()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"]["name"] == "dicomgw-http-tls"
    assert endpoint["authorization"]["credentials"] == {"name": "dicomgw-metrics-token", "key": "token"}
    (monitor,) = of_kind(render("serviceMonitor.enabled=true"), "ServiceMonitor").values()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert not {"scheme", "tlsConfig", "authorization"} & set(endpoint)


def test_chart_schema_refuses_wrong_api_values(tmp_path: Path) -> None:
    for assignment, expected in [
        ("gateway.http.auth.publicMetrics=maybe", "publicMetrics"),
        ("gateway.http.auth.oidc.roleMap.pacs-admins=superuser", "roleMap"),
        ("gateway.http.auth.oidc.clockSkewSeconds=-1", "clockSkewSeconds"),
        ("gateway.http.auth.oidc.issuer=idp.example.org", "issuer"),
        ("gateway.http.auth.tokens.key=", "key"),
        ("gateway.http.auth.tokens.existingSecret=null", "existingSecret"),
        ("gateway.http.tls.requireClientCert=yes", "requireClientCert"),
        ("gateway.http.auth.tokens.value=s3cret", "value"),
        ("gateway.internal.port=0", "port"),
        ("gateway.internal.secret=s3cret", "secret"),
        ("gateway.notify.reportOnSameAssociation=sometimes", "reportOnSameAssociation"),
        ("networkPolicy.enabled=maybe", "enabled"),
        ("networkPolicy.apiFrom[0].cidr=10.0.0.0/8", "apiFrom"),
        ("networkPolicy.metricsFrom[0].ipBlock.cidr=monitoring", "metricsFrom"),
    ]:
        assert expected in render_error(assignment), assignment
    path = tmp_path / "peer.yaml"
    path.write_text(yaml.safe_dump({"networkPolicy": {"dicomFrom": [
        {"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}]}}))
    assert "dicomFrom" in render_error(values=(path,)), "an ipBlock cannot be combined with selectors"
    # What the schema accepts renders.
    path.write_text(yaml.safe_dump({"networkPolicy": {
        "dicomFrom": [{"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.1.0/24"]}}],
        "apiFrom": [{"namespaceSelector": {"matchLabels": {"team": "pacs"}}, "podSelector": {}}],
        "metricsFrom": [{"namespaceSelector": {"matchExpressions": [{"key": "monitoring", "operator": "Exists"}]}}],
    }}))
    render(values=(path,))


@pytest.mark.parametrize(("key", "hint"), [
    ("GATEWAY_HTTP__HOST", "0.0.0.0"),
    ("GATEWAY_HTTP__PORT", "gateway.http.port"),
    ("GATEWAY_HTTP__TLS__CERT_FILE", "gateway.http.tls"),
    ("GATEWAY_HTTP__AUTH__TOKENS_FILE", "gateway.http.auth"),
    ("GATEWAY_INTERNAL__SECRET", "gateway.internal"),
    ("GATEWAY_NOTIFY__REPORT_ON_SAME_ASSOCIATION", "gateway.notify.reportOnSameAssociation"),
    ("GATEWAY_FORWARD__DESTINATIONS", "gateway.forward"),
    ("GATEWAY_HL7__PORT", "gateway.hl7"),
    ("GATEWAY_HL7__TLS__CERT_FILE", "gateway.hl7"),
    ("GATEWAY_XDS__REREGISTER_ON_PATIENT_CHANGE", "gateway.xds.reregisterOnPatientChange"),
    ("GATEWAY_AUDIT__REPOSITORY_URL", "gateway.audit"),
    ("GATEWAY_AUDIT__CA_FILE", "gateway.audit"),
])
def test_extra_config_refuses_settings_the_chart_renders(key: str, hint: str) -> None:
    assert hint in render_error(f"gateway.extraConfig.{key}=x")


# Forwarding to other archives (forward.enabled, gateway.forward): the forward role's Deployment, its settings in
# the shared config (the receivers let the destinations' AE titles in for their storage-commitment reports), the
# NetworkPolicy egress to the destinations and the archives' reports to the DICOM ports.
FORWARD_DESTINATIONS = [
    {"name": "national", "ae_title": "NATARCH", "host": "archive.example.org", "port": 104,
     "max_associations": 4, "transfer_syntaxes": [EXPLICIT_LE], "storage_commitment": True},
    {"name": "regional", "ae_title": "REGPACS", "host": "pacs.region.example.org", "port": 4242, "tls": False,
     "rate_per_minute": 600, "storage_commitment": False},
    {"name": "backup", "ae_title": "BACKUP", "host": "backup.example.org", "port": 104},
]
FORWARD_RULES = [
    {"destinations": ["national", "backup"]},
    {"destinations": ["regional"], "modalities": ["CT", "MR"], "study_description": "^(head|brain)",
     "statuses": ["stored", "quarantined"]},
]
# gateway.forward tunables: (value, GATEWAY_FORWARD__ setting, gateway's default).
FORWARD_TUNABLES = {
    "batchDelaySeconds": ("BATCH_DELAY_SECONDS", 5),
    "maxBatchDelaySeconds": ("MAX_BATCH_DELAY_SECONDS", 60),
    "batchSize": ("BATCH_SIZE", 500),
    "commitmentTimeoutSeconds": ("COMMITMENT_TIMEOUT_SECONDS", 3600),
    "commitmentRequests": ("COMMITMENT_REQUESTS", 3),
    "resendLimit": ("RESEND_LIMIT", 3),
    "reportWaitSeconds": ("REPORT_WAIT_SECONDS", 0),
    "associationTimeoutSeconds": ("ASSOCIATION_TIMEOUT_SECONDS", 60),
    "leaseSeconds": ("LEASE_SECONDS", 900),
    "retryInitialSeconds": ("RETRY_INITIAL_SECONDS", 10),
    "retryMaxSeconds": ("RETRY_MAX_SECONDS", 600),
    "retryMaxAttempts": ("RETRY_MAX_ATTEMPTS", 20),
}
REPORT_SOURCES = [{"ipBlock": {"cidr": "198.51.100.0/24"}}]


def _forward_values(tmp_path: Path, *, enabled: bool = True, forward: dict[str, Any] | None = None,
                    network_policy: dict[str, Any] | None = None) -> Path:
    """A values file that forwards (a file: --set would turn UIDs into numbers)."""
    path = tmp_path / "forward-values.yaml"
    path.write_text(yaml.safe_dump({
        "forward": {"enabled": enabled},
        "gateway": {"forward": {"destinations": FORWARD_DESTINATIONS, "rules": FORWARD_RULES, **(forward or {})}},
        "networkPolicy": network_policy or {},
    }))
    return path


@pytest.mark.parametrize("mode", ["split", "single"])
def test_forward_role_runs_with_its_destinations_in_every_pods_config(mode: str, tmp_path: Path) -> None:
    manifests = render(f"mode={mode}", BACKENDS, values=(_forward_values(tmp_path),))
    config = config_map(manifests)
    assert json.loads(config["GATEWAY_FORWARD__DESTINATIONS"]) == FORWARD_DESTINATIONS
    assert json.loads(config["GATEWAY_FORWARD__RULES"]) == FORWARD_RULES
    for key, (setting, default) in FORWARD_TUNABLES.items():
        assert config[f"GATEWAY_FORWARD__{setting}"] == str(default), key
    deployments = _by_component(manifests)
    if mode == "split":
        assert set(deployments) == {*SPLIT_ROLES, "forward"}
        forward = deployments["forward"]
        assert _container(forward)["args"] == ["run", "--role", "forward"]
        assert forward["metadata"]["name"] == "gw-dicom-gateway-forward"
        for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"):
            assert "forward" in _by_component(manifests, kind), kind
        # Like the notify pods: Kafka, S3 and PostgreSQL, and no port but http.
        assert {p["name"] for p in _container(forward)["ports"]} == {"http"}
        receiving = ["receiver"]
    else:
        assert set(deployments) == {"single"}, "the single pods run the forward role"
        receiving = ["single"]
    # Every pod gets the destinations from the shared ConfigMap, never overridden per pod: the forward pods send
    # to them, the receivers let their AE titles in for storage-commitment reports.
    for role, deployment in deployments.items():
        assert _container(deployment)["envFrom"] == [{"configMapRef": {"name": "gw-dicom-gateway-config"}}], role
        assert not {name for name in _env(deployment) if name.startswith("GATEWAY_FORWARD__")}, role
    for role in {*receiving, "forward"} & set(deployments):
        settings, _ = _gateway_settings(deployments[role], config, tmp_path / role)
        forward = settings["forward"]
        assert [(d["name"], d["ae_title"], d["host"], d["port"]) for d in forward["destinations"]] == [
            (d["name"], d["ae_title"], d["host"], d["port"]) for d in FORWARD_DESTINATIONS], role
        assert forward["destinations"][0]["transfer_syntaxes"] == [EXPLICIT_LE], role
        assert forward["destinations"][1]["storage_commitment"] is False, role
        assert forward["rules"][1]["statuses"] == ["stored", "quarantined"], role
        assert (forward["batch_size"], forward["commitment_timeout_seconds"], forward["lease_seconds"]) == (
            500, 3600.0, 900.0), "the chart's defaults are the gateway's"


def test_forward_tunables_are_rendered_as_the_gateway_reads_them(tmp_path: Path) -> None:
    tunables = {"batchDelaySeconds": 2.5, "batchSize": 10000, "commitmentTimeoutSeconds": 1209600,
                "retryMaxAttempts": 1000000, "reportWaitSeconds": 30}
    manifests = render("mode=split", BACKENDS, values=(_forward_values(tmp_path, forward=tunables),))
    config = config_map(manifests)
    # Never an exponent (1e+06): an integer setting would refuse it.
    assert config["GATEWAY_FORWARD__BATCH_SIZE"] == "10000"
    assert config["GATEWAY_FORWARD__COMMITMENT_TIMEOUT_SECONDS"] == "1209600"
    assert config["GATEWAY_FORWARD__RETRY_MAX_ATTEMPTS"] == "1000000"
    assert config["GATEWAY_FORWARD__BATCH_DELAY_SECONDS"] == "2.5"
    settings, _ = _gateway_settings(_by_component(manifests)["forward"], config, tmp_path / "forward")
    assert settings["forward"]["retry_max_attempts"] == 1000000
    assert settings["forward"]["report_wait_seconds"] == 30.0


def test_no_forwarding_unless_enabled(tmp_path: Path) -> None:
    for sets in (("mode=split", BACKENDS), (BACKENDS,), ()):
        manifests = render(*sets, values=(_forward_values(tmp_path, enabled=False),))
        assert not [key for key in config_map(manifests) if key.startswith("GATEWAY_FORWARD__")], sets
        assert "forward" not in _by_component(manifests), sets
        for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject", "NetworkPolicy"):
            assert "forward" not in _by_component(manifests, kind), (sets, kind)


@pytest.mark.parametrize("sets", [("mode=split", BACKENDS), (BACKENDS,), ()], ids=["split", "single-kafka", "embedded"])
def test_forward_enabled_without_destinations_fails_the_render(sets: tuple[str, ...]) -> None:
    error = render_error(*sets, "forward.enabled=true")
    assert "forward.enabled needs at least one destination in gateway.forward.destinations" in error
    error = render_error(*sets, "forward.enabled=true", "gateway.forward.destinations=null")
    assert "destinations" in error


def test_chart_refuses_forward_settings_the_gateway_would_refuse(tmp_path: Path) -> None:
    """Every pod reads them: the gateway would refuse to start everywhere, the receivers too."""
    twice = [*FORWARD_DESTINATIONS, {**FORWARD_DESTINATIONS[0], "host": "other.example.org"}]
    error = render_error(BACKENDS, values=(_forward_values(tmp_path, forward={"destinations": twice}),))
    assert 'the name "national" appears more than once' in error
    unknown = [{"destinations": ["nowhere"]}]
    error = render_error(BACKENDS, values=(_forward_values(tmp_path, forward={"rules": unknown}),))
    assert '"nowhere", which is not in gateway.forward.destinations' in error
    for destination, expected in [
        ({"ae_title": "NATARCH", "host": "a", "port": 104}, "name"),
        ({"name": "Upper", "ae_title": "NATARCH", "host": "a", "port": 104}, "name"),
        ({"name": "a", "host": "a", "port": 104}, "ae_title"),
        ({"name": "a", "ae_title": "NATARCH", "port": 104}, "host"),
        ({"name": "a", "ae_title": "NATARCH", "host": "a"}, "port"),
        ({"name": "a", "ae_title": "NATARCH", "host": "a", "port": 70000}, "port"),
        ({"name": "a", "ae_title": "A_TITLE_LONGER_THAN_16", "host": "a", "port": 104}, "ae_title"),
        ({"name": "a", "ae_title": "NATARCH", "host": "a", "port": 104, "transfer_syntaxes": ["JPEG"]},
         "transfer_syntaxes"),
        ({"name": "a", "ae_title": "NATARCH", "host": "a", "port": 104, "password": "x"}, "password"),
    ]:
        values = _forward_values(tmp_path, forward={"destinations": [destination], "rules": []})
        assert expected in render_error(BACKENDS, values=(values,)), destination
    values = _forward_values(tmp_path, forward={"rules": [{"statuses": ["rejected"]}]})
    assert "statuses" in render_error(BACKENDS, values=(values,))
    assert "batchSize" in render_error(BACKENDS, "gateway.forward.batchSize=0")
    assert "forwardTo" in render_error(BACKENDS, "networkPolicy.forwardTo[0].cidr=10.0.0.0/8")


def _egress_to_ports(policy: Manifest, ports: set[int]) -> list[Manifest]:
    return [rule for rule in policy["spec"].get("egress", [])
            if {p["port"] for p in rule.get("ports", [])} & ports]


@pytest.mark.parametrize("mode", ["split", "single"])
def test_network_policy_lets_the_forwarding_pods_reach_the_destinations(mode: str, tmp_path: Path) -> None:
    egress: list[Manifest] = [{"to": [{"namespaceSelector": {}}]}]
    values = _forward_values(tmp_path, network_policy={"egress": egress})
    manifests = render(f"mode={mode}", BACKENDS, values=(values,))
    policies = _by_component(manifests, "NetworkPolicy")
    forwarding = "forward" if mode == "split" else "single"
    policy = policies[forwarding]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # The rules of networkPolicy.egress (DNS, Kafka, S3, PostgreSQL, ...), then one to the destinations' ports,
    # each once, to any address (forwardTo []).
    assert policy["spec"]["egress"][:-1] == egress
    assert policy["spec"]["egress"][-1] == {"ports": [{"port": 104, "protocol": "TCP"},
                                                     {"port": 4242, "protocol": "TCP"}]}
    # The pods it selects are the forwarding pods.
    pod_labels = _by_component(manifests)[forwarding]["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    for role, other in policies.items():
        if role != forwarding:
            assert other["spec"]["egress"] == egress, f"{role} does not forward"

    # forwardTo narrows the destinations' addresses.
    archives = [{"ipBlock": {"cidr": "198.51.100.0/24"}}]
    values = _forward_values(tmp_path, network_policy={"egress": egress, "forwardTo": archives})
    policy = _by_component(render(f"mode={mode}", BACKENDS, values=(values,)), "NetworkPolicy")[forwarding]
    (rule,) = _egress_to_ports(policy, {104, 4242})
    assert rule["to"] == archives

    # Without networkPolicy.egress egress stays open: no Egress policy type, so no rule is needed.
    policies = _by_component(render(f"mode={mode}", BACKENDS, values=(_forward_values(tmp_path),)), "NetworkPolicy")
    for role, other in policies.items():
        assert other["spec"]["policyTypes"] == ["Ingress"], role
        assert "egress" not in other["spec"], role


@pytest.mark.parametrize("mode", ["split", "single"])
def test_network_policy_admits_the_archives_reports_to_the_dicom_port(mode: str, tmp_path: Path) -> None:
    receiving = "receiver" if mode == "split" else "single"
    modalities = [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    values = _forward_values(tmp_path, network_policy={"dicomFrom": modalities, "reportsFrom": REPORT_SOURCES})
    policies = _by_component(render(f"mode={mode}", BACKENDS, values=(values,)), "NetworkPolicy")
    (rule,) = _rules_for(policies[receiving], "dicom")
    assert rule["from"] == [*modalities, *REPORT_SOURCES], "the archives report on a new association"
    for role, policy in policies.items():
        if role != receiving:
            assert not _rules_for(policy, "dicom"), role
    # dicomFrom [] admits any source, the archives included: reportsFrom does not narrow it.
    values = _forward_values(tmp_path, network_policy={"reportsFrom": REPORT_SOURCES})
    policies = _by_component(render(f"mode={mode}", BACKENDS, values=(values,)), "NetworkPolicy")
    (rule,) = _rules_for(policies[receiving], "dicom")
    assert "from" not in rule
    # Without forwarding reportsFrom admits nobody.
    values = _forward_values(tmp_path, enabled=False,
                             network_policy={"dicomFrom": modalities, "reportsFrom": REPORT_SOURCES})
    policies = _by_component(render(f"mode={mode}", BACKENDS, values=(values,)), "NetworkPolicy")
    (rule,) = _rules_for(policies[receiving], "dicom")
    assert rule["from"] == modalities


def test_keda_scales_the_forward_role_on_its_consumer_group(tmp_path: Path) -> None:
    values = (_forward_values(tmp_path),)
    manifests = render("mode=split", BACKENDS, "forward.keda.enabled=true", values=values)
    scaled = _by_component(manifests, "ScaledObject")
    (trigger,) = scaled["forward"]["spec"]["triggers"]
    assert trigger["metadata"]["consumerGroup"] == "dicomgw-forward"
    assert trigger["metadata"]["topic"] == "dicomgw.events"
    assert "forward" not in _by_component(manifests, "HorizontalPodAutoscaler")
    single = render(BACKENDS, "single.keda.enabled=true", values=values)
    (scaled,) = of_kind(single, "ScaledObject").values()
    assert "dicomgw-forward" in {t["metadata"]["consumerGroup"] for t in scaled["spec"]["triggers"]}


def test_pods_that_open_dicom_associations_present_the_dicom_tls_certificate(tmp_path: Path) -> None:
    """A destination (or a modality awaiting its report) that demands TLS gets the gateway's certificate from
    the forward and notify pods too, not only from the pods that receive DICOM; the store pods get none."""
    manifests = render("mode=split", BACKENDS, "notify.enabled=true", *TLS_ON, values=(_forward_values(tmp_path),))
    deployments = _by_component(manifests)
    for role in ("receiver", "notify", "forward"):
        assert _env(deployments[role])["GATEWAY_DICOM__TLS__CERT_FILE"]["value"].endswith("/tls.crt"), role
        assert _volumes(deployments[role])["dicom-tls"]["secret"]["secretName"] == "dicomgw-dicom-tls", role
    assert "GATEWAY_DICOM__TLS__CERT_FILE" not in _env(deployments["store"])
    assert {p["name"] for p in _container(deployments["forward"])["ports"]} == {"http"}, "it listens on no DICOM port"


# HL7 v2 ADT over MLLP (hl7.enabled, gateway.hl7): the hl7 role's Deployment (the listener, with the MLLP port and
# its own Service), the patient role's Deployment (applies ADT, passes it on upstream), their settings, TLS files,
# NetworkPolicy rules and scaling.
HL7_PORT = 2575
HL7_SENDERS = [
    {"application": "HIS", "facility": "HOSPITAL", "networks": ["10.30.0.0/16"]},
    {"application": "ADTENGINE"},
]
HL7_SERVICE = "gw-dicom-gateway-hl7"
HL7_SOURCES = [{"ipBlock": {"cidr": "10.30.0.0/16"}}]
HL7_UPSTREAM = [{"ipBlock": {"cidr": "203.0.113.0/24"}}]
# gateway.hl7 tunables: (value, GATEWAY_HL7__ setting, the gateway's default as the ConfigMap holds it).
HL7_TUNABLES = {
    "defaultCharset": ("DEFAULT_CHARSET", "ASCII"),
    "maxMessageBytes": ("MAX_MESSAGE_BYTES", "1044480"),
    "application": ("APPLICATION", "DICOMGW"),
    "idleTimeoutSeconds": ("IDLE_TIMEOUT_SECONDS", "300"),
    "publishTimeoutSeconds": ("PUBLISH_TIMEOUT_SECONDS", "30"),
    "precheckTimeoutSeconds": ("PRECHECK_TIMEOUT_SECONDS", "5"),
    "maxConnectionsPerPeer": ("MAX_CONNECTIONS_PER_PEER", "16"),
}


def _hl7_values(tmp_path: Path, *, enabled: bool = True, hl7: dict[str, Any] | None = None,
                network_policy: dict[str, Any] | None = None, name: str = "hl7-values.yaml") -> Path:
    """A values file that takes ADT (a file: --set would turn OIDs and CIDR lists into other types)."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump({
        "hl7": {"enabled": enabled},
        "gateway": {"hl7": {"allowedSenders": HL7_SENDERS, **(hl7 or {})}},
        "networkPolicy": network_policy or {},
    }))
    return path


def _ports(deployment: Manifest) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in _container(deployment)["ports"]}


def test_hl7_in_split_mode_runs_the_listener_and_the_patient_role(tmp_path: Path) -> None:
    manifests = render("mode=split", BACKENDS, values=(_hl7_values(tmp_path),))
    deployments = _by_component(manifests)
    assert set(deployments) == {*SPLIT_ROLES, *HL7_ROLES}
    assert set(HL7_ROLES) <= set(ROLES), "the gateway runs both roles"

    hl7 = deployments["hl7"]
    assert hl7["metadata"]["name"] == "gw-dicom-gateway-hl7"
    assert _container(hl7)["args"] == ["run", "--role", "hl7"]
    assert _ports(hl7) == {"http": 8080, "hl7": HL7_PORT}
    # Readiness is the HTTP /readyz, as for every pod: never a probe on the MLLP port.
    assert _container(hl7)["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTP"}

    patient = deployments["patient"]
    assert patient["metadata"]["name"] == "gw-dicom-gateway-patient"
    assert _container(patient)["args"] == ["run", "--role", "patient"]
    assert _ports(patient) == {"http": 8080}, "the patient role listens on nothing but http"
    # One partition keeps ADT in order: one replica, no autoscaler by default.
    assert patient["spec"]["replicas"] == 1
    assert "patient" not in _by_component(manifests, "HorizontalPodAutoscaler")
    assert "patient" not in _by_component(manifests, "ScaledObject")
    assert "hl7" in _by_component(manifests, "HorizontalPodAutoscaler")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        assert set(HL7_ROLES) <= set(_by_component(manifests, kind)), kind

    # Its own Service, on the hl7 pods' MLLP port; the DICOM Service does not carry it.
    services = of_kind(manifests, "Service")
    service = services[HL7_SERVICE]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "hl7"
    assert service["spec"]["selector"].items() <= hl7["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [{"name": "hl7", "port": HL7_PORT, "targetPort": "hl7", "protocol": "TCP"}]
    assert (service["spec"]["type"], service["spec"]["externalTrafficPolicy"]) == ("LoadBalancer", "Local")
    assert "hl7" not in {p["name"] for p in services["gw-dicom-gateway-receiver"]["spec"]["ports"]}

    # The settings, in the shared ConfigMap: every pod reads them (and would refuse an HL7 port without senders).
    config = config_map(manifests)
    assert config["GATEWAY_HL7__PORT"] == str(HL7_PORT)
    assert json.loads(config["GATEWAY_HL7__ALLOWED_SENDERS"]) == HL7_SENDERS
    for key, (setting, default) in HL7_TUNABLES.items():
        assert config[f"GATEWAY_HL7__{setting}"] == default, key
    for unset in ("LOCAL_AUTHORITIES", "FACILITY", "FORWARD_TO__HOST", "TLS__CERT_FILE"):
        assert f"GATEWAY_HL7__{unset}" not in config, unset
    assert config["GATEWAY_XDS__REREGISTER_ON_PATIENT_CHANGE"] == "false"
    for role, deployment in deployments.items():
        assert _container(deployment)["envFrom"] == [{"configMapRef": {"name": "gw-dicom-gateway-config"}}], role
        assert not {name for name in _env(deployment) if name.startswith("GATEWAY_HL7__")}, role
    for role in (*HL7_ROLES, "receiver"):
        settings, _ = _gateway_settings(deployments[role], config, tmp_path / role)
        assert settings["hl7"]["port"] == HL7_PORT, role
        assert [s["application"] for s in settings["hl7"]["allowed_senders"]] == ["HIS", "ADTENGINE"], role
        assert settings["hl7"]["allowed_senders"][0]["networks"] == ["10.30.0.0/16"], role
        assert settings["hl7"]["tls"]["cert_file"] is None, role
        assert settings["hl7"]["forward_to"]["host"] is None, role
        assert (settings["hl7"]["max_message_bytes"], settings["hl7"]["default_charset"]) == (1044480, "ASCII")


def test_hl7_in_single_mode_is_served_by_the_single_pods(tmp_path: Path) -> None:
    for sets in ((BACKENDS,), ()):
        manifests = render(*sets, values=(_hl7_values(tmp_path),))
        (deployment,) = of_kind(manifests, "Deployment").values()
        assert _container(deployment)["args"] == ["run"], "run without --role starts hl7 and patient with the port"
        assert _ports(deployment)["hl7"] == HL7_PORT
        service = of_kind(manifests, "Service")[HL7_SERVICE]
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == "single"
        assert service["spec"]["ports"][0]["targetPort"] == "hl7"
        config = config_map(manifests)
        assert config["GATEWAY_HL7__PORT"] == str(HL7_PORT)
        settings, _ = _gateway_settings(deployment, config, tmp_path / f"single-{len(sets)}")
        assert settings["hl7"]["port"] == HL7_PORT


@pytest.mark.parametrize("sets", [("mode=split", BACKENDS), (BACKENDS,), ()], ids=["split", "single-kafka", "embedded"])
def test_no_hl7_unless_enabled(sets: tuple[str, ...], tmp_path: Path) -> None:
    values = _hl7_values(tmp_path, enabled=False, hl7={"forwardTo": {"host": "hl7.region.example.org"}},
                         network_policy={"egress": [{}], "hl7From": HL7_SOURCES})
    manifests = render(*sets, values=(values,))
    assert not [key for key in config_map(manifests) if key.startswith("GATEWAY_HL7__")]
    for kind in ("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject", "NetworkPolicy"):
        assert not set(HL7_ROLES) & set(_by_component(manifests, kind)), kind
    assert HL7_SERVICE not in of_kind(manifests, "Service")
    for name, deployment in of_kind(manifests, "Deployment").items():
        assert "hl7" not in _ports(deployment), name
        assert not {"hl7-tls", "hl7-forward-tls"} & set(_volumes(deployment)), name
    for policy in of_kind(manifests, "NetworkPolicy").values():
        assert not _rules_for(policy, "hl7")
        assert not _egress_to_ports(policy, {HL7_PORT})


@pytest.mark.parametrize("sets", [("mode=split", BACKENDS), (BACKENDS,), ()], ids=["split", "single-kafka", "embedded"])
def test_hl7_enabled_without_allowed_senders_fails_the_render(sets: tuple[str, ...]) -> None:
    error = render_error(*sets, "hl7.enabled=true")
    assert "hl7.enabled needs at least one sender in gateway.hl7.allowedSenders" in error
    assert "allow-list" in error


def test_chart_refuses_hl7_settings_the_gateway_would_refuse(tmp_path: Path) -> None:
    for hl7, expected in [
        ({"allowedSenders": [{"facility": "HOSPITAL"}]}, "application"),
        ({"allowedSenders": [{"application": ""}]}, "application"),
        ({"allowedSenders": [{"application": "HIS", "networks": ["10.30.0.0"]}]}, "networks"),
        ({"allowedSenders": [{"application": "HIS", "password": "x"}]}, "password"),
        ({"defaultCharset": "latin1"}, "defaultCharset"),
        ({"maxMessageBytes": 2000000}, "maxMessageBytes"),
        ({"port": 0}, "port"),
        ({"idleTimeoutSeconds": 0}, "idleTimeoutSeconds"),
        ({"forwardTo": {"port": 70000}}, "port"),
    ]:
        values = _hl7_values(tmp_path, hl7={"allowedSenders": HL7_SENDERS, **hl7})
        assert expected in render_error(BACKENDS, values=(values,)), hl7
    values = (_hl7_values(tmp_path),)
    assert "gateway.hl7.tls.existingSecret" in render_error(BACKENDS, "gateway.hl7.tls.enabled=true", values=values)
    assert "gateway.hl7.tls.caKey" in render_error(BACKENDS, "gateway.hl7.tls.enabled=true",
                                                   "gateway.hl7.tls.existingSecret=x", "gateway.hl7.tls.caKey=",
                                                   "gateway.hl7.tls.requireClientCert=true", values=values)
    assert "gateway.hl7.forwardTo.tls" in render_error(BACKENDS, "gateway.hl7.forwardTo.host=up",
                                                       "gateway.hl7.forwardTo.caSecret=ca", values=values)
    # The listening pods open the HTTP port too (and in single mode the DICOM ports).
    error = render_error("mode=split", BACKENDS, "gateway.hl7.port=8080", values=values)
    assert "gateway.hl7.port 8080 is already gateway.http.port" in error
    error = render_error(BACKENDS, "gateway.hl7.port=11112", values=values)
    assert "gateway.dicom.port" in error
    render("mode=split", BACKENDS, "gateway.hl7.port=11112", values=values)
    assert "hl7From" in render_error(BACKENDS, "networkPolicy.hl7From[0].cidr=10.0.0.0/8", values=values)


def test_hl7_tunables_are_rendered_as_the_gateway_reads_them(tmp_path: Path) -> None:
    hl7 = {"port": 6661, "localAuthorities": ["1.2.246.10.1234567.10.1", "TEMP"], "defaultCharset": "UNICODE UTF-8",
           "maxMessageBytes": 65536, "application": "PACSGW", "facility": "RADIOLOGY", "idleTimeoutSeconds": 600,
           "publishTimeoutSeconds": 2.5, "precheckTimeoutSeconds": 1, "maxConnectionsPerPeer": 4}
    manifests = render("mode=split", BACKENDS, "gateway.xds.reregisterOnPatientChange=true",
                       values=(_hl7_values(tmp_path, hl7=hl7),))
    config = config_map(manifests)
    assert config["GATEWAY_HL7__PORT"] == "6661"
    assert json.loads(config["GATEWAY_HL7__LOCAL_AUTHORITIES"]) == hl7["localAuthorities"]
    assert config["GATEWAY_HL7__MAX_MESSAGE_BYTES"] == "65536"
    assert config["GATEWAY_HL7__PUBLISH_TIMEOUT_SECONDS"] == "2.5"
    assert config["GATEWAY_XDS__REREGISTER_ON_PATIENT_CHANGE"] == "true"
    deployments = _by_component(manifests)
    assert _ports(deployments["hl7"])["hl7"] == 6661
    assert of_kind(manifests, "Service")[HL7_SERVICE]["spec"]["ports"][0]["port"] == 6661
    settings, _ = _gateway_settings(deployments["patient"], config, tmp_path / "patient")
    assert settings["xds"]["reregister_on_patient_change"] is True
    settings = settings["hl7"]
    assert settings["local_authorities"] == hl7["localAuthorities"]
    assert (settings["default_charset"], settings["max_message_bytes"]) == ("UNICODE UTF-8", 65536)
    assert (settings["application"], settings["facility"]) == ("PACSGW", "RADIOLOGY")
    assert (settings["idle_timeout_seconds"], settings["publish_timeout_seconds"],
            settings["precheck_timeout_seconds"], settings["max_connections_per_peer"]) == (600.0, 2.5, 1.0, 4)


@pytest.mark.parametrize("mode", ["split", "single"])
def test_hl7_tls_files_reach_only_the_pods_that_use_them(mode: str, tmp_path: Path) -> None:
    hl7 = {"tls": {"enabled": True, "existingSecret": "dicomgw-hl7-tls", "requireClientCert": True},
           "forwardTo": {"host": "hl7.region.example.org", "port": 6661, "tls": True,
                         "caSecret": "dicomgw-hl7-upstream-ca", "caKey": "bundle.pem",
                         "clientSecret": "dicomgw-hl7-client"}}
    manifests = render(f"mode={mode}", BACKENDS, values=(_hl7_values(tmp_path, hl7=hl7),))
    config = config_map(manifests)
    assert config["GATEWAY_HL7__FORWARD_TO__HOST"] == "hl7.region.example.org"
    assert config["GATEWAY_HL7__FORWARD_TO__PORT"] == "6661"
    assert config["GATEWAY_HL7__FORWARD_TO__TLS"] == "true"
    assert not {key for key in config if key.endswith("_FILE") and key.startswith("GATEWAY_HL7__")}, \
        "file paths only where the files are mounted"
    deployments = _by_component(manifests)
    listening, forwarding = ("hl7", "patient") if mode == "split" else ("single", "single")
    for role, deployment in deployments.items():
        env = {name: entry["value"] for name, entry in _env(deployment).items() if name.startswith("GATEWAY_HL7__")}
        volumes = _volumes(deployment)
        expected: dict[str, str] = {}
        if role == listening:
            expected |= {"GATEWAY_HL7__TLS__CERT_FILE": "/etc/dicom-gateway/hl7-tls/tls.crt",
                         "GATEWAY_HL7__TLS__KEY_FILE": "/etc/dicom-gateway/hl7-tls/tls.key",
                         "GATEWAY_HL7__TLS__CA_FILE": "/etc/dicom-gateway/hl7-tls/ca.crt",
                         "GATEWAY_HL7__TLS__REQUIRE_CLIENT_CERT": "true"}
            assert volumes["hl7-tls"]["secret"]["secretName"] == "dicomgw-hl7-tls"
            assert _mounts(deployment)["hl7-tls"]["mountPath"] == "/etc/dicom-gateway/hl7-tls"
        else:
            assert "hl7-tls" not in volumes, role
        if role == forwarding:
            expected |= {"GATEWAY_HL7__FORWARD_TO__CA_FILE": "/etc/dicom-gateway/hl7-forward-tls/ca.crt",
                         "GATEWAY_HL7__FORWARD_TO__CERT_FILE": "/etc/dicom-gateway/hl7-forward-tls/tls.crt",
                         "GATEWAY_HL7__FORWARD_TO__KEY_FILE": "/etc/dicom-gateway/hl7-forward-tls/tls.key"}
            sources = volumes["hl7-forward-tls"]["projected"]["sources"]
            assert [(s["secret"]["name"], s["secret"]["items"]) for s in sources] == [
                ("dicomgw-hl7-upstream-ca", [{"key": "bundle.pem", "path": "ca.crt"}]),
                ("dicomgw-hl7-client", [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]),
            ]
        else:
            assert "hl7-forward-tls" not in volumes, role
        assert env == expected, role
        # The gateway accepts every pod's settings (client certificates need the CA file, wherever it is read).
        settings, _ = _gateway_settings(deployment, config, tmp_path / role)
        assert settings["hl7"]["tls"]["cert_file"] == expected.get("GATEWAY_HL7__TLS__CERT_FILE"), role
        assert settings["hl7"]["forward_to"]["ca_file"] == expected.get("GATEWAY_HL7__FORWARD_TO__CA_FILE"), role


@pytest.mark.parametrize("mode", ["split", "single"])
def test_network_policy_admits_hl7_senders_and_reaches_the_upstream(mode: str, tmp_path: Path) -> None:
    listening, forwarding = ("hl7", "patient") if mode == "split" else ("single", "single")
    egress: list[Manifest] = [{"to": [{"namespaceSelector": {}}]}]
    forward_to = {"forwardTo": {"host": "hl7.region.example.org", "port": 6661}}
    values = _hl7_values(tmp_path, hl7=forward_to,
                         network_policy={"egress": egress, "hl7From": HL7_SOURCES, "hl7ForwardTo": HL7_UPSTREAM})
    manifests = render(f"mode={mode}", BACKENDS, values=(values,))
    policies = _by_component(manifests, "NetworkPolicy")
    (rule,) = _rules_for(policies[listening], "hl7")
    assert rule == {"ports": [{"port": "hl7", "protocol": "TCP"}], "from": HL7_SOURCES}
    pod_labels = _by_component(manifests)[listening]["spec"]["template"]["metadata"]["labels"]
    assert policies[listening]["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policies[forwarding]["spec"]["egress"][:len(egress)] == egress
    (upstream,) = _egress_to_ports(policies[forwarding], {6661})
    assert upstream == {"ports": [{"port": 6661, "protocol": "TCP"}], "to": HL7_UPSTREAM}
    for role, policy in policies.items():
        if role != listening:
            assert not _rules_for(policy, "hl7"), role
        if role != forwarding:
            assert policy["spec"]["egress"] == egress, f"{role} passes no ADT on"

    # hl7From [] admits any source; hl7ForwardTo [] any address.
    values = _hl7_values(tmp_path, hl7=forward_to, network_policy={"egress": egress}, name="open.yaml")
    policies = _by_component(render(f"mode={mode}", BACKENDS, values=(values,)), "NetworkPolicy")
    (rule,) = _rules_for(policies[listening], "hl7")
    assert "from" not in rule
    (upstream,) = _egress_to_ports(policies[forwarding], {6661})
    assert "to" not in upstream

    # Without an upstream no egress rule for it; without networkPolicy.egress no Egress policy type at all.
    values = _hl7_values(tmp_path, network_policy={"egress": egress}, name="no-upstream.yaml")
    policies = _by_component(render(f"mode={mode}", BACKENDS, values=(values,)), "NetworkPolicy")
    assert all(policy["spec"]["egress"] == egress for policy in policies.values())
    policies = _by_component(render(f"mode={mode}", BACKENDS, values=(_hl7_values(tmp_path, hl7=forward_to),)),
                             "NetworkPolicy")
    for role, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress"], role


def test_keda_scales_the_patient_role_on_the_hl7_topic(tmp_path: Path) -> None:
    values = (_hl7_values(tmp_path),)
    manifests = render("mode=split", BACKENDS, "patient.keda.enabled=true", values=values)
    scaled = _by_component(manifests, "ScaledObject")
    assert set(scaled) == {"patient"}
    (trigger,) = scaled["patient"]["spec"]["triggers"]
    assert (trigger["metadata"]["consumerGroup"], trigger["metadata"]["topic"]) == ("dicomgw-patient", "dicomgw.hl7")
    assert (scaled["patient"]["spec"]["minReplicaCount"], scaled["patient"]["spec"]["maxReplicaCount"]) == (1, 1)
    # Passing ADT on upstream is a second consumer group of the same topic.
    manifests = render("mode=split", BACKENDS, "patient.keda.enabled=true", "gateway.hl7.forwardTo.host=up",
                       "keda.topics.hl7=site.hl7", values=values)
    triggers = _by_component(manifests, "ScaledObject")["patient"]["spec"]["triggers"]
    assert {t["metadata"]["consumerGroup"]: t["metadata"]["topic"] for t in triggers} == {
        "dicomgw-patient": "site.hl7", "dicomgw-hl7-forward": "site.hl7"}
    # Single mode: the single pods' triggers include the patient groups, which suffice for single.keda.
    single = render(BACKENDS, "single.keda.enabled=true", "store.enabled=false", "notify.enabled=false",
                    "gateway.audit.enabled=false", "gateway.hl7.forwardTo.host=up", values=values)
    (scaled,) = of_kind(single, "ScaledObject").values()
    topics = {t["metadata"]["consumerGroup"]: t["metadata"]["topic"] for t in scaled["spec"]["triggers"]}
    assert topics == {"dicomgw-patient": "dicomgw.hl7", "dicomgw-hl7-forward": "dicomgw.hl7"}


def test_hl7_service_follows_its_values(tmp_path: Path) -> None:
    manifests = render("mode=split", BACKENDS, "hl7.service.type=NodePort", "hl7.service.nodePort=32575",
                       "hl7.service.externalTrafficPolicy=Cluster", "hl7.service.annotations.team=his",
                       values=(_hl7_values(tmp_path),))
    service = of_kind(manifests, "Service")[HL7_SERVICE]
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["externalTrafficPolicy"] == "Cluster"
    assert service["spec"]["ports"][0]["nodePort"] == 32575
    assert service["metadata"]["annotations"] == {"team": "his"}
    service = of_kind(render("mode=split", BACKENDS, "hl7.service.type=ClusterIP", "hl7.service.nodePort=32575",
                             values=(_hl7_values(tmp_path),)), "Service")[HL7_SERVICE]
    assert "externalTrafficPolicy" not in service["spec"]
    assert "nodePort" not in service["spec"]["ports"][0]
    assert "nodePort" in render_error("hl7.service.nodePort=80", values=(_hl7_values(tmp_path),))


# The audit trail (IHE ATNA, gateway.audit): the audit role's Deployment (the audit log, delivery to the audit record
# repository), its settings in the shared config, the repository's TLS files, the NetworkPolicy egress to it and its
# scaling.
AUDIT_TLS_DIR = "/etc/dicom-gateway/audit-tls"
AUDIT_REPOSITORY = [{"ipBlock": {"cidr": "192.0.2.10/32"}}]
# gateway.audit values: (value, GATEWAY_AUDIT__ setting, the gateway's default as the ConfigMap holds it).
AUDIT_TUNABLES = {
    "appName": ("APP_NAME", "dicom-gateway"),
    "utf8Bom": ("UTF8_BOM", "true"),
    "retentionDays": ("RETENTION_DAYS", "4383"),
    "retryMaxSeconds": ("RETRY_MAX_SECONDS", "60"),
}
AUDIT_TLS = {"caSecret": "dicomgw-arr-ca", "caKey": "bundle.pem", "clientSecret": "dicomgw-arr-client"}


def _audit_values(tmp_path: Path, *, audit: dict[str, Any] | None = None,
                  network_policy: dict[str, Any] | None = None, name: str = "audit-values.yaml") -> Path:
    """A values file for the audit trail (a file: --set would turn OIDs into numbers)."""
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"gateway": {"audit": audit or {}}, "networkPolicy": network_policy or {}}))
    return path


def test_audit_in_split_mode_runs_the_audit_role(tmp_path: Path) -> None:
    audit = {"repositoryUrl": "tls://arr.example.org:6514", "sourceId": "DICOMGW-1",
             "enterpriseSiteId": "1.2.246.10.1234567", "tls": AUDIT_TLS}
    manifests = render("mode=split", BACKENDS, values=(_audit_values(tmp_path, audit=audit),))
    deployments = _by_component(manifests)
    assert set(deployments) == set(SPLIT_ROLES)
    assert AUDIT_ROLE in ROLES, "the gateway runs the audit role"

    deployment = deployments[AUDIT_ROLE]
    assert deployment["metadata"]["name"] == "gw-dicom-gateway-audit"
    assert _container(deployment)["args"] == ["run", "--role", "audit"]
    assert _ports(deployment) == {"http": 8080}, "the audit role listens on nothing but http"
    # One partition keeps the records in order: one replica, no autoscaler by default.
    assert deployment["spec"]["replicas"] == 1
    assert AUDIT_ROLE not in _by_component(manifests, "HorizontalPodAutoscaler")
    assert AUDIT_ROLE not in _by_component(manifests, "ScaledObject")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        assert AUDIT_ROLE in _by_component(manifests, kind), kind

    # The settings, in the shared ConfigMap: every process records.
    config = config_map(manifests)
    assert config["GATEWAY_AUDIT__ENABLED"] == "true"
    assert config["GATEWAY_AUDIT__REPOSITORY_URL"] == "tls://arr.example.org:6514"
    assert config["GATEWAY_AUDIT__SOURCE_ID"] == "DICOMGW-1"
    assert config["GATEWAY_AUDIT__ENTERPRISE_SITE_ID"] == "1.2.246.10.1234567"
    for key, (setting, default) in AUDIT_TUNABLES.items():
        assert config[f"GATEWAY_AUDIT__{setting}"] == default, key
    assert not {key for key in config if key.startswith("GATEWAY_AUDIT__") and key.endswith("_FILE")}, \
        "file paths only where the files are mounted"

    # The repository's TLS files: only in the audit pods.
    for role, deployment in deployments.items():
        assert _container(deployment)["envFrom"] == [{"configMapRef": {"name": "gw-dicom-gateway-config"}}], role
        env = {name: entry["value"] for name, entry in _env(deployment).items() if name.startswith("GATEWAY_AUDIT__")}
        volumes = _volumes(deployment)
        if role == AUDIT_ROLE:
            assert env == {"GATEWAY_AUDIT__CA_FILE": f"{AUDIT_TLS_DIR}/ca.crt",
                           "GATEWAY_AUDIT__CERT_FILE": f"{AUDIT_TLS_DIR}/tls.crt",
                           "GATEWAY_AUDIT__KEY_FILE": f"{AUDIT_TLS_DIR}/tls.key"}
            sources = volumes["audit-tls"]["projected"]["sources"]
            assert [(s["secret"]["name"], s["secret"]["items"]) for s in sources] == [
                ("dicomgw-arr-ca", [{"key": "bundle.pem", "path": "ca.crt"}]),
                ("dicomgw-arr-client", [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]),
            ]
            assert _mounts(deployment)["audit-tls"] == {"name": "audit-tls", "mountPath": AUDIT_TLS_DIR,
                                                        "readOnly": True}
        else:
            assert env == {}, role
            assert "audit-tls" not in volumes, role
        # The gateway accepts every pod's settings (cert_file and key_file together, wherever they are read).
        settings, _ = _gateway_settings(deployment, config, tmp_path / role)
        assert settings["audit"]["enabled"] is True, role
        assert settings["audit"]["repository_url"] == "tls://arr.example.org:6514", role
        assert (settings["audit"]["source_id"], settings["audit"]["enterprise_site_id"]) == (
            "DICOMGW-1", "1.2.246.10.1234567"), role
        expected_ca = f"{AUDIT_TLS_DIR}/ca.crt" if role == AUDIT_ROLE else None
        expected_key = f"{AUDIT_TLS_DIR}/tls.key" if role == AUDIT_ROLE else None
        assert (settings["audit"]["ca_file"], settings["audit"]["key_file"]) == (expected_ca, expected_key), role


def test_audit_defaults_are_the_gateways(tmp_path: Path) -> None:
    for sets in (("mode=split", BACKENDS), (BACKENDS,), ()):
        manifests = render(*sets)
        config = config_map(manifests)
        assert config["GATEWAY_AUDIT__ENABLED"] == "true", sets
        for unset in ("REPOSITORY_URL", "SOURCE_ID", "ENTERPRISE_SITE_ID"):
            assert f"GATEWAY_AUDIT__{unset}" not in config, (sets, unset)
        deployments = _by_component(manifests)
        runs_audit = AUDIT_ROLE if "mode=split" in sets else "single"
        assert runs_audit in deployments, sets
        for deployment in deployments.values():
            assert "audit-tls" not in _volumes(deployment), sets
        settings, _ = _gateway_settings(deployments[runs_audit], config, tmp_path / f"{runs_audit}-{len(sets)}")
        assert settings["audit"] == {"enabled": True, "repository_url": None, "ca_file": None, "cert_file": None,
                                     "key_file": None, "source_id": None, "enterprise_site_id": None,
                                     "app_name": "dicom-gateway", "utf8_bom": True, "retention_days": 4383,
                                     "retry_max_seconds": 60.0}, sets


def test_audit_in_single_mode_is_served_by_the_single_pods(tmp_path: Path) -> None:
    audit = {"repositoryUrl": "tls://arr.example.org:6514", "utf8Bom": False, "appName": "dicomgw",
             "retentionDays": 3653, "retryMaxSeconds": 2.5, "tls": {"caSecret": "dicomgw-arr-ca"}}
    for sets in ((BACKENDS,), ()):
        manifests = render(*sets, values=(_audit_values(tmp_path, audit=audit),))
        (deployment,) = of_kind(manifests, "Deployment").values()
        assert _container(deployment)["args"] == ["run"], "run without --role starts the audit role"
        config = config_map(manifests)
        assert config["GATEWAY_AUDIT__ENABLED"] == "true"
        assert config["GATEWAY_AUDIT__REPOSITORY_URL"] == "tls://arr.example.org:6514"
        assert (config["GATEWAY_AUDIT__UTF8_BOM"], config["GATEWAY_AUDIT__APP_NAME"]) == ("false", "dicomgw")
        assert config["GATEWAY_AUDIT__RETENTION_DAYS"] == "3653"
        assert config["GATEWAY_AUDIT__RETRY_MAX_SECONDS"] == "2.5"
        # A CA bundle without a client certificate: the CA file alone.
        env = {name: entry["value"] for name, entry in _env(deployment).items() if name.startswith("GATEWAY_AUDIT__")}
        assert env == {"GATEWAY_AUDIT__CA_FILE": f"{AUDIT_TLS_DIR}/ca.crt"}
        (source,) = _volumes(deployment)["audit-tls"]["projected"]["sources"]
        assert source["secret"] == {"name": "dicomgw-arr-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
        settings, _ = _gateway_settings(deployment, config, tmp_path / f"single-{len(sets)}")
        assert (settings["audit"]["ca_file"], settings["audit"]["cert_file"]) == (f"{AUDIT_TLS_DIR}/ca.crt", None)
        assert (settings["audit"]["utf8_bom"], settings["audit"]["retention_days"],
                settings["audit"]["retry_max_seconds"]) == (False, 3653, 2.5)
    # UDP has no TLS: no files mounted (ci/single-values.yaml delivers over UDP).
    (deployment,) = of_kind(render_set("single-ci"), "Deployment").values()
    assert "audit-tls" not in _volumes(deployment)
    assert not {name for name in _env(deployment) if name.startswith("GATEWAY_AUDIT__")}


@pytest.mark.parametrize("sets", [("mode=split", BACKENDS), (BACKENDS,), ()], ids=["split", "single-kafka", "embedded"])
def test_no_audit_role_when_disabled(sets: tuple[str, ...], tmp_path: Path) -> None:
    audit = {"enabled": False, "repositoryUrl": "tls://arr.example.org:6514", "tls": AUDIT_TLS}
    values = _audit_values(tmp_path, audit=audit, network_policy={"egress": [{}]})
    manifests = render(*sets, values=(values,))
    config = config_map(manifests)
    assert config["GATEWAY_AUDIT__ENABLED"] == "false"
    assert [key for key in config if key.startswith("GATEWAY_AUDIT__")] == ["GATEWAY_AUDIT__ENABLED"]
    for kind in ("Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject", "NetworkPolicy"):
        assert AUDIT_ROLE not in _by_component(manifests, kind), kind
    for name, deployment in of_kind(manifests, "Deployment").items():
        assert "audit-tls" not in _volumes(deployment), name
        assert not {key for key in _env(deployment) if key.startswith("GATEWAY_AUDIT__")}, name
        settings, _ = _gateway_settings(deployment, config, tmp_path / name)
        assert settings["audit"]["enabled"] is False, name
    for policy in of_kind(manifests, "NetworkPolicy").values():
        assert not _egress_to_ports(policy, {6514})
    if "mode=split" in sets:
        assert set(_by_component(manifests)) == set(SPLIT_ROLES) - {AUDIT_ROLE}


def test_chart_refuses_audit_settings_the_gateway_would_refuse(tmp_path: Path) -> None:
    refused: list[tuple[dict[str, Any], str]] = [
        ({"repositoryUrl": "https://arr.example.org:6514"}, "repositoryUrl"),
        ({"repositoryUrl": "tls://arr.example.org"}, "repositoryUrl"),
        ({"repositoryUrl": "udp://arr example:514"}, "repositoryUrl"),
        ({"retentionDays": 0}, "retentionDays"),
        ({"retryMaxSeconds": 0}, "retryMaxSeconds"),
        ({"appName": ""}, "appName"),
        ({"appName": "x" * 49}, "appName"),
        ({"appName": "dicom gateway"}, "appName"),
        ({"sourceId": 7}, "sourceId"),
        ({"password": "x"}, "password"),
        ({"tls": {"caKey": ""}}, "caKey"),
    ]
    for audit, expected in refused:
        assert expected in render_error(BACKENDS, values=(_audit_values(tmp_path, audit=audit),)), audit
    # udp:// has no TLS: its files would be mounted for nothing.
    for tls in ({"caSecret": "ca"}, {"clientSecret": "client"}):
        values = _audit_values(tmp_path, audit={"repositoryUrl": "udp://arr.example.org:514", "tls": tls})
        assert "need a tls:// gateway.audit.repositoryUrl" in render_error(BACKENDS, values=(values,)), tls
    # IPv6 literals and both transports are accepted, as the gateway accepts them.
    for url in ("tls://[2001:db8::10]:6514", "udp://arr.example.org:514", "tls://10.0.0.5:6514"):
        render(BACKENDS, values=(_audit_values(tmp_path, audit={"repositoryUrl": url}),))
    assert "auditRepositoryTo" in render_error(BACKENDS, "networkPolicy.auditRepositoryTo[0].cidr=10.0.0.0/8")


@pytest.mark.parametrize("mode", ["split", "single"])
@pytest.mark.parametrize(("url", "port", "protocol"), [("tls://arr.example.org:6514", 6514, "TCP"),
                                                       ("udp://[2001:db8::10]:514", 514, "UDP")])
def test_network_policy_lets_the_audit_pods_reach_the_repository(mode: str, url: str, port: int, protocol: str,
                                                                  tmp_path: Path) -> None:
    delivering = AUDIT_ROLE if mode == "split" else "single"
    egress: list[Manifest] = [{"to": [{"namespaceSelector": {}}]}]
    values = _audit_values(tmp_path, audit={"repositoryUrl": url},
                           network_policy={"egress": egress, "auditRepositoryTo": AUDIT_REPOSITORY})
    manifests = render(f"mode={mode}", BACKENDS, values=(values,))
    policies = _by_component(manifests, "NetworkPolicy")
    policy = policies[delivering]
    assert policy["spec"]["egress"][:-1] == egress
    assert policy["spec"]["egress"][-1] == {"ports": [{"port": port, "protocol": protocol}], "to": AUDIT_REPOSITORY}
    pod_labels = _by_component(manifests)[delivering]["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    for role, other in policies.items():
        if role != delivering:
            assert other["spec"]["egress"] == egress, f"{role} delivers no audit records"

    # auditRepositoryTo [] admits any address.
    values = _audit_values(tmp_path, audit={"repositoryUrl": url}, network_policy={"egress": egress}, name="open.yaml")
    policy = _by_component(render(f"mode={mode}", BACKENDS, values=(values,)), "NetworkPolicy")[delivering]
    assert policy["spec"]["egress"][-1] == {"ports": [{"port": port, "protocol": protocol}]}

    # Without a repository no rule for it; without networkPolicy.egress no Egress policy type at all.
    values = _audit_values(tmp_path, network_policy={"egress": egress}, name="no-repository.yaml")
    policies = _by_component(render(f"mode={mode}", BACKENDS, values=(values,)), "NetworkPolicy")
    assert all(policy["spec"]["egress"] == egress for policy in policies.values())
    values = _audit_values(tmp_path, audit={"repositoryUrl": url}, name="no-egress.yaml")
    for role, policy in _by_component(render(f"mode={mode}", BACKENDS, values=(values,)), "NetworkPolicy").items():
        assert policy["spec"]["policyTypes"] == ["Ingress"], role


def test_keda_scales_the_audit_role_on_the_audit_topic(tmp_path: Path) -> None:
    manifests = render("mode=split", BACKENDS, "audit.keda.enabled=true")
    scaled = _by_component(manifests, "ScaledObject")
    assert set(scaled) == {AUDIT_ROLE}
    (trigger,) = scaled[AUDIT_ROLE]["spec"]["triggers"]
    assert (trigger["metadata"]["consumerGroup"], trigger["metadata"]["topic"]) == ("dicomgw-audit-log",
                                                                                    "dicomgw.audit")
    assert (scaled[AUDIT_ROLE]["spec"]["minReplicaCount"], scaled[AUDIT_ROLE]["spec"]["maxReplicaCount"]) == (1, 1)
    assert AUDIT_ROLE not in _by_component(manifests, "HorizontalPodAutoscaler")
    # Delivering to the repository is a second consumer group of the same topic.
    values = (_audit_values(tmp_path, audit={"repositoryUrl": "udp://arr.example.org:514"}),)
    manifests = render("mode=split", BACKENDS, "audit.keda.enabled=true", "keda.topics.audit=site.audit",
                       values=values)
    triggers = _by_component(manifests, "ScaledObject")[AUDIT_ROLE]["spec"]["triggers"]
    assert {t["metadata"]["consumerGroup"]: t["metadata"]["topic"] for t in triggers} == {
        "dicomgw-audit-log": "site.audit", "dicomgw-audit": "site.audit"}
    # Single mode: the single pods' triggers include the audit groups, which suffice for single.keda.
    single = render(BACKENDS, "single.keda.enabled=true", "store.enabled=false", "notify.enabled=false",
                    values=values)
    (scaled,) = of_kind(single, "ScaledObject").values()
    topics = {t["metadata"]["consumerGroup"]: t["metadata"]["topic"] for t in scaled["spec"]["triggers"]}
    assert topics == {"dicomgw-audit-log": "dicomgw.audit", "dicomgw-audit": "dicomgw.audit"}
