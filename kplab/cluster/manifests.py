"""Ordinary Kubernetes YAML in, checked objects out.

Documents are kept as plain dicts (what `kubectl get -o yaml` prints), because that is what a
learner reads and what the state directory stores; `model()` turns one into the `kubernetes`
client's model (V1Service, V1Pod, V1Deployment, V1EndpointSlice) when code wants typed access.

Two entry points, two contracts:
* `load()` parses and checks shape only: what `kplab render` needs (objects as given).
* `Admission.admit()` is the API server's part for `kplab apply`: strict validation
  (kplab.cluster.validation: unknown fields, types, required fields, enums), defaults,
  allocation of ClusterIPs / NodePorts / LoadBalancer IPs like the API server. Every error is
  one line naming file, object and field (ManifestError).
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kplab.cluster import validation
from kplab.cluster.options import meant
from kplab.errors import ManifestError

KINDS = {
    ("v1", "Service"): "V1Service",
    ("v1", "Pod"): "V1Pod",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("discovery.k8s.io/v1", "EndpointSlice"): "V1EndpointSlice",
}
NODEPORT_RANGE = (30000, 32767)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_POD_NAME = 63  # a pod becomes netns kplab-<lab>-<pod>; keep it a DNS label
LAB_NAMESPACES = re.compile(r"^(net|outside|node-[0-9]+)$")  # the lab's own netns names beside the pods'


@dataclass
class Doc:
    source: str  # file name, or "<inline>"
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", ""))

    @property
    def key(self) -> str:
        md = self.body.get("metadata") or {}
        return f"{md.get('namespace') or 'default'}/{md.get('name', '')}"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.key}" if self.kind else self.key

    def error(self, message: str, field: str = "") -> ManifestError:
        return ManifestError(message, source=self.source, obj=self.label, field=field)


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark is not None else ""
    return f"not valid YAML{where}: {getattr(e, 'problem', None) or str(e).splitlines()[0]}"


SAFE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's: 10,000 Services parse in seconds, not a minute


def _read(source: str | Path | dict[str, Any]) -> tuple[str, list[Any]]:
    if isinstance(source, dict):
        return "<inline>", [source]
    text = str(source)
    if isinstance(source, Path) or ("\n" not in text and not text.lstrip().startswith(("{", "apiVersion"))):
        path = Path(text)
        if not path.exists():
            raise ManifestError(_missing_file(path))
        try:
            return str(path), list(yaml.load_all(path.read_text(), Loader=SAFE))
        except yaml.YAMLError as e:
            raise ManifestError(_yaml_problem(e), source=str(path)) from None
    try:
        return "<inline>", list(yaml.load_all(text, Loader=SAFE))
    except yaml.YAMLError as e:
        raise ManifestError(_yaml_problem(e), source="<inline>") from None


def load(sources: Iterable[str | Path | dict[str, Any]]) -> list[Doc]:
    """Parse files / YAML text / dicts into Docs of known kinds (Lists are flattened)."""
    docs: list[Doc] = []
    for src in sources:
        name, bodies = _read(src)
        stack = [b for b in bodies if b is not None]
        while stack:
            body = stack.pop(0)
            if not isinstance(body, dict):
                raise ManifestError("a document is not a mapping", source=name)
            if body.get("kind") == "List" or str(body.get("kind", "")).endswith("List"):
                stack[0:0] = list(body.get("items") or [])
                continue
            doc = Doc(name, body)
            if not body.get("apiVersion") or not body.get("kind"):  # as kubectl: "apiVersion not set"
                missing = "apiVersion" if not body.get("apiVersion") else "kind"
                wants = {k: v for v, k in KINDS}.get(body.get("kind"), "v1, apps/v1 or discovery.k8s.io/v1")
                raise doc.error(f"not set: every object needs apiVersion and kind (here apiVersion: {wants})"
                                if missing == "apiVersion" else "not set: every object needs apiVersion and kind "
                                "(Service, Pod, Deployment or EndpointSlice)", missing)
            if (body.get("apiVersion"), body.get("kind")) not in KINDS:
                known = ", ".join(f"{k} ({v})" for v, k in KINDS)
                near = meant(str(body.get("kind")), [k for _, k in KINDS])
                raise doc.error(f"unknown kind {body.get('apiVersion')}/{body.get('kind')}{near}: kplab reads {known}")
            md = body.setdefault("metadata", {})
            if not md.get("name"):
                raise doc.error("every object needs a name", "metadata.name")
            md.setdefault("namespace", "default")
            _lists_are_lists(doc)
            model(doc)  # shape check through the kubernetes models
            docs.append(doc)
    return docs


def _missing_file(path: Path) -> str:
    """"no such file" with where it was looked for, and the nearest name that does exist."""
    import difflib

    where = path.resolve().parent
    near = difflib.get_close_matches(path.name, [p.name for p in where.glob("*.y*ml")], n=1) if where.is_dir() else []
    hint = f": did you mean {path.parent / near[0]}?" if near else (
        f" (looked in {where}; relative paths start from {Path.cwd()})")
    return f"no such file: {path}{hint}"


_api_client = None
LIST_FIELDS = {  # where a mapping written for a list is an easy slip; the models' own error is unreadable
    "Service": ["spec.ports"],
    "Pod": ["spec.containers"],
    "Deployment": ["spec.template.spec.containers"],
    "EndpointSlice": ["endpoints", "ports"],
}


def _lists_are_lists(doc: Doc) -> None:
    for path in LIST_FIELDS.get(doc.body.get("kind", ""), []):
        value: Any = doc.body
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        items = value if isinstance(value, list) else []
        if path.endswith("containers"):  # and each container's ports
            for i, c in enumerate(items):
                if isinstance(c, dict) and isinstance(c.get("ports"), dict):
                    raise doc.error("a list, not a mapping: write `ports: [{containerPort: 8080}]`",
                                    f"{path}[{i}].ports")
        if isinstance(value, dict):
            example = {"ports": "ports: [{port: 80, targetPort: 8080}]", "containers": "containers: [{name: web, image: echo}]",
                       "endpoints": "endpoints: [{addresses: [10.244.1.5]}]"}.get(path.rsplit(".", 1)[-1], "")
            raise doc.error(f"a list, not a mapping: put each item after a `- `{f', e.g. `{example}`' if example else ''}",
                            path)


def model(doc: Doc | dict[str, Any]) -> Any:
    """The kubernetes client model of a document (V1Service, ...)."""
    global _api_client
    from kubernetes.client import ApiClient

    body = doc.body if isinstance(doc, Doc) else doc
    if _api_client is None:
        _api_client = ApiClient()
    try:
        return _api_client._ApiClient__deserialize(body, KINDS[(body["apiVersion"], body["kind"])])
    except (ValueError, TypeError) as e:
        d = doc if isinstance(doc, Doc) else Doc("<inline>", body)
        found = validation.type_problems(body)  # the same check on the whole object: full field paths
        raise d.error("; ".join(found) if found else str(e).replace("`", "'").splitlines()[0]) from None


def to_dict(obj: Any) -> dict[str, Any]:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# Admission: what the API server does for `kubectl apply`.
# ---------------------------------------------------------------------------------------------


@dataclass
class Network:
    """The lab's address plan, checked for overlaps once."""

    service_cidr: str = "10.96.0.0/16"
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr: str = "172.18.0.0/24"
    lb_pool: str = "172.18.255.0/24"

    def check(self) -> None:
        nets = {k: ipaddress.ip_network(v) for k, v in vars(self).items()}
        names = list(nets)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if nets[a].overlaps(nets[b]):
                    raise ManifestError(f"CIDR overlap: {a} {nets[a]} overlaps {b} {nets[b]}: choose disjoint ranges")


