"""The sweep command: a grid of real (tiny) trainings, evaluated, tabulated, plotted, and resumable."""

import json
from pathlib import Path

import pytest
import yaml

from gatedgpt2.pipeline.sweep import main, plan
from gatedgpt2.pipeline.sweep_spec import Sweep
from gatedgpt2.pipeline.sweep_tables import aggregate

EVAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "babylm" / "evaluation_data"


def world_files(world, kind: str) -> dict:
    """train.py data keys for the tiny world with `kind` image embeddings ("global" or "cls_patches")."""
    return {"text_dir": f"{world}/text/train", "eval_text_dir": f"{world}/text/dev",
            "caption_files": [f"{world}/captions/train_captions.json"],
            "embedding_files": [f"{world}/captions/train_{kind}.npy"],
            "eval_caption_files": [f"{world}/captions/dev_captions.json"],
            "eval_embedding_files": [f"{world}/captions/dev_{kind}.npy"]}


def write_sweep(tmp_path, world, runs: dict, seeds=(0, 1)) -> Path:
    base = {
        "model": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_inner": 64, "image_encoder_layers": 1,
                  "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
        "world_dir": str(world), "eval_world": True, **world_files(world, "global"),
        "cache_dir": str(tmp_path / "cache"), "vocab_size": 200, "block_size": 64,
        "per_device_train_batch_size": 16, "max_steps": 6, "learning_rate": 3e-3, "eval_strategy": "no",
        "save_strategy": "no", "logging_steps": 2, "report_to": "none", "use_cpu": True,
        "dataloader_pin_memory": False, "disable_tqdm": True,
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep = {"config": "base.yaml", "common": {"max_steps": 4}, "seeds": list(seeds),
             "evaluate": ["world", "gates", "knockout"], "work_dir": str(tmp_path / "work"),
             "results": str(tmp_path / "results"), "runs": runs}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_a_sweep_trains_evaluates_tabulates_and_resumes(tiny_world, tmp_path, capsys):
    patches = {"image_tokens": "cls_patches", "model": {"gate_granularity": "token"},
               **world_files(tiny_world, "cls_patches")}
    path = write_sweep(tmp_path, tiny_world, {"patches": patches, "not_run": {}})
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "tables": {"Knockout": {"runs": ["patches", "not_run"],
                                                                    "metrics": ["vqa", "vqa_knockout_cls"]}}}))
    manifest = (tiny_world / "world.json").read_text()
    main([str(path), "--only", "patches", "--jobs", "2"])  # one seed per process
    assert (tiny_world / "world.json").read_text() == manifest  # the named world is read, never rewritten
    results = tmp_path / "results"
    payload = json.loads((results / "results.json").read_text())
    assert set(payload["runs"]) == {"patches"}
    result = payload["runs"]["patches"]
    metrics = result["metrics"]
    assert result["seeds"] == [0, 1] and result["overrides"] == patches
    for name in ("minimal_pairs_macro", "winoground_attribute", "winoground_relation", "vqa", "vqa_no_image",
                 "gate_pos_kw_h", "gate_pos_epsilon_squared", "gate_pos_within_word_type_percentile", "gate_content",
                 "gate_function", "gate_beta_content_x_concreteness", "train_loss",
                 "vqa_knockout_none", "vqa_knockout_cls", "vqa_knockout_patches", "vqa_knockout_random_1",
                 "vqa_knockout_renormalised_cls", "vqa_knockout_renormalised_patches", "cls_attention_share"):
        assert metrics[name]["n"] == 2, name
    assert metrics["train_loss"]["values"][0] != metrics["train_loss"]["values"][1]  # two seeds, two trainings
    assert 0.0 <= metrics["gate_content"]["mean"] <= 1.0
    assert metrics["vqa_knockout_none"]["values"] == pytest.approx(metrics["vqa"]["values"])
    table = (results / "results.md").read_text()
    main_table, knockout_table = table.split("### Knockout")
    assert "| patches |" in main_table and "±" in main_table and "not_run" not in main_table
    assert "| run | vqa | vqa_knockout_cls |" in knockout_table
    assert "| not_run (not run yet) | - | - |" in knockout_table
    assert (results / "results.png").stat().st_size > 0
    assert (tmp_path / "work" / "patches" / "seed1" / "gates" / "gates.csv").is_file()
    record = json.loads((results / "runs" / "patches" / "seed0.json").read_text())
    assert record["seed"] == 0 and record["metrics"]["vqa"] == metrics["vqa"]["values"][0]

    # A rerun does nothing but rewrite the table; deleting one result re-evaluates that run without retraining it.
    capsys.readouterr()
    weights = tmp_path / "work" / "patches" / "seed1" / "model.safetensors"
    mtime = weights.stat().st_mtime
    (results / "runs" / "patches" / "seed1.json").unlink()
    main([str(path), "--only", "patches"])
    assert "2 runs, 1 to do" in capsys.readouterr().out
    assert weights.stat().st_mtime == mtime
    report = json.loads((tmp_path / "work" / "patches" / "seed1" / "report" / "report.json").read_text())
    assert json.loads((results / "runs" / "patches" / "seed1.json").read_text())["wall_time_s"] > report["wall_time_s"]
    assert json.loads((results / "results.json").read_text())["runs"]["patches"]["metrics"]["vqa"] == metrics["vqa"]


