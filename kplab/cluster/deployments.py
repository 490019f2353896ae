"""The Deployment controller (with its ReplicaSets folded in), as kube-controller-manager runs it.

    Deployment web --template hash 5d8f7c9b4q--> ReplicaSet web-5d8f7c9b4q (not stored: it is
    the pods' ownerReference) --> Pods web-5d8f7c9b4q-x2k9p

* `pod-template-hash` is a digest of the whole pod template, so any change to it (a port, a
  label, an annotation such as `rollout restart`'s restartedAt) makes a new ReplicaSet;
* a rolling update creates new pods (maxSurge) and marks old ones terminating
  (`deletionTimestamp`: their endpoints become `terminating`, kube-proxy stops sending new
  connections to them) as long as maxUnavailable allows; `Recreate` terminates all old pods
  first and creates new ones once they are gone;
* a terminating pod goes when its grace period ends (`expire`, run by whoever converges the
  lab next: the lab's terminator process waits for the earliest deadline);
* a pod whose labels stop matching the selector is released (it stays, as a bare pod) and a
  replacement is made; an orphan that matches the selector and the current hash is adopted;
* scaling down and deleting the Deployment remove pods at once (the lab's `--force`).

Pure functions over the lab's object store (plain dicts); `now` is passed in.
"""

from __future__ import annotations

import copy
import json
import math
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from kplab.cluster.controller import ALPHABET, creation_order, matches, pod_condition, suffix

HASH_LABEL = "pod-template-hash"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
DEFAULT_GRACE = 30  # seconds, as a Pod's terminationGracePeriodSeconds defaults to


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> float:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def template_hash(template: dict[str, Any]) -> str:
    """The ReplicaSet's hash: a digest of the whole template (upstream: fnv32a of the template)."""
    return suffix(json.dumps(template, sort_keys=True), 10)


def owner(pod: dict[str, Any]) -> str | None:
    """'ns/deployment' of the Deployment whose ReplicaSet controls the pod, else None."""
    md = pod["metadata"]
    for ref in md.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "ReplicaSet":
            return f"{md['namespace']}/{ref['name'].rpartition('-')[0]}"
    return None


def replica_set(pod: dict[str, Any]) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "ReplicaSet":
            return str(ref["name"])
    return None


def terminating(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def _owner_ref(rs: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": rs,
        "controller": True,
        "blockOwnerDeletion": True,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"kplab/{ns}/{rs}")),
    }


def _new_pod(pods: dict[str, Any], ns: str, rs: str, h: str, template: dict[str, Any], now: float) -> None:
    taken = {p["metadata"]["name"] for p in pods.values()}  # pod names are unique across namespaces here
    name = f"{rs}-" + "".join(secrets.choice(ALPHABET) for _ in range(5))
    while name in taken:
        name = f"{rs}-" + "".join(secrets.choice(ALPHABET) for _ in range(5))
    md = copy.deepcopy(template.get("metadata") or {})
    md.update(
        name=name,
        generateName=f"{rs}-",
        namespace=ns,
        uid=str(uuid.uuid4()),
        creationTimestamp=rfc3339(now),
        ownerReferences=[_owner_ref(rs, ns)],
    )
    md.setdefault("labels", {})[HASH_LABEL] = h
    pods[f"{ns}/{name}"] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": md,
        "spec": copy.deepcopy(template.get("spec") or {"containers": []}),
    }


def _terminate(pod: dict[str, Any], now: float) -> None:
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE)
    pod["metadata"]["deletionTimestamp"] = rfc3339(math.ceil(now + int(grace)))
    pod["metadata"]["deletionGracePeriodSeconds"] = int(grace)


