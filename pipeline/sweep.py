"""`python -m gatedgpt2.pipeline.sweep configs/sweeps/<name>.yaml`: train a grid of runs on one budget and seeds,
evaluate each, and write one results table (Markdown + JSON) and plots.

A sweep file names a train.py config every run starts from, the settings all runs share (the budget), the seeds, the
evaluations, and the runs as train.py keys that make each one a variant:

    config: ../demo.yaml              # relative to the sweep file
    common: {num_train_epochs: 4}     # the shared budget
    seeds: [0, 1, 2]
    evaluate: [world, gates, knockout] # and/or zero_shot (with a `zero_shot:` mapping of its arguments), dev_loss
                                       # (per-token loss on held-out text and captions), factorial (gate controls)
    metrics: [vqa, gate_content]      # the main table's columns (default: every metric)
    tables:                           # optional: more tables, one per question
      global vs patches: {runs: [base, patches], metrics: [winoground_relation]}
    comparisons:                      # optional: each run - the first, paired by seed, with CIs and Holm-adjusted p
      gates: {runs: [base, gate_none, fusion_residual], metrics: [vqa]}
    shared_tokenizer: true            # optional: one tokenizer for every run, trained once on the first run's data
    factorial: {untrained_draws: 20}  # optional: the factorial evaluation's nulls (eval.gate_controls)
    work_dir: outputs/sweeps/world    # checkpoints (large, git-ignored)
    results: experiments/grounded_world  # per-run JSON, results.{json,md}, plots (small, committed)
    runs:
      base: {}
      gate_none: {gate: none}

Each (run, seed) trains in its own `train.py` process and is evaluated in this one; its metrics go to
`results/runs/<run>/seed<seed>.json`. A rerun skips every (run, seed) whose JSON exists, and evaluates without
training again any whose checkpoint exists, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import yaml

from gatedgpt2.data import WorldFiles
from gatedgpt2.data.run_files import RunFiles, move_into_place, partial_path, write_atomically, write_json
from gatedgpt2.eval.checkpoint import load_checkpoint
from gatedgpt2.eval.interpret.gates import Norms
from gatedgpt2.eval.metrics import factorial_metrics, gate_metrics, knockout_metrics, zero_shot_metrics
from gatedgpt2.trainer.arguments import DataArguments, ModelArguments
from modeling_gatedgpt import ImageKind

from .run import build_datasets, build_tokenizer, generate_world, training_data
from .sweep_spec import Sweep
from .sweep_tables import write_results

ROOT = Path(__file__).resolve().parent.parent
CONCRETENESS = ROOT.parent / "shared" / "data" / "norms" / "brysbaert_concreteness.tsv"


def prepare_world(config: dict) -> None:
    """Generate the grounded world a run reads, before its training process starts: a run may name the world's files
    as ordinary data files (e.g. captions next to BabyLM text), and parallel lanes must not write it at once."""
    keys = ("world_dir", "world_seed", "world_captions", "world_sentences", "world_version", "world_design", "text_dir",
            "caption_files")
    data_args = DataArguments(**{k: config[k] for k in keys if k in config})
    if config.get("model_name_or_path"):
        return
    # A run that names the world's files directly gets the world generated only if it is missing: an existing world
    # there may have been written with another spec, which only its own files describe.
    if data_args.uses_world or ("world_dir" in config and not WorldFiles(data_args.world_dir).manifest.is_file()):
        generate_world(data_args)


def data_arguments(config: dict) -> DataArguments:
    names = {f.name for f in dataclasses.fields(DataArguments)}
    return DataArguments(**{k: v for k, v in config.items() if k in names})


def prepare_shared_tokenizer(sweep: Sweep) -> None:
    """Train the sweep's one tokenizer on its first run's training data (text and captions), once."""
    if not sweep.shared_tokenizer or (sweep.tokenizer_dir / "tokenizer.json").is_file():
        return
    config = sweep.train_config(next(iter(sweep.runs)), sweep.seeds[0])
    prepare_world(config)
    data_args = training_data(data_arguments({k: v for k, v in config.items() if k != "tokenizer_name"}))
    tokenizer = build_tokenizer(data_args, ModelArguments())
    partial = partial_path(sweep.tokenizer_dir)
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer.save_pretrained(partial)
    move_into_place(partial, sweep.tokenizer_dir)  # whole or absent: a killed save leaves only the .partial folder


def dev_losses(model, tokenizer, config: dict, max_examples: int | None) -> dict:
    """Per-token loss on the run's held-out text and held-out captions (with their own images), separately."""
    from gatedgpt2.data import GroundedCollator
    from gatedgpt2.eval.metrics import loss_per_token

    data_args = training_data(data_arguments({**config, "max_eval_examples": None}))
    _, _, evals, images = build_datasets(data_args, tokenizer, model.config.image_embed_dim)
    collator = GroundedCollator(tokenizer.pad_token_id, images)
    return {f"dev_{name}_loss_per_token": loss_per_token(model, examples, collator, max_examples=max_examples)["loss"]
            for name, examples in evals.items()}


