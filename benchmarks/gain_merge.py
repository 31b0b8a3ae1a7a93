#!/usr/bin/env python
"""Merge several `gain.py` results of the same task into one table (e.g. a main run and weight sweeps).

Training is deterministic per seed, so runs of the same recipe give the same baseline, seed for seed;
the merge checks that (and the task) and refuses otherwise. Where two files hold the same method,
the first one given wins. Methods are listed by name.

    python benchmarks/gain_merge.py benchmarks/results/gain.json benchmarks/results/gain_sweep.json \\
        --out benchmarks/results/gain_all
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gain import write_outputs  # noqa: I001  (gain sets sys.path and offline defaults through common)

SAME = ("task", "student", "teacher_map50_95", "n_train", "n_val", "imgsz", "epochs", "seeds", "first_seed")


def merge(results: list[dict], sources: list[str]) -> dict:
    """One result dict with the union of the methods; SystemExit when the runs are not comparable."""
    first = results[0]
    base = [r["map50_95"] for r in first["methods"]["baseline"]["runs"]]
    for result, source in zip(results[1:], sources[1:]):
        differ = [k for k in SAME if result["meta"].get(k, 0) != first["meta"].get(k, 0)]
        if differ:
            raise SystemExit(f"{source} is a different task from {sources[0]} ({', '.join(differ)} differ).")
        other = [r["map50_95"] for r in result["methods"]["baseline"]["runs"]]
        if len(other) != len(base) or not all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(base, other)):
            raise SystemExit(f"the baselines of {sources[0]} and {source} differ ({base} vs {other}): "
                             "not the same recipe, or a different Ultralytics/torch version.")
    union: dict[str, dict] = {}
    for result in results:
        for spec, summary in result["methods"].items():
            union.setdefault(spec, summary)
    methods = {"baseline": union.pop("baseline"), **dict(sorted(union.items()))}
    notes = [f"{src}: {r['meta']['note']}" for r, src in zip(results, sources) if r["meta"].get("note")]
    meta = {**first["meta"], "command": "python benchmarks/gain_merge.py " + " ".join(sources),
            "sources": [r["meta"]["command"] for r in results], "note": " ".join(notes)}
    return {"meta": meta, "methods": methods}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="gain.py JSON files of the same task")
    p.add_argument("--out", required=True, help="output prefix: writes .json, .md, .png")
    a = p.parse_args(argv)
    merged = merge([json.loads(Path(f).read_text()) for f in a.results], a.results)
    write_outputs(merged, Path(a.out))
    print(Path(a.out).with_suffix(".md").read_text())
    return merged


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
