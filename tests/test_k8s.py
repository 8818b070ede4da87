"""Offline checks of the Kubernetes manifests (k8s/) and the Ray cluster-launcher config.

Each kustomization is rendered (tests/k8s_render.py, compared with the real kustomize where
one is installed); built-in kinds validate against Kubernetes' own schemas and RayCluster /
RayJob against the vendored KubeRay CRDs with unknown fields forbidden. The deployment's
rules are functions that list what breaks them; the negative tests break a rendered manifest
to show that every rule and every validator can fail.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from k8s_render import load, render
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRDS = Path(__file__).parent / "schemas" / "kuberay"
KUBERNETES = "1.33.0"
TARGETS = {
    "dev": "overlays/dev",
    "prod": "overlays/prod",
    "job": "jobs/new-cluster",
    "job-existing-cluster": "jobs/existing-cluster",
}
OVERLAYS = ["dev", "prod"]
RAY_KINDS = {"RayCluster", "RayJob"}
CREDENTIAL = re.compile(r"PASSWORD|SECRET|KEY|TOKEN", re.IGNORECASE)
HEAD = {"ray.io/node-type": "head", "ray.io/is-ray-node": "yes"}
WORKER = {"ray.io/node-type": "worker", "ray.io/is-ray-node": "yes"}
# The KubeRay operator runs in a namespace of its own and polls the Jobs API of RayJobs.
OPERATOR = {
    "namespaceSelector": {},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
}


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory) -> Path:
    """A copy of k8s/ whose secret files are the committed examples, never a user's own."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copyfile(example, example.with_suffix(""))
    return tree


@pytest.fixture(scope="session")
def rendered(k8s_tree) -> dict[str, list[dict]]:
    return {name: render(k8s_tree / path) for name, path in TARGETS.items()}


def walk(node):
    """Every mapping inside node, node included."""
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    for child in node if isinstance(node, list) else []:
        yield from walk(child)


