"""Strict validation of what is applied, as the API server does for `kubectl apply` today.

kubectl asks for strict field validation by default (`--validate=strict`): an unknown field
is an error, not something silently dropped.  The `kubernetes` client's models (pydantic,
`extra="forbid"`, strict types) know every field of each kind, which are required and their
types, so they do that part: `sessionAfinity`, a selector mis-indented into `spec.app`, a
port given as "80", a Service port without `port`.  What the models keep as plain strings
but the API server checks against a fixed set (the OpenAPI spec's "Possible enum values")
is the ENUMS table, for the fields the lab acts on.

Every error is one line naming file, object and each field, in the API server's words:

    svc.yaml: Service default/web: spec.sessionAfinity: unknown field (strict decoding, as `kubectl apply`)
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from kplab.errors import ManifestError

MODELS = {
    ("v1", "Service"): "V1Service",
    ("v1", "Pod"): "V1Pod",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("discovery.k8s.io/v1", "EndpointSlice"): "V1EndpointSlice",
}
_POD = {
    "spec.restartPolicy": ("Always", "OnFailure", "Never"),
    "spec.containers[].ports[].protocol": ("TCP", "UDP", "SCTP"),
}
ENUMS: dict[str, dict[str, tuple[str, ...]]] = {
    "Service": {
        "spec.type": ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"),
        "spec.sessionAffinity": ("ClientIP", "None"),
        "spec.externalTrafficPolicy": ("Cluster", "Local"),
        "spec.internalTrafficPolicy": ("Cluster", "Local"),
        "spec.ipFamilyPolicy": ("SingleStack", "PreferDualStack", "RequireDualStack"),
        "spec.ipFamilies[]": ("IPv4", "IPv6"),
        "spec.ports[].protocol": ("TCP", "UDP", "SCTP"),
    },
    "Pod": _POD,
    "Deployment": {
        "spec.strategy.type": ("Recreate", "RollingUpdate"),
        **{"spec.template." + k: v for k, v in _POD.items()},
    },
    "EndpointSlice": {
        "addressType": ("IPv4", "IPv6", "FQDN"),
        "ports[].protocol": ("TCP", "UDP", "SCTP"),
    },
}


def _model(api_version: str, kind: str) -> Any:
    return getattr(importlib.import_module("kubernetes.client"), MODELS[(api_version, kind)])


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _values(obj: Any, path: list[str], prefix: str = "") -> list[tuple[str, Any]]:
    """(field path, value) for every value at `path` ("ports[]" walks a list)."""
    if not path:
        return [(prefix, obj)]
    head, rest = path[0], path[1:]
    name, is_list = head.removesuffix("[]"), head.endswith("[]")
    if not isinstance(obj, dict) or obj.get(name) is None:
        return []
    here = f"{prefix}.{name}" if prefix else name
    if not is_list:
        return _values(obj[name], rest, here)
    items = obj[name] if isinstance(obj[name], list) else []
    return [v for i, item in enumerate(items) for v in _values(item, rest, f"{here}[{i}]")]


def _hint(body: dict[str, Any], path: str) -> str:
    """A field that sits beside an empty mapping is most often mis-indented YAML."""
    parent, _, leaf = path.rpartition(".")
    obj: Any = body
    for part in parent.split(".") if parent else []:
        obj = obj.get(part) if isinstance(obj, dict) else None
    empty = [k for k, v in obj.items() if v is None and k != leaf] if isinstance(obj, dict) else []
    return f" (mis-indented? {parent + '.' if parent else ''}{empty[0]} is empty)" if empty else ""


def phrases(e: ValidationError, body: dict[str, Any], unknown: bool = True) -> list[str]:
    """A model's ValidationError as one phrase per field (`unknown`: also the unknown fields)."""
    out = []
    for err in e.errors():
        path = _path(err["loc"])
        got = err.get("input")
        if err["type"] == "extra_forbidden":
            if unknown:
                out.append(f"{path}: unknown field{_hint(body, path)}")
        elif err["type"] == "missing" or got is None:
            out.append(f"{path}: Required value")
        else:
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            out.append(f"{path}: {err['msg']}{shown}")
    return out


def type_problems(body: dict[str, Any]) -> list[str]:
    """Wrong types and missing required fields only, with full paths (unknown fields are let be:
    `kplab render` and `explain --services` read objects as given, from any cluster version)."""
    try:
        _model(body["apiVersion"], body["kind"]).model_validate(body)
    except ValidationError as e:
        return phrases(e, body, unknown=False)
    return []


def problems(body: dict[str, Any]) -> list[str]:
    """What the API server would refuse in one object, one phrase per field."""
    out: list[str] = []
    try:
        _model(body["apiVersion"], body["kind"]).model_validate(body)
    except ValidationError as e:
        out += phrases(e, body)
    for field, allowed in ENUMS.get(body["kind"], {}).items():
        for path, value in _values(body, field.split(".")):
            if value not in allowed:
                supported = ", ".join(f'"{a}"' for a in allowed)
                out.append(f'{path}: Unsupported value: "{value}": supported values: {supported}')
    return out


def check(body: dict[str, Any], source: str, label: str) -> None:
    """Raise one ManifestError listing every field the API server would refuse (strict validation)."""
    found = problems(body)
    if found:
        raise ManifestError("; ".join(found) + " (strict validation, as `kubectl apply` does)",
                            source=source, obj=label)
