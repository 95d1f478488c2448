"""Hub publishing: the card (metadata, model-index from results.json), the exact upload (mocked HfApi: no server is
reachable here), revision branches, and a staged upload that loads from an offline Hub cache without the package."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file

import train
from gatedgpt2.data import train_tokenizer
from gatedgpt2.hub_cards.__main__ import main as hub_main
from gatedgpt2.hub_cards.card import write_card
from gatedgpt2.hub_cards.push import push, push_with_revisions
from tests.helpers.models import IMAGE_DIM, tiny_model
from tests.helpers.remote_code import WITHOUT_THE_PACKAGE, make_offline_hub_cache, offline_hub_env
from tests.helpers.training import tiny_train_args

RESULTS = {"model": "x", "data": "evaluation_data", "fast": True, "vision": True, "tasks": {
    "blimp": {"dataset": "blimp_fast", "accuracy": 61.234, "micro_accuracy": 60.0, "items": 13400},
    "winoground": {"dataset": "winoground_filtered", "accuracy": 52.5, "micro_accuracy": 52.5, "items": 746}}}
EXPECTED_FILES = ["README.md", "compat.py", "config.json", "configuration_gatedgpt.py", "contrastive.py",
                  "figures/gates.png", "gating.py", "generation_config.json", "image_encoder.py", "interventions.py",
                  "layers.py", "model.safetensors", "modeling_gatedgpt.py", "modulation.py", "tokenizer.json",
                  "tokenizer_config.json"]


@pytest.fixture
def checkpoint(tmp_path):
    """A saved tiny model with tokenizer, eval results and a figure, among files that must stay home."""
    folder = tmp_path / "model"
    tokenizer = train_tokenizer(["a red circle left of a blue cube"] * 20, 80, 32)
    tiny_model(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    Image.new("RGB", (4, 4)).save(tmp_path / "gates.png")
    for junk in ("checkpoint-10/model.safetensors", "report/report.json", "trainer_state.json", "training_args.json",
                 "revisions/chck_1M/model.safetensors", "cache/data.arrow"):
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_text("{}")
    write_card(folder, [tmp_path / "results.json"], [tmp_path / "gates.png"], repo_id="org/tiny")
    return folder


def test_the_card_parses_and_its_model_index_matches_the_results(checkpoint):
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.library_name == "transformers" and {"babylm", "custom_code"} <= set(card.data.tags)
    results = {(r.dataset_type, r.dataset_config): r.metric_value for r in card.data.eval_results}
    assert results == {("babylm/blimp_fast", None): 61.23, ("babylm/winoground_filtered", None): 52.5}
    assert 'AutoModelForCausalLM.from_pretrained("org/tiny", trust_remote_code=True)' in card.text
    assert "| gate | soft, per feature |" in card.text and "![gates](figures/gates.png)" in card.text


def test_the_card_names_local_training_inputs_without_their_paths(checkpoint, tmp_path):
    """A card is public: the folders the model was trained from appear by name, never as paths of the machine."""
    data = tmp_path / "private" / "babylm"
    (data / "train_10M").mkdir(parents=True)
    (data / "captions.json").write_text("[]")
    report = {"data_arguments": {"text_dir": str(data / "train_10M"), "caption_files": [str(data / "captions.json")],
                                 "curriculum": "mixed"},
              "model_arguments": {"init_from_gpt2": str(tmp_path / "private" / "gpt2")}, "train": {}}
    (checkpoint / "report" / "report.json").write_text(json.dumps(report))
    write_card(checkpoint, repo_id="org/tiny")
    card = (checkpoint / "README.md").read_text()
    assert "- Data: train_10M, captions.json; curriculum `mixed`." in card and "(`gpt2`)" in card
    assert str(tmp_path) not in card and "base_model" not in card.split("---")[1]


def test_push_uploads_exactly_the_checkpoint_in_one_commit(checkpoint):
    api = mock.create_autospec(HfApi, instance=True)
    files = push(checkpoint, "org/tiny", private=True, api=api)
    assert files == EXPECTED_FILES
    assert [c[0] for c in api.method_calls] == ["create_repo", "create_commit"]  # nothing else is sent
    api.create_repo.assert_called_once_with("org/tiny", private=True, exist_ok=True, repo_type="model")
    commit = api.create_commit.call_args
    assert commit.kwargs["revision"] is None and commit.args == ("org/tiny",)
    operations = commit.kwargs["operations"]
    assert [op.path_in_repo for op in operations] == EXPECTED_FILES
    assert all(op.path_or_fileobj == str(checkpoint / op.path_in_repo) for op in operations)


def test_revisions_go_to_branches_of_the_same_repo(checkpoint):
    revision = checkpoint / "revisions" / "chck_1M"
    tiny_model().save_pretrained(revision)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # a revision is saved with its tokenizer
        shutil.copyfile(checkpoint / name, revision / name)
    api = mock.create_autospec(HfApi, instance=True)
    pushed = push_with_revisions(checkpoint, "org/tiny", api=api)
    assert list(pushed) == ["main", "chck_1M"] and "model.safetensors" in pushed["chck_1M"]
    assert [c[0] for c in api.method_calls] == ["create_repo", "create_commit", "create_repo", "create_branch",
                                                "create_commit"]
    api.create_branch.assert_called_once_with("org/tiny", branch="chck_1M", exist_ok=True, repo_type="model")
    assert api.create_commit.call_args_list[1].kwargs["revision"] == "chck_1M"


def test_pickles_are_refused_and_a_dry_run_sends_nothing(checkpoint, tmp_path, capsys):
    with mock.patch("gatedgpt2.hub_cards.push.HfApi") as api_class:
        hub_main(["push", "--model", str(checkpoint), "--repo", "org/tiny", "--dry-run", "--stage",
                  str(tmp_path / "stage")])
    api_class.assert_not_called()
    printed = capsys.readouterr().out.split()
    assert [f for f in printed if f in EXPECTED_FILES] == EXPECTED_FILES
    staged = sorted(str(p.relative_to(tmp_path / "stage")) for p in (tmp_path / "stage").rglob("*") if p.is_file())
    assert staged == EXPECTED_FILES

    (checkpoint / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"pickled files \['pytorch_model.bin'\]"):
        push(checkpoint, "org/tiny", dry_run=True)


def _outside(checkpoint: Path) -> Path:
    """A folder beside the checkpoint with a secret, a script and a figure: what a link may point at."""
    outside = checkpoint.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "passwd").write_text("root:x:0:0:secret\n")
    (outside / "evil.py").write_text("print('secret')\n")
    Image.new("RGB", (4, 4)).save(outside / "plot.png")
    return outside


def _link_a_config(checkpoint):
    (checkpoint / "tokenizer_config.json").unlink()
    (checkpoint / "tokenizer_config.json").symlink_to(_outside(checkpoint) / "passwd")


def _link_the_figures(checkpoint):
    shutil.rmtree(checkpoint / "figures")
    (checkpoint / "figures").symlink_to(_outside(checkpoint), target_is_directory=True)


def _link_model_code(checkpoint):
    (checkpoint / "layers.py").unlink()
    (checkpoint / "layers.py").symlink_to(_outside(checkpoint) / "evil.py")


def _pickle_as_a_figure(checkpoint):
    (checkpoint / "figures" / "plot.png").write_bytes(pickle.dumps({"weights": [1.0]}))


def _pickle_as_weights(checkpoint):
    (checkpoint / "model.safetensors").write_bytes(pickle.dumps({"weights": [1.0]}))


def _upper_case_pickle(checkpoint):
    (checkpoint / "PyTorch_Model.BIN").write_bytes(pickle.dumps({}))


def _fifo_as_a_config(checkpoint):
    os.mkfifo(checkpoint / "special_tokens_map.json")


@pytest.mark.parametrize("attack,message", [
    (_link_a_config, r"tokenizer_config.json is a symbolic link .*never follows links"),
    (_link_the_figures, r"figures is a symbolic link"),
    (_link_model_code, r"layers.py is a symbolic link"),
    (_pickle_as_a_figure, r"figures/plot.png is not a valid .png file"),
    (_pickle_as_weights, r"model.safetensors is not a valid .safetensors file"),
    (_upper_case_pickle, r"pickled files \['PyTorch_Model.BIN'\]"),
    (_fifo_as_a_config, r"special_tokens_map.json is not a regular file"),
], ids=["config_link", "figures_link", "code_link", "pickle_figure", "pickle_weights", "upper_case_pickle", "fifo"])
def test_push_refuses_links_fakes_and_pickles_and_sends_nothing(checkpoint, tmp_path, attack, message):
    attack(checkpoint)
    api = mock.create_autospec(HfApi, instance=True)
    with pytest.raises(ValueError, match=message):
        push(checkpoint, "org/tiny", api=api, stage=tmp_path / "stage")
    assert api.method_calls == [] and not (tmp_path / "stage").exists()


def test_push_leaves_stray_code_weights_and_files_at_home(checkpoint, capsys):
    """Only the model code that `auto_map` reaches goes out: not any other script, however named; only the model's
    weights, not another safetensors file."""
    outside = _outside(checkpoint)
    (checkpoint / "my_secrets.py").write_text("TOKEN = 'hf_secret'\n")
    (checkpoint / "..x.py").write_text("TOKEN = 'hf_secret'\n")
    (checkpoint / "evil.py").symlink_to(outside / "evil.py")
    save_file({"m": torch.zeros(2)}, checkpoint / "optimizer.safetensors")
    (checkpoint / "notes.txt").write_text("private")
    api = mock.create_autospec(HfApi, instance=True)
    assert push(checkpoint, "org/tiny", api=api) == EXPECTED_FILES
    printed = capsys.readouterr().out
    assert printed.startswith(f"Uploading {len(EXPECTED_FILES)} files of {checkpoint} to org/tiny@main: README.md, ")


HUB_LOADER = WITHOUT_THE_PACKAGE + textwrap.dedent(
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    repo, inputs_file, out_file = sys.argv[1:]
    inputs = load_file(inputs_file)
    config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(repo)
    lm = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
    ids = tokenizer(["a red circle"], return_tensors="pt")["input_ids"]
    processor = None
    if lm.config.vision_config is not None:
        from transformers import AutoProcessor
        processor = type(AutoProcessor.from_pretrained(repo, trust_remote_code=True)).__name__
    with torch.no_grad():
        save_file({"logits": lm(ids, image_embeds=inputs["image_embeds"]).logits,
                   "hidden": base(ids, image_embeds=inputs["image_embeds"]).last_hidden_state, "ids": ids}, out_file)
    print("HUB-OK", type(config).__name__, type(lm).__name__, type(base).__name__, processor)
    """
)


