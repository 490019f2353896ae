"""kubectl's verbs on a lab (mixed into kplab.lab.Lab): apply, delete, scale, label, annotate,
run, expose, rollout restart/status.

Each is one mutation: lock and reload the lab, change the stored objects the way the API server
would (kplab.cluster.apiserver, .edits), converge the kernel to them (kplab.cluster.converge),
save.  Each returns kubectl's line (`deployment.apps/web configured`, `pod "x" deleted`), and a
missing object raises apiserver.NotFound with kubectl's message.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kplab.cluster import apiserver, controller, deployments, edits, manifests
from kplab.cluster.apiserver import NotFound, not_found, resource
from kplab.cluster.kubeviews import KIND_OF, kind_of, writable
from kplab.cluster.offloop import off_loop
from kplab.errors import KplabWarning, LabError

T = TypeVar("T")

Source = str | Path | dict[str, Any]


def warned(fn: Callable[..., T]) -> Callable[..., T]:
    """After the verb, the lab's warnings as KplabWarning: what the CLI prints as `warning: ...`,
    shown by Python (a notebook cell) in the caller's thread (outside off_loop's worker)."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> T:
        if not isinstance(self, type):
            self.notes = ()  # each verb says its own notes, not the last one's again
        out = fn(self, *args, **kwargs)
        lab = out if callable(getattr(out, "warnings", None)) else self
        for w in lab.warnings():
            warnings.warn(w, KplabWarning, stacklevel=2)
        return out

    return wrapper


