"""Shared set-up for the benchmarks: offline defaults, method specs, and what a result records (machine,
code version). The recipes (tasks) are in recipes.py."""

from __future__ import annotations

import hashlib
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import distill  # noqa: E402,F401  (offline defaults before ultralytics loads)


@dataclass(frozen=True)
class Method:
    """'baseline' | 'builtin[:dis=6]' | '<loss>[+<loss>][:key=value,...]', e.g. 'cwd:cwd_weight=10'."""

    spec: str

    @property
    def kind(self) -> str:
        head = self.spec.split(":", 1)[0]
        return head if head in {"baseline", "builtin"} else "distill"

    @property
    def overrides(self) -> dict[str, Any]:
        from ultralytics.cfg import smart_value

        head, _, tail = self.spec.partition(":")
        out = {k: smart_value(v) for k, v in (kv.split("=", 1) for kv in tail.split(",") if kv)}
        if self.kind == "distill":
            out["loss_type"] = head
        return out

    def train_kwargs(self, teachers: Path | list[Path]) -> dict[str, Any]:
        """Train arguments that turn a plain run into this method. With several teachers, `teachers=2` or
        `teachers=1+2` in the spec picks some of them by position (1-based); by default all teach."""
        if self.kind == "baseline":
            return {}
        overrides = self.overrides
        chosen = pick_teachers(teachers, overrides.pop("teachers", None), self.spec)
        if self.kind == "builtin":  # Ultralytics' own distillation (score-weighted feature MSE), one teacher
            if len(chosen) > 1:
                raise ValueError(f"method {self.spec!r}: Ultralytics' built-in distillation takes one teacher; add "
                                 "teachers=<n> to the spec.")
            return {"distill_model": str(chosen[0]), **overrides}
        return {"Distillation": str(chosen[0]) if len(chosen) == 1 else [str(t) for t in chosen], **overrides}


def pick_teachers(teachers: Path | list[Path], choice: Any, spec: str) -> list[Path]:
    """The teachers a method uses: all, or those `choice` names by 1-based position ('1+2', 2)."""
    teachers = teachers if isinstance(teachers, list) else [teachers]
    if choice is None:
        return teachers
    try:
        picked = [int(i) for i in str(choice).split("+")]
    except ValueError:
        raise ValueError(f"method {spec!r}: teachers={choice!r} must name teachers by position, e.g. 1 or 1+2.") from None
    if not picked or any(not 1 <= i <= len(teachers) for i in picked):
        raise ValueError(f"method {spec!r}: teachers={choice!r}, but {len(teachers)} teacher(s) are given.")
    return [teachers[i - 1] for i in picked]


def parse_methods(text: str, baseline: bool = True) -> list[Method]:
    """The ';'-separated method specs, each once, the baseline first (added when missing; left out when not
    `baseline`). ValueError for a baseline with options (it has none) or one named while left out."""
    methods = list(dict.fromkeys(Method(s.strip()) for s in text.split(";") if s.strip()))
    named = [m for m in methods if m.kind == "baseline"]
    if any(m.spec != "baseline" for m in named):
        raise ValueError(f"method {named[0].spec!r}: the baseline is plain training and takes no options.")
    if named and not baseline:
        raise ValueError("the methods name the baseline, which is left out here (--no-baseline): drop one of the two.")
    rest = [m for m in methods if m.kind != "baseline"]
    return [Method("baseline"), *rest] if baseline else rest


OUTPUT_SUFFIXES = (".json", ".md", ".png")


# Ultralytics arguments a --set may not replace: the benchmarks set them for every run, or they change what a run is
# (another mode or task, no validation curve, no best.pt, a time budget instead of epochs, a config file's recipe).
HARNESS_KEYS = ("project", "name", "exist_ok", "plots", "deterministic", "verbose", "task", "mode", "cfg", "resume",
                "time", "val", "save", "save_period")


def train_overrides(pairs: list[str], own: dict[str, str]) -> dict[str, Any]:
    """--set ['mosaic=1.0', 'lr0=0.01'] -> {'mosaic': 1.0, 'lr0': 0.01}: Ultralytics train arguments replacing a
    recipe's. ValueError on an item without '=', a key given twice, a key that is no Ultralytics argument (a typo,
    or a distillation setting: those belong to a method's spec), one of `own` ({key: the script's option that sets
    it}) or HARNESS_KEYS, and a value of the wrong type."""
    from ultralytics.cfg import check_cfg, smart_value
    from ultralytics.utils import DEFAULT_CFG_PATH, YAML

    known = YAML.load(DEFAULT_CFG_PATH)  # Ultralytics' own arguments, before distill registered any of ours
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"--set {pair!r}: write train arguments as key=value, e.g. mosaic=1.0.")
        if key in own:
            raise ValueError(f"--set {key}: use {own[key]} instead.")
        if key in HARNESS_KEYS:
            raise ValueError(f"--set {key}: the benchmark sets it for every run (or it would change what a run is); "
                             "give recipe arguments only, e.g. mosaic=1.0 or lr0=0.01.")
        if key not in known:
            raise ValueError(f"--set {key}: not an Ultralytics train argument (distillation settings go in a "
                             "method's spec, e.g. --methods 'cwd+kl:distill_weight=4').")
        if key in out:
            raise ValueError(f"--set {key}: given twice; give it once.")
        out[key] = smart_value(value)
    try:
        check_cfg(dict(out))
    except (TypeError, ValueError) as e:
        raise ValueError(f"--set: {e}") from None
    return out


