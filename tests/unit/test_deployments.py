"""Static checks of the real deployments (deploy/compose, deploy/k8s, deploy/kubeflow, deploy/Dockerfile).

Nothing here can run them (no container engine): the files must parse, pin every image, set only
environment names that stream/settings.py declares, and be wired consistently (volumes, probes,
ports, topics, the pipeline's three steps).
"""

import ast
import contextlib
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from recstream.stream.settings import ENV_NAMES, FIELDS, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
K8S = DEPLOY / "k8s"
KUBEFLOW = DEPLOY / "kubeflow"
DOCKERFILE = DEPLOY / "Dockerfile"

KNOWN_NAMES = ENV_NAMES

# The command line contract (DESIGN.md): what a container may run.
CLI_COMMANDS = {"ingest", "scheduler", "updater", "scorer", "retrain", "rollback", "modelserver", "status"}
SERVICES = ("ingest", "scheduler", "updater", "scorer")
METRICS_PORT_SETTING = {service: f"{service.upper()}_METRICS_PORT" for service in SERVICES}

# Third-party images pinned by exact tag only, because no digest could be looked up when written.
NO_DIGEST_YET = {"tensorflow/serving"}
RECSTREAM_IMAGE = "recstream"

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
EXACT_TAG = re.compile(
    r"^(\d+\.\d+\.\d+([.-][A-Za-z0-9][A-Za-z0-9.-]*)?"  # 4.3.1, 3.11.15-slim-trixie
    r"|RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z)$"  # MinIO's RELEASE tags
)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def split_image(ref: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference; a registry port is not a tag."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def pinning_problem(ref: str) -> str | None:
    """Why an image reference is not pinned, or None when it is."""
    name, tag, digest = split_image(ref)
    if digest is not None and not DIGEST.search("@" + digest):
        return f"{ref}: malformed digest"
    if tag is None:
        return f"{ref}: no tag"
    if not EXACT_TAG.match(tag):
        return f"{ref}: tag {tag!r} is not an exact version"
    if not is_recstream(ref) and digest is None and name not in NO_DIGEST_YET:
        return f"{ref}: third-party image without a digest"
    return None


def containers(doc: Any):
    """Every container (and init container) spec anywhere in a Kubernetes object."""
    if isinstance(doc, dict):
        for key in ("containers", "initContainers"):
            yield from doc.get(key) or []
        for value in doc.values():
            yield from containers(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from containers(value)


def is_recstream(image: str) -> bool:
    name = split_image(image)[0]
    return name == RECSTREAM_IMAGE or name.endswith("/" + RECSTREAM_IMAGE)


def interpolate(value: Any) -> str:
    """A compose value with ${NAME:-default} -> default and ${NAME:?msg} -> a stand-in secret."""
    text = str(value)
    text = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{([A-Z0-9_]+):\?[^}]*\}", lambda m: f"test-{m.group(1).lower()}", text)


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(value) for key, value in env.items()}


def settings_from(env: dict[str, str]):
    """load_settings on a deployment's values (only declared names; pending ones are not parsed yet)."""
    declared = {key: value for key, value in env.items() if key in ENV_NAMES}
    return load_settings(environ=declared, use_stack_env=False)


@pytest.fixture(scope="module")
def compose() -> dict:
    (doc,) = load_docs(COMPOSE_FILE)
    return doc


@pytest.fixture(scope="module")
def k8s_docs() -> dict[str, list[dict]]:
    return {path.name: load_docs(path) for path in sorted(K8S.glob("*.yaml"))}


@pytest.fixture(scope="module")
def k8s_objects(k8s_docs) -> list[dict]:
    kustomization = k8s_docs["kustomization.yaml"][0]
    return [doc for name in kustomization["resources"] for doc in k8s_docs[name]]


@pytest.fixture(scope="module")
def settings_configmap(k8s_objects) -> dict[str, str]:
    (cm,) = [
        o for o in k8s_objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "recstream-settings"
    ]
    return cm["data"]


