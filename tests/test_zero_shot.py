"""The BabyLM zero-shot suite: predictions equal an independent, one-sentence-at-a-time scorer with the pipeline's
semantics on the real evaluation files; Winoground and EWoK as distributed; the outputs' formats; bad input."""

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from gatedgpt2.data import ImageEmbeddings, train_tokenizer
from gatedgpt2.eval.__main__ import main as eval_main
from gatedgpt2.eval.babylm.scoring import score_candidates
from gatedgpt2.eval.babylm.tasks import read_task
from gatedgpt2.eval.babylm.zero_shot import evaluate_task, load_accuracy_metric, zero_shot
from gatedgpt2.eval.checkpoint import load_checkpoint
from tests.helpers.models import tiny_model

EVAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "babylm" / "evaluation_data"
BABYLM_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "babylm" / "text" / "dev"
IMAGE_DIM = 24
needs_data = pytest.mark.skipif(not EVAL_DATA.is_dir(), reason="../shared/data/babylm is not beside the repository")


@pytest.fixture(scope="module")
def babylm_tokenizer():
    text = " ".join(f.read_text(encoding="utf-8")[:100_000] for f in sorted(BABYLM_TEXT.glob("*.dev")))
    return train_tokenizer([text[i : i + 1000] for i in range(0, len(text), 1000)], vocab_size=600,
                           model_max_length=256)


@pytest.fixture(scope="module")
def model(babylm_tokenizer):
    """A random model with large weights, so that candidates' scores are far apart (no near-ties)."""
    return tiny_model(vocab_size=len(babylm_tokenizer), n_positions=256, n_embd=64, initializer_range=0.3,
                      image_embed_dim=IMAGE_DIM, bos_token_id=babylm_tokenizer.bos_token_id,
                      eos_token_id=babylm_tokenizer.eos_token_id, pad_token_id=babylm_tokenizer.pad_token_id)


def pipeline_choice(model, tokenizer, sentences, completions, image=None) -> int:
    """The BabyLM 2025 pipeline's causal scoring of one record, one sentence at a time, written independently."""
    scores = []
    for sentence, completion in zip(sentences, completions):
        encoded = tokenizer(sentence, return_offsets_mapping=True)
        tokens, offsets = encoded["input_ids"], encoded["offset_mapping"]
        start_char = len(sentence) - len(completion) + offsets[0][0]
        phrase = torch.tensor([int(end > start_char) for _, end in offsets])
        ids = torch.tensor([tokens])
        kwargs = {} if image is None else {"image_embeds": torch.tensor(np.array(image), dtype=torch.float32)[None]}
        with torch.no_grad():
            logits = model(input_ids=ids[:, :-1], attention_mask=torch.ones_like(ids[:, :-1]), **kwargs).logits
        logprobs = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[0, :, 0]
        scores.append(float((logprobs * phrase[1:]).sum()))
    return int(torch.tensor(scores).argmax())


def naive_predictions(model, tokenizer, files, decode, first: int) -> dict[str, list[str]]:
    """{UID: [chosen completion, ...]} over the first `first` records of each file."""
    predictions = defaultdict(list)
    for path in files:
        for line in path.read_text().splitlines()[:first]:
            uid, sentences, completions = decode(json.loads(line), path.stem)
            predictions[uid].append(completions[pipeline_choice(model, tokenizer, sentences, completions)])
    return predictions


def minimal_pair(record, stem):
    pair = [record["sentence_good"], record["sentence_bad"]]
    return record.get("UID", stem), pair, pair