def named(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def ray_cluster_specs(docs):
    for doc in docs:
        if doc["kind"] == "RayCluster":
            yield doc["spec"]
        elif doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
            yield doc["spec"]["rayClusterSpec"]


def ray_containers(spec: dict):
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        yield from group["template"]["spec"]["containers"]


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    """The CRD's v1 schema, with every object that lists its fields closed to others."""
    for path in CRDS.glob("*.yaml"):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if crd["spec"]["names"]["kind"] == kind:
            [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            schema = version["schema"]["openAPIV3Schema"]
            close(schema)
            return jsonschema.Draft7Validator(schema)
    raise LookupError(kind)


def close(schema: dict) -> None:
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    children = list(schema.get("properties", {}).values())
    children += [schema[k] for k in ("items", "additionalProperties")
                 if isinstance(schema.get(k), dict)]
    children += [s for k in ("allOf", "anyOf", "oneOf") for s in schema.get(k, [])]
    for child in children:
        close(child)


# The rules. Each returns the problems it finds in a list of rendered documents.

def crd_problems(docs):
    return [f"{named(doc)}: {error.json_path}: {error.message}"
            for doc in docs if doc["kind"] in RAY_KINDS
            for error in crd_validator(doc["kind"]).iter_errors(doc)]


def kubernetes_problems(docs):
    problems = []
    for doc in docs:
        if doc["kind"] not in RAY_KINDS:
            try:
                kubernetes_validate.validate(doc, KUBERNETES, strict=True)
            except (kubernetes_validate.ValidationError,
                    kubernetes_validate.SchemaNotFoundError) as error:
                problems.append(f"{named(doc)}: {str(error).splitlines()[0]}")
    return problems


def resource_problems(docs):
    """Containers, and the autoscaler that KubeRay adds, without cpu and memory bounds."""
    problems = []
    for doc in docs:
        for node in walk(doc):
            sized = [(c["name"], c.get("resources", {}))
                     for key in ("containers", "initContainers") for c in node.get(key, [])]
            if node.get("enableInTreeAutoscaling"):
                sized.append(("autoscaler", node.get("autoscalerOptions", {}).get("resources", {})))
            for name, resources in sized:
                for bound in ("requests", "limits"):
                    missing = {"cpu", "memory"} - set(resources.get(bound, {}))
                    if missing:
                        problems.append(f"{named(doc)}: {name} has no {bound} {sorted(missing)}")
    return problems


def credential_problems(docs):
    """Credentials written into a manifest instead of read from a Secret."""
    problems = []
    for doc in docs:
        for node in walk(doc):
            # An EnvVar ({name, value}), or a field shaped like one, such as redisPassword.
            fields = [(node.get("name"), node), *node.items()]
            problems += [f"{named(doc)}: {name} is written out" for name, holder in fields
                         if isinstance(name, str) and CREDENTIAL.search(name)
                         and isinstance(holder, dict) and "value" in holder]
    return problems


def exposure_problems(docs):
    """Anything that would be reachable from outside the cluster."""
    problems = [f"{named(d)} is {d['spec']['type']}" for d in docs
                if d["kind"] == "Service" and d["spec"].get("type", "ClusterIP") != "ClusterIP"]
    problems += [named(d) for d in docs if d["kind"] == "Ingress"]
    for spec in ray_cluster_specs(docs):
        head = spec["headGroupSpec"]
        types = {head.get("serviceType", "ClusterIP"),
                 head.get("headService", {}).get("spec", {}).get("type", "ClusterIP")}
        if types != {"ClusterIP"} or head.get("enableIngress"):
            problems.append(f"Ray head exposed: {types}, ingress {head.get('enableIngress')}")
    return problems


def network_problems(docs):
    """Pods that would accept traffic from outside the namespace, or from unlabelled pods."""
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]
    problems = [] if any(p["podSelector"] == {} and p["policyTypes"] == ["Ingress"]
                         and not p.get("ingress") for p in policies) else ["no default deny"]
    services = {named(d): d["spec"]["selector"] for d in docs if d["kind"] == "Service"}
    for pods, labels in [*services.items(), ("Ray head", HEAD), ("Ray workers", WORKER)]:
        rules = [rule for p in policies
                 if p["podSelector"].get("matchLabels", {}).items() <= labels.items()
                 for rule in p.get("ingress", [])]
        if not rules:
            problems.append(f"{pods}: no NetworkPolicy lets anything in")
        for rule in rules:
            ports = {p["port"] for p in rule.get("ports", [])}
            for peer in rule.get("from") or [{}]:
                if peer == OPERATOR and ports == {8265}:
                    continue
                if set(peer) != {"podSelector"}:
                    problems.append(f"{pods}: admits {peer or 'anyone'} on {ports or 'any port'}")
                elif pods in services and not (peer["podSelector"].get("matchLabels") and ports):
                    problems.append(f"{pods}: admits {peer} on {ports or 'any port'}")
    return problems


RULES = [crd_problems, kubernetes_problems, resource_problems, credential_problems,
         exposure_problems]


def test_every_manifest_file_parses():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) > 10
    for path in files:
        docs = load(path)
        assert docs, path
        assert all(isinstance(d, list) or {"apiVersion", "kind"} <= d.keys() for d in docs), path


@pytest.mark.parametrize("target", TARGETS)
def test_renders_into_the_namespace(rendered, target):
    docs = rendered[target]
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()
        assert doc["metadata"]["name"]
        assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "rlservice"


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.__name__)
@pytest.mark.parametrize("target", TARGETS)
def test_manifests_keep_the_rules(rendered, target, rule):
    assert rule(rendered[target]) == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(rendered, overlay):
    docs = rendered[overlay]
    assert network_problems(docs) == []
    sources = one(docs, "NetworkPolicy", "mlflow")["spec"]["ingress"][0]["from"]
    assert {"ray.io/is-ray-node", "rlservice/mlflow-client"} == {
        key for peer in sources for key in peer["podSelector"]["matchLabels"]}