@pytest.fixture(scope="module")
def pipeline() -> tuple[dict, dict]:
    spec, platform = load_docs(KUBEFLOW / "pipeline.yaml")
    return spec, platform


def pipeline_constants() -> dict[str, Any]:
    """Module-level constants of pipeline.py, read without importing kfp."""
    tree = ast.parse((KUBEFLOW / "pipeline.py").read_text(encoding="utf-8"))
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):  # not a literal: not a constant
                constants[node.targets[0].id] = ast.literal_eval(node.value)
    return constants


# ---------------------------------------------------------------------------------------------
# every file parses
# ---------------------------------------------------------------------------------------------
YAML_FILES = sorted(p for d in (DEPLOY / "compose", K8S, KUBEFLOW) for p in d.rglob("*.y*ml"))


def test_the_deployment_files_exist():
    names = {str(p.relative_to(DEPLOY)) for p in YAML_FILES}
    assert {"compose/docker-compose.yml", "k8s/kustomization.yaml", "kubeflow/pipeline.yaml"} <= names
    for path in (DOCKERFILE, ROOT / ".dockerignore", DEPLOY / "README.md"):
        assert path.is_file(), path
    assert (DEPLOY / "compose" / ".env.example").is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"


# ---------------------------------------------------------------------------------------------
# images are pinned
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ref", "pinned"),
    [
        ("apache/kafka:4.3.1@sha256:" + "a" * 64, True),
        ("quay.io/minio/mc:RELEASE.2025-08-13T08-35-41Z@sha256:" + "b" * 64, True),
        ("tensorflow/serving:2.21.0", True),  # on the no-digest list
        ("recstream:0.1.0", True),
        ("registry.example.com:5000/recstream:0.1.0", True),
        ("apache/kafka:latest@sha256:" + "a" * 64, False),
        ("apache/kafka:4.3.1", False),  # third party without digest
        ("python:3.11-slim@sha256:" + "c" * 64, False),  # floating minor
        ("tensorflow/serving:2", False),
        ("tensorflow/serving", False),
        ("registry.example.com:5000/recstream", False),
        ("apache/kafka:4.3.1@sha256:abc", False),
    ],
)
def test_pinning_rule(ref, pinned):
    assert (pinning_problem(ref) is None) is pinned


def all_image_refs(compose, k8s_docs, pipeline) -> list[str]:
    refs = [service["image"] for service in compose["services"].values()]
    for docs in k8s_docs.values():
        refs += [c["image"] for doc in docs for c in containers(doc)]
    spec, _ = pipeline
    refs += [e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()]
    return refs


def dockerfile_bases() -> list[str]:
    text = DOCKERFILE.read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M | re.I))
    bases = []
    for ref in re.findall(r"^FROM\s+(?:--\S+\s+)*(\S+)", text, flags=re.M):
        ref = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], ref)
        if ref not in stages:
            bases.append(ref)
    return bases


def test_every_image_is_pinned(compose, k8s_docs, pipeline):
    refs = all_image_refs(compose, k8s_docs, pipeline) + dockerfile_bases()
    assert len(refs) > 10
    problems = [problem for ref in refs if (problem := pinning_problem(ref))]
    assert not problems, problems


def test_dockerfile_base_has_a_digest():
    bases = dockerfile_bases()
    assert bases and all(split_image(ref)[2] for ref in bases), bases


def test_kustomize_image_override_is_pinned(k8s_docs):
    (kustomization,) = k8s_docs["kustomization.yaml"]
    for image in kustomization.get("images", []):
        assert image.get("digest") or EXACT_TAG.match(str(image.get("newTag", ""))), image


def test_strimzi_kafka_version_is_exact(k8s_objects):
    (kafka,) = [o for o in k8s_objects if o["kind"] == "Kafka"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(kafka["spec"]["kafka"]["version"]))


