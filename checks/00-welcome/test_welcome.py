"""00 · welcome: the first two checks, on things the learner changes with one call each."""

from kplab.grading.probes import answers, ready_endpoints


def test_four_replicas(lab):
    """`web` has four ready endpoints, and requests from `client` reach all four.

    Hint: `lab.scale("web", 4)`, or `kplab scale web --replicas 4` in a terminal.
    """
    ready = ready_endpoints(lab, "web")
    assert len(ready) == 4, f"web has {len(ready)} ready endpoints, not 4"
    res = answers(lab, "client", "web:80", n=60)
    missing = set(ready) - set(res.backends)
    assert res.ok == 60 and not missing, f"{res.failed} requests failed; never reached: {sorted(missing)}"


def test_api_answers(lab):
    """A Service `api` exists, and requests from `client` to api:80 are answered by its two pods.

    Hint: `lab.apply("manifests/api.yaml")` from a notebook in labs/, or
    `kplab apply -f labs/manifests/api.yaml` from the repository.
    """
    assert "api" in [s.metadata.name for s in lab.services()], "there is no Service named api"
    res = answers(lab, "client", "api:80", n=20)
    assert res.ok == 20, f"{res.failed} of 20 requests to api:80 failed"
    assert len(res.backends) == 2, f"api was answered by {sorted(res.backends)}, expected its 2 pods"
