"""videogpt_fast benchmarks: every fast path against the reference, in one process.

``python -m benchmarks.run [--quick] [--device cpu|cuda] [--out DIR]`` writes results.json,
report.md and PNG plots; ``python -m benchmarks.gpu_check`` runs everything that needs a GPU (build,
GPU tests, every case) in time-limited phases that fit one 8-minute device call;
``python -m pytest benchmarks`` runs the same cases under pytest-benchmark.
"""
