"""Both benchmarks run end to end in --quick mode and write their JSON / Markdown / PNG outputs."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

METHODS = "baseline;cwd;mgd;mimic;kl;cwd+kl;builtin"


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def test_gain_quick(tmp_path):
    out = tmp_path / "gain"
    _run("gain.py", "--quick", "--seeds", "2", "--methods", METHODS, "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    assert list(result["methods"]) == METHODS.split(";")
    for spec, summary in result["methods"].items():
        assert len(summary["runs"]) == 2 and {r["seed"] for r in summary["runs"]} == {0, 1}
        if spec != "baseline":
            assert {"gain", "gap_closed", "significant", "spread"} <= set(summary)
    assert "| builtin |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 1000


def test_overhead_quick(tmp_path):
    out = tmp_path / "overhead"
    _run("overhead.py", "--quick", "--methods", "baseline;cwd;mgd;mimic;kl;builtin", "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"baseline", "cwd", "mgd", "mimic", "kl", "builtin"}
    assert rows["baseline"]["ratio_to_plain"] == 1.0 and rows["baseline"]["teacher_forward_s"] > 0
    assert all(r["step_s"] > 0 and r["peak_mb"] > 0 and r["ratio_to_lower_bound"] > 0 for r in rows.values())
    assert result["meta"]["lower_bound_s"] > rows["baseline"]["step_s"]
