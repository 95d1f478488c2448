"""A run's folder is never half a model, a resume is the same run or refused, a broken model never scores, and bad
arguments are refused by name before anything runs."""

import errno
import json
import shutil
import signal
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import train
from gatedgpt2.data.model_folder import INCOMPLETE, install_model
from gatedgpt2.eval.__main__ import main as eval_main
from gatedgpt2.eval.checkpoint import load_checkpoint
from tests.helpers.training import TINY_YAML, log_history, run_subprocess, tiny_train_args, weights

RUN = ["--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "3"]


@pytest.fixture(scope="module")
def finished_run(tiny_world, tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoint-2 and checkpoint-4 (read only: tests copy what they change)."""
    out = tmp_path_factory.mktemp("finished")
    train.main([TINY_YAML, *tiny_train_args(tiny_world, out, *RUN)])
    return out / "run"


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def args_into(world, out_dir: Path, *extra: str) -> list[str]:
    """The finished run's arguments with its output folder at out_dir/run (the cache at out_dir/cache)."""
    return [TINY_YAML, *tiny_train_args(world, out_dir, *RUN, *extra)]


# ------------------------------------------------------------------------------------------------ the final save

KILL_MID_INSTALL = """
import os, signal, sys
import gatedgpt2.data.model_folder as model_folder
import train

moves = [0]
def replace_then_die(source, target, _replace=os.replace):
    if os.path.basename(os.path.dirname(source)) == ".model.partial":
        moves[0] += 1
        if moves[0] == 3:  # the marker is there, the old files are gone, two new ones are in place
            os.kill(os.getpid(), signal.SIGKILL)
    return _replace(source, target)

model_folder.os.replace = replace_then_die
train.main(sys.argv[1:])
"""


def test_a_final_save_cut_off_is_refused_by_every_reader_and_a_resume_saves_it_again(tiny_world, tmp_path,
                                                                                   finished_run):
    """SIGKILL while the final model's files are moved into the output folder: eval, card and push name the folder as
    incomplete (never 'install sentencepiece' or a half model scored); resuming from checkpoint-4 (= max_steps)
    trains no further step and saves the same model as the uninterrupted run."""
    from gatedgpt2.hub_cards.card import write_card
    from gatedgpt2.hub_cards.push import push

    args = args_into(tiny_world, tmp_path)
    killed = run_subprocess([sys.executable, "-c", KILL_MID_INSTALL, *args])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert (run_dir / INCOMPLETE).is_file()
    for reader in (lambda: load_checkpoint(str(run_dir), device="cpu"), lambda: write_card(run_dir),
                   lambda: push(run_dir, "org/x", dry_run=True)):
        with pytest.raises(ValueError, match=rf"{run_dir} is incomplete: the save of its model was cut off"):
            reader()

    summary = train.main([*args, "--resume_from_checkpoint", "true"])
    assert not (run_dir / INCOMPLETE).exists() and not (run_dir / ".model.partial").exists()
    assert summary["train"]["global_step"] == 4 and summary["train"]["resumed_from_step"] == 4
    assert [h["step"] for h in log_history(run_dir) if "loss" in h] == [1, 2, 3, 4]  # no fifth step
    expected, actual = weights(finished_run), weights(run_dir)
    assert sorted(actual) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=0, rtol=0, msg=name)
    load_checkpoint(str(run_dir), device="cpu")


def test_resuming_the_checkpoint_at_max_steps_trains_no_further_step(tiny_world, tmp_path, finished_run):
    run_dir = copy_of(finished_run, tmp_path)
    summary = train.main([*args_into(tiny_world, tmp_path), "--resume_from_checkpoint", str(run_dir / "checkpoint-4")])
    assert summary["train"]["global_step"] == 4
    checkpoint, final = weights(run_dir / "checkpoint-4"), weights(run_dir)
    for name in checkpoint:
        torch.testing.assert_close(final[name], checkpoint[name], atol=0, rtol=0, msg=name)


def test_installing_a_model_replaces_every_file_of_the_earlier_save(tmp_path, finished_run):
    """An earlier save in two shards and a new one in one file: the old shards and index go, none is mixed in."""
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "adapter_config.json", "layers.py"):
        (folder / name).write_text("old")
    (folder / "notes.txt").write_text("the user's")
    staged = folder / ".model.partial"
    shutil.copytree(finished_run / "checkpoint-4", staged,
                    ignore=shutil.ignore_patterns("*.pt", "*.pth", "trainer_state.json", "run_definition.json"))
    install_model(staged, folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [p.name for p in (finished_run / "checkpoint-4").iterdir()
         if p.suffix not in (".pt", ".pth") and p.name not in ("trainer_state.json", "run_definition.json")]
        + ["notes.txt"])
    assert (folder / "layers.py").read_text() != "old"
    load_checkpoint(str(folder), device="cpu")


