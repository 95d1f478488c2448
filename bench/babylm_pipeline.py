"""Our zero-shot scorer against the official BabyLM 2025 pipeline (vendored, in its pinned environment): the same
checkpoint, the same machine, one run, every zero-shot task both score. Each side runs in one process that imports
its libraries first, then runs each task as its own job: loading the checkpoint, reading and tokenizing the data,
scoring, writing predictions.json; a task that takes under 30 s runs 3 times on each side and its fastest run counts
(the spread between runs of a 1-4 s task is about 30% here). Throughput is items per second of everything but the
checkpoint loading (each
side's loading is timed apart: the pipeline's by wrapping the Auto classes' from_pretrained, which changes nothing
it computes; both load the same checkpoint with the same remote code); the time with loading is reported beside it.
The two sides run one after the other (never at once), and their predictions are compared: identical choices for
every ranking task, surprisals and probabilities within float tolerance.

    python bench/babylm_pipeline.py                      # a random 4 x 256 model, BabyLM-dev BPE (8192)
    python bench/babylm_pipeline.py --model outputs/babylm_text --profile

Data: BLiMP, supplement and EWoK fast are the real files (../shared/data); entity tracking, WUG, COMPS and reading
are the test fixtures (tests/helpers/babylm_fixtures.py) at `--scale`, since their real files are not distributed here.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "babylm" / "evaluation_data"
PIPELINE = ROOT.parent / "shared" / "vendor" / "babylm-evaluation-pipeline-2025"

# (our task, the pipeline's --task, folder under evaluation_data)
TASKS = [("blimp", "blimp", "fast_eval/blimp_fast"), ("supplement", "blimp", "fast_eval/supplement_fast"),
         ("ewok", "ewok", "fast_eval/ewok_fast"), ("entity_tracking", "entity_tracking", "full_eval/entity_tracking"),
         ("wug_adj", "wug_adj", "full_eval/wug_adj_nominalization"),
         ("wug_past", "wug_past", "full_eval/wug_past_tense"),
         ("comps", "comps", "full_eval/comps"), ("reading", "reading", "full_eval/reading")]

PIPELINE_SIDE = textwrap.dedent("""
    import json, runpy, sys, time
    import pandas, statsmodels.formula.api, torch, transformers, datasets  # imported before any clock starts
    import evaluation_pipeline.sentence_zero_shot.run
    loading = [0.0]

    def timed(load):  # how long the pipeline spends loading the checkpoint, so that it can be told apart
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return load(*args, **kwargs)
            finally:
                loading[0] += time.perf_counter() - start
        return wrapper

    for auto in (transformers.AutoModelForCausalLM, transformers.AutoProcessor, transformers.AutoTokenizer):
        auto.from_pretrained = timed(auto.from_pretrained)
    model, out, jobs, repeats, repeat_below = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), \
        float(sys.argv[5])
    times = {}
    for name, task, data in jobs:
        if task == "reading":
            module, argv = "evaluation_pipeline.reading.run", ["--data_path", data + "/reading_data.csv"]
        else:
            module, argv = "evaluation_pipeline.sentence_zero_shot.run", ["--task", task, "--data_path", data,
                                                                         "--save_predictions"]
        argv_all = ["--model_path_or_name", model, "--backend", "causal", "--output_dir", out + "/" + name, *argv]
        runs = []
        while len(runs) < (1 if runs and runs[0]["total"] > repeat_below else repeats):
            sys.argv = [module, *argv_all]
            loading[0] = 0.0
            start = time.perf_counter()
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            runs.append({"total": time.perf_counter() - start, "loading": loading[0]})
        times[name] = min(runs, key=lambda run: run["total"] - run["loading"])
    print("TIMES " + json.dumps({"times": times, "threads": torch.get_num_threads()}))
