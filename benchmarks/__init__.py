"""Benchmarks run on demand (`make bench`, `python -m benchmarks`), never in CI timing.

Each suite measures ratios inside one process and run (these machines are noisy), writes
`benchmarks/results/<suite>.json` with the machine, commit and settings, and regenerates the
tables of `docs/benchmarks.md`.
"""