# ------------------------------------------------------------------------------------------------ resume = same run

@pytest.mark.parametrize("change, named", [
    (["--per_device_train_batch_size", "4"], r"batch.per_device_train_batch_size: 8 in the checkpoint, 4 now"),
    (["--curriculum", "mixed_uniform"], r"data.curriculum: 'alternating' in the checkpoint, 'mixed_uniform' now"),
    (["--model.n_layer", "3"], r"model.n_layer: 2 in the checkpoint, 3 now"),
    ("new_text", r"data_files.world.train.sha256_ends: '[0-9a-f]+' in the checkpoint, '[0-9a-f]+' now"),
], ids=["batch", "curriculum", "n_layer", "text"])
def test_a_resume_refuses_a_run_defined_differently_by_name(tiny_world, tmp_path, finished_run, change, named):
    run_dir = copy_of(finished_run, tmp_path)
    extra = change
    if change == "new_text":  # the same file names, other sentences: the tokenizer would be retrained
        world = tmp_path / "world"
        shutil.copytree(tiny_world, world)
        text = world / "text" / "train" / "world.train"
        text.write_text(text.read_text().replace("red", "crimson"))
        extra = ["--text_dir", str(world / "text" / "train")]
    args = [*args_into(tiny_world, tmp_path), "--resume_from_checkpoint", str(run_dir / "checkpoint-2"), *extra]
    with pytest.raises(ValueError, match=rf"was saved by a run defined differently: .*{named}"):
        train.main(args)
    if change[0] == "--per_device_train_batch_size":  # said explicitly, the change is allowed (and logged)
        summary = train.main([*args, "--resume_with_changes", "true"])
        assert summary["train"]["global_step"] == 4


# ------------------------------------------------------------------------------------------------ damaged files

def test_a_damaged_checkpoint_is_skipped_by_name_or_refused_when_given(tiny_world, tmp_path, finished_run, caplog):
    run_dir = copy_of(finished_run, tmp_path)
    (run_dir / "checkpoint-4" / "optimizer.pt").write_bytes(b"")
    args = [*args_into(tiny_world, tmp_path)]
    with pytest.raises(ValueError, match=r"checkpoint-4: optimizer.pt is damaged \(.*0 bytes\)"):
        train.main([*args, "--resume_from_checkpoint", str(run_dir / "checkpoint-4")])
    summary = train.main([*args, "--resume_from_checkpoint", "true"])
    assert f"Skipping {run_dir / 'checkpoint-4'}: optimizer.pt is damaged" in caplog.text
    assert summary["train"]["resumed_from_step"] == 2

    truncated = copy_of(finished_run, tmp_path / "truncated")
    weights_file = truncated / "checkpoint-4" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    damage = __import__("gatedgpt2.pipeline.run", fromlist=["checkpoint_damage"]).checkpoint_damage
    assert "model.safetensors is not a readable safetensors file" in damage(truncated / "checkpoint-4")


def test_a_full_disk_at_a_checkpoint_is_named_and_leaves_no_partial_folder(tiny_world, tmp_path):
    import transformers.modeling_utils

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch.object(transformers.modeling_utils, "safe_save_file", disk_full):
        with pytest.raises(OSError, match=r"checkpoint-2 could not be saved: no space left on the device of .*The "
                                          r"partial save was deleted"):
            train.main(args_into(tiny_world, tmp_path))
    assert not [p.name for p in (tmp_path / "run").iterdir() if "checkpoint" in p.name]


# ------------------------------------------------------------------------------------------------ eval refuses