@needs_data
def test_blimp_and_supplement_fast_equal_a_naive_scorer(model, babylm_tokenizer, tmp_path):
    results = zero_shot(model, babylm_tokenizer, EVAL_DATA, "blimp,supplement", fast=True, batch_size=128,
                        out_dir=tmp_path, progress=False)
    assert results["tasks"]["blimp"]["items"] == 13_400 and results["tasks"]["supplement"]["items"] == 250
    for task, first in (("blimp", 6), ("supplement", 50)):
        files = sorted((EVAL_DATA / "fast_eval" / f"{task}_fast").glob("*.jsonl"))
        expected = naive_predictions(model, babylm_tokenizer, files, minimal_pair, first)
        written = json.loads((tmp_path / task / "predictions.json").read_text())
        assert set(written) == set(expected)
        for uid, predictions in written.items():
            ids = [p["id"] for p in predictions["predictions"]]
            assert ids == [f"{uid}_{n}" for n in range(len(ids))]
            assert [p["pred"] for p in predictions["predictions"][:first]] == expected[uid], uid

        accuracies = json.loads((tmp_path / task / "accuracies.json").read_text())
        assert results["tasks"][task]["accuracy"] == pytest.approx(np.mean(list(accuracies["UID"].values())))
    assert len(accuracies["UID"]) == 5 and "hypernym" in accuracies["UID"]  # supplement: UID = file name
    summary = json.loads((tmp_path / "results.json").read_text())
    assert "predictions" not in summary["tasks"]["blimp"]
    assert summary["tasks"]["blimp"]["accuracies"]["field"].keys() == {"syntax", "morphology", "syntax/semantics",
                                                                        "semantics"}
    assert "| blimp | blimp_fast | 13400 |" in (tmp_path / "results.md").read_text()


@needs_data
def test_ewok_is_read_from_the_password_protected_zip_and_scores_the_target(model, babylm_tokenizer, tmp_path):
    task = read_task(EVAL_DATA, "ewok", fast=True)
    assert task.dataset == "ewok_fast" and len(task.items) == 11 * 100 == len({i.source for i in task.items})
    item = task.items[0]
    assert item.sentences[0] == f"{item.sentences[0][: -len(item.completions[0])]}{item.completions[0]}"
    assert item.completions[0].startswith(" ") and item.metadata.keys() == {"context_type", "context_contrast",
                                                                          "target_contrast"}
    # a few records of each domain through both scorers
    few = [i for uid in dict.fromkeys(i.uid for i in task.items) for i in [j for j in task.items if j.uid == uid][:4]]
    ours = evaluate_task(model, babylm_tokenizer, type(task)("ewok", "ewok_fast", few), progress=False)
    expected = [i.completions[pipeline_choice(model, babylm_tokenizer, i.sentences, i.completions)] for i in few]
    assert [p["pred"] for uid in ours["predictions"] for p in ours["predictions"][uid]["predictions"]] == expected

    with pytest.raises(ValueError, match="Cannot decrypt .*ewok_fast.zip"):
        read_task(EVAL_DATA, "ewok", fast=True, password="wrong")
    # a wrong password that passes ZipCrypto's one check byte (1 in 256) decrypts to garbage: still this error
    with pytest.raises(ValueError, match="Cannot decrypt .*ewok_fast.zip.*decompressing"):
        read_task(EVAL_DATA, "ewok", fast=True, password="wrong663")
    (tmp_path / "ewok.zip").write_text("not a zip")
    with pytest.raises(ValueError, match=r"ewok.zip: not a zip archive"):
        read_task(tmp_path, "ewok")


@needs_data
def test_winoground_with_image_embeddings_and_an_image_blind_model(model, babylm_tokenizer, tmp_path):
    records = [json.loads(line) for line in
               (EVAL_DATA / "full_eval" / "winoground_filtered" / "winoground.jsonl").read_text().splitlines()]
    ids = sorted({f"{r['image_idx']}/{r['image_key']}" for r in records})
    rng = np.random.default_rng(0)
    np.save(tmp_path / "random.npy", rng.normal(size=(len(ids), IMAGE_DIM)).astype(np.float32))
    (tmp_path / "random.ids.json").write_text(json.dumps(ids))
    np.save(tmp_path / "constant.npy", np.ones((len(ids), 3, IMAGE_DIM), dtype=np.float32))
    (tmp_path / "constant.ids.json").write_text(json.dumps(ids))

    def accuracy(**kwargs):
        return zero_shot(model, babylm_tokenizer, EVAL_DATA, "winoground", progress=False, **kwargs)["tasks"][
            "winoground"]

    blind = accuracy(no_image=True)
    assert blind["items"] == 746 and blind["accuracy"] == 50.0
    assert blind["accuracies"]["Type"] == {"Object": 50.0, "Relation": 50.0, "Both": 50.0}
    assert accuracy(images=tmp_path / "constant.npy")["accuracy"] == 50.0  # every image alike: blind again
    seeing = accuracy(images=tmp_path / "random.npy")
    assert seeing["accuracy"] != 50.0

    # the image changes the scores, and each candidate is scored with its own record's image
    item = read_task(EVAL_DATA, "winoground").items[1]
    images = ImageEmbeddings.load(tmp_path / "random.npy")
    row = images.indices([item.image_id], [item.source])[0]
    assert item.image_id == "0/image_1"
    expected = pipeline_choice(model, babylm_tokenizer, item.sentences, item.completions, images.embeddings[row])
    assert seeing["predictions"]["winoground"]["predictions"][1]["pred"] == item.completions[expected]


