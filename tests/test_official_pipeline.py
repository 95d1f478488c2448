"""The official BabyLM 2025 evaluation pipeline, run unmodified in its own pinned environment, predicts exactly what
`python -m gatedgpt2.eval zero-shot` predicts, and it can score a GatedGPT2 with images.

The pipeline (../shared/vendor/babylm-evaluation-pipeline-2025, Apache-2.0) runs in a cached environment built from
its requirements.txt pins (transformers 4.51.3, tokenizers 0.21.1, datasets 3.6.0, ...), except torch: the CPU build
installed here (2.13.0) instead of its 2.7.0. It loads our checkpoint through the remote code saved with it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from gatedgpt2.data import iter_text_lines, text_files, train_tokenizer
from gatedgpt2.eval.babylm.reading import EYE_TRACKING
from gatedgpt2.eval.babylm.tasks import EWOK_PASSWORD
from modeling_gatedgpt import GatedGPT2Processor
from tests.helpers.babylm_fixtures import add_text_task_subsets, write_evaluation_data
from tests.helpers.client_envs import pipeline_python
from tests.helpers.models import VISION, tiny_model
from tests.helpers.remote_code import offline_hub_env

ROOT = Path(__file__).parents[1]
PIPELINE = ROOT.parent / "shared" / "vendor" / "babylm-evaluation-pipeline-2025"
DATA = ROOT.parent / "shared" / "data" / "babylm"
EVALUATION_DATA = DATA / "evaluation_data"

pytestmark = pytest.mark.skipif(not PIPELINE.is_dir() or not EVALUATION_DATA.is_dir(),
                                reason="needs ../shared (the vendored pipeline and the BabyLM evaluation data)")


def run_pipeline(model: Path, task: str, data: Path, out: Path, *extra: str) -> dict:
    """The pipeline's `sentence_zero_shot.run` as its eval scripts call it; returns its predictions.json."""
    env = offline_hub_env(out / "hf_home", HF_DATASETS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1",
                          TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    result = subprocess.run(
        [str(pipeline_python()), "-m", "evaluation_pipeline.sentence_zero_shot.run", "--model_path_or_name",
         str(model), "--backend", "causal", "--task", task, "--data_path", str(data), "--save_predictions",
         "--output_dir", str(out), *extra],
        cwd=PIPELINE, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    predictions = out / model.stem / "main" / "zero_shot" / "causal" / task / data.stem / "predictions.json"
    return json.loads(predictions.read_text())


def run_ours(model: Path, data: Path, tasks: str, out: Path, *extra: str) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "gatedgpt2.eval", "zero-shot", "--model", str(model), "--data", str(data), "--tasks",
         tasks, "--out", str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def assert_same_predictions(theirs: dict, ours: dict, task: str) -> int:
    assert set(theirs) == set(ours), f"{task}: UIDs differ: {sorted(set(theirs) ^ set(ours))[:5]}"
    count = 0
    for uid in theirs:
        their = {p["id"]: p["pred"] for p in theirs[uid]["predictions"]}
        our = {p["id"]: p["pred"] for p in ours[uid]["predictions"]}
        assert their.keys() == our.keys(), f"{task}/{uid}: prediction ids differ"
        different = [i for i in their if their[i] != our[i]]
        assert not different, f"{task}/{uid}: {len(different)} predictions differ, e.g. {different[:3]}"
        count += len(their)
    return count


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small untrained GatedGPT2 with a BPE tokenizer trained on BabyLM dev text, saved as training saves it. Its
    weights are drawn wide (std 0.5) so that candidates' scores are far apart and no near-tie can flip."""
    folder = tmp_path_factory.mktemp("pipeline") / "gatedgpt2-pipeline"
    lines = [line for _, line in zip(range(20_000), iter_text_lines(text_files(DATA / "text" / "dev", "*.dev")))]
    tokenizer = train_tokenizer(lines, vocab_size=2000, model_max_length=512)
    model = tiny_model(vocab_size=len(tokenizer), n_positions=512, initializer_range=0.5,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ewok_folder(tmp_path_factory):
    """The distributed EWoK zip, unpacked with its published password (the pipeline reads a folder)."""
    target = tmp_path_factory.mktemp("ewok")
    with zipfile.ZipFile(EVALUATION_DATA / "fast_eval" / "ewok_fast.zip") as archive:
        archive.extractall(target, pwd=EWOK_PASSWORD.encode())
    folders = [p.parent for p in target.rglob("*.jsonl")]
    assert folders, "the EWoK zip holds no .jsonl files"
    return folders[0]


def test_text_tasks_predict_exactly_what_the_pipeline_predicts(checkpoint, ewok_folder, tmp_path):
    ours = run_ours(checkpoint, EVALUATION_DATA, "blimp,supplement,ewok", tmp_path / "ours", "--fast")
    compared = 0
    for task, pipeline_task, data in [("blimp", "blimp", EVALUATION_DATA / "fast_eval" / "blimp_fast"),
                                      ("supplement", "blimp", EVALUATION_DATA / "fast_eval" / "supplement_fast"),
                                      ("ewok", "ewok", ewok_folder)]:
        theirs = run_pipeline(checkpoint, pipeline_task, data, tmp_path / "pipeline")
        compared += assert_same_predictions(theirs, json.loads((ours / task / "predictions.json").read_text()), task)
    assert compared > 10_000  # BLiMP fast + supplement fast + EWoK fast, every item


def test_winoground_images_through_the_tower_predict_what_our_embeddings_predict(checkpoint, tmp_path):
    """The pipeline's image path: PIL images from a local `datasets` folder -> our processor -> pixel_values -> the
    model's DINOv2 tower. Ours scores the same records from the tower's embeddings of the same images."""
    from datasets import Dataset
    from PIL import Image

    from gatedgpt2.eval.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(str(checkpoint), device="cpu")
    torch.manual_seed(3)
    model.attach_vision_tower(Dinov2Model(Dinov2Config(**VISION)).eval(), "cls_patches")
    with_tower = tmp_path / "gatedgpt2-with-tower"
    model.save_pretrained(with_tower)
    processor = GatedGPT2Processor.for_vision_tower(tokenizer, model.config.vision_config)
    processor.save_pretrained(with_tower)

    generator = np.random.default_rng(0)
    rows = 4
    images = {key: [Image.fromarray(generator.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(rows)]
              for key in ("image_0", "image_1")}
    image_folder = tmp_path / "winoground_images"
    (image_folder / "data").mkdir(parents=True)
    Dataset.from_dict(images).to_parquet(str(image_folder / "data" / "test-00000-of-00001.parquet"))

    records = [json.loads(line) for line in
               (EVALUATION_DATA / "full_eval" / "winoground_filtered" / "winoground.jsonl").read_text().splitlines()]
    records = [r for r in records if r["image_idx"] < rows]
    data = tmp_path / "evaluation_data" / "full_eval" / "winoground_filtered"
    data.mkdir(parents=True)
    (data / "winoground.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    ids, embeddings = [], []
    with torch.no_grad():
        for index in range(rows):
            for key in ("image_0", "image_1"):
                pixels = processor.image_processor(images[key][index].convert("RGB"), return_tensors="pt")
                embeddings.append(model.transformer.get_image_features(pixels["pixel_values"])[0].numpy())
                ids.append(f"{index}/{key}")
    np.save(tmp_path / "embeddings.npy", np.stack(embeddings))
    (tmp_path / "embeddings.ids.json").write_text(json.dumps(ids))

    theirs = run_pipeline(with_tower, "winoground", data, tmp_path / "pipeline", "--images_path", str(image_folder),
                          "--image_split", "test", "--batch_size", "1")
    ours = run_ours(with_tower, tmp_path / "evaluation_data", "winoground", tmp_path / "ours", "--images",
                    str(tmp_path / "embeddings.npy"))
    our_predictions = json.loads((ours / "winoground" / "predictions.json").read_text())
    assert set(theirs) == {"winoground"}  # the pipeline's UID spelling, so our files go into its collate_preds.sh
    assert assert_same_predictions(theirs, our_predictions, "winoground") == len(records)


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    """Entity tracking, WUG, COMPS and reading files in the pipeline's formats (tests/helpers/babylm_fixtures.py)."""
    return write_evaluation_data(tmp_path_factory.mktemp("fixtures") / "evaluation_data")


def assert_close_predictions(theirs: dict, ours: dict, task: str, field: str, tolerance: float) -> int:
    """Predictions that are numbers (a surprisal, a probability) agree to `tolerance` (relative): the pipeline runs
    one unpadded query per forward pass and we run padded batches, so the float32 sums differ in the last bits."""
    assert set(theirs) == set(ours), f"{task}: UIDs differ"
    count = 0
    for uid in theirs:
        their = {p["id"]: p[field] for p in theirs[uid]["predictions"]}
        our = {p["id"]: p[field] for p in ours[uid]["predictions"]}
        assert their.keys() == our.keys(), f"{task}/{uid}: prediction ids differ"
        a = np.array([their[i] for i in their], dtype=float)
        b = np.array([our[i] for i in their], dtype=float)
        assert np.array_equal(np.isnan(a), np.isnan(b)), f"{task}/{uid}: missing values differ"
        np.testing.assert_allclose(b[~np.isnan(b)], a[~np.isnan(a)], rtol=tolerance, err_msg=f"{task}/{uid}/{field}")
        count += len(their)
    return count


def report_number(report: Path, label: str) -> float:
    lines = report.read_text().splitlines()
    if label.startswith("###"):  # best_temperature_report.txt: the value is on the line after the heading
        return float(lines[lines.index(label) + 1])
    return float(next(line for line in lines if line.startswith(label)).split(":")[1])


def run_pipeline_modules(invocations: list[tuple[str, list[str]]], hf_home: Path) -> None:
    """Several of the pipeline's `python -m evaluation_pipeline.<module> ARGS` runs in one process, one after the
    other (each through runpy, as `-m` runs it), so that its heavy imports are paid once."""
    script = ("import runpy, sys, json\n"
              "for module, argv in json.loads(sys.argv[1]):\n"
              "    sys.argv = [module, *argv]\n"
              "    runpy.run_module(module, run_name='__main__', alter_sys=True)\n")
    env = offline_hub_env(hf_home, HF_DATASETS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1",
                          TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled")
    result = subprocess.run([str(pipeline_python()), "-c", script, json.dumps(invocations)], cwd=PIPELINE, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]


# task, its folder in evaluation_data, fast set or not
NEW_RANKING_TASKS = [("entity_tracking", "full_eval/entity_tracking", False),
                     ("entity_tracking", "fast_eval/entity_tracking_fast", True),
                     ("wug_adj", "full_eval/wug_adj_nominalization", False),
                     ("wug_past", "full_eval/wug_past_tense", False),
                     ("comps", "full_eval/comps", False)]


@pytest.fixture(scope="module")
def new_task_runs(checkpoint, fixture_data, tmp_path_factory):
    """Our CLI (the full suite's new tasks, then the fast entity tracking) and the pipeline's scripts, as its
    eval_zero_shot*.sh call them, on the fixture files; returns (our out folders, our results tree, theirs)."""
    root = tmp_path_factory.mktemp("new_tasks")
    results = root / "results"
    run_ours(checkpoint, fixture_data, "entity_tracking,wug_adj,wug_past,comps,reading", root / "ours_full",
             "--results-dir", str(results))
    run_ours(checkpoint, fixture_data, "entity_tracking", root / "ours_fast", "--fast", "--results-dir",
             str(root / "results_fast"))
    common = ["--model_path_or_name", str(checkpoint), "--backend", "causal", "--output_dir", str(root / "pipeline")]
    invocations = [("evaluation_pipeline.sentence_zero_shot.run",
                    ["--task", task, "--data_path", str(fixture_data / folder), "--save_predictions", *common])
                   for task, folder, _ in NEW_RANKING_TASKS]
    invocations.append(("evaluation_pipeline.reading.run",
                        ["--data_path", str(fixture_data / "full_eval" / "reading" / "reading_data.csv"), *common]))
    run_pipeline_modules(invocations, root / "hf_home")
    return root


def tree(results: Path, model: Path, task: str, dataset: str | None = None) -> Path:
    folder = results / model.stem / "main" / "zero_shot" / "causal" / task
    return folder / dataset if dataset else folder


@pytest.mark.parametrize("task, folder, fast", NEW_RANKING_TASKS)
def test_new_ranking_tasks_predict_and_score_what_the_pipeline_does(checkpoint, fixture_data, new_task_runs, task,
                                                                    folder, fast):
    """Entity tracking (per split, then across), the WUG correlations and COMPS (whose prediction is the sentence):
    the same prediction for every item, the same probabilities, the same aggregate score, and our results tree
    holds the files where the pipeline writes them."""
    data = fixture_data / folder
    ours_folder = tree(new_task_runs / ("results_fast" if fast else "results"), checkpoint, task, data.name)
    theirs_folder = tree(new_task_runs / "pipeline", checkpoint, task, data.name)
    theirs = json.loads((theirs_folder / "predictions.json").read_text())
    ours = json.loads((ours_folder / "predictions.json").read_text())
    assert assert_same_predictions(theirs, ours, task) == sum(1 for f in data.glob("*.jsonl")
                                                              for line in f.read_text().splitlines() if line)
    heading = "### AVERAGE SPEARMAN'S RHO" if task.startswith("wug") else "### AVERAGE ACCURACY"
    assert report_number(ours_folder / "best_temperature_report.txt", heading) == report_number(
        theirs_folder / "best_temperature_report.txt", heading)
    summary = json.loads((new_task_runs / f"ours_{'fast' if fast else 'full'}" / "results.json").read_text())
    summary = summary["tasks"][task]
    if task.startswith("wug"):
        # the probability of the first form: softmax of float32 sums in the pipeline, of float64 sums here
        assert_close_predictions(theirs, ours, task, "prob", 1e-4)
        assert 0 < abs(summary["score"]) <= 1  # a correlation, and not a degenerate one
    else:
        assert summary["exact_ties"] < summary["items"]  # the model tells candidates apart


def test_reading_surprisals_and_scores_are_the_pipelines(checkpoint, fixture_data, new_task_runs):
    """Every word's surprisal (and the previous word's) agrees with the pipeline's one-query-at-a-time get_p2, and
    the eye-tracking and self-paced reading scores (its statsmodels OLS, our least squares) agree."""
    data = fixture_data / "full_eval" / "reading" / "reading_data.csv"
    theirs_folder = tree(new_task_runs / "pipeline", checkpoint, "reading")
    ours_folder = tree(new_task_runs / "results", checkpoint, "reading")
    theirs = json.loads((theirs_folder / "predictions.json").read_text())
    ours = json.loads((ours_folder / "predictions.json").read_text())
    assert assert_close_predictions(theirs, ours, "reading", "pred", 1e-5) == len(data.read_text().splitlines()) - 1
    assert_close_predictions(theirs, ours, "reading", "prev_pred", 1e-5)
    for label in ("EYE TRACKING SCORE", "SELF-PACED READING SCORE"):
        their_score = report_number(theirs_folder / "report.txt", label)
        assert report_number(ours_folder / "report.txt", label) == pytest.approx(their_score, abs=0.006), label

    def gains(name: str) -> dict[str, float]:  # the pipeline's full-precision R^2 (gain) per measure
        fits = [json.loads(line) for line in (theirs_folder / name).read_text().splitlines()]
        return {f["Predicted variable"]: 100 * f["Change in R2 from baseline"]
                / (1 - f["R2"] + f["Change in R2 from baseline"]) for f in fits}
    summary = json.loads((new_task_runs / "ours_full" / "results.json").read_text())["tasks"]["reading"]
    eye_tracking = np.mean([gains("predictive_power.jsonl")[dv] for dv in EYE_TRACKING])
    assert summary["eye_tracking"] == pytest.approx(eye_tracking, rel=1e-4, abs=1e-6)
    self_paced = gains("predictive_power_spillover.jsonl")["self_paced_reading_time"]
    assert summary["self_paced_reading"] == pytest.approx(self_paced, rel=1e-4, abs=1e-6)
    assert abs(eye_tracking) > 1e-3 and abs(self_paced) > 1e-3  # surprisal explains something: not a vacuous match


REVISIONS = {"chck_1M": 1, "chck_2M": 2, "chck_3M": 3, "chck_5M": 5}  # name -> seed of its (random) weights


@pytest.fixture(scope="module")
def babylm_run(checkpoint, tmp_path_factory):
    """A training run's output as train.py leaves it: the final model, `revisions/chck_*` (here each with its own
    random weights, so that surprisals differ between revisions) and trainer_state.json's words seen; plus the same
    revisions as branches of a Hub repository in an offline cache, which is how the pipeline's AoA script loads
    them (`revision=chck_1M`)."""
    from modeling_gatedgpt import GatedGPT2Config, GatedGPT2ForCausalLM
    from tests.helpers.remote_code import make_offline_hub_cache

    root = tmp_path_factory.mktemp("babylm_run")
    run = root / "gatedgpt2-run"
    shutil.copytree(checkpoint, run)
    (run / "trainer_state.json").write_text(json.dumps({"log_history": [{"words_seen": 6_000_000}]}))
    config = GatedGPT2Config.from_pretrained(checkpoint)
    hf_home = root / "hf_home"
    for number, (name, seed) in enumerate(REVISIONS.items()):
        torch.manual_seed(seed)
        folder = run / "revisions" / name
        GatedGPT2ForCausalLM(config).save_pretrained(folder)
        for file in checkpoint.glob("*token*"):
            shutil.copy(file, folder)
        commit = f"{number:040d}"
        make_offline_hub_cache(folder, hf_home, "babylm-test/gatedgpt2-run", commit, ref=name)
    return run, hf_home


@pytest.fixture(scope="module")
def submission_data(fixture_data):
    return add_text_task_subsets(fixture_data, EVALUATION_DATA)


def test_aoa_surprisals_are_the_pipelines_at_every_revision(babylm_run, submission_data, tmp_path):
    """Our `babylm` command's AoA_word/surprisal.json against the pipeline's AoA script reading the same revisions
    from Hub branches: the same rows (revision, word, context), the same surprisals; the one-letter word is skipped
    by both. Revisions the track lists but the run lacks (chck_4M ...) the pipeline skips; so do we, by scoring the
    revisions the run has."""
    run, hf_home = babylm_run
    words = submission_data / "full_eval" / "aoa" / "cdi_childes.json"
    result = subprocess.run(
        [sys.executable, "-m", "gatedgpt2.eval", "babylm", "--run", str(run), "--data", str(submission_data),
         "--results-dir", str(tmp_path / "ours"), "--cdi-words", str(words), "--cdi-table",
         str(submission_data / "cdi_proportions.csv")], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    run_pipeline_modules([("evaluation_pipeline.AoA_word.run",
                           ["--model_name", "babylm-test/gatedgpt2-run", "--backend", "causal", "--track_name",
                            "strict-small", "--word_path", str(words), "--output_dir", str(tmp_path / "pipeline")])],
                         hf_home)
    relative = Path(run.name) / "main" / "zero_shot" / "causal" / "AoA_word" / "surprisal.json"
    theirs = json.loads((tmp_path / "pipeline" / relative).read_text())["results"]
    ours = json.loads((tmp_path / "ours" / relative).read_text())["results"]
    key = lambda row: (row["step"], row["target_word"], row["context_id"])  # noqa: E731
    assert sorted(map(key, theirs)) == sorted(map(key, ours))
    assert {row["step"] for row in ours} == set(REVISIONS) and "a" not in {row["target_word"] for row in ours}
    mine = {key(row): row for row in ours}
    for row in theirs:
        assert mine[key(row)]["context"] == row["context"] and mine[key(row)]["word_count"] == row["word_count"]
        assert mine[key(row)]["surprisal"] == pytest.approx(row["surprisal"], rel=1e-5)


def test_aoa_curve_fitness_is_the_leaderboards(fixture_data, tmp_path):
    """The leaderboard's AoA score (the pipeline's utils.AoAEvaluator: a sigmoid per word over log words seen, a
    sigmoid per word over the children's months, Pearson r) from our `curve_fitness`, on surprisal curves whose
    acquisition points are planted to follow the children's order."""
    import pandas as pd

    from gatedgpt2.eval.babylm.aoa import curve_fitness

    table = pd.read_csv(fixture_data / "cdi_proportions.csv")
    generator = np.random.default_rng(0)
    steps = {f"chck_{m}M": m * 10**6 for m in (*range(1, 10), *range(10, 101, 10))}
    rows = []
    for _, entry in table.iterrows():
        middle = 6.0 + (np.argmax(entry[[str(m) for m in range(16, 31)]].to_numpy() > 0.5) / 15) * 1.5
        for step, words in steps.items():
            surprisal = 16 - 12 / (1 + np.exp(-4 * (np.log10(words + 1) - middle))) + generator.normal(0, 0.3)
            rows.append({"step": step, "word_count": words, "target_word": entry["word"], "context_id": 0,
                         "context": "x", "surprisal": float(surprisal)})
    (tmp_path / "surprisal.json").write_text(json.dumps({"results": rows}))
    script = ("import json, sys\n"
              "from evaluation_pipeline.utils import AoAEvaluator\n"
              "r = AoAEvaluator(sys.argv[1]).compute_curve_fitness(json.load(open(sys.argv[2])))\n"
              "print(json.dumps({k: r[k] for k in ('curve_fitness', 'n_words', 'valid_words')}))\n")
    result = subprocess.run([str(pipeline_python()), "-c", script, str(fixture_data / "cdi_proportions.csv"),
                             str(tmp_path / "surprisal.json")], cwd=PIPELINE, capture_output=True, text=True,
                            timeout=600, env=offline_hub_env(tmp_path / "hf_home"))
    assert result.returncode == 0, result.stderr[-4000:]
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    ours = curve_fitness(rows, table)
    assert ours["words"] == theirs["valid_words"] and ours["n_words"] == theirs["n_words"] >= 10
    assert ours["curve_fitness"] == pytest.approx(theirs["curve_fitness"], abs=1e-9)
    assert ours["curve_fitness"] > 0.5  # the planted order is found


def test_babylm_command_scores_each_revision_once_and_summarises(babylm_run, submission_data, tmp_path):
    """Every revision gets the fast suite and the final model the full one, in the pipeline's tree; a second run
    scores nothing again; a revision whose scores.json is gone (a run killed mid-revision) is scored again, alone;
    the summary has a row per checkpoint and a learning-curve PNG."""
    from gatedgpt2.eval.babylm.submission import score_run

    run, _ = babylm_run
    summary = score_run(run, submission_data, tmp_path, progress=False)
    model_dir = tmp_path / run.name
    assert list(summary) == [*REVISIONS, "main"]
    for revision in REVISIONS:
        causal = model_dir / revision / "zero_shot" / "causal"
        assert (causal / "entity_tracking" / "entity_tracking_fast" / "predictions.json").is_file()
        assert (causal / "blimp" / "supplement_fast" / "predictions.json").is_file()
        assert not (causal / "comps").exists()  # not in the fast suite
    main = model_dir / "main" / "zero_shot" / "causal"
    assert (main / "comps" / "comps" / "predictions.json").is_file()
    assert (main / "reading" / "predictions.json").is_file()
    assert set(summary["main"]["tasks"]) == {"blimp", "supplement", "ewok", "entity_tracking", "wug_adj", "wug_past",
                                             "comps", "reading"}
    table = (model_dir / "summary.md").read_text()
    assert all(f"| {name} |" in table for name in [*REVISIONS, "main"]) and "ties)" in table
    assert (model_dir / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    stamps = {r: (model_dir / r / "scores.json").stat().st_mtime_ns for r in [*REVISIONS, "main"]}
    assert score_run(run, submission_data, tmp_path, progress=False) == summary
    assert {r: (model_dir / r / "scores.json").stat().st_mtime_ns for r in stamps} == stamps
    (model_dir / "chck_2M" / "scores.json").unlink()
    assert score_run(run, submission_data, tmp_path, progress=False) == summary
    changed = {r for r in stamps if (model_dir / r / "scores.json").stat().st_mtime_ns != stamps[r]}
    assert changed == {"chck_2M"}


def test_the_pipelines_fine_tuning_runs_on_our_checkpoint(checkpoint, fixture_data, tmp_path):
    """The pipeline's finetune/run.py (AutoModel + its classifier head, AutoProcessor with padding_side) trains and
    predicts on a GatedGPT2 checkpoint, with its default first-token head and with the last token read from
    left-padded batches, and writes predictions where its collate_preds.py reads them."""
    glue = fixture_data / "full_eval" / "glue_filtered"
    common = ["--model_name_or_path", str(checkpoint), "--results_dir", str(tmp_path / "results"), "--num_epochs",
              "1", "--batch_size", "8", "--valid_batch_size", "16", "--sequence_length", "128",
              "--metric_for_valid", "accuracy", "--seed", "42"]
    invocations = [("evaluation_pipeline.finetune.run",
                    ["--train_data", str(glue / f"{task}.train.jsonl"),
                     "--valid_data", str(glue / f"{task}.valid.jsonl"),
                     "--predict_data", str(glue / f"{task}.valid.jsonl"), "--task", task, "--num_labels", labels,
                     *common, *flags])
                   for task, labels, flags in [  # the metrics eval_finetuning.sh asks of each
                       ("rte", "2", ["--metrics", "accuracy", "f1", "mcc", "--take_final", "--padding_side", "left"]),
                       ("mnli", "3", ["--metrics", "accuracy"])]]
    run_pipeline_modules(invocations, tmp_path / "hf_home")
    for task, labels in (("rte", 2), ("mnli", 3)):
        folder = tmp_path / "results" / checkpoint.stem / "main" / "finetune" / task
        predictions = json.loads((folder / "predictions.json").read_text())[task]["predictions"]
        expected = len((glue / f"{task}.valid.jsonl").read_text().splitlines())
        assert [p["id"] for p in predictions] == [f"{task}_{i}" for i in range(expected)]
        assert {p["pred"] for p in predictions} <= set(range(labels))
        assert "accuracy" in (folder / "results.txt").read_text()


def test_the_pipelines_last_token_head_sees_the_same_state_padded_or_alone(checkpoint, tmp_path):
    """The pitfall of decoder fine-tuning with left padding: positions that count the padding. Ours count real
    tokens, so the pipeline's `--take_final --padding_side left` head reads, for each sentence of a batch, exactly
    the state it reads for that sentence alone."""
    script = textwrap.dedent("""
        import json, sys, argparse, torch
        from transformers import AutoProcessor
        from evaluation_pipeline.finetune.classifier_model import ModelForSequenceClassification
        args = argparse.Namespace(model_name_or_path=sys.argv[1], revision_name=None, enc_dec=False, causal=False,
                                  take_final=True, num_labels=2, classifier_layer_norm_eps=1e-5,
                                  classifier_dropout=0.0)
        torch.manual_seed(0)
        model = ModelForSequenceClassification(args).eval()
        tokenizer = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True, padding_side="left")
        texts = ["the dog sat on the mat today", "a cat", "where is the ball"]
        with torch.no_grad():
            batch = tokenizer(texts, return_tensors="pt", padding=True)
            together = model(batch.input_ids, batch.attention_mask)
            single = [tokenizer([t], return_tensors="pt") for t in texts]
            alone = torch.cat([model(encoded.input_ids, encoded.attention_mask) for encoded in single])
        print(json.dumps((together - alone).abs().max().item()))
    """)
    result = subprocess.run([str(pipeline_python()), "-c", script, str(checkpoint)], cwd=PIPELINE,
                            env=offline_hub_env(tmp_path / "hf_home", TOKENIZERS_PARALLELISM="false"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) <= 1e-5


def record_counts(folder: Path, uid_field: str | None) -> dict[str, int]:
    """Records per UID in a folder of JSONL files: the UID field's value (lower-cased, as collate_preds compares),
    else the file's stem."""
    counts: dict[str, int] = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                uid = json.loads(line)[uid_field].lower() if uid_field else path.stem
                counts[uid] = counts.get(uid, 0) + 1
    return counts


def test_collate_preds_builds_the_leaderboard_file_from_our_outputs(babylm_run, submission_data, tmp_path):
    """Our `babylm` command (every revision, the final model, AoA) and `finetune` command fill the results tree; the
    pipeline's collate_preds.py (run as collate_preds.sh runs it, --fast, strict-small) builds the leaderboard file
    from it. Its constants are the real data's sizes and the real track's 19 revisions; they are set to the fixture's
    sizes (counted from the data files, not from our outputs) and the run's 4 revisions. Its fast-eval scores,
    which it recomputes from our predictions and the data, equal ours."""
    run, _ = babylm_run
    results = tmp_path / "results"
    data = submission_data
    subprocess.run([sys.executable, "-m", "gatedgpt2.eval", "babylm", "--run", str(run), "--data", str(data),
                    "--results-dir", str(results), "--cdi-words", str(data / "full_eval" / "aoa" / "cdi_childes.json")],
                   cwd=ROOT, check=True, capture_output=True, timeout=1200)
    tuned = subprocess.run([sys.executable, "-m", "gatedgpt2.eval", "finetune", "--model", str(run), "--data",
                            str(data), "--results-dir", str(results), "--epochs", "1", "--batch-size", "8"],
                           cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert tuned.returncode == 0, tuned.stderr[-4000:]

    full, fast = data / "full_eval", data / "fast_eval"

    def per_ops(folder: Path) -> dict[str, int]:  # entity tracking's UIDs: <file>_<numops>_ops
        return dict(Counter(f"{p.stem}_{json.loads(line)['numops']}_ops" for p in folder.glob("*.jsonl")
                            for line in p.read_text().splitlines()))

    words = json.loads((full / "aoa" / "cdi_childes.json").read_text())
    sizes = {
        "fast": {"blimp": 10, "blimp_supplement": 10, "ewok": 10,
                 "entity_tracking": per_ops(fast / "entity_tracking_fast"),
                 "reading": len((fast / "reading" / "reading_data.csv").read_text().splitlines()) - 1,
                 "wug_adj": 20, "wug_past": 10},
        "full": {"blimp": record_counts(full / "blimp_filtered", "UID"),
                 "blimp_supplement": record_counts(full / "supplement_filtered", None),
                 "ewok": record_counts(full / "ewok_filtered", "Domain"),
                 "entity_tracking": per_ops(full / "entity_tracking"),
                 "reading": len((full / "reading" / "reading_data.csv").read_text().splitlines()) - 1,
                 "wug_adj": 20, "wug_past": 10,
                 "comps": {"base": 10, "wugs": 10, "wugs_dist_before": 10, "wugs_dist_in_between": 10},
                 **{task: len((full / "glue_filtered" / f"{task}.valid.jsonl").read_text().splitlines())
                    for task in ("boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc")}},
        "aoa": sum(len(v) for k, v in words.items() if len(k) > 1),
        "revisions": list(REVISIONS),
    }
    script = textwrap.dedent("""
        import json, sys
        import evaluation_pipeline.collate_preds as collate
        sizes = json.loads(sys.argv[1])
        collate.FAST_SIZES.update(sizes["fast"])
        collate.FULL_SIZES.update(sizes["full"])
        collate.AOA_SIZE = sizes["aoa"]
        collate.STRICT_SMALL_FAST_REVISIONS = sizes["revisions"]
        sys.argv = ["collate_preds", *sys.argv[2:]]
        collate.main()
    """)
    result = subprocess.run(
        [str(pipeline_python()), "-c", script, json.dumps(sizes), f"--model_path_or_name={run.name}",
         "--backend=causal", "--fast", "--track=strict-small", f"--results_dir={results}",
         f"--fast_eval_dir={fast}"], cwd=PIPELINE, env=offline_hub_env(tmp_path / "hf_home"),
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    board = json.loads((results / run.name / "all_full_preds_and_fast_scores_causal.json").read_text())
    assert set(board) == {"blimp", "blimp_supplement", "ewok", "entity_tracking", "wug_adj", "wug_past", "comps",
                          "reading", "aoa", "glue", "fast_eval_results"}
    assert set(board["glue"]) == {"boolq", "mnli", "mrpc", "multirc", "qqp", "rte", "wsc"}

    ours = json.loads((results / run.name / "summary.json").read_text())
    leaderboard = board["fast_eval_results"]
    for index, revision in enumerate(REVISIONS):
        mine = ours[revision]["tasks"]
        for task, key in (("blimp", "blimp"), ("supplement", "blimp_supplement"), ("ewok", "ewok")):
            assert 100 * np.mean(list(leaderboard[key][index].values())) == pytest.approx(mine[task]["score"])
        regular = [v for k, v in leaderboard["entity_tracking"][index].items() if k.startswith("regular")]
        assert 100 * np.mean(regular) == pytest.approx(mine["entity_tracking"]["score"])
        for task in ("wug_adj", "wug_past"):
            assert list(leaderboard[task][index].values())[0] == pytest.approx(mine[task]["score"], abs=1e-6)
        reading = leaderboard["reading"][index]
        assert 100 * reading["rt"] == pytest.approx(mine["reading"]["eye_tracking"], rel=1e-6)
        assert 100 * reading["spr"] == pytest.approx(mine["reading"]["self_paced_reading"], rel=1e-6)
