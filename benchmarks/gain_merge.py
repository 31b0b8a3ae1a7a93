#!/usr/bin/env python
"""Pool several `gain.py` results of one task into one table: other methods (e.g. weight sweeps) and
extra seeds (`--first-seed` slices) alike, then recompute every statistic over the pooled seeds.

The runs must be the same task, the same teacher and the same code: equal task fields, equal teacher
weights (their fingerprints), an equal recorded code version (commit, Ultralytics, torch) and, for CPU runs,
one kind of CPU (its model and the instruction set torch uses: a seed trains to other weights on another); files
written before code versions or fingerprints were recorded pool with each other, and with newer ones only under
--allow-unrecorded. A slice run with --no-baseline pools with the baselines of another file. Training is
deterministic per seed, so a seed that two files both ran must give the same mAP in both; the merge refuses otherwise. A single file is re-summarised.

    python benchmarks/gain_merge.py benchmarks/results/gain_bccd.json benchmarks/results/gain_bccd_seeds3-5.json \\
        --out benchmarks/results/gain_bccd_all
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from gain import summarise_all, versus_problem, write_outputs  # noqa: I001  (gain sets sys.path and offline defaults through common)
from common import command_line, machine_label, other_machine, output_file

SAME_TASK = ("task", "student", "teacher_map50_95", "n_train", "n_val", "imgsz", "epochs")
SAME_CODE = ("code_version", "ultralytics", "torch")
UNRECORDED = "unrecorded"


def prints_of(meta: dict) -> list[str] | None:
    """The teachers' weight fingerprints a result records, or None (results written before they were)."""
    return meta.get("teacher_fingerprints") or None