def test_the_cli_evaluates_a_saved_checkpoint_on_the_world(tiny_world, tmp_path):
    lines = (tiny_world / "text" / "train" / "world.train").read_text().splitlines()
    tokenizer = train_tokenizer(lines, vocab_size=150, model_max_length=64)
    model = tiny_model(vocab_size=len(tokenizer), n_positions=64, image_embed_dim=32, initializer_range=0.3)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")

    eval_main(["zero-shot", "--model", str(tmp_path / "model"), "--data", str(tiny_world / "eval"), "--tasks",
               "blimp,winoground,vqa", "--batch-size", "7", "--out", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["vision"] and set(results["tasks"]) == {"blimp", "winoground", "vqa"}
    vqa = json.loads((tmp_path / "out" / "vqa" / "predictions.json").read_text())["vqa"]["predictions"]
    records = [json.loads(line) for line in (tiny_world / "eval" / "vqa" / "vqa.jsonl").read_text().splitlines()]
    assert len(vqa) == len(records) and all(p["pred"].startswith(" ") for p in vqa)
    assert results["tasks"]["vqa"]["accuracy"] == pytest.approx(
        100 * np.mean([p["pred"] == " " + r["target_ans"] for p, r in zip(vqa, records)]))

    eval_main(["zero-shot", "--model", str(tmp_path / "model"), "--data", str(tiny_world / "eval"), "--tasks",
               "winoground", "--no-image", "--out", str(tmp_path / "blind")])
    blind = json.loads((tmp_path / "blind" / "results.json").read_text())
    assert not blind["vision"] and blind["tasks"]["winoground"]["accuracy"] == 50.0
    assert "winoground (no vision)" in (tmp_path / "blind" / "results.md").read_text()


def test_scores_do_not_depend_on_the_batch_size(model, babylm_tokenizer):
    sentences = ["The cat sat.", "A much longer sentence about dogs that ran home.", "Hi", "Where did she go?"]
    completions = [" sat.", " home.", "Hi", "Where did she go?"]
    one = score_candidates(model, babylm_tokenizer, sentences, completions, batch_size=1)
    four = score_candidates(model, babylm_tokenizer, sentences, completions, batch_size=4)
    np.testing.assert_allclose(one, four, rtol=1e-5)
    whole = score_candidates(model, babylm_tokenizer, sentences[:1], batch_size=1)
    assert whole[0] < one[0] < 0  # the whole sentence has more tokens to pay for than its end


def test_the_accuracy_metric_averages_over_uids():
    metric = load_accuracy_metric()
    result = metric.compute(predictions=[0, 1, 0, 0], references=[0, 0, 0, 0], groups=["a", "a", "b", "b"])
    assert result["accuracy"] == 75.0 and result["per_group"] == {"a": 50.0, "b": 100.0}


# ------------------------------------------------------------------------------------------ bad input


def write_task(root: Path, task: str, lines: list[str]) -> Path:
    folder = root / task
    folder.mkdir(parents=True)
    (folder / "part.jsonl").write_text("\n".join(lines) + "\n")
    return root


GOOD = json.dumps({"sentence_good": "a b", "sentence_bad": "b a"})


@pytest.mark.parametrize("bad_line, message", [
    ('{"sentence_good": "a b", "sentence_bad": ', r"part.jsonl:3: malformed JSON"),
    ('{"sentence_good": "a b"}', r"part.jsonl:3: missing field 'sentence_bad'"),
    ('["a b", "b a"]', r"part.jsonl:3: expected a JSON object, got list"),
    ('{"sentence_good": 7, "sentence_bad": "b a"}', r"part.jsonl:3: field 'sentence_good' must be a string, got int 7"),
])
def test_malformed_jsonl_names_file_line_and_field(tmp_path, bad_line, message):
    write_task(tmp_path, "supplement", [GOOD, GOOD, bad_line])
    with pytest.raises(ValueError, match=message):
        read_task(tmp_path, "supplement")


def test_a_task_file_that_is_not_utf8_names_file_line_and_column(tmp_path):
    write_task(tmp_path, "supplement", [GOOD, GOOD])
    bad_line = f"{GOOD}\n{{\"sentence_good\": \"caf\xe9\"}}\n"
    (tmp_path / "supplement" / "part.jsonl").write_bytes(bad_line.encode("latin-1"))
    with pytest.raises(ValueError, match=r"part.jsonl:2: not UTF-8 text \(byte 0xe9 at column 23\)"):
        read_task(tmp_path, "supplement")


def test_vqa_record_without_answers_or_image_is_an_error(tmp_path):
    record = {"question": "what colour is it?", "target_ans": "red", "distractors": ["blue"]}
    write_task(tmp_path, "vqa", [json.dumps(record)])
    with pytest.raises(ValueError, match=r"part.jsonl:1: missing field 'idx_in_hf_dataset'"):
        read_task(tmp_path, "vqa")
    shutil.rmtree(tmp_path / "vqa")
    write_task(tmp_path, "vqa", [json.dumps({**record, "distractors": [], "image_id": "x"})])
    with pytest.raises(ValueError, match=r"part.jsonl:1: field 'distractors' must be a non-empty list"):
        read_task(tmp_path, "vqa")
    shutil.rmtree(tmp_path / "vqa")
    write_task(tmp_path, "vqa", [json.dumps({**record, "distractors": ["blue", 3], "image_id": "x"})])
    with pytest.raises(ValueError, match=r"part.jsonl:1: field 'distractors' must be a non-empty list of strings"):
        read_task(tmp_path, "vqa")


def test_missing_data_image_and_bad_arguments_are_errors(model, babylm_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="No data for task 'ewok'"):
        zero_shot(model, babylm_tokenizer, tmp_path, "ewok", progress=False)
    with pytest.raises(ValueError, match="unknown task"):
        zero_shot(model, babylm_tokenizer, tmp_path, "blimp,glue", progress=False)

    record = {"question": "what is it?", "target_ans": "a cat", "distractors": ["a dog"], "image_id": "img7"}
    write_task(tmp_path, "vqa", [json.dumps(record)])
    with pytest.raises(ValueError, match=r"need image embeddings"):
        zero_shot(model, babylm_tokenizer, tmp_path, "vqa", progress=False)
    np.save(tmp_path / "emb.npy", np.zeros((1, IMAGE_DIM), dtype=np.float32))
    (tmp_path / "emb.ids.json").write_text('["img1"]')
    with pytest.raises(KeyError, match=r"part.jsonl:1: no embedding for image id 'img7'"):
        zero_shot(model, babylm_tokenizer, tmp_path, "vqa", images=tmp_path / "emb.npy", progress=False)
    (tmp_path / "emb.ids.json").write_text('["img1", "img7"]')
    with pytest.raises(ValueError, match="2 image ids for 1 embeddings"):
        ImageEmbeddings.load(tmp_path / "emb.npy")

    write_task(tmp_path, "blimp", [json.dumps({"sentence_good": "word " * 300, "sentence_bad": "a", "field": "x",
                                               "UID": "long", "linguistics_term": "x"})])
    with pytest.raises(ValueError, match=r"part.jsonl:1: .* more than its context of 256"):
        zero_shot(model, babylm_tokenizer, tmp_path, "blimp", progress=False)


def test_image_embeddings_from_a_datasets_folder(tmp_path):
    from datasets import Dataset

    embeddings = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    Dataset.from_dict({"image_id": ["a", "b", "c"], "embedding": embeddings}).save_to_disk(tmp_path / "images")
    images = ImageEmbeddings.load(tmp_path / "images")
    rows = images.indices(["c", "a"], ["x:1", "x:2"])
    np.testing.assert_array_equal(images.rows(rows), embeddings[[2, 0]])
    Dataset.from_dict({"id": ["a"], "embedding": embeddings[:1]}).save_to_disk(tmp_path / "wrong")
    with pytest.raises(ValueError, match=r"needs columns 'image_id' and 'embedding'; missing \['image_id'\]"):
        ImageEmbeddings.load(tmp_path / "wrong")


@pytest.mark.parametrize("argv,message", [
    (["zero-shot", "--batch-size", "-1"], "argument --batch-size: expected an integer >= 1, got -1"),
    (["zero-shot", "--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["narrow-gate", "--seeds", "two"], "argument --seeds: expected an integer >= 1, got 'two'"),
    (["fewshot", "--shots", "4,0"], "argument --shots: expected an integer >= 1, got 0"),
    (["gates", "--untrained-draws", "-1"], "argument --untrained-draws: expected an integer >= 0, got -1"),
])
def test_numeric_arguments_below_one_are_refused_before_anything_runs(argv, message, tmp_path, capsys):
    """A batch size of -1 used to score nothing and report 100% (the first candidate wins every tie)."""
    common = ["--out", str(tmp_path / "out")] + ([] if argv[0] == "fewshot" else
                                                 ["--model", "nowhere", "--captions", str(tmp_path)]
                                                 if argv[0] == "gates" else
                                                 ["--model", "nowhere", "--data", str(tmp_path)])
    with pytest.raises(SystemExit):
        eval_main([*argv, *common])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


EVIL_CODE = "import pathlib\npathlib.Path(__file__).with_name('EXECUTED').touch()\n"


def _foreign_code(folder, file: str, key: str, target) -> None:
    """Make a checkpoint name code of its own (evil.py, which leaves a mark when imported) in `file`'s auto_map."""
    (folder / "evil.py").write_text(EVIL_CODE)
    config = json.loads((folder / file).read_text())
    config["auto_map"] = {**config.get("auto_map", {}), key: target}
    (folder / file).write_text(json.dumps(config))


def test_remote_code_is_trusted_only_for_this_packages_checkpoints(model, babylm_tokenizer, tmp_path):
    ours = tmp_path / "ours"
    model.save_pretrained(ours)
    babylm_tokenizer.save_pretrained(ours)
    loaded, tokenizer = load_checkpoint(str(ours), device="cpu")
    assert type(loaded).__name__ == "GatedGPT2ForCausalLM" and type(tokenizer).__name__ == "PreTrainedTokenizerFast"

    # a checkpoint of ours whose tokenizer names code: the tokenizer is read from its files, the code never runs
    shutil.copytree(ours, tmp_path / "tokenizer_code")
    _foreign_code(tmp_path / "tokenizer_code", "tokenizer_config.json", "AutoTokenizer", ["evil.Evil", None])
    load_checkpoint(str(tmp_path / "tokenizer_code"), device="cpu")
    assert not (tmp_path / "tokenizer_code" / "EXECUTED").exists()

    # a checkpoint that is not ours (other model type, other code) needs the user's word
    shutil.copytree(ours, tmp_path / "foreign")
    config = json.loads((tmp_path / "foreign" / "config.json").read_text())
    (tmp_path / "foreign" / "config.json").write_text(json.dumps({**config, "model_type": "evil_gpt", "auto_map": {}}))
    _foreign_code(tmp_path / "foreign", "config.json", "AutoConfig", "evil.EvilConfig")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        load_checkpoint(str(tmp_path / "foreign"), device="cpu")
    assert not (tmp_path / "foreign" / "EXECUTED").exists()


def test_exact_ties_are_counted_and_shown(babylm_tokenizer, tmp_path):
    """A model with a zero head gives every token the same probability, so candidates with as many tokens tie: the
    pipeline's rule counts them right, and the results say how many there were."""
    blind = tiny_model(vocab_size=len(babylm_tokenizer), n_positions=256)
    torch.nn.init.zeros_(blind.lm_head.weight)
    record = {"field": "x", "UID": "u", "linguistics_term": "x"}
    write_task(tmp_path, "blimp", [json.dumps({**record, "sentence_good": "a b", "sentence_bad": "b a"}),
                                   json.dumps({**record, "sentence_good": "the cat sat on the mat .",
                                               "sentence_bad": "cat"})])
    results = zero_shot(blind, babylm_tokenizer, tmp_path, "blimp", progress=False, out_dir=tmp_path / "out")
    assert results["tasks"]["blimp"]["exact_ties"] == 1 and results["tasks"]["blimp"]["accuracy"] == 50.0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["blimp"]["exact_ties"] == 1
    assert "| blimp | blimp | 2 | 50.00 | accuracy | 1 |" in (tmp_path / "out" / "results.md").read_text()


def test_prefix_trees_score_what_padded_batches_and_lone_sequences_score(model, babylm_tokenizer):
    """Duplicates, a sentence that is another's prefix, a sequence longer than a whole tree, phrases that end early:
    the prefix-tree scorer agrees with right-padded batches, and with each sequence run alone."""
    from gatedgpt2.eval.babylm.scoring import encode_candidates, score_as_prefix_trees, score_padded_batches

    sentences = ["The cat sat on the mat.", "The cat sat on the mat.", "The cat sat", "The dog ran home quickly.",
                 "A much longer sentence about dogs that ran home and then slept all day long.", "Hi", "The cat"]
    completions = [" mat.", "The cat sat on the mat.", " sat", " ran home quickly.", " day long.", "Hi", "The cat"]
    ids, masks = encode_candidates(babylm_tokenizer, sentences, completions)
    masks[3] = [0, 1, 1] + [0] * (len(masks[3]) - 3)  # a scored stretch that ends before the sentence does
    pad = babylm_tokenizer.pad_token_id
    trees = score_as_prefix_trees(model, ids, masks, pad, batch_size=1, tree_size=8)
    padded = score_padded_batches(model, ids, masks, pad, batch_size=3)
    np.testing.assert_allclose(trees, padded, rtol=1e-5)
    with torch.no_grad():
        for sequence, mask, score in zip(ids, masks, trees):
            logprobs = torch.log_softmax(model(torch.tensor([sequence[:-1]])).logits[0], -1)
            alone = sum(float(logprobs[t - 1, sequence[t]]) for t in range(1, len(sequence)) if mask[t])
            assert score == pytest.approx(alone, rel=1e-5, abs=1e-5)


def test_ranking_within_an_item_leaves_out_what_its_candidates_share(model, babylm_tokenizer):
    """With `items`, each score is the full sum less the log p of the item's shared start: one constant per item, so
    the choice and the softmax over the item are the full sums'."""
    sentences = ["The cat sat on the mat.", "The cat sit on the mat.", "Dogs run.", "Dogs ran.", "A", "B"]
    items = [0, 0, 1, 1, 2, 2]
    full = score_candidates(model, babylm_tokenizer, sentences)
    relative = score_candidates(model, babylm_tokenizer, sentences, items=items)
    shift = (full - relative).reshape(3, 2)
    np.testing.assert_allclose(shift[:, 0], shift[:, 1], rtol=1e-6, atol=1e-6)
    assert shift[0, 0] < 0 and shift[1, 0] < 0  # "The cat" and "Dogs" were left out: they cost something
    assert np.array_equal(full.reshape(3, 2).argmax(1), relative.reshape(3, 2).argmax(1))


def test_a_tree_mask_must_be_boolean_of_the_right_shape_and_leave_every_query_a_key(model):
    ids = torch.tensor([[5, 6, 7]])
    allowed = torch.tril(torch.ones(3, 3, dtype=torch.bool))[None, None]
    with torch.no_grad():
        plain = model(ids).logits
        assert torch.allclose(model(ids, attention_mask=allowed, position_ids=torch.arange(3)[None]).logits, plain,
                              atol=1e-5)
        for bad, message in [(allowed.float(), "boolean"), (allowed[:, :, :2], "shape"),
                             (allowed & ~torch.eye(3, dtype=torch.bool), "at least one key")]:
            with pytest.raises(ValueError, match=message):
                model(ids, attention_mask=bad)


def test_a_model_that_computes_nan_is_an_error_naming_the_item_not_a_perfect_score(babylm_tokenizer, tmp_path):
    """A NaN compares false with everything: the first candidate (the correct one) would win every item, 100%."""
    broken = tiny_model(vocab_size=len(babylm_tokenizer), n_positions=256, image_embed_dim=IMAGE_DIM)
    with torch.no_grad():
        broken.lm_head.weight.fill_(float("nan"))
    record = {"field": "x", "UID": "u", "linguistics_term": "x"}
    write_task(tmp_path, "blimp", [json.dumps({**record, "sentence_good": "the cat sat .", "sentence_bad": "cat the"})])
    with pytest.raises(ValueError, match=r"2 of 2 candidates have no finite log-probability .*part.jsonl:1: "
                                         r"'the cat sat \.' scored nan"):
        zero_shot(broken, babylm_tokenizer, tmp_path, "blimp", progress=False)

    # finite image embeddings too large for the model overflow inside it: the same error, never a win
    sane = tiny_model(vocab_size=len(babylm_tokenizer), n_positions=256, image_embed_dim=IMAGE_DIM)
    task = read_task(tmp_path, "blimp")
    huge = ImageEmbeddings(np.full((1, IMAGE_DIM), 3e38, dtype=np.float32), ["0"], "huge.npy")
    task = type(task)(task.name, task.dataset, [type(i)(**{**i.__dict__, "image_id": "0"}) for i in task.items])
    with pytest.raises(ValueError, match=r"no finite log-probability"):
        evaluate_task(sane, babylm_tokenizer, task, huge, progress=False)


def test_a_new_task_is_one_task_record_and_scores_through_every_writer(model, babylm_tokenizer, tmp_path, monkeypatch):
    """A task the package has never seen, in a format of its own, added by one `Task` record: zero-shot scores it as
    the pipeline would, and babylm's per-revision scoring, its summary and the pipeline's results tree carry it."""
    from gatedgpt2.eval.babylm import tasks
    from gatedgpt2.eval.babylm.submission import score_revision, write_summary

    def decode_word_order(record, stem, where):
        right, wrong = tasks._texts(record, ("right", "wrong"), where)
        return tasks.Item(uid=stem, sentences=(right, wrong), completions=(right, wrong), source=where,
                          metadata={"kind": record["kind"]})

    monkeypatch.setitem(tasks.TASKS, "word_order", tasks.Task(
        "word_order", ("full_eval/word_order", "fast_eval/word_order"), decode_word_order))
    monkeypatch.setitem(tasks.SUITES, "fast", ("word_order",))
    records = [{"right": f"the {a} sat on the {b} .", "wrong": f"the {a} on sat the {b} .", "kind": kind}
               for a, b, kind in [("cat", "mat", "verb"), ("dog", "rug", "verb"), ("bird", "tree", "noun"),
                                  ("child", "chair", "noun")]]
    write_task(tmp_path / "data", "word_order", [json.dumps(r) for r in records])

    results = zero_shot(model, babylm_tokenizer, tmp_path / "data", "word_order", out_dir=tmp_path / "out",
                        progress=False)
    task = results["tasks"]["word_order"]
    expected = [r[("right", "wrong")[pipeline_choice(model, babylm_tokenizer, [r["right"], r["wrong"]],
                                                     [r["right"], r["wrong"]])]] for r in records]
    assert [p["pred"] for p in task["predictions"]["part"]["predictions"]] == expected
    correct = [e == r["right"] for e, r in zip(expected, records)]
    assert task["score"] == pytest.approx(100 * np.mean(correct)) and set(task["accuracies"]) == {"UID", "kind"}
    assert json.loads((tmp_path / "out" / "word_order" / "correct.json").read_text()) == [int(c) for c in correct]
    assert "| word_order |" in (tmp_path / "out" / "results.md").read_text()

    model_dir = tmp_path / "results" / "run"
    scores = score_revision(model, babylm_tokenizer, tmp_path / "checkpoint", "chck_1M", "fast", tmp_path / "data",
                            model_dir, batch_size=8)
    assert scores == {"word_order": {"score": task["score"], "metric": "accuracy", "exact_ties": task["exact_ties"],
                                     "items": 4}}
    tree = model_dir / "chck_1M" / "zero_shot" / "causal" / "word_order" / "word_order"
    assert json.loads((tree / "predictions.json").read_text()) == task["predictions"]
    assert "### AVERAGE ACCURACY" in (tree / "best_temperature_report.txt").read_text()
    write_summary({"chck_1M": {"words": 10**6, "suite": "fast", "tasks": scores}}, model_dir)
    assert "| chck_1M | 1,000,000 | fast |" in (model_dir / "summary.md").read_text()
