"""kplab's benchmarks, importable (notebook 06) and behind `kplab bench` (kplab.cli.bench).

    startup     lab up/down against a plain `ip` script building the same topology
    sync        a mode's full sync and add-one-Service sync against its raw loader, same input
    latency     connect() time through a mode for 100..10,000 Services, against the pod IP
    throughput  requests/s and latency through a mode, against the pod IP directly

Each measures its baseline in the same run and reports ratios to it; each returns a plain
dict that `report.show()` prints and `report.save()` writes to bench/results/.  `plot` draws
the curves, `compare` fills the seed's "Which mode should you use?" table from the results.
"""