@pytest.mark.parametrize("with_tower", [False, True])
def test_a_staged_upload_loads_from_an_offline_hub_cache_without_the_package(checkpoint, tmp_path, with_tower):
    if with_tower:  # a checkpoint with its vision tower also carries a processor
        from transformers import Dinov2Config, Dinov2Model

        from gatedgpt2.eval.__main__ import main as eval_main
        from tests.helpers.models import VISION

        Dinov2Model(Dinov2Config(**VISION)).save_pretrained(tmp_path / "dinov2")
        eval_main(["attach-vision-tower", "--model", str(checkpoint), "--vision-tower", str(tmp_path / "dinov2"),
                   "--out", str(checkpoint)])
    files = push(checkpoint, "org/tiny", dry_run=True, stage=tmp_path / "stage")
    assert ({"processor_config.json", "processing_gatedgpt.py"} <= set(files)) == with_tower
    hf_home = tmp_path / "hf_home"
    make_offline_hub_cache(tmp_path / "stage", hf_home, "org/tiny")
    image_embeds = torch.randn(1, IMAGE_DIM)
    save_file({"image_embeds": image_embeds}, tmp_path / "inputs.safetensors")
    result = subprocess.run([sys.executable, "-c", HUB_LOADER, "org/tiny", str(tmp_path / "inputs.safetensors"),
                             str(tmp_path / "out.safetensors")], cwd=tmp_path, env=offline_hub_env(hf_home),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    processor = "GatedGPT2Processor" if with_tower else "None"
    assert f"HUB-OK GatedGPT2Config GatedGPT2ForCausalLM GatedGPT2Model {processor}" in result.stdout

    out = load_file(tmp_path / "out.safetensors")
    from modeling_gatedgpt import GatedGPT2ForCausalLM

    model = GatedGPT2ForCausalLM.from_pretrained(checkpoint).eval()
    with torch.no_grad():
        assert torch.equal(out["logits"], model(out["ids"], image_embeds=image_embeds).logits)
        assert torch.equal(out["hidden"], model.transformer(out["ids"], image_embeds=image_embeds).last_hidden_state)
    card = ModelCard.load(tmp_path / "stage" / "README.md")
    assert {r.metric_value for r in card.data.eval_results} == {61.23, 52.5}


def test_a_training_run_writes_its_card_and_pushes_main_and_revisions(tiny_world, tmp_path):
    api = mock.create_autospec(HfApi, instance=True)
    with mock.patch("huggingface_hub.HfApi", return_value=api) as api_class:
        summary = train.main(tiny_train_args(tiny_world, tmp_path, "--max_steps", "4", "--revision_words", "60",
                                             "--block_size", "64",
                                             "--report", "true", "--push_to_hub", "true", "--hub_model_id",
                                             "org/tiny-run", "--hub_token", "hf_test"))
    api_class.assert_called_once_with(token="hf_test")
    card = ModelCard.load(tmp_path / "run" / "README.md")
    assert "grounded world" in card.text and "## Training" in card.text
    assert list(summary["pushed"]) == ["main", "chck_60"]
    assert "README.md" in summary["pushed"]["main"] and "figures/loss_curves.png" in summary["pushed"]["main"]
    branches = [c.kwargs["branch"] for c in api.create_branch.call_args_list]
    assert branches == ["chck_60"]
    assert [c.kwargs["revision"] for c in api.create_commit.call_args_list] == [None, "chck_60"]


def test_the_card_lists_every_babylm_task_with_its_own_metric():
    from gatedgpt2.hub_cards.card import eval_results, eval_table

    run = {"vision": True, "tasks": {
        "blimp": {"dataset": "blimp_fast", "items": 10, "score": 61.234, "accuracy": 61.234, "metric": "accuracy"},
        "wug_adj": {"dataset": "wug_adj_nominalization", "items": 200, "score": 0.41234, "metric": "spearman"},
        "entity_tracking": {"dataset": "entity_tracking_fast", "items": 9, "score": 30.0,
                            "metric": "accuracy (mean over splits)"},
        "reading": {"dataset": "reading_data.csv", "items": 1726, "eye_tracking": 2.5, "self_paced_reading": 0.75,
                    "metric": "R^2 gain"}}}
    entries = {(e.dataset_type, e.metric_name): (e.metric_type, e.metric_value) for e in eval_results([run])}
    assert entries[("babylm/blimp_fast", "accuracy")] == ("accuracy", 61.23)
    assert entries[("babylm/wug_adj_nominalization", "spearman")] == ("spearmanr", 0.412)
    assert entries[("babylm/reading_data", "self-paced reading R^2 gain, %")] == ("r_squared_gain", 0.75)
    assert len(entries) == 5
    table = eval_table([run])
    assert "| entity tracking (fast) | entity_tracking_fast | yes | 9 | 30.00 | accuracy (mean over splits) |" in table
    assert "| reading (full) | reading_data.csv | yes | 1726 | 2.50 | eye-tracking R^2 gain, % |" in table


def _weights_without(checkpoint, prefix: str) -> None:
    weights = load_file(checkpoint / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith(prefix)}, checkpoint / "model.safetensors",
              metadata={"format": "pt"})


