"""Gate analysis: word gates from BPE pieces by character offsets, POS in context, the statistics, the outputs."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gatedgpt2.data import load_caption_shards, train_tokenizer
from gatedgpt2.eval.interpret.gates import (
    Norms,
    collect_word_gates,
    gate_analysis,
    load_spacy,
    read_word_gates,
    regression,
    spacy_words,
    whitespace_words,
    word_frequencies,
)
from gatedgpt2.eval.statistics import pos_tests, within_word_type_null, word_type_test
from modeling_gatedgpt import gate_per_token
from tests.helpers.models import tiny_model

NORMS = Path(__file__).resolve().parents[2] / "shared" / "data" / "norms" / "brysbaert_concreteness.tsv"


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


def test_word_gates_average_their_pieces_and_pos_is_tagged_in_context(nlp):
    tokenizer = train_tokenizer(["i can see a can", "the cat sat"] * 5, vocab_size=270, model_max_length=32)
    model = tiny_model(vocab_size=len(tokenizer), gate_granularity="feature")
    caption = "I can see a can of cats."
    image = torch.randn(1, 24).numpy()
    rows = collect_word_gates(model, tokenizer, [caption], image, nlp, progress=False)
    assert [r["word"] for r in rows] == ["i", "can", "see", "a", "can", "of", "cats", "."]
    assert [rows[1]["pos"], rows[4]["pos"]] == ["AUX", "NOUN"]  # the same string, two parts of speech
    assert rows[6]["pieces"] > 1  # "cats" is split: its gate is the mean of its pieces'

    per_layer, pieces = token_gates_of(model, tokenizer, caption, image, "cats")
    np.testing.assert_allclose(rows[6]["gates"], per_layer[pieces].mean(0), rtol=1e-6)


def token_gates_of(model, tokenizer, caption: str, image, word: str) -> tuple[np.ndarray, list[int]]:
    """The caption's gates (T, layers), computed directly, and the positions of `word`'s pieces."""
    encoded = tokenizer(caption, return_offsets_mapping=True)
    with torch.no_grad():
        gates = model(torch.tensor([encoded["input_ids"]]), image_embeds=torch.from_numpy(image),
                      output_gates=True).gates
    per_layer = torch.stack([gate_per_token(g)[0] for g in gates], -1).numpy()
    start = caption.index(word)
    return per_layer, [t for t, (s, e) in enumerate(encoded["offset_mapping"])
                       if e > start and s < start + len(word) and e > s]


def test_one_reader_takes_the_word_rule_and_the_piece_rule_as_arguments(nlp):
    """The analysis (spaCy words, mean of pieces), the run report (whitespace, mean) and the controls (whitespace,
    last piece) read the same gates."""
    tokenizer = train_tokenizer(["i can see a can", "the cat sat"] * 5, vocab_size=270, model_max_length=32)
    model = tiny_model(vocab_size=len(tokenizer), gate_granularity="feature")
    caption, image = "I can see a can of cats.", torch.randn(1, 24).numpy()

    def read(words=whitespace_words, piece="mean"):
        return list(read_word_gates(model, tokenizer, [caption], image, words, piece))

    assert [g.word.text for g in read()] == caption.split()
    assert [(g.word.text, g.word.pos) for g in read(spacy_words(nlp))][-2:] == [("cats", "NOUN"), (".", "PUNCT")]
    per_layer, pieces = token_gates_of(model, tokenizer, caption, image, "cats.")
    assert len(pieces) > 1 and read()[-1].pieces == len(pieces)
    np.testing.assert_allclose(read()[-1].gates, per_layer[pieces].mean(0), rtol=1e-6)
    np.testing.assert_allclose(read(piece="last")[-1].gates, per_layer[pieces[-1]], rtol=1e-6)
    with pytest.raises(ValueError, match=r"piece must be one of \('mean', 'last'\), got 'first'"):
        read(piece="first")


def test_regression_recovers_known_effects():
    rng = np.random.default_rng(0)
    n = 2000
    pos = rng.choice(["NOUN", "DET", "ADJ"], n, p=[0.5, 0.3, 0.2])
    concreteness, log_frequency = rng.normal(3, 1, n), rng.normal(0, 2, n)
    gates = (0.5 - 0.1 * (pos == "DET") + 0.05 * (concreteness - concreteness.mean()) / concreteness.std()
             + rng.normal(0, 0.01, n))
    result = regression(gates, pos, concreteness, log_frequency, min_count=5)
    assert result["reference_pos"] == "NOUN"
    coefficients = result["coefficients"]
    assert coefficients["pos=DET"]["beta"] == pytest.approx(-0.1, abs=0.003)
    assert coefficients["concreteness (z)"]["beta"] == pytest.approx(0.05, abs=0.002)
    assert abs(coefficients["log frequency (z)"]["beta"]) < 0.002 and coefficients["log frequency (z)"]["p"] > 0.001
    assert result["r2"] > 0.9


def test_regression_interactions_recover_a_content_word_slope():
    rng = np.random.default_rng(1)
    n = 3000
    pos = rng.choice(["NOUN", "DET", "ADJ"], n, p=[0.5, 0.3, 0.2])
    concreteness, log_frequency = rng.normal(3, 1, n), rng.normal(0, 2, n)
    z = lambda v: (v - v.mean()) / v.std()  # noqa: E731
    content = pos != "DET"
    # Frequency matters for function words only; concreteness for content words only.
    gates = 0.5 + 0.04 * z(log_frequency) * ~content + 0.06 * z(concreteness) * content + rng.normal(0, 0.01, n)
    coefficients = regression(gates, pos, concreteness, log_frequency, min_count=5, interactions=True)["coefficients"]
    assert coefficients["concreteness (z)"]["beta"] == pytest.approx(0.0, abs=0.003)
    assert coefficients["content x concreteness (z)"]["beta"] == pytest.approx(0.06, abs=0.003)
    assert coefficients["log frequency (z)"]["beta"] == pytest.approx(0.04, abs=0.003)
    assert coefficients["content x log frequency (z)"]["beta"] == pytest.approx(-0.04, abs=0.003)


def test_gate_analysis_on_a_world_model_end_to_end(tiny_world, tmp_path, nlp):
    captions, store = load_caption_shards([tiny_world / "captions" / "dev_captions.json"],
                                          [tiny_world / "captions" / "dev_cls_patches.npy"])
    lines = (tiny_world / "text" / "train" / "world.train").read_text().splitlines()
    tokenizer = train_tokenizer(lines, vocab_size=150, model_max_length=64)
    model = tiny_model(vocab_size=len(tokenizer), n_positions=64, image_embed_dim=32, initializer_range=0.3)
    frequencies = word_frequencies(lines)
    summary = gate_analysis(model, tokenizer, captions, store, tmp_path, [Norms.load(str(NORMS))], frequencies,
                            nlp=nlp, min_count=3, progress=False)

    occurrences = sum(len([t for t in doc if not t.is_space]) for doc in nlp.pipe(captions))
    assert summary["occurrences"] == occurrences
    pooled = summary["by_layer"]["pooled"]
    assert pooled["pos"]["kruskal_wallis"]["H"] > 0 and 0 <= pooled["pos"]["kruskal_wallis"]["p"] <= 1
    assert {"NOUN", "ADJ", "DET"} <= set(pooled["pos"]["groups"])
    assert all(0 <= p["p"] <= p["p_bh"] <= 1 for p in pooled["pos"]["pairwise"])
    concreteness = pooled["norms"]["concreteness"]
    assert concreteness["coverage"] > 0.5 and -1 <= concreteness["per_word_type"]["rho"] <= 1
    assert set(summary["by_layer"]) == {"layer_0", "layer_1", "pooled"}
    assert "concreteness (z)" in pooled["regression"]["coefficients"]

    with open(tmp_path / "gates.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == occurrences and rows[0].keys() >= {"word", "pos", "gate_layer_0", "gate_mean", "concreteness"}
    assert float(rows[0]["gate_mean"]) == pytest.approx((float(rows[0]["gate_layer_0"]) +
                                                          float(rows[0]["gate_layer_1"])) / 2, abs=1e-5)
    assert json.loads((tmp_path / "gates.json").read_text())["occurrences"] == occurrences
    for name in ("gate_by_pos.png", "gate_by_layer.png", "gate_vs_concreteness.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_bad_norms_and_mismatched_inputs_are_errors(tmp_path, nlp):
    (tmp_path / "norms.tsv").write_text("Word\tValue\nred\t4.5\nblue\thigh\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['Conc.M'\]"):
        Norms.load(str(tmp_path / "norms.tsv"))
    with pytest.raises(ValueError, match=r"norms.tsv:3: Value='high' is not a number"):
        Norms.load(f"{tmp_path / 'norms.tsv'}:Word:Value")
    with pytest.raises(ValueError, match="2 captions but 1 image embeddings"):
        gate_analysis(tiny_model(), None, ["a", "b"], np.zeros((1, 24)), tmp_path, nlp=nlp)
    assert word_frequencies(["The cat's cat.", "cat"]) == Counter({"cat": 2, "the": 1, "cat's": 1})


def test_pos_tests_take_tied_hard_gates_as_no_difference():
    pos = np.array(["NOUN"] * 6 + ["DET"] * 6 + ["ADJ"] * 6)
    gates = np.array([1.0] * 12 + [0.0, 1.0] * 3)  # NOUN and DET always 1 (tied), ADJ mixed
    result = pos_tests(gates, pos, min_count=5)
    pairs = {(r["a"], r["b"]): r for r in result["pairwise"]}
    assert pairs[("DET", "NOUN")]["p"] == 1.0 and pairs[("ADJ", "NOUN")]["p"] < 1.0
    assert np.isfinite(result["kruskal_wallis"]["H"]) and result["kruskal_wallis"]["H"] > 0
    everything_tied = pos_tests(np.ones(12), pos[:12], min_count=5)
    assert everything_tied["kruskal_wallis"] == {"H": 0.0, "p": 1.0, "df": 1, "n": 12, "epsilon_squared": 0.0}


def test_epsilon_squared_is_the_effect_size_that_h_is_not():
    """Planted: one fixed shift between two classes. H grows tenfold with ten times the occurrences; epsilon^2 stays.
    Null: no shift, epsilon^2 near 0 and p below 0.05 at about the 5% rate."""
    generator = np.random.default_rng(0)

    def sample(n, shift):
        pos = np.array(["NOUN", "DET"] * n)
        return generator.normal(0.5, 0.1, 2 * n) + shift * (pos == "NOUN"), pos

    small, large = (pos_tests(*sample(n, 0.1), min_count=5)["kruskal_wallis"] for n in (300, 3000))
    assert large["H"] > 5 * small["H"]
    assert large["epsilon_squared"] == pytest.approx(small["epsilon_squared"], rel=0.3)
    null = [pos_tests(*sample(100, 0.0), min_count=5)["kruskal_wallis"] for _ in range(300)]
    assert np.mean([r["p"] < 0.05 for r in null]) <= 0.08 and np.mean([r["epsilon_squared"] for r in null]) < 0.01


def _typed_gates(generator, class_shift, types=8, uses=60, noise=0.05):
    """`types` word types per class (NOUN, DET), `uses` occurrences each; each type has its own mean gate."""
    words, pos, gates = [], [], []
    for tag, shift in (("NOUN", class_shift), ("DET", 0.0)):
        for t in range(types):
            mean = generator.normal(0.5, 0.1) + shift
            words += [f"{tag}{t}"] * uses
            pos += [tag] * uses
            gates += list(generator.normal(mean, noise, uses))
    return np.array(gates), np.array(pos), words


def test_the_word_type_test_counts_each_word_once():
    """Null: the classes do not differ, but every word type has its own mean: the occurrence-level test calls that
    a POS effect nearly always, the word-type test at about its 5% rate. Planted: a class shift it finds."""
    generator = np.random.default_rng(1)
    null = [_typed_gates(generator, 0.0) for _ in range(200)]
    per_occurrence = np.mean([pos_tests(g, p, 5)["kruskal_wallis"]["p"] < 0.05 for g, p, _ in null])
    per_type = np.mean([word_type_test(g, p, w)["kruskal_wallis"]["p"] < 0.05 for g, p, w in null])
    assert per_occurrence > 0.5 and per_type <= 0.09
    planted = word_type_test(*_typed_gates(generator, 0.3))
    assert planted["kruskal_wallis"]["p"] < 0.01 and planted["types"]["NOUN"]["n"] == 8


def test_the_within_word_type_null_asks_what_pos_adds_to_the_word():
    """Null: gates depend on the word only (one word taking two parts of speech): p below 0.05 at about the 5%
    rate. Planted: the same word's gate is higher when it is an adjective than when it is a verb."""
    generator = np.random.default_rng(2)

    def sample(adjective_shift):
        gates, pos, words = _typed_gates(generator, 0.0, types=4, uses=20)
        tags = generator.choice(["ADJ", "VERB"], 40)
        words, pos = [*words, *["left"] * 40], np.concatenate([pos, tags])
        gates = np.concatenate([gates, generator.normal(0.5, 0.05, 40) + adjective_shift * (tags == "ADJ")])
        return gates, pos, words

    rejections = [within_word_type_null(*sample(0.0), min_count=5, permutations=99, seed=k)["p"] < 0.05
                  for k in range(60)]
    assert np.mean(rejections) <= 0.12
    planted = within_word_type_null(*sample(0.1), min_count=5, permutations=99)
    assert planted["p"] <= 0.02 and planted["percentile"] >= 98