def _hash_pick(key: str, size: int, taken: Callable[[int], bool], first: int = 0) -> int:
    """A stable, spread-out choice like the API server's random one, probing linearly."""
    start = int(hashlib.sha256(key.encode()).hexdigest(), 16) % size
    for i in range(size):
        cand = first + (start + i) % size
        if not taken(cand):
            return cand
    raise ManifestError("the range is exhausted")


@dataclass
class Admission:
    network: Network
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # existing, by ns/name
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # existing, by ns/name

    def __post_init__(self) -> None:
        # who holds each allocation, so admitting a Service probes in O(1) instead of rescanning all
        self._ips: dict[str, str] = {}
        self._ports: dict[int, str] = {}
        self._lbs: dict[str, str] = {}
        for key, svc in self.services.items():
            self._index(key, svc)

    def _index(self, key: str, svc: dict[str, Any]) -> None:
        spec = svc.get("spec") or {}
        if spec.get("clusterIP") and spec["clusterIP"] != "None":
            self._ips[spec["clusterIP"]] = key
        for p in spec.get("ports") or []:
            if p.get("nodePort"):
                self._ports[int(p["nodePort"])] = key
        if spec.get("healthCheckNodePort"):
            self._ports[int(spec["healthCheckNodePort"])] = key
        for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            if i.get("ip"):
                self._lbs[i["ip"]] = key

    def _unindex(self, key: str) -> None:
        old = self.services.get(key)
        if old is None:
            return
        for table in (self._ips, self._ports, self._lbs):
            for k in [k for k, owner in table.items() if owner == key]:
                del table[k]

    def admit(self, doc: Doc) -> Doc:
        """Validate and default one document; Services get their allocations."""
        validation.check(doc.body, doc.source, doc.label)
        body = copy.deepcopy(doc.body)
        out = Doc(doc.source, body)
        name = body["metadata"]["name"]
        if not DNS_LABEL.match(name) or len(name) > MAX_POD_NAME:
            raise out.error(f"name {name!r} must be a DNS label of at most {MAX_POD_NAME} characters "
                            "(it names a network namespace)", "metadata.name")
        if doc.kind == "Service":
            self._admit_service(out)
        elif doc.kind in ("Deployment", "Pod"):
            self._check_pod_template(out)
        if doc.kind == "Pod":
            self._check_pod_name(out)
        return out

    def _check_pod_name(self, doc: Doc) -> None:
        """Each pod is the netns kplab-<lab>-<pod>, beside the lab's own: pod names are unique per lab.

        Refused rather than renamed: the netns name is what learners type (`kplab exec POD`,
        `ip netns exec kplab-<lab>-POD`), so one name must mean one pod.
        """
        name = doc.body["metadata"]["name"]
        if LAB_NAMESPACES.match(name):
            raise doc.error(f"{name!r} names one of the lab's own network namespaces (kplab-<lab>-{name}); "
                            "pods, nodes, `net` and `outside` share one set of names: choose another", "metadata.name")
        for key in self.pods:
            ns, other = key.split("/", 1)
            if other == name and key != doc.key:
                raise doc.error(f"a Pod named {name!r} exists in namespace {ns!r}: each pod is a network namespace "
                                f"named after it (kplab-<lab>-{name}), so pod names are unique across a lab's "
                                "namespaces: choose another", "metadata.name")
        self.pods[doc.key] = doc.body

    def _check_pod_template(self, doc: Doc) -> None:
        spec = doc.body.get("spec") or {}
        prefix = "spec.template.spec" if doc.kind == "Deployment" else "spec"
        pod_spec = (spec.get("template") or {}).get("spec") if doc.kind == "Deployment" else spec
        if doc.kind == "Deployment":
            sel = ((spec.get("selector") or {}).get("matchLabels")) or {}
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not sel:
                raise doc.error("a Deployment needs spec.selector.matchLabels", "spec.selector")
            if any(labels.get(k) != v for k, v in sel.items()):
                raise doc.error("selector does not match template labels", "spec.template.metadata.labels")
            replicas = spec.get("replicas", 1)
            if not isinstance(replicas, int) or not 0 <= replicas <= 200:
                raise doc.error(f"replicas {replicas!r} must be 0..200 in a lab", "spec.replicas")
        for ci, c in enumerate((pod_spec or {}).get("containers") or []):
            for pi, p in enumerate(c.get("ports") or []):
                port = p.get("containerPort")
                if not isinstance(port, int) or not 1 <= port <= 65535:
                    raise doc.error(f"{port!r} is out of range 1-65535",
                                    f"{prefix}.containers[{ci}].ports[{pi}].containerPort")

    def _admit_service(self, doc: Doc) -> None:
        body, key = doc.body, doc.key
        spec = body.setdefault("spec", {})
        stype = spec.setdefault("type", "ClusterIP")
        if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            raise doc.error(f"unknown type {stype!r}", "spec.type")
        self._unindex(key)  # re-applying a Service may keep its own allocations
        svc_net = ipaddress.ip_network(self.network.service_cidr)
        ports = spec.get("ports") or []
        names = set()
        for i, p in enumerate(ports):
            where = f"spec.ports[{i}]"
            port = p.get("port")
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise doc.error(f"{port!r} is out of range 1-65535", f"{where}.port")
            p.setdefault("protocol", "TCP")
            if p["protocol"] not in ("TCP", "UDP", "SCTP"):
                raise doc.error(f"unknown protocol {p['protocol']!r}", f"{where}.protocol")
            if len(ports) > 1 and not p.get("name"):
                raise doc.error("ports must be named when a Service has more than one", f"{where}.name")
            if p.get("name") in names:
                raise doc.error(f"duplicate port name {p.get('name')!r}", f"{where}.name")
            names.add(p.get("name"))
            tp = p.setdefault("targetPort", port)
            if isinstance(tp, int) and not 1 <= tp <= 65535:
                raise doc.error(f"{tp!r} is out of range 1-65535", f"{where}.targetPort")
        cip = spec.get("clusterIP")
        if cip and cip != "None":
            try:
                addr = ipaddress.ip_address(cip)
            except ValueError:
                raise doc.error(f"{cip!r} is not an IP address", "spec.clusterIP") from None
            if addr not in svc_net:
                raise doc.error(f"{cip} is outside the service CIDR {svc_net}", "spec.clusterIP")
            if cip in self._ips:
                raise doc.error(f"{cip} is already allocated to Service {self._ips[cip]}", "spec.clusterIP")
        elif not cip and stype != "ExternalName":
            reserved = {0, 1, 10}  # network address, `kubernetes`, `kube-dns` as in a real cluster
            off = _hash_pick(key, svc_net.num_addresses - 1,
                             lambda o: o in reserved or str(svc_net.network_address + o) in self._ips)
            spec["clusterIP"] = str(svc_net.network_address + off)
        if spec.get("clusterIP") and spec["clusterIP"] != "None":
            spec["clusterIPs"] = [spec["clusterIP"]]
        lo, hi = NODEPORT_RANGE
        if stype in ("NodePort", "LoadBalancer"):
            for i, p in enumerate(ports):
                np_ = p.get("nodePort")
                if np_:
                    if not isinstance(np_, int) or not lo <= np_ <= hi:
                        raise doc.error(f"{np_!r} is outside the NodePort range {lo}-{hi}", f"spec.ports[{i}].nodePort")
                    if np_ in self._ports:
                        raise doc.error(f"{np_} is already allocated", f"spec.ports[{i}].nodePort")
                else:
                    p["nodePort"] = _hash_pick(f"{key}:{p.get('name')}:{p['protocol']}", hi - lo + 1,
                                               lambda o: lo + o in self._ports) + lo
                self._ports[p["nodePort"]] = key
            spec.setdefault("externalTrafficPolicy", "Cluster")
        else:
            for i, p in enumerate(ports):
                if p.get("nodePort"):
                    raise doc.error("nodePort is only allowed for type NodePort or LoadBalancer",
                                    f"spec.ports[{i}].nodePort")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("sessionAffinity", "None")
        if spec["sessionAffinity"] == "ClientIP":
            cfg = spec.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {})
            t = cfg.setdefault("timeoutSeconds", 10800)
            if not isinstance(t, int) or not 0 < t <= 86400:
                raise doc.error(f"{t!r} must be 1..86400", "spec.sessionAffinityConfig.clientIP.timeoutSeconds")
        for i, ip in enumerate(spec.get("externalIPs") or []):
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise doc.error(f"{ip!r} is not an IP address", f"spec.externalIPs[{i}]") from None
        for i, cidr in enumerate(spec.get("loadBalancerSourceRanges") or []):
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise doc.error(f"{cidr!r} is not a CIDR", f"spec.loadBalancerSourceRanges[{i}]") from None
        if stype == "LoadBalancer":
            if spec.get("externalTrafficPolicy") == "Local" and not spec.get("healthCheckNodePort"):
                spec["healthCheckNodePort"] = _hash_pick(f"{key}/hc", hi - lo + 1,
                                                         lambda o: lo + o in self._ports) + lo
            ingress = ((body.get("status") or {}).get("loadBalancer") or {}).get("ingress")
            if not ingress:
                pool = ipaddress.ip_network(self.network.lb_pool)
                off = _hash_pick(key, pool.num_addresses - 2,
                                 lambda o: o == 0 or str(pool.network_address + o) in self._lbs)
                body.setdefault("status", {})["loadBalancer"] = {"ingress": [{"ip": str(pool.network_address + off)}]}
        self.services[key] = body
        self._index(key, body)


def admit_all(network: Network, objects: dict[str, dict[str, Any]], sources: list[Any]) -> list[Doc]:
    """Admit every document of `sources` against the stored `objects`, all or nothing."""
    adm = Admission(network, dict(objects.get("Service", {})), dict(objects.get("Pod", {})))
    return [adm.admit(d) for d in load(sources)]