""")

OUR_SIDE = textwrap.dedent("""
    import json, sys, time
    import torch
    from gatedgpt2.eval.checkpoint import load_checkpoint
    from gatedgpt2.eval.babylm.zero_shot import load_accuracy_metric, write_pipeline_tree, zero_shot
    load_accuracy_metric()  # evaluate's import, once
    model_path, out, data, jobs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    repeats, repeat_below = int(sys.argv[5]), float(sys.argv[6])
    times = {}
    for name, task, folder in jobs:
        runs = []
        while len(runs) < (1 if runs and runs[0]["total"] > repeat_below else repeats):
            start = time.perf_counter()
            model, tokenizer = load_checkpoint(model_path)
            loaded = time.perf_counter()
            results = zero_shot(model, tokenizer, data, [name], fast=folder.startswith("fast_eval"), progress=False)
            write_pipeline_tree(results, out + "/" + name, model_path)
            runs.append({"total": time.perf_counter() - start, "loading": loaded - start})
        times[name] = min(runs, key=lambda run: run["total"] - run["loading"])
    print("TIMES " + json.dumps({"times": times, "threads": torch.get_num_threads()}))
""")


def pipeline_python() -> Path:
    from tests.helpers.client_envs import pipeline_python as cached_env

    return cached_env()


def prepare_data(root: Path, scale: int) -> Path:
    """The real fast BLiMP / supplement / EWoK (EWoK unzipped: the pipeline reads a folder) and the fixtures."""
    from gatedgpt2.eval.babylm.tasks import EWOK_PASSWORD
    from tests.helpers.babylm_fixtures import write_evaluation_data

    data = write_evaluation_data(root / "evaluation_data", scale=scale)
    for folder in ("fast_eval/blimp_fast", "fast_eval/supplement_fast"):
        (data / folder).symlink_to(DATA / folder, target_is_directory=True)
    with zipfile.ZipFile(DATA / "fast_eval" / "ewok_fast.zip") as archive:
        for member in archive.namelist():
            if member.endswith(".jsonl"):
                target = data / "fast_eval" / "ewok_fast" / Path(member).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member, pwd=EWOK_PASSWORD.encode()))
    return data


def run_side(python: Path, script: str, args: list[str], cwd: Path, env: dict | None = None) -> dict:
    result = subprocess.run([str(python), "-c", script, *args], cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode:
        raise RuntimeError(result.stderr[-4000:])
    return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("TIMES "))[6:])


def predictions(root: Path, model: Path, name: str, task: str, folder: str) -> dict:
    base = root / name / model.stem / "main" / "zero_shot" / "causal"
    task_dir = base / "reading" if task == "reading" else base / task / Path(folder).name
    path = task_dir / "predictions.json"
    return json.loads(path.read_text())


def compare(theirs: dict, ours: dict) -> tuple[int, int, float]:
    """(items, items whose choice differs, largest relative difference of a number: prob / surprisal)."""
    items = differ = 0
    worst = 0.0
    for uid, block in theirs.items():
        mine = {p["id"]: p for p in ours[uid]["predictions"]}
        for their in block["predictions"]:
            our = mine[their["id"]]
            items += 1
            differ += int(their["pred"] != our["pred"]) if isinstance(their["pred"], str) else 0
            for field in ("prob", "pred", "prev_pred"):
                a, b = their.get(field), our.get(field)
                if isinstance(a, float) and isinstance(b, float) and a == a and b == b:
                    worst = max(worst, abs(a - b) / max(abs(a), 1e-12))
    return items, differ, worst


def profile(model_path: str, data: Path, out: Path) -> list[dict]:
    """Where our time goes on BLiMP fast: torch.profiler's top operators by self CPU time, plus tokenization."""
    import time

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from gatedgpt2.eval.babylm.scoring import encode_candidates
    from gatedgpt2.eval.babylm.tasks import read_task
    from gatedgpt2.eval.babylm.zero_shot import evaluate_task, load_accuracy_metric
    from gatedgpt2.eval.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(model_path)
    task = read_task(data, "blimp", fast=True)
    metric = load_accuracy_metric()
    sentences = [s for item in task.items for s in item.sentences]
    start = time.perf_counter()
    encode_candidates(tokenizer, sentences, sentences)
    tokenize = time.perf_counter() - start
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        evaluate_task(model, tokenizer, task, metric=metric, progress=False)
        total = time.perf_counter() - start
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    rows = [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in events]
    rows.insert(0, {"op": "(tokenizing with offsets, all sentences)", "self_cpu_s": tokenize, "calls": 1})
    rows.insert(0, {"op": "(evaluate_task, wall)", "self_cpu_s": total, "calls": 1})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint to score with (default: a random 4 x 256 model)")
    parser.add_argument("--scale", type=int, default=20, help="fixture size multiplier (entity tracking, WUG, ...)")
    parser.add_argument("--tasks", default=",".join(t for t, _, _ in TASKS))
    parser.add_argument("--profile", action="store_true", help="also profile our scorer on BLiMP fast")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each task that takes under --repeat-below seconds; the fastest is kept")
    parser.add_argument("--repeat-below", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "babylm_pipeline.json")
    args = parser.parse_args()
    chosen = [t for t in TASKS if t[0] in args.tasks.split(",")]

    from tests.helpers.remote_code import offline_hub_env

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model:
            model = Path(args.model).resolve()
        else:
            from eval_scoring import make_checkpoint

            model = Path(make_checkpoint(tmp / "model"))
        data = prepare_data(tmp, args.scale)
        jobs = [(name, task, str(data / folder)) for name, task, folder in chosen]
        env = offline_hub_env(tmp / "hf_home", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                              WANDB_MODE="disabled")
        repeat = [str(args.repeats), str(args.repeat_below)]
        theirs = run_side(pipeline_python(), PIPELINE_SIDE,
                          [str(model), str(tmp / "pipeline"), json.dumps(jobs), *repeat], PIPELINE, env)
        ours = run_side(Path(sys.executable), OUR_SIDE,
                        [str(model), str(tmp / "ours"), str(data), json.dumps([(n, t, f) for n, t, f in chosen]),
                         *repeat], ROOT)
        rows = []
        for name, task, folder in chosen:
            items, differ, worst = compare(predictions(tmp / "pipeline", model, name, task, folder),
                                           predictions(tmp / "ours", model, name, task, folder))
            their, our = theirs["times"][name], ours["times"][name]
            row = {"task": name, "items": items, "pipeline_s": their["total"], "ours_s": our["total"],
                   "pipeline_loading_s": their["loading"], "ours_loading_s": our["loading"],
                   "choices_differing": differ, "max_relative_difference": worst}
            row["speedup"] = (their["total"] - their["loading"]) / (our["total"] - our["loading"])
            row["speedup_with_loading"] = their["total"] / our["total"]
            rows.append(row)
            print(row, flush=True)
        profiled = profile(str(model), data, tmp) if args.profile else None
    total = {key: sum(r[key] for r in rows) for key in ("pipeline_s", "ours_s", "pipeline_loading_s",
                                                          "ours_loading_s")}
    total["speedup"] = ((total["pipeline_s"] - total["pipeline_loading_s"])
                        / (total["ours_s"] - total["ours_loading_s"]))
    total["speedup_with_loading"] = total["pipeline_s"] / total["ours_s"]
    print("\n| task | items | pipeline (s) | ours (s) | throughput, ours / pipeline | with checkpoint loading | "
          "choices differing | max rel. difference |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['task']} | {r['items']:,} | {r['pipeline_s'] - r['pipeline_loading_s']:.2f} "
              f"(+{r['pipeline_loading_s']:.2f}) | {r['ours_s'] - r['ours_loading_s']:.2f} "
              f"(+{r['ours_loading_s']:.2f}) | "
              f"{r['speedup']:.1f}x | {r['speedup_with_loading']:.1f}x | {r['choices_differing']} | "
              f"{r['max_relative_difference']:.1e} |")
    print(f"| all | | {total['pipeline_s'] - total['pipeline_loading_s']:.1f} | "
          f"{total['ours_s'] - total['ours_loading_s']:.1f} | {total['speedup']:.1f}x | "
          f"{total['speedup_with_loading']:.1f}x | | |")
    if profiled:
        print("\n| where our BLiMP-fast time goes | self CPU (s) | calls |\n| --- | ---: | ---: |")
        for p in profiled:
            print(f"| {p['op']} | {p['self_cpu_s']:.2f} | {p['calls']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": args.model or "random 4 x 256, vocab 8192", "scale": args.scale,
                                    "threads": {"pipeline": theirs["threads"], "ours": ours["threads"]},
                                    "rows": rows, "total": total, "profile": profiled}, indent=2))


if __name__ == "__main__":
    main()