def test_runs_can_start_from_an_earlier_runs_checkpoint(tiny_world, tmp_path):
    path = write_sweep(tmp_path, tiny_world, {"patches": {"image_tokens": "cls_patches"},
                                  "lora": {"model_name_or_path": "{work_dir}/patches/seed{seed}", "lora_r": 4}})
    sweep = Sweep(path)
    config = sweep.train_config("lora", 1)
    assert config["model_name_or_path"] == f"{tmp_path / 'work'}/patches/seed1"
    assert config["seed"] == 1 and config["output_dir"] == f"{tmp_path / 'work'}/lora/seed1"
    assert config["max_steps"] == 4 and config["model"]["n_embd"] == 32 and config["report"] is True


def test_a_runs_model_fields_go_over_the_base_configs_field_by_field(tiny_world, tmp_path, caplog):
    path = write_sweep(tmp_path, tiny_world, {"none": {"model": {"gate": "none"}}, "old": {"fusion": "residual"}})
    sweep = Sweep(path)
    assert sweep.train_config("none", 0)["model"] == {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_inner": 64,
                                                      "image_encoder_layers": 1, "resid_pdrop": 0.0,
                                                      "embd_pdrop": 0.0, "attn_pdrop": 0.0, "gate": "none"}
    with caplog.at_level("WARNING"):  # a sweep written before `model:` still runs
        assert sweep.train_config("old", 0)["model"]["fusion"] == "residual"
    assert "run old: `fusion` is a model config field; write it as `model: {fusion: residual}`" in caplog.text
    path.write_text(path.read_text().replace("gate: none", "gaet: none"))
    with pytest.raises(ValueError, match=r"run none: model\.gaet is not a GatedGPT2Config field"):
        Sweep(path)


def test_the_plan_covers_every_run_seed_by_seed_and_keeps_a_run_behind_the_one_it_starts_from(tiny_world, tmp_path):
    lora = {"model_name_or_path": "{work_dir}/patches/seed{seed}", "lora_r": 4}
    path = write_sweep(tmp_path, tiny_world, {"base": {}, "patches": {}, "lora": lora, "other": {}}, seeds=(0, 1))
    sweep = Sweep(path)
    assert plan(sweep) == [[("base", 0), ("patches", 0), ("lora", 0), ("other", 0),
                            ("base", 1), ("patches", 1), ("lora", 1), ("other", 1)]]
    lanes = plan(sweep, jobs=2)
    assert sorted(sum(lanes, [])) == sorted(plan(sweep)[0])
    for lane in lanes:  # each seed's lora runs in its patches' lane, after it
        for seed in (0, 1):
            if ("lora", seed) in lane:
                assert lane.index(("patches", seed)) == lane.index(("lora", seed)) - 1
    assert [len(lane) for lane in lanes] == [4, 4]

    done = sweep.result_path("patches", 0)  # finished runs drop out; their dependents stay
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    assert ("patches", 0) not in sum(plan(sweep, jobs=2), []) and ("lora", 0) in sum(plan(sweep, jobs=2), [])
    assert plan(sweep, only=["lora"]) == [[("lora", 0), ("lora", 1)]]


