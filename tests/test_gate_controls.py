"""The factorial world, and the gate controls: every statistic with a planted effect and a null case, the null
coming out significant no more often than its stated rate."""

import json
import random
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from gatedgpt2.data import WorldFiles
from gatedgpt2.data.factorial_world import cell, cell_name, describe_pair, random_pair
from gatedgpt2.data.scenes import random_scene
from gatedgpt2.data.world import WorldSpec, describe, minimal_pairs, write_world
from gatedgpt2.eval.interpret.gate_controls import (
    gate_controls,
    next_word_pairs,
    untrained_gates,
    within_word_gap,
    word_gates_and_benefits,
)
from gatedgpt2.eval.statistics import caption_bootstrap, epsilon_squared, holm, mcnemar, paired_difference
from tests.helpers.models import IMAGE_DIM, tiny_model

NULL_REPEATS = 60
# a statistic at the 5% level comes out significant in at most 9 of 60 null repeats with probability 0.99
MAX_FALSE_POSITIVES = 9


# --------------------------------------------------------------------------------------------------- the worlds


def test_version_3_spells_crosses_and_version_2_reproduces_crosss():
    scene = (random_scene(random.Random(0), 2)[0].__class__("red", "cross", "big", 0, 0),
             random_scene(random.Random(0), 2)[0].__class__("blue", "cross", "big", 1, 1))
    texts = {v: {describe(scene, random.Random(k), v) for k in range(200)} for v in (2, 3)}
    assert "there are two crosses ." in texts[3] and not any("crosss" in t for t in texts[3])
    assert "there are two crosss ." in texts[2]
    pairs = {v: [r["sentence_good"] for r in minimal_pairs(random.Random(1), 60, v)] for v in (2, 3)}
    assert not any("crosss" in s for s in pairs[3]) and any("crosss" in s for s in pairs[2])
    with pytest.raises(ValueError, match=r"world version must be one of \(2, 3\), got 4"):
        WorldSpec(version=4)
    with pytest.raises(ValueError, match="world design must be one of"):
        WorldSpec(design="cubist")


def _transitions(captions):
    counts = defaultdict(Counter)
    for caption in captions:
        words = caption.split()
        for word, following in zip(words, words[1:]):
            if cell(word) is not None:
                counts[cell_name(word)][bool(cell(following) and cell(following)[1])] += 1
    return counts


def test_the_factorial_world_crosses_class_depiction_and_concreteness():
    rng = random.Random(0)
    captions = [describe_pair(random_pair(rng), rng) for _ in range(3000)]
    counts = _transitions(captions)
    assert len(counts) == 8  # every cell of class x depicted x concreteness occurs
    for name, before in counts.items():  # and is followed by image-dependent and image-independent words
        share = before[True] / (before[True] + before[False])
        assert 0.2 <= share <= 0.75, (name, before)
    assert all(cell(w) is not None for c in captions for w in c.split() if w != ".")
    # every depicted word is what the scene makes it, in every template: a word's cell holds wherever it occurs
    for k in range(300):
        rng = random.Random(k)
        a, b = scene = random_pair(rng)
        allowed = {"above" if a.row < b.row else "below", "below" if a.row < b.row else "above", a.colour, b.colour,
                   a.shape, b.shape, "and" if a.colour == b.colour else "but",
                   "same" if a.colour == b.colour else "different", "like" if a.shape == b.shape else "unlike"}
        for _ in range(10):
            caption = describe_pair(scene, rng)
            depicted = {w for w in caption.split() if cell(w) and cell(w)[1]}
            assert depicted <= allowed, (caption, depicted - allowed)


def test_a_factorial_world_is_written_with_a_label_for_every_word(tmp_path):
    spec = WorldSpec(seed=1, train_captions=40, train_sentences=30, dev_captions=20, dev_sentences=10, embed_dim=16,
                     design="factorial")
    world = WorldFiles(write_world(tmp_path / "w", spec))
    for split, count in (("train", 40), ("dev", 20)):
        captions = json.loads(world.captions(split).read_text())
        cells = json.loads(world.caption_cells(split).read_text())
        assert len(captions) == len(cells) == count == len(np.load(world.caption_images(split, "global")))
        assert all(len(c.split()) == len(labels) for c, labels in zip(captions, cells))
    assert not world.eval_dir.exists()
    assert write_world(tmp_path / "w", spec) == world.root  # cached by its spec


# --------------------------------------------------------------------------------------------------- statistics