def _resolve(value: Any, replicas: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        share = replicas * int(value[:-1]) / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


def _limits(spec: dict[str, Any], replicas: int) -> tuple[int, int]:
    ru = ((spec.get("strategy") or {}).get("rollingUpdate")) or {}
    surge = _resolve(ru.get("maxSurge", "25%"), replicas, True)
    unavailable = _resolve(ru.get("maxUnavailable", "25%"), replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # upstream's rule: a rollout must be able to make progress
    return surge, unavailable


def reconcile(objects: dict[str, dict[str, Any]], now: float) -> None:
    """Bring every Deployment's pods to its spec (in place), and cascade deleted Deployments."""
    pods = objects.setdefault("Pod", {})
    deps = objects.get("Deployment", {})
    for key in [k for k, p in pods.items() if owner(p) and owner(p) not in deps]:
        del pods[key]  # the Deployment is gone: its pods go at once
    for dkey, dep in sorted(deps.items()):
        _reconcile_one(pods, dkey, dep, now)


def _reconcile_one(pods: dict[str, Any], dkey: str, dep: dict[str, Any], now: float) -> None:
    ns, name = dkey.split("/", 1)
    spec = dep.setdefault("spec", {})
    template = spec.get("template") or {}
    h = template_hash(template)
    rs = f"{name}-{h}"
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    for p in pods.values():  # release pods that left the selector, adopt orphans that fit it
        labels = p["metadata"].get("labels") or {}
        if owner(p) == dkey and (
            not matches(selector, labels) or labels.get(HASH_LABEL) != str(replica_set(p)).rpartition("-")[2]
        ):
            p["metadata"]["ownerReferences"] = [
                r for r in p["metadata"]["ownerReferences"] if not r.get("controller")
            ]
        elif (
            owner(p) is None
            and p["metadata"]["namespace"] == ns
            and not terminating(p)
            and matches(selector, labels)
            and labels.get(HASH_LABEL) == h
        ):
            p["metadata"].setdefault("ownerReferences", []).append(_owner_ref(rs, ns))
    replicas = int(spec.get("replicas", 1))
    surge, unavailable = _limits(spec, replicas)
    recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
    while True:
        mine = sorted((p for p in pods.values() if owner(p) == dkey), key=creation_order)
        new = [p for p in mine if not terminating(p) and replica_set(p) == rs]
        old = [p for p in mine if not terminating(p) and replica_set(p) != rs]
        if len(new) > replicas:  # scaled down: the newest pods go at once
            for p in new[replicas:]:
                del pods[f"{ns}/{p['metadata']['name']}"]
            continue
        if recreate:
            for p in old:
                _terminate(p, now)
            if not any(terminating(p) for p in mine):
                for _ in range(replicas - len(new)):
                    _new_pod(pods, ns, rs, h, template, now)
            break
        room = min(replicas - len(new), replicas + surge - len(new) - len(old))
        if room > 0:
            for _ in range(room):
                _new_pod(pods, ns, rs, h, template, now)
            continue
        ready = sum(pod_condition(p)[0] for p in new + old)
        removable = min(len(old), ready - (replicas - unavailable))
        if removable <= 0:
            break
        unready_first = sorted(old, key=lambda p: (pod_condition(p)[0], creation_order(p)))
        for p in unready_first[:removable]:
            _terminate(p, now)
    _set_status(dep, [p for p in pods.values() if owner(p) == dkey], rs)


def _set_status(dep: dict[str, Any], mine: list[dict[str, Any]], rs: str) -> None:
    active = [p for p in mine if not terminating(p)]
    updated = [p for p in active if replica_set(p) == rs]
    ready = sum(pod_condition(p)[0] for p in active)
    replicas = int(dep["spec"].get("replicas", 1))
    dep["status"] = {
        "observedGeneration": dep["metadata"].get("generation", 1),
        "replicas": len(active),
        "updatedReplicas": len(updated),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, replicas - ready),
    }


def restart(dep: dict[str, Any], now: float) -> None:
    """`kubectl rollout restart`: a new template annotation, hence a new ReplicaSet and a rollout."""
    md = dep.setdefault("spec", {}).setdefault("template", {}).setdefault("metadata", {})
    md.setdefault("annotations", {})[RESTARTED_AT] = datetime.fromtimestamp(now, UTC).isoformat(
        timespec="milliseconds"
    )


def expire(objects: dict[str, dict[str, Any]], now: float) -> list[str]:
    """Remove terminating pods whose grace period has ended; their keys."""
    pods = objects.get("Pod", {})
    gone = [
        k for k, p in pods.items() if terminating(p) and parse_time(p["metadata"]["deletionTimestamp"]) <= now
    ]
    for k in gone:
        del pods[k]
    return gone


def next_deadline(objects: dict[str, dict[str, Any]]) -> float | None:
    times = [
        parse_time(p["metadata"]["deletionTimestamp"])
        for p in objects.get("Pod", {}).values()
        if terminating(p)
    ]
    return min(times) if times else None


def rollout_status(objects: dict[str, dict[str, Any]], dkey: str) -> tuple[bool, str]:
    """(done, kubectl's line) for `rollout status`, from the pods as they are."""
    dep = objects["Deployment"][dkey]
    name = dkey.split("/", 1)[1]
    rs = f"{name}-{template_hash(dep['spec'].get('template') or {})}"
    mine = [p for p in objects.get("Pod", {}).values() if owner(p) == dkey and not terminating(p)]
    replicas = int(dep["spec"].get("replicas", 1))
    updated = [p for p in mine if replica_set(p) == rs]
    available = sum(pod_condition(p)[0] for p in updated)
    wait = f'Waiting for deployment "{name}" rollout to finish: '
    if len(updated) < replicas:
        return False, wait + f"{len(updated)} out of {replicas} new replicas have been updated..."
    if len(mine) > len(updated):
        return False, wait + f"{len(mine) - len(updated)} old replicas are pending termination..."
    if available < len(updated):
        return False, wait + f"{available} of {len(updated)} updated replicas are available..."
    return True, f'deployment "{name}" successfully rolled out'