def test_zero_shot_with_revisions_gives_learning_curves(tiny_world, tmp_path):
    data = tmp_path / "evaluation_data" / "fast_eval"
    for task, files in (("blimp_fast", ["anaphor_gender_agreement", "adjunct_island"]),
                        ("supplement_fast", ["hypernym"])):
        (data / task).mkdir(parents=True)
        for name in files:
            lines = (EVAL_DATA / "fast_eval" / task / f"{name}.jsonl").read_text().splitlines()[:6]
            (data / task / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    # the tiny world's 200-token BPE spells BabyLM sentences out in up to ~110 tokens
    path = write_sweep(tmp_path, tiny_world, {"base": {"revision_words": "60,150", "block_size": 256}}, seeds=(0,))
    spec = yaml.safe_load(path.read_text())
    spec.update(evaluate=["zero_shot"], zero_shot={"data": str(tmp_path / "evaluation_data"), "revisions": True})
    path.write_text(yaml.safe_dump(spec))
    main([str(path)])
    payload = json.loads((tmp_path / "results" / "results.json").read_text())
    metrics = payload["runs"]["base"]["metrics"]
    assert set(metrics) >= {"blimp", "supplement"} and "vqa" not in metrics  # only what `evaluate` asks for
    curve = payload["curves"]["base"][0]
    assert curve["words"][:2] == [60, 150] and curve["words"][2] > 150  # the revisions, then the final model
    assert curve["blimp"][-1] == metrics["blimp"]["mean"] and len(curve["supplement"]) == 3
    assert all(0 <= accuracy <= 100 for accuracy in curve["blimp"] + curve["supplement"])
    assert (tmp_path / "results" / "learning_curves.png").stat().st_size > 0
    table = (tmp_path / "results" / "results.md").read_text()
    assert "(one seed, so no std)" in table and "±" not in table
    curve_rows = table.split("### Learning curves: zero-shot accuracy by words seen")[1].strip().splitlines()[2:]
    assert [row.split(" | ")[1] for row in curve_rows] == ["60", "150", f"{curve['words'][2]:,}"]
    assert curve_rows[-1].endswith(f" | {curve['blimp'][-1]:.1f} | {curve['supplement'][-1]:.1f} |")


def test_bad_sweep_files_are_named(tiny_world, tmp_path):
    path = write_sweep(tmp_path, tiny_world, {"base": {}})
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "evaluate": ["world", "vibes"]}))
    with pytest.raises(ValueError, match=r"sweep.yaml: unknown evaluations \['vibes'\]"):
        Sweep(path)
    path.write_text(yaml.safe_dump({**spec, "tables": {"T": {"runs": ["base", "ghost"], "metrics": ["vqa"]}}}))
    with pytest.raises(ValueError, match=r"table 'T' names runs not in `runs`: \['ghost'\]"):
        Sweep(path)
    path.write_text(yaml.safe_dump({**spec, "tables": {"T": {"runs": ["base"]}}}))
    with pytest.raises(ValueError, match="table 'T' must be a mapping with `runs` and `metrics` lists"):
        Sweep(path)
    path.write_text(yaml.safe_dump({**spec, "seed": 3}))
    with pytest.raises(ValueError, match=r"unknown keys \['seed'\]"):
        Sweep(path)
    path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if k != "runs"}))
    with pytest.raises(ValueError, match="missing key 'runs'"):
        Sweep(path)
    path.write_text(yaml.safe_dump({**spec, "config": "nowhere.yaml"}))
    with pytest.raises(FileNotFoundError, match="nowhere.yaml does not exist"):
        Sweep(path)
    path.write_text(yaml.safe_dump({**spec, "runs": {"lora": {"model_name_or_path": "{work_dir}/gone/seed0"}}}))
    with pytest.raises(ValueError, match="run 'lora' starts from '{work_dir}/gone/seed0', but there is no run 'gone'"):
        Sweep(path)
    path.write_text(yaml.safe_dump({**spec, "runs": {"a": {"model_name_or_path": "{work_dir}/b/seed0"},
                                                     "b": {"model_name_or_path": "{work_dir}/a/seed{seed}"}}}))
    with pytest.raises(ValueError, match="runs start from each other in a circle: a -> b -> a"):
        Sweep(path)
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"--only names runs not in .*: \['other'\]"):
        main([str(path), "--only", "other"])
    with pytest.raises(SystemExit):
        main([str(path), "--jobs", "0"])


