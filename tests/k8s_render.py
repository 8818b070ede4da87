"""Render a kustomization as `kustomize build` does, for the part of kustomize that k8s/ uses,
so the tests need no kustomize binary: none comes from PyPI, and Debian's kubectl (1.20)
bundles a kustomize too old for these files. test_k8s.py compares the result with
`kustomize build` or `kubectl kustomize` wherever one is installed.

Supported: resources (files and directories), namespace, labels (metadata labels only),
images (newName, newTag; applied to every containers/initContainers list, as kustomize does),
configMapGenerator (literals, envs) and secretGenerator (envs), both with
disableNameSuffixHash, and patches (inline or from a file, with a kind/name target) in
JSON6902 form with add, replace and remove. Anything else raises NotImplementedError rather
than render differently, and a patch that matches nothing raises too.

Usage: python tests/k8s_render.py k8s/overlays/dev
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import yaml

FIELDS = {
    "apiVersion", "kind", "resources", "namespace", "labels", "images", "patches",
    "generatorOptions", "configMapGenerator", "secretGenerator",
}
CLUSTER_SCOPED = {"Namespace"}


def render(directory: str | Path) -> list[dict]:
    """The resources that `kustomize build directory` would print."""
    root = Path(directory)
    spec = yaml.safe_load((root / "kustomization.yaml").read_text())
    _only(spec, FIELDS, root)
    docs = []
    for entry in spec.get("resources", []):
        path = root / entry
        docs += render(path) if path.is_dir() else load(path)
    docs += _generate(root, spec)
    for patch in spec.get("patches", []):
        _patch(root, patch, docs)
    for doc in docs:
        meta = doc["metadata"]
        if "namespace" in spec and doc["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = spec["namespace"]
        for label in spec.get("labels", []):
            _only(label, {"pairs"}, root)
            meta.setdefault("labels", {}).update(label["pairs"])
        for image in spec.get("images", []):
            _only(image, {"name", "newName", "newTag"}, root)
            _set_image(doc, image)
    return docs


def load(path: Path) -> list:
    """The YAML documents of a file; a JSON round trip unshares the objects of YAML anchors."""
    docs = yaml.safe_load_all(path.read_text())
    return [json.loads(json.dumps(doc)) for doc in docs if doc is not None]


def _only(mapping: dict, allowed: set, where: Path) -> None:
    unknown = set(mapping) - allowed
    if unknown:
        raise NotImplementedError(f"{where}: unsupported kustomize fields {sorted(unknown)}")


def _generate(root: Path, spec: dict) -> list[dict]:
    generators = [("ConfigMap", g) for g in spec.get("configMapGenerator", [])]
    generators += [("Secret", g) for g in spec.get("secretGenerator", [])]
    if generators and not spec.get("generatorOptions", {}).get("disableNameSuffixHash"):
        raise NotImplementedError(f"{root}: generated names need disableNameSuffixHash")
    docs = []
    for kind, generator in generators:
        _only(generator, {"name", "envs"} | ({"literals"} if kind == "ConfigMap" else set()), root)
        lines = list(generator.get("literals", []))
        for env in generator.get("envs", []):
            lines += [ln for ln in (root / env).read_text().splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")]
        if any("=" not in ln for ln in lines):
            raise NotImplementedError(f"{root}: {generator['name']}: lines must be KEY=VALUE")
        data = dict(ln.split("=", 1) for ln in lines)
        doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": generator["name"]}}
        if kind == "Secret":
            doc["type"] = "Opaque"
            data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        doc["data"] = data
        docs.append(doc)
    return docs


def _patch(root: Path, patch: dict, docs: list[dict]) -> None:
    _only(patch, {"path", "patch", "target"}, root)
    _only(patch["target"], {"kind", "name"}, root)
    text = patch["patch"] if "patch" in patch else (root / patch["path"]).read_text()
    operations = yaml.safe_load(text)
    if not isinstance(operations, list):
        raise NotImplementedError(f"{root}: only JSON6902 patches are supported")
    targets = [doc for doc in docs if all(
        (doc["kind"] if key == "kind" else doc["metadata"]["name"]) == value
        for key, value in patch["target"].items())]
    if not targets:
        raise ValueError(f"{root}: patch target {patch['target']} matches no resource")
    for doc in targets:
        for operation in operations:
            _json6902(doc, operation)


def _json6902(doc: dict, operation: dict) -> None:
    op, path = operation["op"], operation["path"]
    if op not in {"add", "replace", "remove"}:
        raise NotImplementedError(f"JSON6902 op {op!r}")
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key = int(last) if isinstance(node, list) else last
    if op != "add" and (key >= len(node) if isinstance(node, list) else key not in node):
        raise ValueError(f"JSON6902 {op}: {path} does not exist")
    if op == "remove":
        del node[key]
    elif op == "add" and isinstance(node, list):
        node.insert(key, operation["value"])
    else:
        node[key] = operation["value"]


def _set_image(node, image: dict) -> None:
    if isinstance(node, list):
        for item in node:
            _set_image(item, image)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    name, tag = _split_image(container["image"])
                    if name == image["name"]:
                        tag = image.get("newTag", tag)
                        container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
            _set_image(value, image)


def _split_image(reference: str) -> tuple[str, str]:
    """("registry:5000/name", "tag") from "registry:5000/name:tag"."""
    if ":" not in reference.rsplit("/", 1)[-1]:
        return reference, ""
    name, _, tag = reference.rpartition(":")
    return name, tag


if __name__ == "__main__":
    print(yaml.safe_dump_all(render(sys.argv[1]), sort_keys=False), end="")
