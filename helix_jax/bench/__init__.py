"""Benchmarks: workloads, metrics, simulated and live bench runs, reports and plots.

Sits at the end of the data flow (scheduler -> simulator or runtime -> **bench**):

* `workload`: request lengths (Azure-like generator, fixed, trace CSV) and arrival processes;
* `metrics`: streaming aggregates of a run (throughput, TTFT, TPOT, goodput);
* `runner`: every (method x scheduler x rate) case simulated, ratios of Helix to baselines;
* `live`: the same workload and metrics against a deployment through the client;
* `report` / `plots`: the rich table, results.json and PNGs.

Modules are imported directly (`from helix_jax.bench.workload import ...`); this package
imports nothing so that the simulator can use `workload` and `metrics` without cycles.
"""