def train(config: dict) -> None:
    prepare_world(config)
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep_config.yaml"
    write_atomically(path, yaml.safe_dump(config, sort_keys=False))
    subprocess.run([sys.executable, str(ROOT / "train.py"), str(path)], check=True, cwd=ROOT)


def evaluate(sweep: Sweep, config: dict) -> dict:
    """Metrics of one trained run: its report's, then those of the evaluations the sweep lists (a LoRA run's adapter
    merged into its base). A masked LoRA run's knockout before / after fine-tuning comes from its report."""
    import torch

    out = Path(config["output_dir"])
    report = RunFiles(out).read_report()
    if report is None:
        raise FileNotFoundError(f"{RunFiles(out).report} is missing: the run {out} did not finish")
    metrics = {"train_loss": report["train"].get("train_loss"), "train_runtime_s": report["train"].get("train_runtime")}
    if "world" in sweep.evaluate:
        if "world_eval" not in report:
            raise ValueError(f"{RunFiles(out).report} has no world_eval; the run must train on the world")
        metrics.update({k: v for k, v in report["world_eval"].items() if not isinstance(v, dict)})
    for stage, table in report.get("knockout", {}).items():  # masked fine-tuning measures before and after
        suffix = "" if stage == "after" else f"_{stage}"
        metrics.update({f"vqa_knockout_{c}{suffix}": scores["vqa"] for c, scores in table["zeroed"].items()})
    torch.manual_seed(0)
    model, tokenizer = load_checkpoint(str(out), device="cpu")
    world = WorldFiles(config.get("world_dir", DataArguments.world_dir))
    image_kind = ImageKind.parse(config.get("image_tokens", DataArguments.image_tokens), "image_tokens")
    if "gates" in sweep.evaluate and model.config.gate != "none":
        norms = [Norms.load(str(CONCRETENESS))] if CONCRETENESS.is_file() else []
        metrics.update(gate_metrics(model, tokenizer, world, image_kind, out / "gates", norms))
    if "dev_loss" in sweep.evaluate:
        metrics.update(dev_losses(model, tokenizer, config, config.get("max_eval_examples")))
    if "factorial" in sweep.evaluate and model.config.gate != "none":
        metrics.update(factorial_metrics(model, tokenizer, world, image_kind, out / "gate_controls", **sweep.factorial))
    if "knockout" in sweep.evaluate and image_kind is ImageKind.CLS_PATCHES:
        metrics.update({k: v for k, v in knockout_metrics(model, tokenizer, world).items() if k not in metrics})
    if "zero_shot" in sweep.evaluate:
        options = sweep.zero_shot
        tasks = options.get("tasks", "blimp,supplement")
        tasks = tasks.split(",") if isinstance(tasks, str) else list(tasks)
        metrics.update(zero_shot_metrics(model, tokenizer, ROOT / options["data"], tasks, options.get("fast", True),
                                         out, bool(options.get("revisions"))))
    return metrics


def plan(sweep: Sweep, only: list[str] | None = None, jobs: int = 1) -> list[list[tuple[str, int]]]:
    """The (run, seed) pairs still to do, dealt into `jobs` lanes that can run side by side.

    Seed-major (every run's seed 0, then every run's seed 1, ...), so that a sweep stopped part-way has covered every
    run. A run that starts from another run's checkpoint (`{work_dir}/<run>/...`) follows that run in the same lane.
    """
    runs = [r for r in sweep.runs if not only or r in only]
    missing = sorted(set(only or []) - set(sweep.runs))
    if missing:
        raise ValueError(f"--only names runs not in {sweep.path}: {missing}")
    ancestry = sweep.ancestry
    by_root: dict[str, list[str]] = {}
    for run in runs:
        by_root.setdefault(ancestry(run)[-1], []).append(run)
    units = [[(run, seed) for run in sorted(unit, key=lambda r: len(ancestry(r)))
              if not sweep.result_path(run, seed).is_file()]
             for seed in sweep.seeds for unit in by_root.values()]
    lanes: list[list[tuple[str, int]]] = [[] for _ in range(jobs)]
    for unit in units:
        min(lanes, key=len).extend(unit)
    return lanes


