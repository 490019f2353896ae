"""Admission refuses what the API server refuses (issue 20 item 13), one line naming file, object, field."""

from __future__ import annotations

import warnings

import pytest

from kplab.cluster import manifests
from kplab.errors import KplabWarning, ManifestError

WEB = """apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
"""


def admit(text: str, tmp_path) -> list[manifests.Doc]:
    f = tmp_path / "svc.yaml"
    f.write_text(text)
    return manifests.admit_all(manifests.Network(), {}, [f])


@pytest.mark.parametrize(("edit", "says"), [
    (("  selector:", "  sessionAfinity: ClientIP\n  selector:"),
     "Service default/web: spec.sessionAfinity: unknown field (strict validation"),
    (("  selector: {app: web}", "  sessionAffinity: clientIP\n  selector: {app: web}"),
     'spec.sessionAffinity: Unsupported value: "clientIP": supported values: "ClientIP", "None"'),
    (("  selector: {app: web}", "  type: NodePort\n  externalTrafficPolicy: local\n  selector: {app: web}"),
     'spec.externalTrafficPolicy: Unsupported value: "local": supported values: "Cluster", "Local"'),
    (("  selector: {app: web}", "  selector:\n  app: web"),
     "spec.app: unknown field (mis-indented? spec.selector is empty)"),
    (("port: 80,", "port: '80',"), "spec.ports[0].port: Input should be a valid integer (got '80')"),
    (("port: 80,", ""), "spec.ports[0].port: Required value"),
    (("targetPort: http", "targetPort: http, protocol: tcp"), 'spec.ports[0].protocol: Unsupported value: "tcp"'),
    (("  selector: {app: web}", "  selector: {app: web}\n  internalTrafficPolicy: local"),
     'spec.internalTrafficPolicy: Unsupported value: "local"'),
])
def test_admission_refuses_what_the_api_server_refuses(tmp_path, edit, says):
    admit(WEB, tmp_path)  # the good one passes
    bad = WEB.replace(*edit)
    assert bad != WEB
    with pytest.raises(ManifestError) as e:
        admit(bad, tmp_path)
    assert says in str(e.value) and str(e.value).startswith(f"{tmp_path / 'svc.yaml'}: Service default/web: ")
    assert "\n" not in str(e.value)


def test_every_field_is_named_in_one_line(tmp_path):
    bad = WEB.replace("  selector: {app: web}", "  sessionAfinity: ClientIP\n  type: nodeport\n  selector: {app: web}")
    with pytest.raises(ManifestError) as e:
        admit(bad, tmp_path)
    assert "spec.sessionAfinity: unknown field" in str(e.value) and 'spec.type: Unsupported value: "nodeport"' in str(e.value)


def test_deployments_pods_and_slices_are_checked_too(tmp_path):
    dep = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  strategy: {type: rollingUpdate}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: x, ports: [{containerPort: 8080, protcol: UDP}]}]
"""
    with pytest.raises(ManifestError) as e:
        admit(dep, tmp_path)
    assert 'spec.strategy.type: Unsupported value: "rollingUpdate"' in str(e.value)
    assert "spec.template.spec.containers[0].ports[0].protcol: unknown field" in str(e.value)


def test_the_python_api_warns_as_the_cli_does(recwarn):
    """`warning: service/x: selector ... matches no pod` was printed by the CLI only."""
    from kplab.cluster.kubectl import warned

    class Verbs:
        def warnings(self):
            return ["service/x: selector app=x matches no pod, so the Service has no endpoints"]

        @warned
        def apply(self):
            return ["service/x created"]

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert Verbs().apply() == ["service/x created"]
    assert [(w.category, str(w.message)) for w in seen] == [
        (KplabWarning, "service/x: selector app=x matches no pod, so the Service has no endpoints")]