def _clustered_gates(rng, captions: int, gap: float, caption_sd: float = 0.1):
    """Captions of 6 words from 4 word types, every type before image-dependent and independent words; each caption
    shifts all its gates by a shared random amount (so occurrences are not independent); `gap` is planted."""
    caption, words, dependent, gates = [], [], [], []
    for c in range(captions):
        shift = rng.normal(0, caption_sd)
        for _ in range(6):
            word, before = rng.integers(4), rng.random() < 0.5
            caption.append(c)
            words.append(f"w{word}")
            dependent.append(before)
            gates.append(0.5 + 0.05 * word + shift + gap * before + rng.normal(0, 0.05))
    return np.array(caption), np.array(words), np.array(dependent), np.array(gates)


def test_the_within_word_gap_finds_a_planted_gap_and_its_ci_holds_its_rate_under_the_null():
    rng = np.random.default_rng(0)
    caption, words, dependent, gates = _clustered_gates(rng, 120, gap=-0.05)
    gap, per_type = within_word_gap(gates, words, dependent)
    assert gap == pytest.approx(-0.05, abs=0.025) and len(per_type) == 4
    low, high = caption_bootstrap(caption, lambda s: within_word_gap(gates[s], words[s], dependent[s])[0], 300)
    assert high < 0 and low < gap < high

    excluded = 0
    for repeat in range(NULL_REPEATS):
        caption, words, dependent, gates = _clustered_gates(np.random.default_rng(100 + repeat), 60, gap=0.0)
        low, high = caption_bootstrap(caption, lambda s: within_word_gap(gates[s], words[s], dependent[s])[0], 200,
                                      seed=repeat)
        excluded += not low <= 0 <= high
    assert excluded <= MAX_FALSE_POSITIVES


def test_a_word_that_only_ever_precedes_one_kind_has_no_gap():
    words = np.array(["the"] * 10 + ["red"] * 10)
    dependent = np.array([True] * 5 + [False] * 5 + [True] * 10)
    gates = np.r_[np.full(5, 0.2), np.full(5, 0.6), np.full(10, 0.1)]
    gap, per_type = within_word_gap(gates, words, dependent)
    assert gap == pytest.approx(-0.4) and set(per_type) == {"the"}
    assert within_word_gap(gates[10:], words[10:], dependent[10:]) == (None, {})


def test_epsilon_squared_is_large_for_planted_groups_and_small_for_equal_ones():
    rng = np.random.default_rng(1)
    labels = np.repeat(["a", "b", "c"], 400)
    assert epsilon_squared(rng.normal(0, 1, 1200) + np.repeat([0.0, 1.0, 2.0], 400), labels) > 0.4
    assert epsilon_squared(rng.normal(0, 1, 1200), labels) < 0.01
    assert epsilon_squared(rng.normal(0, 1, 10), np.array(["a"] * 10)) is None


def test_the_paired_difference_finds_a_planted_shift_and_holds_its_rate_under_the_null():
    rng = np.random.default_rng(2)
    base = rng.normal(5, 0.3, 4)  # seed-to-seed spread far above the arms' difference: pairing removes it
    shifted = paired_difference(dict(enumerate(base)), dict(enumerate(base - 0.05 + rng.normal(0, 0.005, 4))))
    assert shifted["ci95"][1] < 0 and shifted["p_paired_t"] < 0.01 and shifted["d_z"] < -3
    assert shifted["p_welch"] > 0.5  # unpaired, the same numbers say nothing
    significant = 0
    for repeat in range(200):
        rng = np.random.default_rng(1000 + repeat)
        base = rng.normal(5, 0.3, 4)
        entry = paired_difference(dict(enumerate(base)), dict(enumerate(base + rng.normal(0, 0.01, 4))))
        significant += entry["p_paired_t"] < 0.05
        assert (entry["ci95"][0] <= 0 <= entry["ci95"][1]) == (entry["p_paired_t"] >= 0.05)
    assert significant <= 18  # 5% of 200 is 10; 18 is beyond the binomial 99.5th percentile
    assert paired_difference({0: 1.0}, {0: 2.0}) is None
    same = paired_difference({0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.5})
    assert same["std"] == 0 and same["p_paired_t"] == 0.0 and same["d_z"] is None


