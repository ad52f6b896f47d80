"""Side-by-side measurements (design.md §1): not pass/fail tests.

Each ``bench_*`` module measures one edgeship path against the bare library it wraps, in the same
process and run, so the ratio between them is meaningful on whatever machine runs it. ``python -m
benchmarks`` (``make bench``) runs them all, prints a table of ratios against their targets and
writes ``bench-results/bench.json``.
"""
