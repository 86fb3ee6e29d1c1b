"""The subset of kustomize that deploy/kubernetes uses, in Python, so tests render the overlays offline.

Supported: ``resources`` (files, or directories holding a kustomization.yaml),
``components`` (directories whose kustomization.yaml is ``kind: Component``),
``patches`` given as a ``path`` to a JSON 6902 patch (a YAML list of
operations) with a ``target`` of ``kind`` and ``name``, and ``images``
(``name`` with ``newName`` and/or ``newTag``, what ``kustomize edit set image``
writes) for the containers of pod templates. Order as in kustomize:
resources, then components, then the kustomization's own patches, then images. Any other
field is refused, so a manifest that starts using more of kustomize fails the
tests until this renderer (or the test's approach) grows with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonpatch
import yaml

KUSTOMIZATION = "kustomization.yaml"
SUPPORTED = {"apiVersion", "kind", "resources", "components", "patches", "images"}
IMAGE_KEYS = {"name", "newName", "newTag"}
TARGET_KEYS = {"kind", "name"}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render exactly; the message names the file."""


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of one file, empty ones left out."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization(directory: Path, kind: str) -> dict[str, Any]:
    path = directory / KUSTOMIZATION
    spec = yaml.safe_load(path.read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{path}: fields {sorted(unknown)} are not supported by tests/kustomize.py")
    if spec.get("kind") != kind:
        raise KustomizeError(f"{path}: expected kind {kind}, got {spec.get('kind')}")
    return spec


def _apply_patches(directory: Path, patches: list[dict[str, Any]], objects: list[dict[str, Any]]) -> None:
    for patch in patches:
        target = patch.get("target", {})
        if set(patch) != {"path", "target"} or set(target) != TARGET_KEYS:
            raise KustomizeError(f"{directory / KUSTOMIZATION}: a patch needs exactly path and target (kind, name)")
        operations = jsonpatch.JsonPatch(yaml.safe_load((directory / patch["path"]).read_text()))
        matched = [
            i
            for i, obj in enumerate(objects)
            if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]
        ]
        if not matched:
            raise KustomizeError(f"{directory / patch['path']}: no {target['kind']}/{target['name']} to patch")
        for i in matched:
            objects[i] = operations.apply(objects[i])


def _resources(directory: Path, spec: dict[str, Any]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = (directory / resource).resolve()
        objects += _render(path, "Kustomization") if path.is_dir() else load_documents(path)
    return objects


def _render(directory: Path, kind: str) -> list[dict[str, Any]]:
    spec = _kustomization(directory, kind)
    objects = _resources(directory, spec)
    for component in spec.get("components", []):
        where = (directory / component).resolve()
        part = _kustomization(where, "Component")
        objects += _resources(where, part)
        _apply_patches(where, part.get("patches", []), objects)
    _apply_patches(directory, spec.get("patches", []), objects)
    for image in spec.get("images", []):
        _set_image(directory, image, objects)
    return objects


def _set_image(directory: Path, image: dict[str, str], objects: list[dict[str, Any]]) -> None:
    """Rename or retag every pod-template container whose image is ``image["name"]`` (any tag)."""
    if "name" not in image or not set(image) <= IMAGE_KEYS:
        raise KustomizeError(f"{directory / KUSTOMIZATION}: an image needs name, and newName and/or newTag only")
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                new_tag = image.get("newTag", tag)
                container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")


def render(directory: Path) -> list[dict[str, Any]]:
    """What ``kubectl kustomize directory`` prints, as Python objects."""
    return _render(directory, "Kustomization")
