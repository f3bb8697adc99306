"""Put a benchmark results table into the README between the `<!-- bench:ops -->` markers.

Usage: python bench/make_table.py bench/results/<date>-<device> [README.md]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def main(folder: str, readme: str = "README.md") -> int:
    table = (Path(folder) / "ops.md").read_text().strip()
    text = Path(readme).read_text()
    start, end = "<!-- bench:ops:start -->", "<!-- bench:ops:end -->"
    if start not in text or end not in text:
        print(f"make_table: {readme} has no {start} ... {end} section", file=sys.stderr)
        return 1
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    Path(readme).write_text(pattern.sub(lambda _: f"{start}\n{table}\n{end}", text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