# ---------------------------------------------------------------------------------------------
# environment names are settings
# ---------------------------------------------------------------------------------------------
def test_compose_env_names_are_settings(compose):
    recstream = {n: s for n, s in compose["services"].items() if is_recstream(s["image"])}
    assert set(SERVICES) <= set(recstream)
    for name, service in recstream.items():
        env = compose_env(service)
        unknown = set(env) - KNOWN_NAMES
        assert not unknown, f"{name}: {sorted(unknown)} are not settings"
        settings = settings_from(env)  # values parse, production accepts the credentials
        assert settings.production
        assert settings.metrics_host == "0.0.0.0"
        assert settings.kafka_bootstrap and settings.minio_endpoint and settings.tf_serving_grpc


def test_k8s_env_names_are_settings(k8s_docs, settings_configmap):
    assert set(settings_configmap) <= KNOWN_NAMES, sorted(set(settings_configmap) - KNOWN_NAMES)
    checked = 0
    for docs in k8s_docs.values():
        for container in (c for doc in docs for c in containers(doc) if is_recstream(c["image"])):
            names = {e["name"] for e in container.get("env", [])}
            assert names <= KNOWN_NAMES, f"{container['name']}: {sorted(names - KNOWN_NAMES)}"
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == "recstream-settings"
            checked += 1
    assert checked >= len(SERVICES)
    settings = settings_from(
        {**settings_configmap, "MINIO_ACCESS_KEY": "k" * 8, "MINIO_SECRET_KEY": "s" * 16}
    )
    assert settings.production and settings.metrics_host == "0.0.0.0"


def test_pipeline_env_names_are_settings(pipeline, settings_configmap, k8s_docs):
    spec, platform = pipeline
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secret_keys = {
        doc["metadata"]["name"]: set(doc["stringData"]) for doc in k8s_docs["secret.template.yaml"]
    }
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    for name, executor in executors.items():
        names = set()
        for source in executor["configMapAsEnv"]:
            assert source["configMapName"] == "recstream-settings"
            for pair in source["keyToEnv"]:
                assert pair["configMapKey"] in settings_configmap, pair
                names.add(pair["envVar"])
        for source in executor["secretAsEnv"]:
            for pair in source["keyToEnv"]:
                assert pair["secretKey"] in secret_keys[source["secretName"]], pair
                names.add(pair["envVar"])
        names |= {e["name"] for e in spec["deploymentSpec"]["executors"][name]["container"].get("env", [])}
        assert names <= KNOWN_NAMES, f"{name}: {sorted(names - KNOWN_NAMES)}"
        assert {"MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "RECSTREAM_ENV"} <= names


def test_dockerfile_env_names_are_settings():
    text = DOCKERFILE.read_text(encoding="utf-8")
    env_block = re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", text, flags=re.M)
    names = {m for block in env_block for m in re.findall(r"(\w+)=", block)}
    system = {"PATH", "HOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PIP_NO_CACHE_DIR"}
    system |= {"PIP_DISABLE_PIP_VERSION_CHECK"}
    assert {"RECSTREAM_HOME", "RECSTREAM_ENV", "METRICS_HOST"} <= names
    assert names - system <= KNOWN_NAMES, sorted(names - system - KNOWN_NAMES)


# ---------------------------------------------------------------------------------------------
# compose wiring
# ---------------------------------------------------------------------------------------------
ONE_SHOT = {"kafka-topics", "minio-init", "models-init"}


def test_compose_references_only_defined_volumes_networks_configs(compose):
    volumes = set(compose.get("volumes") or {})
    networks = set(compose.get("networks") or {})
    configs = compose.get("configs") or {}
    services = compose["services"]
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount["source"]
            if not source.startswith((".", "/", "~")):
                assert source in volumes, f"{name}: volume {source} is not defined"
        for network in service.get("networks", []):
            assert network in networks, f"{name}: network {network} is not defined"
        for config in service.get("configs", []):
            source = config if isinstance(config, str) else config["source"]
            assert source in configs, f"{name}: config {source} is not defined"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name}: depends on unknown {dependency}"
    for config in configs.values():
        assert (COMPOSE_FILE.parent / config["file"]).is_file(), config