def test_postgres_admits_mlflow_only(rendered):
    [rule] = one(rendered["dev"], "NetworkPolicy", "postgres")["spec"]["ingress"]
    mlflow = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}
    assert rule == {"from": [mlflow], "ports": [{"protocol": "TCP", "port": 5432}]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(rendered, overlay):
    """Every ConfigMap and Secret that the overlay or a job refers to is in the overlay."""
    docs = rendered[overlay]
    present = {(d["kind"], d["metadata"]["name"]) for d in docs}
    referring = docs + rendered["job"] + rendered["job-existing-cluster"]
    keys = {"configMapRef": "ConfigMap", "configMapKeyRef": "ConfigMap",
            "secretRef": "Secret", "secretKeyRef": "Secret"}
    wanted = {(kind, node[key]["name"]) for node in walk(referring)
              for key, kind in keys.items() if key in node}
    wanted |= {("Secret", spec["authOptions"]["secretName"])
               for spec in ray_cluster_specs(referring)}
    assert wanted - present == set()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_get_mlflow_and_shared_storage(rendered, overlay):
    docs = rendered[overlay]
    assert one(docs, "Service", "mlflow")["spec"]["ports"][0]["port"] == 5000
    for spec in ray_cluster_specs(docs + rendered["job"]):
        for container in ray_containers(spec):
            env = {}
            for source in container["envFrom"]:
                [(ref, target)] = source.items()
                env.update(one(docs, "ConfigMap" if ref == "configMapRef" else "Secret",
                               target["name"])["data"])
            assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
            assert env["RLSERVICE_STORAGE_PATH"].startswith("s3://")
            assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys()


@pytest.mark.parametrize("target", ["dev", "prod", "job"])
def test_ray_clusters_autoscale_with_token_auth_and_gpus(rendered, target):
    [spec] = ray_cluster_specs(rendered[target])
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    groups = spec["workerGroupSpecs"]
    assert all(0 <= g["minReplicas"] <= g["maxReplicas"] and g["maxReplicas"] >= 1 for g in groups)
    gpu = {g["groupName"]: g for g in groups for c in g["template"]["spec"]["containers"]
           if "nvidia.com/gpu" in c["resources"]["limits"]}
    assert gpu and len(gpu) < len(groups)
    for group in gpu.values():
        assert group["minReplicas"] == 0
        for container in group["template"]["spec"]["containers"]:
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            assert container["image"].endswith("-cuda")


def test_gcs_fault_tolerance_in_prod_only(rendered):
    options = one(rendered["prod"], "RayCluster")["spec"]["gcsFaultToleranceOptions"]
    assert options["redisAddress"]
    assert "secretKeyRef" in options["redisPassword"]["valueFrom"]
    assert "gcsFaultToleranceOptions" not in one(rendered["dev"], "RayCluster")["spec"]


def test_rayjob_runs_a_tuning_job_on_a_cluster_of_its_own(rendered):
    spec = one(rendered["job"], "RayJob")["spec"]
    assert spec["entrypoint"].startswith("rlservice tune run tuning/")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert spec["backoffLimit"] >= 0


def test_rayjob_job_file_exists(rendered):
    files = [arg for arg in one(rendered["job"], "RayJob")["spec"]["entrypoint"].split()
             if arg.startswith("tuning/")]
    assert files
    for name in files:
        assert (REPO / name).is_file(), f"{name} is not in the repository"


def test_rayjob_cluster_is_the_raycluster(k8s_tree, rendered):
    cluster = one(render(k8s_tree / "base"), "RayCluster")
    assert one(rendered["job"], "RayJob")["spec"]["rayClusterSpec"] == cluster["spec"]


def test_existing_cluster_variant_targets_the_raycluster(rendered):
    job = one(rendered["job"], "RayJob")["spec"]
    variant = one(rendered["job-existing-cluster"], "RayJob")["spec"]
    cluster = one(rendered["dev"], "RayCluster")
    assert variant["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    teardown = {"rayClusterSpec", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished"}
    assert not teardown & variant.keys()
    assert variant["entrypoint"] == job["entrypoint"]


def test_committed_manifests_hold_no_secret():
    secrets = [f"{path}: {doc['metadata']['name']}" for path in K8S.rglob("*.yaml")
               for doc in load(path) if isinstance(doc, dict) and doc["kind"] == "Secret"]
    assert secrets == []


def test_secrets_are_generated_from_git_ignored_files():
    sources = []
    for kustomization in K8S.rglob("kustomization.yaml"):
        for generator in yaml.safe_load(kustomization.read_text()).get("secretGenerator", []):
            assert set(generator) == {"name", "envs"}, f"{kustomization}: {generator}"
            sources += [kustomization.parent / env for env in generator["envs"]]
    assert sources
    for path in sources:
        assert path.parent.name == "secrets" and path.suffix == ".env"
        assert path.with_name(path.name + ".example").is_file()
    if not (REPO / ".git").exists() or not shutil.which("git"):
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", *map(str, sources)], cwd=REPO,
                             capture_output=True, text=True).stdout.split()
    assert {Path(p).resolve() for p in ignored} == {p.resolve() for p in sources}
    tracked = subprocess.run(["git", "ls-files", "k8s"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert [p for p in tracked if p.endswith(".env")] == []


@pytest.mark.parametrize("example", sorted(K8S.rglob("*.env.example")),
                         ids=lambda path: str(path.relative_to(K8S)))
def test_secret_examples_hold_placeholders(example):
    lines = [ln for ln in example.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines
    for line in lines:
        key, value = line.split("=", 1)
        if CREDENTIAL.search(key) or key.endswith("_URI"):
            assert "CHANGE_ME" in value, line


def kustomize_command() -> list[str] | None:
    for command in (["kustomize", "build"], ["kubectl", "kustomize"]):
        if shutil.which(command[0]):
            return command
    return None


def canonical(docs) -> list[dict]:
    """Docs in a fixed order, Secret data decoded (kustomize wraps long base64 values)."""
    docs = [{**d, "data": {k: base64.b64decode(v) for k, v in d["data"].items()}}
            if d["kind"] == "Secret" else d for d in docs]
    return sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"]))


@pytest.mark.skipif(kustomize_command() is None, reason="neither kustomize nor kubectl found")
@pytest.mark.parametrize("target", TARGETS)
def test_renderer_matches_kustomize(k8s_tree, rendered, target):
    result = subprocess.run([*kustomize_command(), str(k8s_tree / TARGETS[target])],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert canonical(yaml.safe_load_all(result.stdout)) == canonical(rendered[target])


# kustomization.yaml beside a ConfigMap cm.yaml: what the renderer must refuse, and how.
REFUSALS = {
    "unsupported field": ("namePrefix: x-", NotImplementedError, "namePrefix"),
    "hashed generated names": ("configMapGenerator: [{name: x, literals: [a=b]}]",
                               NotImplementedError, "disableNameSuffixHash"),
    "strategic merge patch": ("{resources: [cm.yaml], patches: "
                              "[{target: {kind: ConfigMap}, patch: '{data: {a: c}}'}]}",
                              NotImplementedError, "JSON6902"),
    "patch matching nothing": ("{resources: [cm.yaml], patches: "
                               "[{target: {kind: Secret}, patch: '[]'}]}",
                               ValueError, "matches no resource"),
}


@pytest.mark.parametrize("kustomization, error, message", REFUSALS.values(), ids=REFUSALS)
def test_renderer_refuses_rather_than_renders_differently(tmp_path, kustomization, error,
                                                          message):
    (tmp_path / "cm.yaml").write_text("{apiVersion: v1, kind: ConfigMap, metadata: {name: cm}}")
    (tmp_path / "kustomization.yaml").write_text(kustomization)
    with pytest.raises(error, match=message):
        render(tmp_path)


def test_ray_cluster_launcher_config_validates():
    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert any(t["resources"].get("CPU", 0) >= 1 and "GPU" not in t["resources"]
               for t in types.values())
    per_type = [t["worker_setup_commands"] for t in types.values() if "worker_setup_commands" in t]
    for commands in [config["setup_commands"], *per_type]:
        torch = [i for i, c in enumerate(commands) if c.startswith("pip install torch==2.13.0")]
        package = [i for i, c in enumerate(commands) if c == "pip install ~/rlservice"]
        assert torch and package and torch[0] < package[0], commands


def test_ray_cluster_launcher_validation_rejects_a_typo():
    config = yaml.safe_load((REPO / "cluster" / "ray-cluster.yaml").read_text())
    config["available_node_types"]["gpu"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(config))


def _container(owner: dict) -> dict:
    """The first container of a workload or of a Ray worker group."""
    return owner.get("spec", owner)["template"]["spec"]["containers"][0]


def _groups(doc: dict) -> list[dict]:
    return doc["spec"].get("rayClusterSpec", doc["spec"])["workerGroupSpecs"]


# id: (rendered target, the rule that must catch it, kind and name of the doc, how to break it)
BREAKAGES = {
    "typo in RayCluster spec": (
        "dev", crd_problems, "RayCluster", None,
        lambda d: d["spec"].update(enableInTreeAutoscalling=True)),
    "typo in a worker group": (
        "dev", crd_problems, "RayCluster", None,
        lambda d: _groups(d)[0].update(minReplica=0)),
    "typo in a Ray container": (
        "prod", crd_problems, "RayCluster", None,
        lambda d: _container(_groups(d)[0]).update(imagePullPolicyy="Always")),
    "text for a replica count": (
        "dev", crd_problems, "RayCluster", None,
        lambda d: _groups(d)[1].update(maxReplicas="4")),
    "typo in RayJob spec": (
        "job", crd_problems, "RayJob", None,
        lambda d: d["spec"].update(shutdownAfterJobFinish=True)),
    "typo in a Deployment": (
        "dev", kubernetes_problems, "Deployment", "mlflow",
        lambda d: _container(d).update(imagePullPolicyy="Always")),
    "text for a Service port": (
        "prod", kubernetes_problems, "Service", "mlflow",
        lambda d: d["spec"]["ports"][0].update(port="http")),
    "container without limits": (
        "dev", resource_problems, "Deployment", "mlflow",
        lambda d: _container(d)["resources"].pop("limits")),
    "GPU worker without memory request": (
        "job", resource_problems, "RayJob", None,
        lambda d: _container(_groups(d)[1])["resources"]["requests"].pop("memory")),
    "password written out": (
        "dev", credential_problems, "StatefulSet", "postgres",
        lambda d: _container(d)["env"].append({"name": "POSTGRES_PASSWORD", "value": "x" * 12})),
    "Redis password written out": (
        "prod", credential_problems, "RayCluster", None,
        lambda d: d["spec"]["gcsFaultToleranceOptions"].update(redisPassword={"value": "x"})),
    "NodePort Service": (
        "dev", exposure_problems, "Service", "mlflow",
        lambda d: d["spec"].update(type="NodePort")),
    "LoadBalancer Ray head": (
        "prod", exposure_problems, "RayCluster", None,
        lambda d: d["spec"]["headGroupSpec"].update(serviceType="LoadBalancer")),
    "MLflow open to every pod": (
        "dev", network_problems, "NetworkPolicy", "mlflow",
        lambda d: d["spec"]["ingress"][0].update({"from": [{"podSelector": {}}]})),
    "PostgreSQL open to other namespaces": (
        "dev", network_problems, "NetworkPolicy", "postgres",
        lambda d: d["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})),
    "Ray head open to the internet": (
        "prod", network_problems, "NetworkPolicy", "ray-head",
        lambda d: d["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})),
    "no default deny": (
        "dev", network_problems, "NetworkPolicy", "default-deny-ingress",
        lambda d: d["spec"].update(podSelector={"matchLabels": {"a": "b"}})),
}


@pytest.mark.parametrize("target, rule, kind, name, change", BREAKAGES.values(), ids=BREAKAGES)
def test_rules_catch_a_broken_manifest(rendered, target, rule, kind, name, change):
    docs = copy.deepcopy(rendered[target])
    change(one(docs, kind, name))
    assert rule(rendered[target]) == []
    assert rule(docs) != []