def overrides_tag(overrides: dict[str, Any]) -> str:
    """'_close_mosaic=0_mosaic=1.0' for {'mosaic': 1.0, 'close_mosaic': 0}: a result name's mark of its --set,
    the same whatever order they were given in."""
    return "".join(f"_{key}={str(value).replace('/', '-')}" for key, value in sorted(overrides.items()))


def output_file(out: str | Path, ext: str) -> Path:
    """The file that the output prefix `out` names with extension `ext` (".json", ".md", ".png").

    The extension is appended, not swapped in: a dot inside the name (a weight 0.25 in a method, a teacher
    named yolov8s-0.6) is part of it, and Path.with_suffix would cut the name there, so two results would
    write one file. A prefix already ending in one of OUTPUT_SUFFIXES has that ending replaced.
    """
    out = Path(out)
    if out.suffix in OUTPUT_SUFFIXES:
        out = out.with_suffix("")
    return out.with_name(out.name + ext)


def machine(device: str | None = None) -> str:
    """CPU model and core count, or the GPU's name where `device` trains on a GPU: absolute times and even mAP
    depend on it."""
    from distill.deploy.report import cpu_name

    return cpu_name() if on_cpu(device) else torch.cuda.get_device_name(0)


def on_cpu(device: str | None) -> bool:
    """Whether Ultralytics trains on the CPU for this `device` argument (None or '': a GPU where there is one)."""
    return str(device or "").strip().lower() == "cpu" or not torch.cuda.is_available()


def machine_record(device: str | None) -> dict:
    """A result's machine: {'machine': machine(device)} plus, for CPU runs, 'cpu_capability', the vector
    instructions torch's own CPU kernels use ('AVX2', 'AVX512', ...). Two CPUs of one model name can differ in it,
    and then one seed trains to other weights on each (seen: "AMD EPYC, 2 cores" with AVX2 and, by its speed,
    AVX-512), so runs pair only within one (gain_merge.py). Equal is not proof of equal numerics (oneDNN picks
    its own kernels): a seed rerun on both stays the check."""
    return {"machine": machine(device), **({"cpu_capability": torch.backends.cpu.get_cpu_capability()}
                                           if on_cpu(device) else {})}


def other_machine(meta: dict, other: dict) -> bool:
    """Whether two results ran on other kinds of CPU (model or instruction set), so that one seed's runs in them do
    not pair. Compared only where both record the instruction set: older results named just the CPU model, which
    hid the difference, and ran other code, which the code-version checks refuse to mix with newer ones."""
    return bool(meta.get("cpu_capability") and other.get("cpu_capability")) and any(
        meta.get(k) != other.get(k) for k in ("machine", "cpu_capability"))


def machine_label(meta: dict) -> str:
    """A result's machine as its Markdown states it: 'AMD EPYC, 2 cores (AVX2)', or the bare name where the
    instruction set was not recorded (GPU runs, older results)."""
    isa = meta.get("cpu_capability")
    return meta.get("machine", "?") + (f" ({isa})" if isa else "")


# What decides a result: the package, the benchmark scripts, the presets and the pins. Results, docs and
# tests do not, so committing results or editing the README leaves the version as it is.
CODE_FILES = ("distill/**/*.py", "benchmarks/*.py", "configs/*.yaml", "pyproject.toml")


def code_version(root: Path | None = None) -> str:
    """'code-<hash>' of the files in CODE_FILES under `root` (this checkout) as they are on disk, committed
    or not: two results with the same version ran the same code."""
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha1()
    for path in sorted({p for pattern in CODE_FILES for p in root.glob(pattern) if p.is_file()}):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"code-{digest.hexdigest()[:12]}"


def command_line(script: str, argv: list[str] | None) -> str:
    """How a benchmark was run, quoted so that the line can be pasted into a shell as it is (argv None: this
    process's own arguments, as argparse reads them then)."""
    return shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def git_commit(root: Path | None = None) -> str | None:
    """The commit checked out, with '+changes' when a tracked file differs from it; None outside git.

    Untracked files (a benchmark's own output folder) do not count: `code_version` covers new code files.
    """
    root = root or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True,
                                 check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def finite(obj):
    """`obj` with NaN and infinities replaced by None, so the JSON written is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