class KubectlVerbs:
    """The verbs; `notes` holds what the last apply did more laxly than an API server would."""

    data: dict[str, Any]
    notes: tuple[str, ...] = ()
    if TYPE_CHECKING:  # provided by Lab

        def _mutate(self) -> Any: ...
        def _converge(self, starting: bool = False) -> None: ...
        def _held(self) -> dict[str, Any]: ...
        def refresh(self) -> None: ...
        def pod(self, name: str) -> dict[str, Any]: ...
        def warnings(self) -> list[str]: ...

    def _object(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        found = self._held()["objects"].get(kind, {}).get(f"{namespace}/{name}")
        if found is None:
            raise NotFound([not_found(kind, name)])
        return found  # type: ignore[no-any-return]

    def _check_pins(self, docs: list[manifests.Doc]) -> None:
        for d in docs:
            if d.kind == "Pod" and (d.body.get("spec") or {}).get("nodeName") not in (
                None,
                *self.data["nodes"],
            ):
                raise d.error(
                    f"node {d.body['spec']['nodeName']!r} does not exist in this lab "
                    f"({', '.join(self.data['nodes'])})",
                    "spec.nodeName",
                )

    def _store(self, sources: list[Source], create_only: bool = False) -> list[str]:
        """Admit (all or nothing), store, converge; kubectl's line per object."""
        docs = manifests.admit_all(manifests.Network(**self.data["network"]), self.data["objects"], sources)
        self._check_pins(docs)
        lines, notes, now = [], [], time.time()
        for d in docs:
            if create_only and d.key in self.data["objects"].get(d.kind, {}):
                plural = apiserver.RESOURCES[d.kind][0]
                raise LabError(f'{plural} "{d.body["metadata"]["name"]}" already exists')
            verb, note = apiserver.store(self.data["objects"], d.kind, d.key, d.body, now)
            lines.append(f"{resource(d.kind)}/{d.body['metadata']['name']} {verb}")
            notes += [note] if note else []
        self._converge()
        self.notes = tuple(notes)
        return lines

    @warned
    @off_loop
    def apply(self, *sources: Source) -> list[str]:
        """kubectl apply: admit, store, converge; `deployment.apps/web configured` per object."""
        with self._mutate():
            return self._store(list(sources))

    @off_loop
    def delete(self, *sources: Source, ignore_not_found: bool = False) -> list[str]:
        """kubectl delete -f: what exists goes at once (pods' namespaces too); the rest is NotFound.
        As `kubectl delete svc web` does, `lab.delete("svc", "web")` deletes by kind and names."""
        if _kind_and_names(sources):
            kind = kind_of(str(sources[0]))
            writable(kind, "delete")
            return self.delete_objects(kind, [str(s) for s in sources[1:]], ignore_not_found=ignore_not_found)
        targets = [(d.kind, d.key, d.source) for d in manifests.load(sources)]
        return self._delete(targets, ignore_not_found)

    @off_loop
    def delete_objects(
        self, kind: str, names: list[str], namespace: str = "default", ignore_not_found: bool = False
    ) -> list[str]:
        """kubectl delete KIND NAME...: KIND is Pod, Service, Deployment or EndpointSlice."""
        return self._delete([(kind, f"{namespace}/{n}", "") for n in names], ignore_not_found)

    def _delete(self, targets: list[tuple[str, str, str]], ignore_not_found: bool) -> list[str]:
        done, missing = [], []
        with self._mutate():
            for kind, key, source in targets:
                name = key.split("/", 1)[1]
                if self.data["objects"].get(kind, {}).pop(key, None) is not None:
                    done.append(f'{resource(kind)} "{name}" deleted')
                elif not ignore_not_found:
                    where = f'error when deleting "{source}": ' if source and source != "<inline>" else ""
                    missing.append(where + not_found(kind, name))
            if done:
                self._converge()
        if missing:
            raise NotFound(missing, done)
        return done

    @off_loop
    def set_ready(self, pod: str, ready: bool = True, terminating: bool = False) -> None:
        """Flip a pod's readiness (and terminating state): its EndpointSlice follows."""
        with self._mutate():
            ann = self.pod(pod)["metadata"].setdefault("annotations", {})
            ann[controller.READY_ANN] = "true" if ready or terminating else "false"
            ann[controller.TERMINATING_ANN] = "true" if terminating else "false"
            self._converge()

    @off_loop
    def scale(self, deployment: str, replicas: int, namespace: str = "default") -> str:
        """kubectl scale: the Deployment's pods come (or go at once); slices and rules follow."""
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise LabError(f"replicas must be a whole number, not {replicas!r}: lab.scale({deployment!r}, 4) "
                           f"or `kplab scale deployment {deployment} --replicas 4`")
        if not 0 <= replicas <= 200:
            raise LabError(f"{replicas} replicas: a lab allows 0 to 200 per Deployment (each pod is a network "
                           "namespace on this machine)")
        with self._mutate():
            self._object("Deployment", deployment, namespace)["spec"]["replicas"] = replicas
            self._converge()
        return f"deployment.apps/{deployment} scaled"

    @off_loop
    def label(
        self,
        kind: str,
        name: str,
        changes: dict[str, str | None],
        overwrite: bool = False,
        namespace: str = "default",
        annotate: bool = False,
    ) -> str:
        """kubectl label/annotate (value None removes the key): a pod moves in or out of Services at once."""
        with self._mutate():
            obj = self._object(kind, name, namespace)
            changed = edits.change_metadata(obj, "annotations" if annotate else "labels", changes, overwrite)
            if changed:
                self._converge()
        what = f"{resource(kind)}/{name}"
        if annotate:
            return f"{what} annotated"
        if not changed:
            return f"{what} not labeled"
        return f"{what} {'unlabeled' if all(v is None for v in changes.values()) else 'labeled'}"

    @off_loop
    def run(
        self,
        name: str,
        port: int | None = None,
        labels: dict[str, str | None] | None = None,
        namespace: str = "default",
        image: str = edits.ECHO_IMAGE,
    ) -> str:
        """kubectl run NAME --port P: one Pod running the echo workload on that port."""
        body = edits.run_pod(name, port, labels, image)
        body["metadata"]["namespace"] = namespace
        with self._mutate():
            self._store([body], create_only=True)
        return f"pod/{name} created"

    @off_loop
    def expose(
        self,
        kind: str,
        name: str,
        port: int | None = None,
        target_port: str | None = None,
        type: str | None = None,
        service_name: str | None = None,
        protocol: str = "TCP",
        namespace: str = "default",
    ) -> str:
        """kubectl expose deployment|pod|service NAME: a Service selecting the same pods."""
        with self._mutate():
            body = edits.expose(
                kind, self._object(kind, name, namespace), port, target_port, type, service_name, protocol
            )
            self._store([body], create_only=True)
        return f"service/{body['metadata']['name']} exposed"

    @off_loop
    def rollout_restart(self, deployment: str, namespace: str = "default") -> str:
        """New pods come up; the old ones go through terminating (endpoints marked so), then away."""
        with self._mutate():
            deployments.restart(self._object("Deployment", deployment, namespace), time.time())
            self._converge()
        return f"deployment.apps/{deployment} restarted"

    def get(
        self,
        kind: str,
        *names: str,
        selector: str | None = None,
        output: str | None = None,
        namespace: str | None = None,
    ) -> Any:
        """kubectl get, for a notebook: the table as text (print it), or the data with output="json"."""
        from kplab.cluster.kubeviews import get

        data, text, missing = get(self, [kind, *names], selector, output, namespace)
        if missing:
            raise NotFound(missing)
        return data if output in ("json", "yaml") else text

    def describe(self, kind: str, *names: str, namespace: str | None = None) -> str:
        """kubectl describe, for a notebook (print it); a Service's shows every node's rules for it."""
        from kplab.cluster.describe import describe

        return describe(self, kind, list(names), namespace)

    def rollout_status(self, deployment: str, namespace: str = "default") -> tuple[bool, str]:
        """(done, kubectl's line) as the Deployment is now; `kplab rollout status` waits on it."""
        self.refresh()
        self._object("Deployment", deployment, namespace)
        return deployments.rollout_status(self.data["objects"], f"{namespace}/{deployment}")


def _kind_and_names(sources: tuple[Any, ...]) -> bool:
    """("svc", "web", ...): a kind word that names no file, then names (a learner typing kubectl's words)."""
    words = [s for s in sources if isinstance(s, str) and "\n" not in s and ":" not in s]
    return len(sources) >= 2 and len(words) == len(sources) and words[0].lower() in KIND_OF \
        and not Path(words[0]).exists()