def test_mcnemar_finds_a_planted_difference_and_holds_its_rate_under_the_null():
    rng = np.random.default_rng(3)
    a = rng.random(2000) < 0.6
    b = a.copy()
    flip = rng.choice(np.flatnonzero(~a), 100, replace=False)
    b[flip] = True
    planted = mcnemar(a.astype(int).tolist(), b.astype(int).tolist())
    assert (planted["only_a"], planted["only_b"]) == (0, 100) and planted["p"] < 1e-20
    significant = 0
    for repeat in range(NULL_REPEATS):
        rng = np.random.default_rng(2000 + repeat)
        a, b = rng.random(2000) < 0.6, rng.random(2000) < 0.6
        significant += mcnemar(a.tolist(), b.tolist())["p"] < 0.05
    assert significant <= MAX_FALSE_POSITIVES
    with pytest.raises(ValueError, match="different item lists"):
        mcnemar([1, 0], [1])


# --------------------------------------------------------------------------------------------------- on a model


@pytest.fixture(scope="module")
def gated_model():
    return tiny_model(n_positions=64)


class CharTokenizer:
    """Each character a token (offsets included), BOS first: enough to check the alignment of words to pieces."""

    def __call__(self, texts, padding=True, return_offsets_mapping=True, return_special_tokens_mask=True,
                 return_tensors="pt"):
        length = 1 + max(len(t) for t in texts)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        mask, special = torch.zeros_like(ids), torch.ones_like(ids)
        offsets = torch.zeros(len(texts), length, 2, dtype=torch.long)
        for b, text in enumerate(texts):
            ids[b, 0], mask[b, 0] = 1, 1
            for i, ch in enumerate(text, 1):
                ids[b, i], mask[b, i], special[b, i] = 2 + ord(ch) % 60, 1, 0
                offsets[b, i] = torch.tensor([i - 1, i])
        return {"input_ids": ids, "attention_mask": mask, "special_tokens_mask": special, "offset_mapping": offsets}


def test_word_gates_are_read_at_the_last_piece_and_benefits_are_the_image_s_loss_reduction(gated_model):
    captions, images = ["ab c", "de fgh i"], np.random.default_rng(0).normal(size=(2, IMAGE_DIM)).astype(np.float32)
    rows = word_gates_and_benefits(gated_model, CharTokenizer(), captions, images)
    assert [(r["caption"], r["index"], r["word"]) for r in rows] == [
        (0, 0, "ab"), (0, 1, "c"), (1, 0, "de"), (1, 1, "fgh"), (1, 2, "i")]
    encoded = CharTokenizer()(captions[1:])
    embeds = torch.from_numpy(images[1:])
    with torch.no_grad():
        seen = gated_model(input_ids=encoded["input_ids"], image_embeds=embeds, output_gates=True)
        blind = gated_model(input_ids=encoded["input_ids"], image_embeds=embeds, image_mask=torch.tensor([False]))
    gate = torch.stack([g.float().mean(-1) for g in seen.gates], -1).mean(-1)[0]
    assert rows[3]["gate"] == pytest.approx(float(gate[6]), abs=1e-6)  # "fgh" ends at character 6 (token 6)

    def loss(logits, t):
        return float(torch.nn.functional.cross_entropy(logits[0, t - 1], encoded["input_ids"][0, t]))

    expected = sum(loss(blind.logits, t) - loss(seen.logits, t) for t in (4, 5, 6))
    assert rows[3]["benefit"] == pytest.approx(expected, abs=1e-5)
    pairs = next_word_pairs(rows)
    assert pairs["word"].tolist() == ["ab", "de", "fgh"]
    assert pairs["next_benefit"].tolist() == pytest.approx([rows[1]["benefit"], rows[3]["benefit"],
                                                            rows[4]["benefit"]])


