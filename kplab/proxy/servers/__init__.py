"""kube-proxy's servers on every node, for real: what a load balancer and Prometheus talk to.

Upstream kube-proxy serves, besides programming rules:

* a healthCheckNodePort server per `externalTrafficPolicy: Local` LoadBalancer Service
  (pkg/proxy/healthcheck/service_health.go): 200 while the node has local ready endpoints,
  503 otherwise, so that cloud load balancers skip nodes with nothing to send to;
* the proxy health server on :10256, `/healthz` and `/livez` (proxy_health.go): 503 once a
  queued change has waited longer than twice the sync period without a successful sync;
* metrics on :10249 (pkg/proxy/metrics/metrics.go): the `kubeproxy_sync_proxy_rules_*` family,
  `kubeproxy_network_programming_duration_seconds`, and `/proxyMode`.

In a lab one process serves every node (`agent.py`, like the echo workload: a socket made after
entering a node's netns stays there).  The lab feeds it after every sync (`feed.py`, from
`Lab._sync_all`), with numbers computed from the sync's ProxyState (`report.py`, pure).
"""