def merge(results: list[dict], sources: list[str], allow_unrecorded: bool = False, versus: str | None = None) -> dict:
    """One result with the union of methods and seeds (every other method paired against `versus` too, if given);
    SystemExit when the runs are not comparable."""
    first = results[0]["meta"]
    taught = [(prints_of(r["meta"]), s) for r, s in zip(results, sources) if prints_of(r["meta"])]
    untaught = [s for r, s in zip(results, sources) if not prints_of(r["meta"])]
    if taught and untaught and not allow_unrecorded:
        raise SystemExit(f"{untaught[0]} does not record its teacher's weights, {taught[0][1]} does: they cannot be shown "
                         "to share a teacher. Re-run it, or pass --allow-unrecorded to pool it anyway.")
    # a method's runs pair only with baselines trained on one kind of CPU (GPU runs: the teacher fingerprints tell)
    on_cpus = [(r["meta"], s) for r, s in zip(results, sources) if r["meta"].get("cpu_capability")]
    for meta, source in on_cpus:
        if other_machine(meta, on_cpus[0][0]):
            raise SystemExit(f"{source} ran on another machine than {on_cpus[0][1]} ({machine_label(meta)} vs "
                             f"{machine_label(on_cpus[0][0])}): one seed trains to other weights there, so its runs "
                             "do not pair with these. Run a pool's slices on one kind of machine.")
    for result, source in zip(results, sources):
        meta = result["meta"]
        missing = [k for k in SAME_CODE if meta.get(k) is None]
        if missing and not allow_unrecorded:
            raise SystemExit(f"{source} does not record its {', '.join(missing)}: it cannot be shown to be the same "
                             "code as the others. Re-run it, or pass --allow-unrecorded to pool it anyway.")
        differ = [k for k in SAME_TASK if meta.get(k) != first.get(k)]
        # the train arguments (e.g. a --set mosaic=1.0); older results may not record them
        differ += ["recipe"] if None not in (meta.get("recipe"), first.get("recipe")) and meta["recipe"] != first["recipe"] else []
        if differ:
            raise SystemExit(f"{source} is a different task from {sources[0]} ({', '.join(differ)} differ).")
        prints = prints_of(meta)
        if prints and prints != taught[0][0]:
            raise SystemExit(f"{source} was taught by other teacher weights than {taught[0][1]} (fingerprints {prints} vs "
                             f"{taught[0][0]}): a gain depends on its teacher, so these do not pool.")
        differ = [k for k in SAME_CODE if meta.get(k, UNRECORDED) != first.get(k, UNRECORDED)]
        if differ:
            raise SystemExit(f"{source} ran other code than {sources[0]} ({', '.join(differ)} differ: "
                             f"{[meta.get(k, UNRECORDED) for k in differ]} vs {[first.get(k, UNRECORDED) for k in differ]}).")
    runs: dict[str, dict[int, dict]] = {}
    origin: dict[tuple[str, int], str] = {}
    for result, source in zip(results, sources):
        for spec, summary in result["methods"].items():
            for row in summary["runs"]:
                known = runs.setdefault(spec, {}).get(row["seed"])
                if known is not None and not math.isclose(known["map50_95"], row["map50_95"], abs_tol=1e-9):
                    raise SystemExit(f"{spec} seed {row['seed']} gave {known['map50_95']} in "
                                     f"{origin[spec, row['seed']]} but {row['map50_95']} in {source}: not the same "
                                     "recipe, or training is not deterministic here.")
                if known is None or len(row) > len(known):  # the fuller record (equal-time, kept run) of one run
                    runs[spec][row["seed"]], origin[spec, row["seed"]] = row, source
    if "baseline" not in runs:
        raise SystemExit("no baseline runs in the given files.")
    ordered = {"baseline": runs.pop("baseline"), **dict(sorted(runs.items()))}
    lists = {spec: [by_seed[s] for s in sorted(by_seed)] for spec, by_seed in ordered.items()}
    for spec, rows in lists.items():
        unpaired = sorted({r["seed"] for r in rows} - set(ordered["baseline"]))
        if unpaired:
            raise SystemExit(f"{spec} ran seeds {unpaired} that no baseline ran: its gain could not be paired.")
    noted = [(src, r["meta"]["note"]) for r, src in zip(results, sources) if r["meta"].get("note")]
    if len({note for _, note in noted}) == 1 and len(noted) == len(results):  # slices of one benchmark: say it once
        notes = [noted[0][1]]
    else:
        notes = [f"{src}: {note}" for src, note in noted]
    meta = {**first, "seed_list": sorted({s for by_seed in ordered.values() for s in by_seed}),
            "command": command_line("gain_merge.py", sources),
            "sources": [r["meta"]["command"] for r in results], "commits": [r["meta"].get("commit") for r in results],
            "note": " ".join(notes)}
    meta.pop("seeds", None), meta.pop("first_seed", None), meta.pop("commit", None)
    recorded = {r["meta"]["versus"] for r in results if r["meta"].get("versus")}
    if versus is None and len(recorded) == 1:  # what the slices were run with, unless the merge names another
        versus = recorded.pop()
    meta.pop("versus", None)
    if versus is not None:
        if problem := versus_problem(versus, list(lists)):
            raise SystemExit(f"--versus {versus}: {problem}")
        meta["versus"] = versus
    meta.pop("teacher_fingerprints", None)  # only what every file shows: recorded and unrecorded files pool unrecorded
    if taught and not untaught:
        meta["teacher_fingerprints"] = taught[0][0]
    for key in SAME_CODE:
        meta.setdefault(key, UNRECORDED)
    if len(on_cpus) < len(results):  # only what every file shows
        meta.pop("cpu_capability", None)
    return {"meta": meta, "methods": summarise_all(lists, first["teacher_map50_95"], versus)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="gain.py JSON files of the same task")
    p.add_argument("--out", required=True, help="output prefix: writes .json, .md, .png")
    p.add_argument("--allow-unrecorded", action="store_true",
                   help="pool files written before gain.py recorded its code version or teacher fingerprints (marked "
                   "'unrecorded')")
    p.add_argument("--versus", default=None, metavar="SPEC", type=str.strip,
                   help="also pair every other method against this one, seed for seed (e.g. kl; default: the one the "
                        "results were run with, if they agree)")
    a = p.parse_args(argv)
    merged = merge([json.loads(Path(f).read_text()) for f in a.results], a.results, a.allow_unrecorded, a.versus)
    merged["meta"]["command"] = command_line("gain_merge.py", argv)  # with its options, as it ran
    write_outputs(merged, Path(a.out))
    print(output_file(Path(a.out), ".md").read_text())
    return merged


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
