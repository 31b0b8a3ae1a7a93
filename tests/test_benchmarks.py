"""Both benchmarks run end to end in --quick mode and write their JSON / Markdown / PNG outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

METHODS = "baseline;cwd;mgd;mimic;kl;cwd+kl;builtin"


def _run(script: str, *args: str, env: dict | None = None, rc: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})})
    assert done.returncode == rc, done.stdout[-2000:] + done.stderr[-3000:]
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


def test_gain_on_a_users_data_yaml(tmp_path, data_yaml):
    """--data trains a teacher on the given dataset (cached) and records each term's size per run."""
    out = tmp_path / "gain"
    _run("gain.py", "--data", data_yaml, "--imgsz", "64", "--epochs", "2", "--teacher-epochs", "1", "--seeds", "1",
         "--first-seed", "5", "--methods", "baseline;cwd+kl;builtin:dis=2", "--out", str(out),
         env={"DISTILL_CACHE_DIR": str(tmp_path / "cache")})
    result = json.loads(out.with_suffix(".json").read_text())
    meta = result["meta"]
    assert (meta["n_train"], meta["n_val"], meta["imgsz"], meta["epochs"]) == (16, 8, 64, 2)
    assert list((tmp_path / "cache" / "teachers").glob("yolov8s-*.pt"))
    losses = result["methods"]["cwd+kl"]["runs"][0]["train_losses"]
    assert losses["cwd_loss"][0] > 0 and losses["kl_loss"][0] > 0 and losses["box_loss"][0] > 0
    assert "cwd_loss" not in result["methods"]["baseline"]["runs"][0]["train_losses"]
    assert [r["seed"] for r in result["methods"]["cwd+kl"]["runs"]] == [5]
    params = {spec: m["runs"][0]["params"] for spec, m in result["methods"].items()}
    assert params["baseline"] == {} and params["builtin:dis=2"] == {"dis": 2}
    assert params["cwd+kl"]["kl"]["weight"] == 0.5 and params["cwd+kl"]["cwd"]["tau"] == 1.0
    done = _run("gain.py", "--imgsz", "64", rc=2)
    assert "go with --data" in done.stderr


def test_overhead_quick(tmp_path):
    out = tmp_path / "overhead"
    _run("overhead.py", "--quick", "--methods", "baseline;cwd;mgd;mimic;kl;builtin", "--out", str(out))
    result = json.loads(out.with_suffix(".json").read_text())
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"baseline", "cwd", "mgd", "mimic", "kl", "builtin"}
    assert rows["baseline"]["ratio_to_plain"] == 1.0 and rows["baseline"]["teacher_forward_s"] > 0
    assert all(r["step_s"] > 0 and r["peak_mb"] > 0 and r["ratio_to_lower_bound"] > 0 for r in rows.values())
    assert result["meta"]["lower_bound_s"] > rows["baseline"]["step_s"]


def test_gain_merge_joins_same_task_runs_and_refuses_others(tmp_path):
    def result(baseline: list[float], methods: dict[str, float], epochs: int = 30) -> dict:
        runs = lambda values: {"runs": [{"seed": i, "map50_95": v, "map50": 2 * v} for i, v in enumerate(values)],  # noqa: E731
                               "map50_95_mean": sum(values) / len(values), "map50_95_std": 0.001,
                               "map50_mean": 0.1, "map50_std": 0.002}
        meta = {"task": "full", "student": "yolov8n.yaml", "teacher": "t.pt", "teacher_map50_95": 0.09, "n_train": 256, "n_val": 64,
                "imgsz": 128, "epochs": epochs, "seeds": len(baseline), "device": "cpu", "command": "gain"}
        out = {"baseline": runs(baseline)}
        for spec, v in methods.items():
            out[spec] = {**runs([v] * len(baseline)), "gain": v - 0.05, "gain_map50": 0.0, "gap_closed": 0.5,
                         "significant": True, "spread": 0.001}
        return {"meta": meta, "methods": out}

    files = {}
    for name, res in {"a": result([0.05, 0.06], {"kl": 0.07, "cwd": 0.05}), "b": result([0.05, 0.06], {"kl": 0.01, "mgd": 0.04}),
                      "c": result([0.05, 0.061], {"x": 0.1}), "d": result([0.05, 0.06], {"x": 0.1}, epochs=3)}.items():
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(res))
    out = tmp_path / "merged"
    _run("gain_merge.py", str(files["a"]), str(files["b"]), "--out", str(out))
    merged = json.loads(out.with_suffix(".json").read_text())
    assert list(merged["methods"]) == ["baseline", "cwd", "kl", "mgd"]
    assert merged["methods"]["kl"]["map50_95_mean"] == 0.07  # the first file wins
    assert "| mgd |" in out.with_suffix(".md").read_text()
    assert "baselines" in _run("gain_merge.py", str(files["a"]), str(files["c"]), "--out", str(out), rc=1).stderr
    assert "epochs differ" in _run("gain_merge.py", str(files["a"]), str(files["d"]), "--out", str(out), rc=1).stderr
