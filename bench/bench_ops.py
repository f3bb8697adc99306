"""Op benchmark script: `python bench/bench_ops.py --device cuda --out bench/results` (same as `fastat bench ops`).

Writes <out>/<date>-<device>/ops.{csv,json,md,png}; `python bench/make_table.py <that folder>` puts the table in docs/benchmarks.md.
"""

from fastat.cli import main

if __name__ == "__main__":
    import sys

    raise SystemExit(main(["bench", "ops", *sys.argv[1:]]))
