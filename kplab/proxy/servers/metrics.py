"""One node's kube-proxy metrics, as upstream's pkg/proxy/metrics registers them for its mode.

Names, help texts, buckets and labels follow upstream (metrics.go and the 1.33+ metrics
reference, where most carry an `ip_family` label); help texts get component-base's "[ALPHA] "
prefix, and no `_created` series (the Go client has none).  RegisterMetrics(mode) registers
the core set for every mode plus the mode's own.  The iptables rule-count gauges
(`sync_proxy_rules_iptables_total`/`_last`, per table) count like upstream's proxier: the
filter rules, and the nat rules written plus those of unchanged services a partial sync
skipped.  The conntrack reconciler's metrics
(kernel modes) follow the stale-UDP cleanup of each sync (kplab.proxy.stale_udp); with the
lab's cleanup off they stay at zero.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()

FAMILY = "IPv4"
SYNC_BUCKETS = [0.001 * 2**i for i in range(15)]  # ExponentialBuckets(0.001, 2, 15)
NPL_BUCKETS = ([0.0, 0.25, 0.5] + [float(i) for i in range(1, 60)] + [60.0 + 5 * i for i in range(12)]
               + [120.0 + 30 * i for i in range(7)])  # MergeBuckets(...) keeps its leading 0


class NodeMetrics:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.registry = r = CollectorRegistry()

        def hist(name: str, doc: str, buckets: list[float], labels: tuple[str, ...] = ("ip_family",)) -> Histogram:
            return Histogram(f"kubeproxy_{name}", f"[ALPHA] {doc}", labels, buckets=buckets, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"kubeproxy_{name}", f"[ALPHA] {doc}", labels, registry=r)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"kubeproxy_{name}", f"[ALPHA] {doc}", labels, registry=r)

        self.sync = hist("sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds", SYNC_BUCKETS)
        self.last_queued = gauge("sync_proxy_rules_last_queued_timestamp_seconds",
                                 "The last time a sync of proxy rules was queued", ("ip_family",))
        self.last_synced = gauge("sync_proxy_rules_last_timestamp_seconds",
                                 "The last time proxy rules were successfully synced", ("ip_family",))
        self.ep_pending = gauge("sync_proxy_rules_endpoint_changes_pending", "Pending proxy rules Endpoint changes")
        self.ep_total = counter("sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes")
        self.svc_pending = gauge("sync_proxy_rules_service_changes_pending", "Pending proxy rules Service changes")
        self.svc_total = counter("sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes")
        self.healthz = counter("proxy_healthz_total", "Cumulative proxy healthz HTTP status", ("code",))
        self.livez = counter("proxy_livez_total", "Cumulative proxy livez HTTP status", ("code",))
        self.npl = hist("network_programming_duration_seconds", "In Cluster Network Programming Latency in seconds",
                        NPL_BUCKETS)
        self.no_local = gauge("sync_proxy_rules_no_local_endpoints_total",
                              "Number of services with a Local traffic policy and no endpoints",
                              ("traffic_policy", "ip_family"))
        self.full = self.partial = self.failures = self.partial_failures = None
        if mode == "iptables":
            self.full = hist("sync_full_proxy_rules_duration_seconds",
                             "SyncProxyRules latency in seconds for full resyncs", SYNC_BUCKETS)
            self.partial = hist("sync_partial_proxy_rules_duration_seconds",
                                "SyncProxyRules latency in seconds for partial resyncs", SYNC_BUCKETS)
        if mode in ("iptables", "ipvs"):
            self.failures = counter("sync_proxy_rules_iptables_restore_failures_total",
                                    "Cumulative proxy iptables restore failures", ("ip_family",))
        self.ct_seconds = self.ct_deleted = None
        if mode in ("iptables", "ipvs", "nftables"):
            self.ct_seconds = hist("conntrack_reconciler_sync_duration_seconds",
                                   "ReconcileConntrackFlowsLatency latency in seconds", SYNC_BUCKETS)
            self.ct_deleted = counter("conntrack_reconciler_deleted_entries_total",
                                      "Cumulative conntrack flows deleted by conntrack reconciler", ("ip_family",))
        self.rules_total = self.rules_last = None
        if mode == "iptables":
            self.rules_total = gauge("sync_proxy_rules_iptables_total", "Total number of iptables rules owned by kube-proxy",
                                     ("table", "ip_family"))
            self.rules_last = gauge("sync_proxy_rules_iptables_last",
                                    "Number of iptables rules written by kube-proxy in last sync", ("table", "ip_family"))
            self.partial_failures = counter("sync_proxy_rules_iptables_partial_restore_failures_total",
                                            "Cumulative proxy iptables partial restore failures", ("ip_family",))
        if mode == "nftables":
            self.failures = counter("sync_proxy_rules_nftables_sync_failures_total",
                                    "Cumulative proxy nftables sync failures", ("ip_family",))
            counter("sync_proxy_rules_nftables_cleanup_failures_total", "Cumulative proxy nftables cleanup failures",
                    ("ip_family",))
        self.last_queued.labels(FAMILY).set_to_current_time()  # Runner.Run(), at start

    def probed(self, path: str, code: int) -> None:
        (self.healthz if path == "healthz" else self.livez).labels(str(code)).inc()

    def apply(self, event: dict[str, Any]) -> None:
        """A `queued` or `synced` event from the lab's feed (see feed.py)."""
        if event["kind"] == "queued":
            self.last_queued.labels(FAMILY).set(event["t"])
            self.svc_pending.set(event.get("service_changes", 0))
            self.ep_pending.set(event.get("endpoint_changes", 0))
            self.svc_total.inc(event.get("service_changes", 0))
            self.ep_total.inc(event.get("endpoint_changes", 0))
            return
        self.sync.labels(FAMILY).observe(event["seconds"])
        if self.full is not None and self.partial is not None:
            (self.full if event.get("full") else self.partial).labels(FAMILY).observe(event["seconds"])
        if not event.get("ok"):
            if self.failures is not None:
                self.failures.labels(FAMILY).inc()
            return
        self.last_synced.labels(FAMILY).set(event["t"])
        self.svc_pending.set(0)
        self.ep_pending.set(0)
        for latency in event.get("programming", []):
            self.npl.labels(FAMILY).observe(latency)
        for policy, n in event.get("no_local", {}).items():
            self.no_local.labels(policy, FAMILY).set(n)
        if event.get("conntrack") and self.ct_seconds is not None and self.ct_deleted is not None:
            seconds, deleted = event["conntrack"]
            self.ct_seconds.labels(FAMILY).observe(seconds)
            self.ct_deleted.labels(FAMILY).inc(deleted)
        if self.rules_total is not None and self.rules_last is not None:
            for table, (total, last) in (event.get("iptables_rules") or {}).items():
                self.rules_total.labels(table, FAMILY).set(total)
                self.rules_last.labels(table, FAMILY).set(last)
