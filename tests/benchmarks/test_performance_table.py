"""benchmarks/performance_table.py, which prints the README's Performance table, on a tiny budget."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_table_has_a_measured_row_per_command_with_its_comparison():
    out = subprocess.run([sys.executable, "benchmarks/performance_table.py", "--quick"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| `--preset")]
    assert len(rows) == 8
    for row in rows:
        command, steps, gflop, _, peak, kernels, same_run = [cell.strip() for cell in row.strip("|").split("|")]
        assert float(steps) > 0 and float(gflop) > 0 and re.fullmatch(r"\d+% of \d+", peak)
        figures = {name: int(value) for name, value in (k.split() for k in kernels.split(" / "))}
        assert "aten" in figures and int(peak.split()[-1]) == max(figures.values()), row  # the peak is the best kernel
        expected = ("learner " if "--compare-reference" in command else "overhead " if "--baseline" in command
                    else "sequential runs" if "--num-seeds" in command else None)
        assert (expected in same_run) if expected else same_run == "", row
