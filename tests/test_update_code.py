"""`python -m gatedgpt2.hub_cards update-code`: a checkpoint saved with the old, unportable code (tests/fixtures/
checkpoint_v0.1.0, saved by commit d3c38bc under transformers 5.23 with its TokenizersBackend tokenizer) is updated
in place, weights untouched, and then loads and computes the same under transformers 5.24 and 4.51.3."""

import hashlib
import shutil
from pathlib import Path
from unittest import mock

import pytest

from gatedgpt2.hub_cards.__main__ import main as hub_main
from gatedgpt2.hub_cards.update_code import planned_updates, update_code
from tests.helpers.client_envs import MATRIX, client_python, run_client_script
from tests.helpers.remote_code import make_offline_hub_cache

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v0.1.0"
EXPECTED = FIXTURE.parent / "checkpoint_v0.1.0.expected.safetensors"

LOADER = """
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

repo, expected_file = sys.argv[1:3]
expected = load_file(expected_file)
lm = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)
assert torch.equal(tokenizer(["a red circle"], return_tensors="pt")["input_ids"], expected["input_ids"])
with torch.no_grad():
    logits = lm(expected["input_ids"], image_embeds=expected["image_embeds"]).logits
difference = (logits - expected["logits"]).abs().max().item()
assert difference <= 1e-5, difference
print("UPDATED-OK")
"""


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def old_checkpoint(tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(FIXTURE, folder)
    return folder


def test_dry_run_says_what_changes_and_changes_nothing(old_checkpoint, capsys):
    before = {p.name: digest(p) for p in old_checkpoint.iterdir()}
    hub_main(["update-code", "--model", str(old_checkpoint), "--dry-run"])
    printed = capsys.readouterr().out
    assert "Would change" in printed
    assert "added    compat.py" in printed and "updated  modeling_gatedgpt.py" in printed
    assert "updated  tokenizer_config.json" in printed
    # its auto_map names the config and both models but not the sequence classifier, added since
    assert "updated  config.json\n" in printed.replace("tokenizer_config.json", "")
    assert "model.safetensors" not in printed
    assert {p.name: digest(p) for p in old_checkpoint.iterdir()} == before


@pytest.mark.parametrize("version", ["5.24.0", "4.51.3"])
def test_an_updated_old_checkpoint_loads_under_new_and_old_transformers(old_checkpoint, tmp_path, version):
    weights = digest(old_checkpoint / "model.safetensors")
    report = update_code(str(old_checkpoint))
    assert report["compat.py"] == "added" and report["tokenizer_config.json"] == "updated"
    assert digest(old_checkpoint / "model.safetensors") == weights
    assert planned_updates(old_checkpoint) == {}  # a second run has nothing left to do
    assert update_code(str(old_checkpoint)) == {}

    hf_home = tmp_path / "hf_home"
    make_offline_hub_cache(old_checkpoint, hf_home, "babylm-org/gatedgpt2-old")
    extra = dict(MATRIX)[version]
    stdout = run_client_script(client_python(version, extra), hf_home, LOADER,
                               ["babylm-org/gatedgpt2-old", str(EXPECTED)], tmp_path)
    assert "UPDATED-OK" in stdout


def test_the_old_checkpoint_is_what_fails_without_the_update(tmp_path):
    """The fixture really is the broken kind: its code does not load under 5.24."""
    hf_home = tmp_path / "hf_home"
    make_offline_hub_cache(FIXTURE, hf_home, "babylm-org/gatedgpt2-old")
    with pytest.raises(AssertionError, match="unexpected keyword argument 'cache'"):
        run_client_script(client_python("5.24.0", []), hf_home, LOADER, ["babylm-org/gatedgpt2-old", str(EXPECTED)],
                          tmp_path)


def test_a_hub_repository_is_updated_in_one_commit(old_checkpoint):
    api = mock.Mock()
    api.snapshot_download.side_effect = lambda repo_id, revision, local_dir, allow_patterns: str(
        shutil.copytree(old_checkpoint, Path(local_dir), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.safetensors")))
    report = update_code("babylm-org/gatedgpt2-old", revision="chck_10M", api=api)
    assert [call[0] for call in api.method_calls] == ["snapshot_download", "create_commit"]
    commit = api.create_commit.call_args
    uploaded = sorted(op.path_in_repo for op in commit.kwargs["operations"])
    assert uploaded == sorted(report) and "model.safetensors" not in uploaded
    assert commit.kwargs["revision"] == "chck_10M"


def test_bad_targets_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor a Hub repository id"):
        update_code(str(tmp_path / "missing" / "deeper"))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="model_type is 'gpt2'"):
        update_code(str(tmp_path))