def test_compose_services_have_health_restart_and_dependencies(compose):
    services = compose["services"]
    assert {"kafka", "minio", "tf-serving", *ONE_SHOT, *SERVICES} <= set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        assert service["restart"] in {"unless-stopped", "always"}, name
        assert service["healthcheck"]["test"], name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert condition["condition"] == expected, (name, dependency)
    for name in SERVICES:
        depends = set(services[name]["depends_on"])
        assert {"kafka-topics", "minio-init"} <= depends, name
    assert "tf-serving" in services["updater"]["depends_on"]
    assert "tf-serving" in services["scorer"]["depends_on"]
    assert "models-init" in services["tf-serving"]["depends_on"]


def test_compose_recstream_services_run_their_command_and_probe_their_port(compose):
    for name in SERVICES:
        service = compose["services"][name]
        assert service["command"] == [name]
        assert service["command"][0] in CLI_COMMANDS
        port = compose_env(service)[METRICS_PORT_SETTING[name]]
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/metrics" in probe, name


def test_compose_publishes_ports_on_loopback_only(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"


def test_compose_credentials_come_from_the_env_file(compose):
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for name in ("MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        values = {
            str(env[name])
            for s in compose["services"].values()
            if name in (env := s.get("environment") or {})
        }
        assert values, name
        assert all(v.startswith("${" + name + ":?") for v in values), (name, values)
    example = dict(
        line.split("=", 1)
        for line in (COMPOSE_FILE.parent / ".env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    assert {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(example)
    assert all(value == "" for value in example.values()), "the example must not carry credentials"
    assert "recstream-local-only" not in text


def test_compose_interpolation_is_explicit():
    """Only `$$` (a literal $ for the container's shell) and `${NAME...}` (from .env); a bare `$x`
    would be filled from the host's environment, and `$(` is an invalid interpolation."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    tokens = re.findall(r"\$\$|\$\{[A-Z][A-Z0-9_]*(?::[-?][^}]*)?\}|\$.?", text)
    bare = [token for token in tokens if token != "$$" and not token.startswith("${")]
    assert not bare, bare


def test_compose_creates_every_topic(compose):
    service = compose["services"]["kafka-topics"]
    script = service["command"][0]
    env = compose_env(service)
    settings = settings_from(env)
    assert set(settings.topics()) == {env[f.env] for f in FIELDS if f.env.endswith("_TOPIC")}
    for field in (f for f in FIELDS if f.env.endswith("_TOPIC")):
        partitions = settings.topics()[env[field.env]]
        expected = '"$$TOPIC_PARTITIONS"' if partitions == settings.topic_partitions else str(partitions)
        assert f'create "$${field.env}" {expected}' in script, field.env


def test_compose_shares_the_model_base_path(compose):
    services = compose["services"]
    base = compose_env(services["updater"])["MODEL_BASE_PATH"]
    assert f"models:{base}" in services["updater"]["volumes"]
    assert f"models:{base}:ro" in services["tf-serving"]["volumes"]
    assert f"--model_config_file={base}/models.config" in services["tf-serving"]["command"]
    flags = services["tf-serving"]["command"]
    assert any(flag.startswith("--model_config_file_poll_wait_seconds=") for flag in flags)


# ---------------------------------------------------------------------------------------------
# kubernetes wiring
# ---------------------------------------------------------------------------------------------
def test_kustomization_lists_every_manifest_but_the_secret_template(k8s_docs):
    (kustomization,) = k8s_docs["kustomization.yaml"]
    resources = set(kustomization["resources"])
    assert resources == set(k8s_docs) - {"kustomization.yaml", "secret.template.yaml"}


def test_secret_template_has_no_values(k8s_docs):
    secrets = k8s_docs["secret.template.yaml"]
    assert {s["metadata"]["name"] for s in secrets} == {"minio-root", "recstream-minio"}
    for secret in secrets:
        assert secret["kind"] == "Secret"
        assert not secret.get("data"), "use stringData placeholders, never encoded values"
        assert secret["stringData"] and all(v == "" for v in secret["stringData"].values()), secret


def test_deployments_have_probes_resources_and_security(k8s_objects):
    workloads = [o for o in k8s_objects if o["kind"] in {"Deployment", "StatefulSet"}]
    assert {w["metadata"]["name"] for w in workloads} >= {*SERVICES, "tf-serving", "minio"}
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{workload['metadata']['name']}/{container['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
        for container in pod["containers"]:
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert container.get("readinessProbe") and container.get("livenessProbe"), where


def test_service_probes_use_their_metrics_port(k8s_objects, settings_configmap):
    deployments = {o["metadata"]["name"]: o for o in k8s_objects if o["kind"] == "Deployment"}
    for name in SERVICES:
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert is_recstream(container["image"])
        assert container["args"] == [name] and name in CLI_COMMANDS
        (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
        assert str(port["containerPort"]) == settings_configmap[METRICS_PORT_SETTING[name]], name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}, (name, probe)
        sources = [e["valueFrom"] for e in container["env"] if "valueFrom" in e]
        secrets = {source["secretKeyRef"]["name"] for source in sources if "secretKeyRef" in source}
        assert secrets == {"recstream-minio"}
        fields = {source["fieldRef"]["fieldPath"] for source in sources if "fieldRef" in source}
        assert fields == ({"status.podIP"} if name == "scorer" else set())  # Faust's routing address
        if name == "scorer":
            (http,) = [p for p in container["ports"] if p["name"] == "http"]
            assert str(http["containerPort"]) == settings_configmap["SCORER_HTTP_PORT"]


def test_singletons_never_run_twice(k8s_objects):
    deployments = {o["metadata"]["name"]: o for o in k8s_objects if o["kind"] == "Deployment"}
    for name in ("scheduler", "updater"):
        assert deployments[name]["spec"]["replicas"] == 1
        assert deployments[name]["spec"]["strategy"]["type"] == "Recreate"


def test_k8s_topics_match_the_settings(k8s_objects, settings_configmap):
    settings = settings_from(
        {**settings_configmap, "MINIO_ACCESS_KEY": "k" * 8, "MINIO_SECRET_KEY": "s" * 16}
    )
    topics = {
        o.get("spec", {}).get("topicName", o["metadata"]["name"]): o["spec"]["partitions"]
        for o in k8s_objects
        if o["kind"] == "KafkaTopic"
    }
    assert topics == settings.topics()


def test_models_volume_is_shared_by_updater_and_tf_serving(k8s_objects, settings_configmap):
    base = settings_configmap["MODEL_BASE_PATH"]
    (pvc,) = [o for o in k8s_objects if o["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    deployments = {o["metadata"]["name"]: o for o in k8s_objects if o["kind"] == "Deployment"}
    for name in ("updater", "tf-serving"):
        pod = deployments[name]["spec"]["template"]["spec"]
        claims = {
            v["name"]
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]
        }
        assert claims, name
        mounts = [m for c in pod["containers"] for m in c["volumeMounts"] if m["name"] in claims]
        assert [m["mountPath"] for m in mounts] == [base], name
    (serving,) = deployments["tf-serving"]["spec"]["template"]["spec"]["containers"]
    assert f"--model_config_file={base}/models.config" in serving["args"]


# ---------------------------------------------------------------------------------------------
# kubeflow pipeline
# ---------------------------------------------------------------------------------------------
STEPS = {"update-data": "data", "train": "train", "publish": "publish"}


def test_pipeline_has_the_three_steps_in_order(pipeline):
    spec, _ = pipeline
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == set(STEPS)
    assert "dependentTasks" not in tasks["update-data"]
    assert tasks["train"]["dependentTasks"] == ["update-data"]
    assert tasks["publish"]["dependentTasks"] == ["train"]
    for task_name, step in STEPS.items():
        task = tasks[task_name]
        assert not task["cachingOptions"].get("enableCache"), f"{task_name} must not be cached"
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert container["command"] == ["recstream"]
        assert container["args"][:3] == ["retrain", "--step", step]
        assert container["args"][0] in CLI_COMMANDS
        assert task["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_pipeline_commands_parse_with_the_cli(pipeline):
    """Each step's container runs a command the real `recstream` parser accepts, once KFP has put the
    run id (`{{$.pipeline_job_uuid}}`, a UUID) in place of the input parameter."""
    from recstream.deploy.cli import build_parser, cmd_retrain
    from recstream.retrain.steps import STEPS as RETRAIN_STEPS

    spec, _ = pipeline
    placeholder = "{{$.inputs.parameters['run_id']}}"
    run_id = str(uuid.uuid4())
    parsed = {}
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        assert container["command"] == ["recstream"]
        assert container["args"].count(placeholder) == 1, container["args"]
        argv = [run_id if arg == placeholder else arg for arg in container["args"]]
        args = build_parser().parse_args(argv)
        assert args.func is cmd_retrain
        assert args.step is not None and args.run_id == run_id  # cmd_retrain needs both
        parsed[task_name] = args.step
    assert parsed == STEPS
    assert set(parsed.values()) == set(RETRAIN_STEPS)


def test_pipeline_yaml_matches_pipeline_py(pipeline):
    """Checked without kfp: the constants of pipeline.py are what the compiled YAML holds."""
    constants = pipeline_constants()
    spec, platform = pipeline
    assert spec["pipelineInfo"]["name"] == constants["PIPELINE_NAME"]
    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"] == constants["IMAGE"]
    for name, executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        (config_map,) = executor["configMapAsEnv"]
        assert [p["envVar"] for p in config_map["keyToEnv"]] == list(constants["SETTINGS"]), name
        (secret,) = executor["secretAsEnv"]
        assert secret["secretName"] == constants["CREDENTIALS_SECRET"]
        assert [p["envVar"] for p in secret["keyToEnv"]] == list(constants["CREDENTIALS"]), name
    executors = spec["deploymentSpec"]["executors"]
    limits = {
        step: executors[f"exec-{task}"]["container"]["resources"]["resourceMemoryLimit"]
        for task, step in STEPS.items()
    }
    assert limits == {step: values[3] for step, values in constants["RESOURCES"].items()}


# ---------------------------------------------------------------------------------------------
# image build
# ---------------------------------------------------------------------------------------------
def test_dockerfile_runs_recstream_as_non_root():
    text = DOCKERFILE.read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r'^ENTRYPOINT \["recstream"\]$', text, flags=re.M)
    assert re.search(r"pip install \.", text)


def test_dockerignore_keeps_secrets_and_local_state_out():
    lines = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {".git", ".venv", ".recstream", "**/.env"} <= lines


def test_scaled_services_stay_within_the_partitions(k8s_objects, settings_configmap, compose):
    # A consumer-group member beyond the partition count owns nothing: replicas and the HPA's
    # ceiling stay at most TOPIC_PARTITIONS, and the HPAs scale only the group services.
    partitions = int(settings_configmap["TOPIC_PARTITIONS"])
    deployments = {o["metadata"]["name"]: o for o in k8s_objects if o["kind"] == "Deployment"}
    for name in ("ingest", "scorer"):
        assert 1 <= deployments[name]["spec"]["replicas"] <= partitions, name
        # Compose scales the same two: no host port or volume that replicas would fight over.
        service = compose["services"][name]
        assert (
            1
            < int(interpolate(service["deploy"]["replicas"]))
            <= int(compose_env(service)["TOPIC_PARTITIONS"])
        )
        assert "ports" not in service and "volumes" not in service and "container_name" not in service
    replicated = {name for name, service in compose["services"].items() if "deploy" in service}
    assert replicated == {"ingest", "scorer"}
    hpas = [o for o in k8s_objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == {"ingest", "scorer"}
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions
        assert hpa["spec"]["metrics"], hpa["metadata"]["name"]