def run_sweep(sweep: Sweep, only: list[str] | None = None, jobs: int = 1, lane: int | None = None) -> dict | None:
    """Train and evaluate what is left, in `jobs` processes side by side (each with its share of the CPU threads),
    then write the table. `lane` is one such process's share: it writes its results, not the table."""
    if lane is None:
        prepare_shared_tokenizer(sweep)
    lanes = plan(sweep, only, jobs)
    if lane is None:
        print(f"{sweep.path}: {len(only or sweep.runs) * len(sweep.seeds)} runs, {sum(map(len, lanes))} to do",
              flush=True)
        if jobs > 1:
            run_lanes(sweep, lanes, only)
            return write_results(sweep)
    todo, failed = lanes[lane or 0], []
    for k, (run, seed) in enumerate(todo, 1):
        config = sweep.train_config(run, seed)
        out = Path(config["output_dir"])
        print(f"[{'' if lane is None else f'lane {lane}: '}{k}/{len(todo)}] {run} seed {seed} -> {out}", flush=True)
        started = time.time()
        report = RunFiles(out).report  # written last, so its presence means training finished
        trained_before = report.is_file()
        try:
            if not trained_before:
                train(config)
            metrics = evaluate(sweep, config)
        except Exception:  # one broken run must not stop hours of others; it is reported at the end and retried
            traceback.print_exc()
            failed.append(f"{run} seed {seed}")
            continue
        wall_time = time.time() - started
        if trained_before:  # a re-evaluation: the run's cost still includes the training an earlier sweep did
            wall_time += json.loads(report.read_text()).get("wall_time_s", 0.0)
        record = {"run": run, "seed": seed, "overrides": sweep.runs[run], "metrics": metrics,
                  "wall_time_s": round(wall_time, 1)}
        write_json(sweep.result_path(run, seed), record)  # whole or absent: its presence marks the run done
    payload = write_results(sweep) if lane is None else None
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed (tracebacks above): {', '.join(failed)}; rerun to retry them")
    return payload


def run_lanes(sweep: Sweep, lanes: list[list[tuple[str, int]]], only: list[str] | None) -> None:
    """One `--lane k` process per lane of `plan`; each plans again from the same finished runs and takes its own."""
    # Small models leave a second core idle in one process (Python overhead, not matmuls, bounds their steps), so
    # `jobs` processes with a share of the threads each get through a grid faster than one with all of them.
    jobs = len(lanes)
    for lane in lanes:
        for run, seed in lane:
            prepare_world(sweep.train_config(run, seed))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "gatedgpt2.pipeline.sweep", str(sweep.path), "--jobs", str(jobs)]
    command += ["--only", ",".join(only)] if only else []
    processes = [subprocess.Popen([*command, "--lane", str(k)], cwd=ROOT, env=env) for k in range(jobs)]
    failed = [k for k, process in enumerate(processes) if process.wait() != 0]
    if failed:
        raise RuntimeError(f"sweep lanes {failed} failed (see their output above); finished runs are kept, rerun to "
                           f"resume")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gatedgpt2.pipeline.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("--only", help="comma list of runs to do now (the table still lists every finished run)")
    parser.add_argument("--table-only", action="store_true", help="rewrite the table and plots from finished runs")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs side by side, each with its share of the CPU threads (2 suits tiny models on 2 "
                             "cores)")
    parser.add_argument("--lane", type=int, help=argparse.SUPPRESS)  # one of --jobs' processes
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.lane is not None and not 0 <= args.lane < args.jobs):
        parser.error(f"--jobs must be >= 1 and --lane in [0, jobs); got jobs={args.jobs}, lane={args.lane}")
    sweep = Sweep(args.sweep)
    if args.table_only:
        write_results(sweep)
    else:
        run_sweep(sweep, args.only.split(",") if args.only else None, args.jobs, args.lane)
    if args.lane is None:
        print((sweep.results / "results.md").read_text())


if __name__ == "__main__":
    main()
