"""videogpt_fast benchmarks: every fast path against the reference, in one process.

``python -m benchmarks.run [--quick] [--device cpu|cuda] [--out DIR]`` writes results.json,
report.md and PNG plots; ``python -m pytest benchmarks`` runs the same cases under pytest-benchmark.
"""
