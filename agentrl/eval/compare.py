"""``agentrl compare STUDY.yaml``: run every (method x seed x env variant x axis level) of a
study, reusing finished runs, then write the report.

Results folder layout (``--out``, default ``runs/studies/<study>`` or ``runs/studies/<study>-smoke``)::

    study.json                       which study this folder belongs to, and its run keys
    models/<env>/seed<k>/            tiny models created from model.init
    sft/<env>/seed<k>/               shared SFT warm starts (trainer.total_steps=0 runs)
    runs/<env>/[<levels>/]<method>/seed<k>/   method runs (agentrl train output folders)
    report/                          report.md, report.html, CSVs, plots/

Resuming: a run whose ``summary.json`` exists and whose saved ``config.yaml`` equals its
resolved config is reused; a run folder without ``summary.json`` continues from its latest
checkpoint (``run.resume``); a run whose saved config differs (the study was edited) is
deleted and trained again, and so are the method runs of a warm start that had to be redone.
A folder holding another study's results is refused.

Committed results (another machine, a later session): only the small files of finished runs
are kept in version control (``config.yaml``, ``metrics.jsonl``, ``summary.json``, ...; see
``results/studies/.gitignore``), never models or checkpoints. A finished warm start whose
checkpoint is gone while one of its method runs has still to train is *restored*: trained
again from the same config and seed, without redoing its finished method runs; a warning
names it when its SFT loss curve then differs from the recorded one (SFT on another machine
or library version need not be bitwise the same).

Runs train one after another in this process (``jobs=1``), or in ``jobs`` worker processes;
each run sets its own ``run.num_threads``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import yaml

from agentrl.config import ConfigError, TrainConfig, from_dict

from .study import SFT_CHECKPOINT, RunSpec, Study, check_runs, expand_runs, load_study

log = logging.getLogger(__name__)

RUN_RECORD = "compare_run.json"  # wall time of the run, written by compare next to summary.json
#: Written into a warm start's folder while it is being restored (trained again for a missing
#: checkpoint): the SFT losses it had. An interrupted restore is then still a restore on the
#: next invocation, and the finished method runs of that warm start stay reused.
RESTORE_RECORD = "restoring.json"


def default_out(study: Study) -> Path:
    return Path("runs") / "studies" / (f"{study.name}-smoke" if study.smoke else study.name)


def _comparable(cfg: dict[str, Any], out: Path | str) -> dict[str, Any]:
    """The parts of a resolved config that decide a run's results: ``logging`` is left out
    and the results folder's own path is replaced by a placeholder (folders can move)."""
    prefix = str(Path(out).resolve()) if isinstance(out, Path) else out

    def norm(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        if isinstance(v, str) and v.startswith(prefix):
            return "<OUT>" + v[len(prefix):]
        return v

    return norm({k: v for k, v in cfg.items() if k != "logging"})


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{where}.{k}" if where else k)]
    return [] if a == b else [f"{where}: {b!r} -> {a!r}"]


def claim_folder(out: Path, study: Study, runs: list[RunSpec]) -> None:
    """Create ``out`` for ``study`` or check that it already belongs to it. Raises ConfigError
    for a folder of another study, or a non-empty folder that is not a results folder."""
    marker = out / "study.json"
    if marker.exists():
        held = json.loads(marker.read_text())
        if held.get("identity") != study.identity:
            raise ConfigError(
                f"results folder {str(out)!r} holds the results of study {held.get('identity')!r} "
                f"(from {held.get('source')}), not {study.identity!r}; pass --out with a new folder, or remove that one"
            )
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{str(out)!r} is not empty and has no study.json, so it is not an agentrl compare results folder; pass --out with a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"identity": study.identity, "study": study.name, "smoke": study.smoke, "source": str(study.source), "runs": [r.key for r in runs]}, indent=2))


def _saved_out(saved: dict[str, Any], folder: Path, out: Path) -> str:
    """Where the results folder was when a saved config was written: its run.output_dir less
    the run's place in the folder. A results folder that was moved, or cloned from version
    control to another path, still compares equal."""
    rel = folder.resolve().relative_to(out.resolve()).as_posix()
    was = str((saved.get("run") or {}).get("output_dir") or "")
    return was[: -len(rel) - 1] if was.endswith("/" + rel) else str(out.resolve())