def test_aggregate_is_mean_and_sample_std_over_seeds():
    records = [{"metrics": {"vqa": 50.0, "gate": None}}, {"metrics": {"vqa": 60.0, "gate": None}},
               {"metrics": {"vqa": 70.0}}]
    summary = aggregate(records)
    assert summary == {"vqa": {"mean": 60.0, "std": 10.0, "n": 3, "values": [50.0, 60.0, 70.0]}}


def test_a_failing_run_is_reported_after_the_others_ran(tiny_world, tmp_path, capfd):
    path = write_sweep(tmp_path, tiny_world, {"bad_a": {"no_such_key": 1}, "bad_b": {"other_bad_key": 2}}, seeds=(0,))
    with pytest.raises(RuntimeError, match=r"2 run\(s\) failed .*: bad_a seed 0, bad_b seed 0; rerun to retry them"):
        main([str(path)])
    assert "unknown keys ['no_such_key']" in capfd.readouterr().err  # train.py's own error, from its process


def test_matched_and_shuffled_images_share_one_tokenizer_and_are_compared_seed_by_seed(tiny_world, tmp_path):
    """The BabyLM pairing experiment in miniature: one tokenizer trained once for both arms, the held-out text and
    captions scored per token, BLiMP item by item, and the arms' paired differences tabulated."""
    data = tmp_path / "evaluation_data" / "fast_eval" / "blimp_fast"
    data.mkdir(parents=True)
    lines = (EVAL_DATA / "fast_eval" / "blimp_fast" / "adjunct_island.jsonl").read_text().splitlines()[:8]
    (data / "adjunct_island.jsonl").write_text("\n".join(lines) + "\n")
    path = write_sweep(tmp_path, tiny_world, {"matched": {}, "shuffled": {"image_pairing": "shuffled"}})
    spec = yaml.safe_load(path.read_text())
    spec.update(shared_tokenizer=True, evaluate=["dev_loss", "zero_shot"],
                zero_shot={"data": str(tmp_path / "evaluation_data"), "tasks": "blimp"},
                comparisons={"pairing": {"runs": ["shuffled", "matched"],
                                         "metrics": ["dev_text_loss_per_token", "dev_captions_loss_per_token",
                                                     "blimp"]}})
    spec["common"]["block_size"] = 256  # the tiny world's BPE spells BabyLM sentences out in up to ~110 tokens
    path.write_text(yaml.safe_dump(spec))
    main([str(path)])
    work = tmp_path / "work"
    tokenizer = (work / "tokenizer" / "tokenizer.json").read_text()
    for run in ("matched", "shuffled"):
        for seed in (0, 1):
            assert (work / run / f"seed{seed}" / "tokenizer.json").read_text() == tokenizer
            config = yaml.safe_load((work / run / f"seed{seed}" / "sweep_config.yaml").read_text())
            assert config["tokenizer_name"] == str(work / "tokenizer")
    payload = json.loads((tmp_path / "results" / "results.json").read_text())
    losses = {run: payload["runs"][run]["metrics"]["dev_captions_loss_per_token"]["values"] for run in payload["runs"]}
    assert all(0 < value < 10 for values in losses.values() for value in values)
    comparison = payload["comparisons"]["pairing"]
    assert comparison["reference"] == "shuffled"
    entry = comparison["metrics"]["dev_captions_loss_per_token"]["matched"]
    assert entry["seeds"] == [0, 1]
    assert entry["differences"] == pytest.approx([m - s for m, s in zip(losses["matched"], losses["shuffled"])])
    assert entry["p_paired_t_holm"] == entry["p_paired_t"]  # a family of one
    blimp = comparison["metrics"]["blimp"]["matched"]["items_by_seed"]
    assert set(blimp) == {"0", "1"} or set(blimp) == {0, 1}
    assert all(i["items"] == 8 for i in blimp.values())
    table = (tmp_path / "results" / "results.md").read_text()
    assert "### pairing" in table and "| dev_captions_loss_per_token | matched |" in table


