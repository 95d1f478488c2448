"""Every benchmark script runs end to end on tiny arguments and writes the JSON behind bench/README.md's tables.
What the benchmarks time is tested elsewhere (batched vs naive scoring, cached vs uncached generation); here only that
the scripts work and report what their tables show. No timing is asserted."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.models import tiny_model

ROOT = Path(__file__).resolve().parents[1]
EVAL_DATA = ROOT.parent / "shared" / "data" / "babylm" / "evaluation_data"


def run_bench(script: str, out: Path, *args: str) -> dict:
    subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True, text=True)
    return json.loads(out.read_text())


def test_train_step_compares_every_variant_with_the_peer(tmp_path):
    result = run_bench("train_step.py", tmp_path / "t.json", "--sizes", "tiny", "--image-tokens", "1", "--steps",
                       "1", "--warmup", "0", "--no-memory")
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["peer", "soft-feature", "soft-feature, linear encoder", "soft-token",
                                          "hard-feature", "film", "none"]
    peer = rows[0]
    assert peer["ratio_to_peer"] == peer["flops_ratio_to_peer"] == 1.0
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["params"] > 0 for r in rows)
    # the hard gate's extra 2D -> 2D projection is real work, which the FLOP column must show
    hard = next(r for r in rows if r["model"] == "hard-feature")
    assert hard["flops_ratio_to_peer"] > next(r for r in rows if r["model"] == "soft-feature")["flops_ratio_to_peer"]


def test_train_step_peak_memory_worker_reports_its_own_process():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--peak-memory-worker", "tiny", "1",
                          "none"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert 100 < float(out.split()[-1]) < 10_000  # MB: torch alone is a few hundred


def test_generate_reports_the_cache_speedup_against_its_own_no_cache_run(tmp_path):
    result = run_bench("generate.py", tmp_path / "g.json", "--batches", "2", "--prompt", "4", "--new-tokens", "3",
                       "--image-tokens", "5", "--repeats", "1")
    runs = {r["run"]: r for r in result["rows"]}
    assert set(runs) == {"ours, cache", "ours, no cache", "peer, cache"}
    assert runs["ours, no cache"]["speedup_vs_no_cache"] == 1.0 and runs["peer, cache"]["ours_vs_peer"] == 1.0
    assert all(r["new_tokens_per_s"] > 0 and r["batch"] == 2 for r in runs.values())


@pytest.mark.skipif(not EVAL_DATA.is_dir(), reason="../shared/data/babylm is not beside the repository")
def test_eval_scoring_runs_the_naive_and_batched_scorers_on_blimp_fast(tmp_path):
    from gatedgpt2.data import train_tokenizer

    tokenizer = train_tokenizer(["the cat sat on the mat", "a dog ran"] * 50, vocab_size=300, model_max_length=128)
    model = tiny_model(vocab_size=len(tokenizer), n_positions=128, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    result = run_bench("eval_scoring.py", tmp_path / "e.json", "--model", str(tmp_path / "model"), "--batch-sizes",
                       "8", "--naive-pairs", "5", "--pairs", "40")
    naive, batched = result["rows"]
    assert (naive["batch_size"], naive["pairs"], batched["batch_size"], batched["pairs"]) == (
        "naive (1 sentence)", 5, 8, 40)
    assert naive["speedup_vs_naive"] == 1.0 and batched["speedup_vs_naive"] > 0 and batched["peak_rss_mb"] > 0


PIPELINE = ROOT.parent / "shared" / "vendor" / "babylm-evaluation-pipeline-2025"


@pytest.mark.skipif(not EVAL_DATA.is_dir() or not PIPELINE.is_dir(), reason="needs ../shared (pipeline and data)")
def test_babylm_pipeline_compares_both_scorers_task_by_task(tmp_path):
    from gatedgpt2.data import train_tokenizer

    tokenizer = train_tokenizer(["the cat sat on the mat", "a dog ran", "box 1 contains the key"] * 50,
                                vocab_size=300, model_max_length=256)
    # wide weights: candidates' scores far apart, so that float rounding cannot flip a choice
    model = tiny_model(vocab_size=len(tokenizer), n_positions=256, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, initializer_range=0.5)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    result = run_bench("babylm_pipeline.py", tmp_path / "b.json", "--model", str(tmp_path / "model"), "--tasks",
                       "wug_past,entity_tracking,reading", "--scale", "1", "--repeats", "2")
    rows = {r["task"]: r for r in result["rows"]}
    assert set(rows) == {"wug_past", "entity_tracking", "reading"}
    assert rows["wug_past"]["items"] == 10 and rows["reading"]["items"] > 50
    assert all(r["choices_differing"] == 0 and r["max_relative_difference"] < 1e-4 for r in rows.values())
    assert all(r["pipeline_s"] > r["pipeline_loading_s"] > 0 and r["ours_s"] > r["ours_loading_s"] > 0
               and r["speedup"] > 0 for r in rows.values())


def test_data_reports_text_rates_and_embedding_memory_per_loader(tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.train").write_text(" ".join(f"The cat number {i} sat on the mat. Did it?" for i in range(300)))
    result = run_bench("data.py", tmp_path / "d.json", "--text-dir", str(text), "--vocab-size", "200", "--rows", "50",
                       "--image-tokens", "2", "--batches", "2", "--batch-size", "4")
    runs = {r["run"]: r for r in result["text"]}
    assert runs["peer: bare tokenizer, batches of 2000"]["ratio_to_peer"] == 1.0
    assert {r["lines"] for r in runs.values()} == {600}  # the one-line file was split into its 600 sentences
    packed = [r for name, r in runs.items() if name.startswith("text_dataset, packed,") and "tokens" in r]
    assert len(packed) == 2 and packed[0]["tokens"] == packed[1]["tokens"]  # 1 and 2 processes build the same blocks
    embeddings = result["embeddings"]
    assert [(r["image_tokens"], r["mode"]) for r in embeddings] == [(2, "mmap"), (2, "np.load")]
    assert all(r["rows"] == 50 and r["rows_read"] == 8 and r["rows_per_s"] > 0 for r in embeddings)


@pytest.mark.skipif(not EVAL_DATA.is_dir(), reason="../shared/data/babylm is not beside the repository")
def test_the_gpu_benchmark_runs_its_plumbing_on_cpu_and_writes_its_table(tmp_path):
    """`bench/gpu.py --tiny`: every benchmark at tiny size on CPU under bf16 autocast, the training step eager and
    compiled (aot_eager), each ours against the peer; the JSON files and the summary table it writes."""
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--out-dir", str(tmp_path)], cwd=ROOT,
                   check=True, capture_output=True, text=True)
    names = {"train_step", "train_step-compiled", "generate", "eval_scoring"}
    assert {p.name for p in tmp_path.iterdir()} == {f"gpu-{n}.json" for n in names} | {"gpu-summary.md"}
    for name in names:
        result = json.loads((tmp_path / f"gpu-{name}.json").read_text())
        assert result["dtype"] == "bf16-autocast" and result["device"] == "cpu" and len(result["load_before"]) == 3
    compiled = json.loads((tmp_path / "gpu-train_step-compiled.json").read_text())
    assert compiled["compile"] == "aot_eager" and [r["model"] for r in compiled["rows"]] == ["peer", "soft-feature"]
    assert all(r["compile_s"] is not None and r["tokens_per_s"] > 0 for r in compiled["rows"])
    summary = (tmp_path / "gpu-summary.md").read_text()
    assert "| train_step-compiled | tiny, 1 image token(s), soft-feature |" in summary


def test_one_thread_mode_times_process_cpu_time_and_writes_cpu_files_apart_from_gpu_ones(tmp_path):
    result = run_bench("train_step.py", tmp_path / "t.json", "--sizes", "tiny", "--image-tokens", "1", "--steps",
                       "1", "--warmup", "0", "--no-memory", "--one-thread", "--models", "none", "--dtype", "bf16")
    assert result["clock"] == "process CPU time, 1 thread" and result["machine"].endswith(", 1 thread")
    assert result["dtype"] == "bf16" and [r["model"] for r in result["rows"]] == ["peer", "none"]
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    common = sys.modules["bench_common"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(common)
    setup = common.Setup(torch.device("cuda"), "bf16-autocast", compile=False, one_thread=False)
    assert setup.out_path("generate", None) == ROOT / "bench" / "results" / "gpu-generate.json"
    assert setup.out_path("generate", "x.json") == Path("x.json")


def test_ddp_find_unused_times_both_wrappers_in_two_processes(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "bench" / "ddp_find_unused.py"), "--size", "tiny", "--seq", "16",
                    "--batch", "2", "--steps", "1", "--warmup", "1", "--out",
                    str(tmp_path / "d.json")], cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    rows = {r["run"]: r for r in json.loads((tmp_path / "d.json").read_text())["rows"]}
    assert set(rows) == {"find_unused_parameters=True", "find_unused_parameters=False"}
    assert rows["find_unused_parameters=False"]["cost_vs_without"] == 1.0
    assert all(r["step_s"] > 0 for r in rows.values())
