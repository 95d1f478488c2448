"""The curriculum batch sampler: composition of batches, sharding across processes, resume, words seen."""

from collections import Counter

import numpy as np
import pytest

from gatedgpt2.trainer.curriculum import CurriculumBatchSampler, parse_ratio

TEXT, CAPTIONS = 50, 30


def sampler(curriculum, batch_size=8, processes=1, **kwargs):
    return CurriculumBatchSampler(TEXT, CAPTIONS, curriculum, batch_size, processes, seed=1, **kwargs)


def is_caption(i):
    return i >= TEXT


def test_alternating_is_a_whole_text_pass_then_a_whole_caption_pass():
    batches = list(sampler("alternating"))
    kinds = ["captions" if all(map(is_caption, b)) else "text" if not any(map(is_caption, b)) else "mixed"
             for b in batches]
    assert kinds == ["text"] * 7 + ["captions"] * 4
    assert sorted(i for b in batches for i in b) == list(range(TEXT + CAPTIONS))


def test_mixed_uniform_gives_every_step_half_text_half_captions():
    batches = list(sampler("mixed_uniform"))
    assert len(batches) == -(-TEXT // 4)  # the larger set once, the smaller cycled
    assert all(sum(map(is_caption, b)) == 4 and len(b) == 8 for b in batches)
    text_seen = Counter(i for b in batches for i in b if not is_caption(i))
    assert set(text_seen) == set(range(TEXT))


@pytest.mark.parametrize("ratio, text_share", [("natural", TEXT / 80), ("1:4", 0.2), ("3:1", 0.75)])
def test_mixed_non_uniform_mixes_examples_at_the_ratio(ratio, text_share):
    batches = list(sampler("mixed_non_uniform", mix_ratio=ratio))
    flat = [i for b in batches for i in b]
    assert len(flat) == TEXT + CAPTIONS
    assert sum(not is_caption(i) for i in flat) == round(80 * text_share)
    assert any(0 < sum(map(is_caption, b)) < len(b) for b in batches)  # batches really are mixed


def test_bad_curriculum_arguments():
    with pytest.raises(ValueError, match="curriculum: expected one of"):
        sampler("interleaved")
    with pytest.raises(ValueError, match="mix_ratio: expected 'natural' or 'text:captions'"):
        parse_ratio("half", 1, 1)
    with pytest.raises(ValueError, match="needs text and/or captions; got 0 text"):
        CurriculumBatchSampler(0, 5, "alternating", 4)


@pytest.mark.parametrize("curriculum", ["alternating", "mixed_uniform", "mixed_non_uniform"])
def test_two_processes_split_the_global_batches_of_one_process(curriculum):
    one = list(sampler(curriculum, batch_size=8))
    two = list(sampler(curriculum, batch_size=4, processes=2))
    assert len(two) == 2 * len(one)
    for k, batch in enumerate(one):  # rank r takes part r of each global batch (accelerate's round-robin)
        rank0, rank1 = two[2 * k], two[2 * k + 1]
        assert sorted(rank0 + rank1) == sorted(batch) and not set(rank0) & set(rank1)


def test_epochs_reshuffle_deterministically():
    s = sampler("mixed_non_uniform")
    first = list(s)
    s.set_epoch(1)
    second = list(s)
    assert first != second
    again = sampler("mixed_non_uniform")
    again.set_epoch(1)
    assert list(again) == second


def test_words_seen_counts_the_words_of_consumed_batches():
    words = np.arange(TEXT + CAPTIONS)
    s = sampler("alternating", num_words=words)
    batches = list(s)  # 11 global batches per epoch
    assert s.words_seen(0, 1) == 0
    assert s.words_seen(3, 1) == sum(words[b].sum() for b in batches[:3])
    assert s.words_seen(2, 2) == sum(words[b].sum() for b in batches[:4])
    assert s.words_seen(11, 1) == words.sum()
    assert s.words_seen(6, 2) == words.sum()  # 6 optimizer steps of 2 batches cover the epoch (last step has 1)
    assert s.words_seen(12, 1) == words.sum() + words[list(CurriculumBatchSampler(
        TEXT, CAPTIONS, "alternating", 8, seed=1).global_batches(1)[0])].sum()


@pytest.mark.parametrize("curriculum", ["alternating", "mixed_non_uniform", "text_only"])
def test_image_batches_seen_counts_the_consumed_global_batches_that_hold_a_caption(curriculum):
    s = sampler(curriculum)
    with_image = [int(max(b) >= TEXT) for b in s.global_batches(0)]
    assert [s.image_batches_seen(step, 1) for step in range(len(with_image) + 1)] == [0, *np.cumsum(with_image)]
    assert s.image_batches_seen(2, 3) == sum(with_image[:6])  # 2 optimizer steps of 3 batches
    if curriculum == "alternating":  # text first, then captions
        assert with_image == sorted(with_image) and 0 < sum(with_image) < len(with_image)