def test_untrained_gates_are_fresh_seeded_draws_and_the_trained_ones_come_back(gated_model):
    trained = {k: v.clone() for k, v in gated_model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    draws = []
    for seed in (0, 0, 1):
        with untrained_gates(gated_model, seed):
            draws.append(torch.cat([b.gate.proj.weight.flatten() for b in gated_model.transformer.h]))
    assert torch.equal(torch.rand(1), expected_next)  # the caller's random stream is left where it was
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert float(draws[0].std()) == pytest.approx(gated_model.config.initializer_range, rel=0.1)
    assert all(torch.equal(v, gated_model.state_dict()[k]) for k, v in trained.items())


def test_gate_controls_report_every_class_with_its_nulls(gated_model):
    rng = random.Random(0)
    captions = [describe_pair(random_pair(rng), rng) for _ in range(24)]
    images = np.random.default_rng(0).normal(size=(24, IMAGE_DIM)).astype(np.float32)
    reports = gate_controls(gated_model, CharTokenizer(), captions, images,
                            {"class": lambda w: (cell(w) or (None,))[0], "cell": cell_name},
                            lambda w: bool(cell(w) and cell(w)[1]), untrained_draws=3, permutations=20, resamples=50,
                            min_count=2)
    assert len(reports["cell"]["classes"]) == 8
    report = reports["class"]
    assert set(report["classes"]) == {"content", "function"}
    assert report["class_effect"]["untrained"]["n"] == 3
    for entry in report["classes"].values():
        gap = entry["within_word_gap"]
        assert gap["gap"] is not None and gap["ci95"][0] <= gap["ci95"][1]
        assert gap["shuffled_within_words"]["n"] == 20 and gap["untrained"]["n"] == 3
        assert -1 <= entry["next_word_rho"]["rho"] <= 1


def test_the_gates_command_reports_the_controls_by_pos_class_and_by_factorial_cell(tiny_world, tmp_path, capsys):
    from gatedgpt2.data import train_tokenizer
    from gatedgpt2.eval.__main__ import main

    factorial = write_world(tmp_path / "factorial", WorldSpec(seed=2, train_captions=30, train_sentences=30,
                                                              dev_captions=30, dev_sentences=5, embed_dim=32,
                                                              design="factorial"))
    for world, groupings in ((tiny_world, {"class"}), (factorial, {"class", "cell"})):
        lines = (world / "text" / "train" / "world.train").read_text().splitlines()
        tokenizer = train_tokenizer(lines, vocab_size=150, model_max_length=64)
        checkpoint = tmp_path / f"model_{world.name}"
        tiny_model(vocab_size=len(tokenizer), n_positions=64, image_embed_dim=32,
                   initializer_range=0.3).save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
        out = tmp_path / f"out_{world.name}"
        main(["gates", "--model", str(checkpoint), "--captions", str(world), "--out", str(out),
              "--untrained-draws", "2", "--min-count", "2"])
        printed = capsys.readouterr().out
        assert "among 2 untrained gates" in printed and "rho(1 - gate, next word's image benefit)" in printed
        assert {p.name for p in (out / "controls").iterdir()} == groupings
        report = json.loads((out / "controls" / "class" / "gate_controls.json").read_text())
        assert set(report["classes"]) == {"content", "function"}
        assert ("within_word_gap" in report["classes"]["function"]) == (world == factorial)


def test_holm_adjusts_a_family_step_down_and_keeps_the_order():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5] and holm([0.4, 0.9]) == pytest.approx([0.8, 0.9])


def test_the_pooled_variance_test_finds_a_planted_run_and_holds_its_rate_under_the_null():
    from gatedgpt2.eval.statistics import pooled_variance

    def family(rng, shift):
        runs = [dict(enumerate(rng.normal(50, 3, 3))) for _ in range(8)]
        runs[1] = {seed: value + shift for seed, value in runs[1].items()}
        entries = {k: paired_difference(runs[0], runs[k]) for k in range(1, 8)}
        pooled_variance(entries, runs)
        return entries

    planted = family(np.random.default_rng(4), shift=12.0)
    assert planted[1]["p_pooled"] < 0.01 and planted[1]["ci95_pooled"][0] > 0 and planted[1]["pooled_dof"] == 16
    significant = sum(family(np.random.default_rng(3000 + repeat), 0.0)[1]["p_pooled"] < 0.05 for repeat in range(200))
    assert significant <= 18


def test_the_next_word_correlation_finds_a_planted_link_and_its_ci_holds_its_rate_under_the_null():
    from gatedgpt2.eval.statistics import spearman

    def sample(rng, link):
        """80 captions of 6 words; gates and benefits each shift by caption (independently), so occurrences are
        clustered; `link` ties the gate to the next word's benefit."""
        caption = np.repeat(np.arange(80), 6)
        benefit = rng.normal(0, 0.5, 80)[caption] + rng.normal(0, 1, len(caption))
        gates = 0.5 - link * benefit + rng.normal(0, 0.5, 80)[caption] + rng.normal(0, 1, len(caption))
        return caption, gates, benefit

    caption, gates, benefit = sample(np.random.default_rng(5), link=0.5)
    low, high = caption_bootstrap(caption, lambda s: spearman(1 - gates[s], benefit[s])["rho"], 300)
    assert low > 0.2 and low < spearman(1 - gates, benefit)["rho"] < high
    excluded = 0
    for repeat in range(NULL_REPEATS):
        caption, gates, benefit = sample(np.random.default_rng(4000 + repeat), link=0.0)
        low, high = caption_bootstrap(caption, lambda s: spearman(1 - gates[s], benefit[s])["rho"], 100, seed=repeat)
        excluded += not low <= 0 <= high
    assert excluded <= MAX_FALSE_POSITIVES