def run_state(run: RunSpec, out: Path, *, warn: bool = True) -> str:
    """"done" (reusable), "partial" (continue from its checkpoint), "stale" (saved config
    differs: redo; logged when ``warn``) or "new"."""
    folder = Path(run.config["run"]["output_dir"])
    saved = folder / "config.yaml"
    if not saved.exists():
        return "stale" if folder.exists() and any(folder.iterdir()) else "new"
    from agentrl.train import _saved_config

    saved_cfg = _saved_config(saved)  # resolved by today's code: a field added since then reads as its default
    diff = _differences(_comparable(run.config, out), _comparable(saved_cfg, _saved_out(saved_cfg, folder, out)))
    if diff:
        if warn:
            log.warning("run %s: config changed since it ran (%s%s); training it again", run.key, "; ".join(diff[:4]), " ..." if len(diff) > 4 else "")
        return "stale"
    return "done" if (folder / "summary.json").exists() else "partial"


def model_fingerprint(folder: str | Path) -> str | None:
    """The first 16 hex digits of the sha256 of an HF model folder's weight files
    (``*.safetensors``, in name order), or None when it has none. Two warm starts trained from
    the same config and seed on different machines can differ by floating-point drift; this
    tells them apart."""
    files = sorted(Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def train_run(config: dict[str, Any]) -> float:
    """Train one run from its resolved config; returns its wall time in seconds. Also the
    entry point of worker processes (``jobs > 1``). Writes ``compare_run.json``: the wall time,
    when it finished, and the fingerprints (:func:`model_fingerprint`) of the model a method
    run started from (``warm_start_sha256``) or of the model a warm start made
    (``model_sha256``)."""
    from agentrl import train as train_module

    folder = Path(config["run"]["output_dir"])
    method_run = int(config["trainer"]["total_steps"]) > 0
    start = model_fingerprint(config["model"]["path"]) if method_run else None
    t0 = time.perf_counter()
    train_module.train(from_dict(TrainConfig, config))
    wall = time.perf_counter() - t0
    record: dict[str, Any] = {"wall_time_s": wall, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if start is not None:
        record["warm_start_sha256"] = start
    made = None if method_run else model_fingerprint(folder / SFT_CHECKPOINT)
    if made is not None:
        record["model_sha256"] = made
    (folder / RUN_RECORD).write_text(json.dumps(record))
    return wall


class _Progress:
    """One log line per run: position, what happened, and the time left estimated from the
    mean wall time of the runs trained so far, per kind (warm starts and method runs differ),
    divided by the number of runs training at once."""

    def __init__(self, runs: list[RunSpec], jobs: int = 1) -> None:
        self.total, self.done, self.jobs = len(runs), 0, max(jobs, 1)
        self.left = {"sft": sum(r.kind == "sft" for r in runs), "rl": sum(r.kind == "rl" for r in runs)}
        self.times: dict[str, list[float]] = {"sft": [], "rl": []}

    def report(self, run: RunSpec, what: str, wall: float | None = None) -> None:
        self.done += 1
        self.left[run.kind] -= 1
        if wall is not None:
            self.times[run.kind].append(wall)
        every = self.times["sft"] + self.times["rl"]
        eta = ""
        if every and self.done < self.total:
            mean = {k: (sum(v) / len(v) if v else sum(every) / len(every)) for k, v in self.times.items()}
            eta = f"; about {self._fmt(sum(self.left[k] * mean[k] for k in mean) / self.jobs)} left"
        log.info("[%d/%d] %s: %s%s", self.done, self.total, run.key, what, eta)

    @staticmethod
    def _fmt(s: float) -> str:
        return f"{s / 3600:.1f} h" if s > 5400 else f"{s / 60:.0f} min"


def warm_starts_to_restore(runs: list[RunSpec], out: Path) -> set[str]:
    """Keys of the finished warm starts whose checkpoint (``SFT_CHECKPOINT``) is missing while a
    method run that starts from it must still train: results committed without their models
    (another machine, a cleaned folder). They are trained again; their finished method runs
    stay valid, since the warm start's config and seed are unchanged."""
    needed = {r.needs for r in runs if r.kind == "rl" and r.needs is not None and run_state(r, out, warn=False) != "done"}
    missing = {
        r.key for r in runs
        if r.kind == "sft" and r.key in needed and run_state(r, out, warn=False) == "done"
        and not (Path(r.config["run"]["output_dir"]) / SFT_CHECKPOINT).exists()
    }
    # a restore that was interrupted (its folder holds RESTORE_RECORD) is still one
    interrupted = {r.key for r in runs if r.kind == "sft" and (Path(r.config["run"]["output_dir"]) / RESTORE_RECORD).exists()}
    return missing | interrupted


def _sft_losses(folder: Path) -> list[float] | None:
    try:
        return list(json.loads((folder / "summary.json").read_text())["sft"]["losses"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prepare(run: RunSpec, out: Path, redone: set[str], failed: dict[str, str], progress: _Progress,
             restore: dict[str, list[float] | None]) -> bool:
    """Whether ``run`` must train now; clears its folder when its results cannot be reused
    (its config changed, or its warm start was redone in this invocation). A warm start in
    ``restore`` trains again in a cleared folder; its recorded SFT losses are kept in
    ``restore`` to be compared with the new ones."""
    if run.needs in failed:
        failed[run.key] = f"its warm start {run.needs} failed"
        progress.report(run, "skipped (" + failed[run.key] + ")")
        return False
    folder = Path(run.config["run"]["output_dir"])
    if run.key in restore:
        marker = folder / RESTORE_RECORD
        if marker.exists():  # an interrupted restore: start it over, keeping what was recorded
            restore[run.key] = json.loads(marker.read_text()).get("sft_losses")
            log.info("warm start %s: its restore was interrupted; training it again", run.key)
        else:
            restore[run.key] = _sft_losses(folder)
            log.info("warm start %s finished earlier but its checkpoint is missing (%s) and a method run needs it: training it again", run.key, SFT_CHECKPOINT)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        marker.write_text(json.dumps({"sft_losses": restore[run.key]}))
        return True
    state = run_state(run, out)
    if state == "done" and run.needs not in redone:
        progress.report(run, "finished earlier, reused")
        return False
    if state == "stale" or (state != "new" and run.needs in redone):
        shutil.rmtree(folder, ignore_errors=True)
    return True


def _check_restored(run: RunSpec, recorded: list[float] | None) -> None:
    (Path(run.config["run"]["output_dir"]) / RESTORE_RECORD).unlink(missing_ok=True)  # the restore finished
    new = _sft_losses(Path(run.config["run"]["output_dir"]))
    if recorded and new and recorded != new:
        worst = max(abs(a - b) for a, b in zip(recorded, new)) if len(recorded) == len(new) else float("nan")
        log.warning(
            "restored warm start %s: its SFT losses differ from the recorded ones (last %.6g, was %.6g; largest difference %.3g): "
            "the method runs that train now start from a model that is not bitwise the one the finished runs started from",
            run.key, new[-1], recorded[-1], worst,
        )


def _run_all(runs: list[RunSpec], out: Path, progress: _Progress, jobs: int, failed: dict[str, str],
             train_fn: Callable[[dict[str, Any]], float]) -> None:
    """Train what needs training, in study order, each method run after its warm start:
    in this process (jobs=1) or in ``jobs`` worker processes."""
    redone: set[str] = set()
    restore: dict[str, list[float] | None] = dict.fromkeys(warm_starts_to_restore(runs, out))
    pending = list(runs)
    blocked = {r.key for r in runs}  # not finished yet: their dependents wait

    def finish(run: RunSpec, wall: float | None, err: BaseException | None) -> None:
        blocked.discard(run.key)
        if err is not None:
            failed[run.key] = f"{type(err).__name__}: {err}"
            log.error("run %s failed: %s", run.key, failed[run.key])
            progress.report(run, "FAILED")
        else:
            if run.key in restore:
                _check_restored(run, restore[run.key])
            elif run.kind == "sft":
                redone.add(run.key)
            progress.report(run, f"trained in {wall:.0f} s" + (" (restored)" if run.key in restore else ""), wall)

    def next_ready() -> RunSpec | None:
        for i, run in enumerate(pending):
            if run.needs is None or run.needs not in blocked:
                return pending.pop(i)
        return None

    if jobs <= 1:
        while pending:
            run = pending.pop(0)
            if not _prepare(run, out, redone, failed, progress, restore):
                blocked.discard(run.key)
                continue
            log.info("training %s (%s)", run.key, run.config["run"]["output_dir"])
            try:
                wall = train_fn(run.config)
            except Exception as e:  # one broken run must not lose the others (Ctrl-C still stops)
                log.exception("run %s raised", run.key)
                finish(run, None, e)
            else:
                finish(run, wall, None)
        return
    import multiprocessing

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: dict[Any, RunSpec] = {}
        while pending or running:
            while len(running) < jobs and (run := next_ready()) is not None:
                if _prepare(run, out, redone, failed, progress, restore):
                    log.info("training %s (%s)", run.key, run.config["run"]["output_dir"])
                    running[pool.submit(train_run, run.config)] = run
                else:
                    blocked.discard(run.key)
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                run = running.pop(fut)
                err = fut.exception()
                finish(run, None if err else fut.result(), err)


def compare(study_path: str | Path, *, smoke: bool = False, out: str | Path | None = None, jobs: int = 1,
            train_fn: Callable[[dict[str, Any]], float] | None = None) -> dict[str, Any]:
    """Run (or reuse) every run of the study and write the report. Returns ``{"out", "report",
    "runs", "failed"}``. Raises ConfigError before any training when the study, a run's
    config or the results folder is wrong. ``train_fn`` (tests) replaces :func:`train_run`
    and forces jobs=1."""
    from .report import write_report

    study = load_study(study_path, smoke=smoke)
    out = Path(out) if out is not None else default_out(study)
    runs = expand_runs(study, out)
    check_runs(runs)
    claim_folder(out, study, runs)
    log.info("study %s: %d runs (%d shared warm starts) into %s", study.identity, len(runs), sum(r.kind == "sft" for r in runs), out)
    progress = _Progress(runs, 1 if train_fn is not None else jobs)
    failed: dict[str, str] = {}
    jobs = 1 if train_fn is not None else jobs
    _run_all(runs, out, progress, jobs, failed, train_fn or train_run)
    report = write_report(study, runs, out)
    if failed:
        log.error("%d run(s) failed: %s", len(failed), "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return {"out": str(out), "report": report, "runs": [r.key for r in runs], "failed": failed}


# ----------------------------------------------------------------------------- finished run folders
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")
"""What a finished ``agentrl train`` run folder holds (summary.json is written last)."""


def check_run_folder(path: str | Path) -> None:
    """Raise ConfigError unless ``path`` is a finished run folder, naming what is missing."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"run folder {str(path)!r} does not exist; pass the run.output_dir of finished `agentrl train` runs (e.g. runs/quickstart)")
    if not p.is_dir():
        raise ConfigError(f"{str(path)!r} is a file, not a run folder; pass run folders of `agentrl train`, or a single study .yaml file")
    missing = [name for name in RUN_FILES if not (p / name).is_file()]
    if missing:
        why = ("training has not finished (summary.json is written at the end; resume it with `agentrl train` to finish it)"
               if missing == ["summary.json"] else "it is not an `agentrl train` run folder")
        raise ConfigError(f"{str(path)!r} is not a finished run: it has no {', '.join(missing)}; {why}")


def _labels(folders: list[Path], configs: list[dict[str, Any]]) -> list[str]:
    """run.name when every run's differs, else the folder name when those differ, else the path as given."""
    for labels in ([str((c.get("run") or {}).get("name") or "") for c in configs], [f.name for f in folders], [str(f) for f in folders]):
        if all(labels) and len(set(labels)) == len(labels):
            return labels
    return [f"{i}:{f}" for i, f in enumerate(folders)]


def compare_runs(folders: list[str | Path], *, out: str | Path | None = None, target_success: float = 0.5, final_window: int = 1,
                 smooth: int = 1) -> dict[str, Any]:
    """The report of a study (:func:`agentrl.eval.report.write_report`) from finished run
    folders instead of a study file: each run is its own method variant, labelled by its
    run.name (or folder name), grouped by env id; nothing trains. Writes ``<out>/report/``
    (default ``runs/compare/<label>_vs_<label>...``). Returns ``{"out", "report", "runs",
    "failed"}`` like :func:`compare`. Raises ConfigError for a folder that is not a finished run."""
    from .report import write_report

    if not folders:
        raise ConfigError("no run folders given; pass two or more run folders of `agentrl train` (or one study .yaml file)")
    if not 0.0 <= target_success <= 1.0:
        raise ConfigError(f"--target-success must be a success rate in [0, 1], got {target_success}")
    if final_window < 1 or smooth < 1:
        raise ConfigError(f"--final-window and --smooth count train_steps and must be >= 1, got {final_window} and {smooth}")
    for f in folders:
        check_run_folder(f)
    paths = [Path(f).resolve() for f in folders]
    if len(set(paths)) < len(paths):
        raise ConfigError(f"a run folder is given twice: {[str(f) for f in folders]}; pass each run once")
    configs = [yaml.safe_load((p / "config.yaml").read_text()) or {} for p in paths]
    labels = _labels([Path(f) for f in folders], configs)
    runs = []
    for path, cfg, label in zip(paths, configs, labels):
        cfg = {**cfg, "run": {**(cfg.get("run") or {}), "output_dir": str(path)}}  # where the folder is now
        env = str((cfg.get("env") or {}).get("id") or "env").rsplit("/", 1)[-1]  # names files: no "/"
        runs.append(RunSpec(label, "rl", env, int((cfg.get("run") or {}).get("seed", 0)), label, (), cfg))
    name = "_vs_".join(labels)
    name = name if len(name) <= 80 else f"{labels[0]}_and_{len(labels) - 1}_more"
    out = Path(out) if out is not None else Path("runs") / "compare" / name.replace("/", "-").replace(" ", "_")
    study = Study(name=" vs ".join(labels), base=Path(), methods=labels, methods_dir=Path(), seeds=sorted({r.seed for r in runs}), envs={r.env: {} for r in runs},
                  target_success=target_success, final_window=final_window, smooth=smooth)
    log.info("comparing %d finished runs into %s", len(runs), out)
    return {"out": str(out), "report": write_report(study, runs, out), "runs": labels, "failed": {}}