def _norm_rows(rng, types: int, per_type: int, link: float) -> tuple[list[dict], Norms]:
    """Word types with a concreteness each; every occurrence's gate = the type's own level (shared by its occurrences)
    + link x concreteness + noise. Occurrences of one word are not independent."""
    concreteness = {f"w{k}": float(rng.uniform(1, 5)) for k in range(types)}
    level = {w: rng.normal(0, 0.5) for w in concreteness}
    rows = [{"word": w, "pos": "NOUN", "gates": np.array([0.5 + link * c + level[w] + rng.normal(0, 0.05)])}
            for w, c in concreteness.items() for _ in range(per_type)]
    return rows, Norms("concreteness", concreteness)


def test_the_concreteness_correlation_per_word_type_finds_a_planted_link_and_holds_its_rate_where_occurrences_do_not():
    from gatedgpt2.eval.interpret.gates import analyse

    rows, norms = _norm_rows(np.random.default_rng(0), 40, 30, link=0.3)
    planted = analyse(rows, [0], [norms], None)["by_layer"]["pooled"]["norms"]["concreteness"]
    assert planted["per_word_type"]["rho"] > 0.5 and planted["per_word_type"]["p"] < 1e-3
    type_level = occurrence_level = 0
    for repeat in range(60):
        rows, norms = _norm_rows(np.random.default_rng(100 + repeat), 30, 30, link=0.0)
        result = analyse(rows, [0], [norms], None)["by_layer"]["pooled"]["norms"]["concreteness"]
        type_level += result["per_word_type"]["p"] < 0.05
        occurrence_level += result["per_occurrence"]["p"] < 0.05
    assert type_level <= 9  # the word-type correlation holds its 5% rate (9 of 60: beyond the binomial 99th percentile)
    assert occurrence_level >= 30  # counting 30 occurrences of a word as 30 observations does not


def test_pairwise_tests_find_a_planted_pos_difference_and_hold_their_rate_after_correction():
    rng = np.random.default_rng(1)
    pos = np.repeat(["NOUN", "DET", "ADJ", "VERB"], 200)
    gates = rng.normal(0.5, 0.1, 800) + 0.05 * (pos == "DET")
    pairs = {(p["a"], p["b"]): p for p in pos_tests(gates, pos, 5)["pairwise"]}
    assert all(p["p_bh"] < 0.01 for (a, b), p in pairs.items() if "DET" in (a, b))
    rejected = 0
    for repeat in range(60):
        gates = np.random.default_rng(200 + repeat).normal(0.5, 0.1, 800)
        rejected += any(p["p_bh"] < 0.05 for p in pos_tests(gates, pos, 5)["pairwise"])
    assert rejected <= 9  # BH over 6 pairs: any false rejection in at most ~5% of null datasets
