"""Benchmarks: workloads, metrics, simulated and live bench runs, reports and plots.

Sits at the end of the data flow (scheduler -> simulator or runtime -> **bench**):

* `metrics`: streaming aggregates of a run (throughput, TTFT, TPOT, goodput);
* `runner`: every (method x scheduler x rate) case simulated, ratios of Helix to baselines;
* `live`: the same workload and metrics against a deployment through the client;
* `report` / `plots`: the rich table, results.json and PNGs.

Request lengths and arrival processes live in `helix_jax.workload` (the planner uses them
too). Modules are imported directly (`from helix_jax.bench.metrics import ...`); this package
imports nothing so that the simulator can use `metrics` without cycles.
"""
