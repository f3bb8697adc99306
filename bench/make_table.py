"""Install a GPU benchmark's results: the ops table into docs/benchmarks.md and "auto"'s per-op backend choice into
fastat.

Usage: python bench/make_table.py bench/results/<date>-<device> [docs/benchmarks.md]

* `ops.md` of the results folder replaces the docs/benchmarks.md section between `<!-- bench:ops:start -->` and
  `<!-- bench:ops:end -->`, followed by the table of what "auto" picks per op (and why: geometric-mean times).
* `auto.json` of the results folder (written by `fastat bench ops --device cuda` when both fused backends ran) is
  copied to python/fastat/ops/auto_cuda.json, which `fastat.ops._dispatch.auto_order` reads at import.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUTO_TARGET = ROOT / "python" / "fastat" / "ops" / "auto_cuda.json"


def auto_markdown(auto: dict) -> str:
    lines = ["\"auto\" on CUDA, per op (chosen from this run; `python/fastat/ops/auto_cuda.json`):", "",
             "| op | auto picks | native geomean ms | triton geomean ms | cases |", "|---|---|---|---|---|"]
    for op, ev in sorted(auto.get("evidence", {}).items()):
        g = ev["geomean_ms"]
        lines.append(f"| {op} | {ev['backend']} | {g['native']:.4f} | {g['triton']:.4f} | {ev['cases']} |")
    return "\n".join(lines) + "\n"


def main(folder: str, readme: str = str(ROOT / "docs" / "benchmarks.md")) -> int:
    folder_path = Path(folder)
    table = (folder_path / "ops.md").read_text().strip()
    auto_file = folder_path / "auto.json"
    if auto_file.exists():
        auto = json.loads(auto_file.read_text())
        table += "\n\n" + auto_markdown(auto).strip()
        shutil.copyfile(auto_file, AUTO_TARGET)
        print(f"make_table: auto choice {auto.get('choice')} -> {AUTO_TARGET}")
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