def _drop_a_weight(folder: Path) -> None:
    tensors = load_file(folder / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def _one_layer_fewer(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 1
    (folder / "config.json").write_text(json.dumps(config))


def _a_larger_tokenizer(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][:50].clone()
    config["vocab_size"] = 50
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, message", [
    (_drop_a_weight, r"the weights do not match its config.json \(missing: transformer.h.1.mlp.c_fc.weight\)"),
    (_one_layer_fewer, r"the weights do not match its config.json \(unexpected: transformer.h.1.attn.c_attn.bias"),
    (_a_larger_tokenizer, r"the tokenizer has \d+ tokens but the model's vocabulary has 50"),
    (lambda f: (f / "tokenizer.json").unlink() or (f / "tokenizer_config.json").unlink(), r"has no tokenizer"),
], ids=["missing_weight", "extra_layer", "tokenizer_too_large", "no_tokenizer"])
def test_eval_refuses_a_checkpoint_that_does_not_load_as_it_was_saved(tmp_path, finished_run, damage, message, capsys):
    folder = copy_of(finished_run, tmp_path)
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        eval_main(["zero-shot", "--model", str(folder), "--data", str(tmp_path), "--tasks", "blimp",
                   "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_model_path_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"/nonexistent is not a model folder: no such directory"):
        load_checkpoint("/nonexistent", device="cpu")


def test_evals_into_one_folder_join_their_tasks_and_never_mix_two_models(tmp_path):
    from gatedgpt2.eval.babylm.zero_shot import write_results

    task = {"dataset": "d", "metric": "accuracy", "score": 50.0, "items": 2, "exact_ties": 0, "accuracies": {},
            "predictions": {}, "correct": [1, 0]}
    run = {"model": "m", "data": "d", "fast": True, "vision": True}
    write_results({**run, "tasks": {"blimp": task}}, tmp_path)
    write_results({**run, "tasks": {"ewok": {**task, "score": 60.0}}}, tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    assert set(written["tasks"]) == {"blimp", "ewok"} and "| ewok |" in (tmp_path / "results.md").read_text()
    with pytest.raises(ValueError, match=r"results.json holds the results of another evaluation \(model 'm' there, "
                                         r"'other' now\)"):
        write_results({**run, "model": "other", "tasks": {"blimp": task}}, tmp_path)


# ------------------------------------------------------------------------------------------------ bad arguments

@pytest.mark.parametrize("extra, error, message", [
    (["--block_size", "0"], ValueError, r"block_size must be at least 2 .*got 0"),
    (["--block_size", "1"], ValueError, r"block_size must be at least 2 .*got 1"),
    (["--per_device_train_batch_size", "0"], ValueError, r"per_device_train_batch_size must be at least 1, got 0"),
    (["--revision_words=-5K"], ValueError, r"revision_words: '-5K' is -5000 words; each revision is a whole"),
    (["--revision_words", "0.0001K"], ValueError, r"revision_words: '0.0001K' is 0.1 words"),
    (["--model.contrastive", "clip", "--model.contrastive_weight", "nan"], ValueError,
     r"`contrastive_weight` must be a finite number >= 0, got nan"),
    (["--model_name_or_path", "/nonexistent"], FileNotFoundError, r"/nonexistent is not a model folder"),
], ids=["block_0", "block_1", "batch_0", "negative_words", "fractional_words", "nan_weight", "no_model"])
def test_nonsense_arguments_are_refused_before_training(tiny_world, tmp_path, extra, error, message):
    with pytest.raises(error, match=message):
        train.main([TINY_YAML, *tiny_train_args(tiny_world, tmp_path, *extra)])
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_text_folder_of_blank_lines_is_named(tiny_world, tmp_path):
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.train").write_text("\n  \n\n")
    with pytest.raises(ValueError, match=rf"text_dir: {blank / 'a.train'} hold no text \(every line is blank\)"):
        train.main([TINY_YAML, *tiny_train_args(tiny_world, tmp_path, "--text_dir", str(blank), "--text_pattern",
                                                "*.train")])


def test_a_killed_cache_build_leaves_nothing_behind(tiny_world, tmp_path):
    from gatedgpt2.data import text_dataset, text_files, train_tokenizer

    cache = tmp_path / "cache"
    dead = cache / f"0123456789abcdef0123.{2**22 + 7}.scratch"  # a pid no process has
    (dead / "part").mkdir(parents=True)
    (dead / "part" / "data.arrow").write_bytes(np.zeros(1000).tobytes())
    files = text_files(Path(tiny_world) / "text" / "train")
    tokenizer = train_tokenizer(["a red circle"] * 10, 60, 32)
    text_dataset(files, tokenizer, 32, cache_dir=str(cache))
    assert not dead.exists()
    assert not [p for p in cache.iterdir() if p.name.endswith((".tmp", ".scratch", ".leftover"))]