def test_shuffled_pairing_gives_every_caption_another_caption_s_image():
    import datasets

    from gatedgpt2.data import with_shuffled_images

    captions = datasets.Dataset.from_dict({"input_ids": [[1]] * 50, "image_index": list(range(50))})
    paired = with_shuffled_images(captions, 50, seed=0)["image_index"]
    assert sorted(paired) == list(range(50)) and all(p != i for i, p in enumerate(paired))
    assert paired == with_shuffled_images(captions, 50, seed=0)["image_index"]
    assert paired != with_shuffled_images(captions, 50, seed=1)["image_index"]
    with pytest.raises(ValueError, match="at least 2 captions"):
        with_shuffled_images(captions.select([0]), 1, seed=0)


def test_the_factorial_evaluation_reports_the_gate_against_its_nulls(tmp_path):
    """What a sweep's `factorial` evaluation records, on a tiny untrained model (the nulls' options as a sweep passes
    them); a sweep that names an unknown option fails when read."""
    from gatedgpt2.data import WorldFiles, WorldSpec, train_tokenizer, write_world
    from gatedgpt2.eval.metrics import factorial_metrics
    from gatedgpt2.trainer.arguments import DataArguments
    from tests.helpers.models import tiny_model

    world = WorldFiles(write_world(tmp_path / "factorial", WorldSpec(seed=2, train_captions=60, train_sentences=30,
                                                                     dev_captions=60, dev_sentences=5, embed_dim=32,
                                                                     design="factorial")))
    tokenizer = train_tokenizer(json.loads(world.captions("train").read_text()), 150, 64)
    model = tiny_model(vocab_size=len(tokenizer), n_positions=64, image_embed_dim=32, initializer_range=0.3)
    metrics = factorial_metrics(model, tokenizer, world, "global", tmp_path / "controls", untrained_draws=3,
                                permutations=20, resamples=50, min_count=2)
    for name in ("gate_cell_epsilon_squared", "gate_cell_epsilon_squared_untrained_percentile", "gap_function",
                 "gap_function_ci_low", "gap_function_ci_high", "gap_function_untrained_percentile",
                 "gap_function_shuffled_percentile", "next_word_rho_content", "gate_function_before_depicted"):
        assert isinstance(metrics[name], float), name
    assert metrics["gap_function_ci_low"] <= metrics["gap_function_ci_high"]
    report = json.loads((tmp_path / "controls" / "cell" / "gate_controls.json").read_text())
    assert len(report["classes"]) == 8
    with pytest.raises(ValueError, match="the factorial world has no held-out sets"):
        DataArguments(world_design="factorial", eval_world=True)
    assert not DataArguments(world_design="factorial").evaluates_world and DataArguments().evaluates_world

    path = write_sweep(tmp_path, tmp_path / "world", {"base": {}})
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "factorial": {"untrained_draw": 3}}))
    with pytest.raises(ValueError, match=r"unknown `factorial` options \['untrained_draw'\]"):
        Sweep(path)


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs" / "sweeps")
                                        .glob("*.yaml")))
def test_every_committed_sweep_file_is_valid(name):
    sweep = Sweep(Path(__file__).resolve().parents[1] / "configs" / "sweeps" / name)
    for run in sweep.runs:
        sweep.train_config(run, sweep.seeds[0])  # every run's full config resolves
