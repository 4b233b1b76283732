"""deploy/helm/clearscan: lints strictly, renders objects that Kubernetes' own schemas accept
(strictly, for the oldest supported and the newest known Kubernetes), keeps secrets out of the
manifests, hardens every pod, and refuses values that cannot work, saying why."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from clearscan import __version__
from clearscan.config import Settings
from clearscan.observability.metrics import JobQueueCollector
from tests.deploy.helm_render import (
    CHART,
    FULL_VALUES,
    MIN_KUBE_VERSION,
    NAMESPACE,
    Obj,
    Rendered,
    full_values,
    helm,
    kube_versions,
    name,
    render,
    validate,
)

SECRET_SETTINGS = {
    "CLEARSCAN_DATABASE_URL",
    "DATABASE_URL",
    "CLEARSCAN_SECRET_KEY",
    "CLEARSCAN_PSEUDONYM_KEY",
    "CLEARSCAN_AUDIT_KEY",
    "CLEARSCAN_BROKER_URL",
    "CLEARSCAN_REDIS_URL",
    "CLEARSCAN_ADMIN_PASSWORD",
    "CLEARSCAN_METRICS_TOKEN",
    "CLEARSCAN_S3_ACCESS_KEY_ID",
    "CLEARSCAN_S3_SECRET_ACCESS_KEY",
}
VALUE_SETS = ["default", "full"]


@pytest.fixture(scope="module")
def default() -> Rendered:
    return render()


@pytest.fixture(scope="module")
def full() -> Rendered:
    return render(full_values())


@pytest.fixture
def rendered(request: pytest.FixtureRequest) -> Rendered:
    result: Rendered = request.getfixturevalue(request.param)
    return result


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def only_container(rendered: Rendered, kind: str, suffix: str) -> Obj:
    spec = rendered.get(kind, name(suffix))["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    result: Obj = spec["containers"][0]
    return result


def with_values(**overrides: Any) -> dict[str, Any]:
    """Values from dotted keys: with_values(**{"api.replicas": 3})."""
    values: dict[str, Any] = {}
    for dotted, value in overrides.items():
        node = values
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


# --- the chart itself ---------------------------------------------------------------------


def test_chart_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == __version__
    assert values["image"]["tag"] == __version__


@pytest.mark.parametrize("values_set", VALUE_SETS)
@pytest.mark.parametrize("kube", ["min", "newest"])
def test_helm_lint_strict(values_set, kube):
    version = MIN_KUBE_VERSION if kube == "min" else kube_versions()[1]
    values = full_values() if values_set == "full" else None
    report = helm().lint(CHART, values, strict=True, kube_version=f"v{version}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("rendered", VALUE_SETS, indirect=True)
def test_every_object_validates_strictly(rendered):
    assert rendered.objects
    for version in kube_versions():
        for obj in rendered.objects:
            try:
                validate(obj, version)
            except Exception as exc:
                where = ".".join(str(p) for p in getattr(exc, "path", []))
                pytest.fail(
                    f"{obj['kind']}/{obj['metadata']['name']} against Kubernetes {version}: "
                    f"{where}: {getattr(exc, 'message', exc)}"
                )
            assert obj["metadata"].get("namespace") in (None, NAMESPACE)


def test_strict_validation_catches_an_unknown_field(default):
    deployment = copy.deepcopy(default.get("Deployment", name("api")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(Exception, match="readinessProbes"):
        validate(deployment, MIN_KUBE_VERSION)


def test_default_objects(default):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in default.objects)
    assert kinds == sorted(
        [
            ("Deployment", name("api")),
            ("Deployment", name("worker")),
            ("Job", name("migrate")),
            ("PersistentVolumeClaim", name("data")),
            ("PodDisruptionBudget", name("api")),
            ("PodDisruptionBudget", name("worker")),
            ("Service", name()),
            ("ServiceAccount", name()),
        ]
    )


def test_full_objects(full):
    assert full.names("Deployment") == {name("api"), name("worker"), name("worker-gpu")}
    assert full.names("HorizontalPodAutoscaler") == full.names("Deployment")
    assert full.names("PodDisruptionBudget") == full.names("Deployment")
    assert full.names("NetworkPolicy") == {name("api"), name("worker"), name("migrations")}
    assert full.names("Ingress") == {name()}
    for obj in full.objects:
        assert obj["metadata"]["labels"]["team"] == "imaging"  # commonLabels


# --- pods --------------------------------------------------------------------------------


@pytest.mark.parametrize("rendered", VALUE_SETS, indirect=True)
def test_every_pod_is_hardened(rendered):
    for owner, spec in rendered.pod_specs():
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], where
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert set(c["resources"]) == {"requests", "limits"}, where
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts["/tmp"] == "tmp", where
            env = env_of(c)
            assert mounts[env["CLEARSCAN_DATA_DIR"]["value"]] == "data", where
            assert env["CLEARSCAN_ENVIRONMENT"]["value"] == "production", where


def test_api_command_probes_and_service(default):
    api = only_container(default, "Deployment", "api")
    assert api["args"] == ["serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "command" not in api  # the image's entrypoint dispatches serve / worker / db upgrade
    assert api["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    probes = {kind: api[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")}
    assert probes == {
        "startup": {"path": "/healthz", "port": "http"},
        "liveness": {"path": "/healthz", "port": "http"},
        "readiness": {"path": "/readyz", "port": "http"},
    }
    assert api["startupProbe"]["failureThreshold"] * api["startupProbe"]["periodSeconds"] >= 120
    service = default.get("Service", name())
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "api"
    annotations = default.get("Deployment", name("api"))["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_worker_commands(default, full):
    metrics = ["--metrics-port", "9101"]
    worker = only_container(default, "Deployment", "worker")
    assert worker["args"] == ["worker", "--queues", "default", "--concurrency", "1", *metrics]
    assert "CLEARSCAN_DEVICE" not in env_of(worker)
    assert only_container(full, "Deployment", "worker")["args"] == [
        "worker",
        "--queues",
        "default,evaluate",
        "--concurrency",
        "2",
        *metrics,
    ]
    gpu = only_container(full, "Deployment", "worker-gpu")
    assert gpu["args"] == ["worker", "--queues", "gpu", "--concurrency", "1", *metrics]
    assert env_of(gpu)["CLEARSCAN_DEVICE"]["value"] == "cuda"


def test_worker_metrics_are_served_and_scraped(default):
    """Each worker pod serves its pool's job metrics on a named port Prometheus is told about;
    switched off, the worker is started with --metrics-port 0 and exposes nothing."""
    pod = default.get("Deployment", name("worker"))["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9101, "protocol": "TCP"}]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9101"
    off = render({"workerMetrics": {"enabled": False, "port": 9101}})
    pod = off.get("Deployment", name("worker"))["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"][-2:] == ["--metrics-port", "0"] and "ports" not in container
    assert "prometheus.io/scrape" not in pod["metadata"].get("annotations", {})


def test_gpu_resource_on_the_gpu_worker_only(full):
    gpu_pods = []
    for owner, spec in full.pod_specs():
        for c in containers(spec):
            limits = c["resources"].get("limits", {})
            requests = c["resources"].get("requests", {})
            if "nvidia.com/gpu" in limits or "nvidia.com/gpu" in requests:
                gpu_pods.append(owner["metadata"]["name"])
    assert gpu_pods == [name("worker-gpu")]
    spec = full.get("Deployment", name("worker-gpu"))["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    cpu = full.get("Deployment", name("worker"))["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu


def test_gpu_pool_receives_the_routed_job_kinds(default, full, monkeypatch):
    """With the GPU pool on, every pod routes training runs to its queue (CLEARSCAN_JOB_ROUTES,
    read by Settings as JSON); without it nothing is routed."""
    import json

    from clearscan.config import Settings

    for owner, spec in full.pod_specs():
        for c in containers(spec):
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if owner["metadata"]["name"] == name("migrate"):
                continue
            routes = json.loads(env["CLEARSCAN_JOB_ROUTES"])
            assert routes == {"train": "gpu"}, owner["metadata"]["name"]
            monkeypatch.setenv("CLEARSCAN_JOB_ROUTES", env["CLEARSCAN_JOB_ROUTES"])
            assert Settings().job_routes == routes  # as the app reads its environment
    for _, spec in default.pod_specs():
        for c in containers(spec):
            assert "CLEARSCAN_JOB_ROUTES" not in {e["name"] for e in c.get("env", [])}


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(default):
    job = default.get("Job", name("migrate"))
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["containers"][0]["args"] == ["db", "upgrade"]
    # hooks run before the release's own objects exist: neither the claim nor the chart's
    # ServiceAccount may be needed
    assert all("persistentVolumeClaim" not in v for v in spec["volumes"])
    assert "serviceAccountName" not in spec
    assert set(env_of(spec["containers"][0])) >= {"CLEARSCAN_DATABASE_URL", "CLEARSCAN_SECRET_KEY"}
    assert not any("hook" in k for o in default.objects if o is not job for k in _annotations(o))


def _annotations(obj: Obj) -> dict[str, str]:
    result: dict[str, str] = obj["metadata"].get("annotations") or {}
    return result


# --- secrets and settings ----------------------------------------------------------------


@pytest.mark.parametrize("rendered", VALUE_SETS, indirect=True)
def test_secrets_only_by_reference(rendered):
    assert not rendered.of_kind("Secret")
    assert "kind: Secret" not in rendered.text
    for owner, spec in rendered.pod_specs():
        for c in containers(spec):
            assert "envFrom" not in c
            for var in c.get("env", []):
                where = f"{owner['metadata']['name']}: {var['name']}"
                if var["name"] in SECRET_SETTINGS:
                    assert "value" not in var, where
                    assert set(var["valueFrom"]) == {"secretKeyRef"}, where
                else:
                    assert "valueFrom" not in var or "secretKeyRef" not in var["valueFrom"], where
                # no credentials in a plain value (scheme://user:password@host)
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", var.get("value", "")), where
    api = env_of(only_container(rendered, "Deployment", "api"))
    refs = {
        k: (v["valueFrom"]["secretKeyRef"]["name"], v["valueFrom"]["secretKeyRef"]["key"])
        for k, v in api.items()
        if "valueFrom" in v
    }
    assert refs["CLEARSCAN_DATABASE_URL"] == ("clearscan", "database-url")
    assert refs["CLEARSCAN_SECRET_KEY"] == ("clearscan", "secret-key")
    assert refs["CLEARSCAN_PSEUDONYM_KEY"] == ("clearscan", "pseudonym-key")
    assert refs["CLEARSCAN_AUDIT_KEY"] == ("clearscan", "audit-key")
    assert refs["CLEARSCAN_ADMIN_PASSWORD"] == ("clearscan", "admin-password")
    assert "CLEARSCAN_BROKER_URL" in refs


def test_secret_references_from_values(full):
    api = env_of(only_container(full, "Deployment", "api"))
    ref = {k: v["valueFrom"]["secretKeyRef"] for k, v in api.items() if "valueFrom" in v}
    assert ref["CLEARSCAN_BROKER_URL"] == {"name": "clearscan-redis", "key": "url"}
    assert ref["CLEARSCAN_S3_ACCESS_KEY_ID"] == {"name": "clearscan-s3", "key": "access-key-id"}
    assert ref["CLEARSCAN_S3_SECRET_ACCESS_KEY"] == {
        "name": "clearscan-s3",
        "key": "secret-access-key",
    }
    assert ref["CLEARSCAN_METRICS_TOKEN"] == {"name": "clearscan", "key": "metrics-token"}
    assert ref["CLEARSCAN_REDIS_URL"] == {"name": "clearscan-redis", "key": "url"}
    for suffix in ("worker", "worker-gpu"):
        worker = env_of(only_container(full, "Deployment", suffix))
        assert "CLEARSCAN_METRICS_TOKEN" not in worker  # only the API serves /metrics
        # the entrypoint's prestart creates the first admin in whichever pod starts first
        assert "CLEARSCAN_ADMIN_PASSWORD" in worker
        assert "CLEARSCAN_BROKER_URL" in worker
    migrate = env_of(full.get("Job", name("migrate"))["spec"]["template"]["spec"]["containers"][0])
    assert not {"CLEARSCAN_BROKER_URL", "CLEARSCAN_ADMIN_PASSWORD"} & set(migrate)


@pytest.mark.parametrize("rendered", VALUE_SETS, indirect=True)
def test_every_setting_the_chart_sets_exists(rendered):
    known = {f"CLEARSCAN_{f.upper()}" for f in Settings.model_fields}
    for _, spec in rendered.pod_specs():
        for c in containers(spec):
            unknown = {n for n in env_of(c) if n.startswith("CLEARSCAN_")} - known
            assert not unknown, f"not settings of clearscan.config.Settings: {unknown}"


def test_s3_settings_parse_as_the_app_reads_them(full):
    env = env_of(only_container(full, "Deployment", "api"))
    assert env["CLEARSCAN_S3_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
    assert env["CLEARSCAN_S3_REGION"]["value"] == "us-east-1"
    location = Settings(blob_url=env["CLEARSCAN_BLOB_URL"]["value"]).blob_location()
    assert (location.bucket, location.prefix) == ("clearscan-blobs", "prod")


def test_plain_settings_from_config(full):
    env = env_of(only_container(full, "Deployment", "worker-gpu"))
    assert env["CLEARSCAN_MODEL_CACHE_MB"]["value"] == "3072"
    assert env["CLEARSCAN_TRUSTED_PROXIES"]["value"] == '["10.0.0.0/8"]'


# --- scaling, storage, network -------------------------------------------------------------


def test_hpa_metrics(full):
    api_hpa = full.get("HorizontalPodAutoscaler", name("api"))
    assert api_hpa["apiVersion"] == "autoscaling/v2"
    assert api_hpa["spec"]["scaleTargetRef"]["name"] == name("api")
    assert api_hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }
    ]
    for suffix in ("api", "worker", "worker-gpu"):  # the autoscaler owns the replica count
        assert "replicas" not in full.get("Deployment", name(suffix))["spec"]

    queue_gauges = {family.name for family in JobQueueCollector(list).describe()}
    selectors = {}
    for suffix in ("worker", "worker-gpu"):
        hpa = full.get("HorizontalPodAutoscaler", name(suffix))
        assert hpa["spec"]["scaleTargetRef"]["name"] == name(suffix)
        [metric] = hpa["spec"]["metrics"]
        assert metric["type"] == "External"
        assert metric["external"]["metric"]["name"] in queue_gauges
        assert metric["external"]["target"]["type"] == "AverageValue"
        selectors[suffix] = metric["external"]["metric"]["selector"]
    assert selectors["worker-gpu"]["matchLabels"] == {"status": "queued", "kind": "train"}
    assert selectors["worker"]["matchExpressions"] == [
        {"key": "kind", "operator": "NotIn", "values": ["train"]}
    ]


def test_default_storage_is_a_shared_claim(default):
    pvc = default.get("PersistentVolumeClaim", name("data"))
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for suffix in ("api", "worker"):
        deployment = default.get("Deployment", name(suffix))
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == name("data")
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "CLEARSCAN_BLOB_URL" not in env_of(only_container(default, "Deployment", "api"))


def test_one_pod_on_a_read_write_once_claim():
    single = render(
        with_values(
            **{
                "persistence.accessMode": "ReadWriteOnce",
                "api.replicas": 1,
                "worker.enabled": False,
            }
        )
    )
    assert single.names("Deployment") == {name("api")}
    api = single.get("Deployment", name("api"))
    assert api["spec"]["strategy"] == {"type": "Recreate"}
    env = env_of(api["spec"]["template"]["spec"]["containers"][0])
    assert "CLEARSCAN_BROKER_URL" not in env  # no workers: jobs run in the API process
    for version in kube_versions():
        for obj in single.objects:
            validate(obj, version)


def test_ingress(full):
    ingress = full.get("Ingress", name())
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [
        {"hosts": ["clearscan.hospital.example.org"], "secretName": "clearscan-tls"}
    ]
    [rule] = spec["rules"]
    assert rule["host"] == "clearscan.hospital.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": name(), "port": {"name": "http"}}
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]


def _ports(rules: list[Obj]) -> set[tuple[Any, str]]:
    return {(p["port"], p["protocol"]) for r in rules for p in r.get("ports", [])}


def test_network_policies(full):
    api = full.get("NetworkPolicy", name("api"))["spec"]
    assert api["policyTypes"] == ["Ingress", "Egress"]
    assert api["podSelector"]["matchExpressions"][0]["values"] == ["api"]
    sources = [peer for rule in api["ingress"] for peer in rule["from"]]
    namespaces = {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in sources
    }
    assert namespaces == {"ingress-nginx", "monitoring"}
    assert _ports(api["ingress"]) == {("http", "TCP")}
    everything = {
        (53, "UDP"),
        (53, "TCP"),
        (5432, "TCP"),
        (6379, "TCP"),
        (9000, "TCP"),
        (104, "TCP"),
    }
    assert _ports(api["egress"]) == everything

    worker = full.get("NetworkPolicy", name("worker"))["spec"]
    assert set(worker["podSelector"]["matchExpressions"][0]["values"]) == {"worker", "worker-gpu"}
    # only Prometheus may reach a worker: its metrics port
    assert _ports(worker["ingress"]) == {("metrics", "TCP")}
    assert [p for rule in worker["ingress"] for p in rule["from"]] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert _ports(worker["egress"]) == everything

    migrations = full.get("NetworkPolicy", name("migrations"))["spec"]
    assert migrations["ingress"] == []
    assert _ports(migrations["egress"]) == {(53, "UDP"), (53, "TCP"), (5432, "TCP")}

    selected = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]
        for o in full.objects
        if o["kind"] in ("Deployment", "Job")
    }
    covered = {
        v
        for np in full.of_kind("NetworkPolicy")
        for v in np["spec"]["podSelector"]["matchExpressions"][0]["values"]
    }
    assert selected <= covered


def test_platform_assigned_user_and_entrypoint_override():
    """runAsUser / runAsGroup null (OpenShift assigns them) keeps the rest of the hardening."""
    rendered = render(
        with_values(
            **{
                "podSecurityContext.runAsUser": None,
                "podSecurityContext.runAsGroup": None,
                "image.command": ["/usr/local/bin/clearscan"],
            }
        )
    )
    for _, spec in rendered.pod_specs():
        pod = spec["securityContext"]
        assert "runAsUser" not in pod and "runAsGroup" not in pod
        assert pod["runAsNonRoot"] is True and pod["fsGroup"] == 10001
        assert spec["containers"][0]["command"] == ["/usr/local/bin/clearscan"]
    api = only_container(rendered, "Deployment", "api")
    assert api["args"][0] == "serve"


def test_notes(default, full):
    assert "port-forward svc/clearscan 8000:80" in default.notes
    assert "https://clearscan.hospital.example.org/" in full.notes
    assert "external.metrics.k8s.io" in full.notes


def test_install_dry_run_accepts_the_full_values_and_refuses_bad_ones():
    """`helm install --dry-run=client`: the path an install takes (kubeVersion check included)."""
    h = helm()
    with h.Config(storage_driver="memory", namespace=NAMESPACE) as cfg:
        release = cfg.install(CHART, "clearscan", full_values(), dry_run="client")
        assert "kind: Deployment" in release["manifest"]
        with pytest.raises(h.HelmError, match="ReadWriteMany"):
            cfg.install(
                CHART,
                "clearscan",
                with_values(**{"persistence.accessMode": "ReadWriteOnce"}),
                dry_run="client",
            )


# --- values that cannot work --------------------------------------------------------------

BAD_VALUES = {
    "rwo-claim-with-replicas": (
        with_values(**{"persistence.accessMode": "ReadWriteOnce", "worker.enabled": False}),
        r"ReadWriteOnce .* up to 2 pods.*ReadWriteMany",
    ),
    "rwo-claim-with-api-and-worker": (
        with_values(**{"persistence.accessMode": "ReadWriteOnce", "api.replicas": 1}),
        r"ReadWriteOnce .* up to 2 pods",
    ),
    "rwo-claim-with-autoscaling": (
        with_values(
            **{
                "persistence.accessMode": "ReadWriteOncePod",
                "api.replicas": 1,
                "worker.enabled": False,
                "api.autoscaling.enabled": True,
            }
        ),
        r"ReadWriteOncePod .* up to 6 pods",
    ),
    "empty-image-tag": (with_values(**{"image.tag": ""}), r"/image/tag.*minLength"),
    "no-image-tag": (with_values(**{"image.tag": None}), r"/image.*missing propert.*tag"),
    "s3-without-bucket": (with_values(**{"storage.s3.enabled": True}), r"storage.s3.bucket"),
    "blobs-in-emptydirs": (
        with_values(**{"persistence.enabled": False}),
        r"blobs would live in each pod's own emptyDir",
    ),
    "unknown-key": (with_values(**{"api.replica": 3}), r"/api.*additional propert.*replica"),
    "no-queue": (with_values(**{"worker.queues": []}), r"/worker/queues"),
    "zero-gpus": (
        with_values(**{"gpuWorker.enabled": True, "gpuWorker.gpu.count": 0}),
        r"/gpuWorker/gpu/count",
    ),
    "autoscaling-min-above-max": (
        with_values(
            **{
                "worker.autoscaling.enabled": True,
                "worker.autoscaling.minReplicas": 5,
                "worker.autoscaling.maxReplicas": 2,
            }
        ),
        r"worker.autoscaling.minReplicas \(5\) is above maxReplicas \(2\)",
    ),
    "ingress-without-host": (
        with_values(**{"ingress.enabled": True, "ingress.host": ""}),
        r"ingress.host is required",
    ),
    "no-secret-named": (
        with_values(**{"secrets.existingSecret": ""}),
        r"secrets.databaseUrl.secret or secrets.existingSecret must name a Secret",
    ),
    "secret-in-config": (
        with_values(**{"config": {"CLEARSCAN_SECRET_KEY": "x" * 40}}),
        r"config.CLEARSCAN_SECRET_KEY is a secret: .* secrets.secretKey",
    ),
    "setting-the-chart-owns": (
        with_values(**{"config": {"CLEARSCAN_ENVIRONMENT": "development"}}),
        r"config.CLEARSCAN_ENVIRONMENT is set by the chart",
    ),
    "shutdown-grace-above-termination-grace": (
        with_values(**{"config": {"CLEARSCAN_SHUTDOWN_GRACE_SECONDS": 30}}),
        r"CLEARSCAN_SHUTDOWN_GRACE_SECONDS \(30\) must stay below "
        r"api.terminationGracePeriodSeconds \(30\)",
    ),
    "worker-concurrency-above-the-cli-limit": (
        with_values(**{"worker.concurrency": 65}),
        r"/worker/concurrency",
    ),
    "not-a-setting": (
        with_values(**{"config": {"LOG_LEVEL": "debug"}}),
        r"LOG_LEVEL.* does not match pattern",
    ),
    "bad-access-mode": (
        with_values(**{"persistence.accessMode": "ReadWriteEverywhere"}),
        r"/persistence/accessMode",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_fail_with_a_clear_message(case):
    values, message = BAD_VALUES[case]
    h = helm()
    with pytest.raises(h.HelmError) as caught:
        render(values)
    assert re.search(message, str(caught.value), re.DOTALL), str(caught.value)


def test_full_values_file_is_the_one_tested():
    assert FULL_VALUES.is_file()
    assert full_values()["gpuWorker"]["enabled"] is True