def _one_layer_fewer_in_the_config(checkpoint) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    config["n_layer"] -= 1
    (checkpoint / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, message", [
    (lambda c: _weights_without(c, "transformer.h.1.attn.c_attn"),
     r"the weights do not match its config.json \(missing: transformer.h.1.attn.c_attn.bias, "
     r"transformer.h.1.attn.c_attn.weight\)"),
    (_one_layer_fewer_in_the_config, r"the weights do not match its config.json \(unexpected: transformer.h.1.attn"),
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:5000]),
     r"model.safetensors is not a (valid|readable) .?safetensors file"),
    (lambda c: (c / "tokenizer.json").unlink() or (c / "tokenizer_config.json").unlink(), r"has no tokenizer"),
    (lambda c: (c / ".model-save-incomplete").write_text(""), r"is incomplete: the save of its model was cut off"),
], ids=["missing_weights", "extra_layer", "truncated_weights", "no_tokenizer", "cut_off_save"])
def test_card_push_and_update_code_refuse_a_model_folder_that_would_not_load_as_saved(checkpoint, damage, message):
    from gatedgpt2.hub_cards.update_code import update_folder

    damage(checkpoint)
    card = (checkpoint / "README.md").read_bytes()
    api = mock.create_autospec(HfApi, instance=True)
    for publish in (lambda: push(checkpoint, "org/tiny", api=api), lambda: write_card(checkpoint, repo_id="org/tiny"),
                    lambda: update_folder(checkpoint)):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            publish()
    assert api.method_calls == [] and (checkpoint / "README.md").read_bytes() == card


@pytest.mark.parametrize("stage", [False, True])
def test_push_sends_no_code_that_auto_map_names_outside_the_folder(checkpoint, tmp_path, stage):
    outside = _outside(checkpoint)
    (outside / "stolen.py").write_text("SECRET = 1\n")
    config = json.loads((checkpoint / "config.json").read_text())
    config["auto_map"]["AutoModel"] = f"{outside}/stolen.GatedGPT2Model"
    (checkpoint / "config.json").write_text(json.dumps(config))
    api = mock.create_autospec(HfApi, instance=True)
    with pytest.raises(ValueError, match=r"config.json: auto_map\['AutoModel'\] is '.*/stolen.GatedGPT2Model'; model "
                                         r"code must be named as module.Class"):
        push(checkpoint, "org/tiny", api=api, dry_run=True, stage=tmp_path / "stage" if stage else None)
    assert api.method_calls == [] and not (tmp_path / "stage").exists()


def test_the_card_never_writes_through_a_link_nor_publishes_the_local_folder(checkpoint, tmp_path):
    target = _outside(checkpoint) / "victim.md"
    target.write_text("precious")
    (checkpoint / "README.md").unlink()
    (checkpoint / "README.md").symlink_to(target)
    with pytest.raises(ValueError, match=r"README.md is a symbolic link .*never through a link"):
        write_card(checkpoint)
    assert target.read_text() == "precious"

    # a hard-linked README: the card replaces the name, the other file keeps its content; push refuses such a file
    (checkpoint / "README.md").unlink()
    os.link(target, checkpoint / "README.md")
    write_card(checkpoint)
    assert target.read_text() == "precious"
    card = (checkpoint / "README.md").read_text()
    assert str(checkpoint) not in card and 'from_pretrained("your-name/model"' in card
    os.link(target, checkpoint / "special_tokens_map.json")
    api = mock.create_autospec(HfApi, instance=True)
    with pytest.raises(ValueError, match=r"special_tokens_map.json is hard-linked \(2 names for one file\)"):
        push(checkpoint, "org/tiny", api=api)
    (checkpoint / "special_tokens_map.json").unlink()

    # a card that names the local folder (written by hand, or by an older version) is not published
    (checkpoint / "README.md").write_text(f'model = from_pretrained("{checkpoint}")\n')
    with pytest.raises(ValueError, match=r"README.md names the local folder .*--repo org/tiny"):
        push(checkpoint, "org/tiny", api=api)
    assert api.method_calls == []
