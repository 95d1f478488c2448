"""Data curricula as one deterministic batch sampler over `concatenate_datasets([text, captions])`.

Indices `[0, num_text)` are text examples and `[num_text, num_text + num_captions)` caption examples. One Trainer epoch
is one *round* of the curriculum:

- `alternating`: a whole pass over the text, then a whole pass over the captions (the paper's default; 10 rounds =
  10 text + 10 caption epochs).
- `mixed_uniform`: every global batch is half text, half captions; a round covers the larger set once, cycling the
  smaller.
- `mixed_non_uniform`: examples mixed at `ratio` ("natural" = the sets' own sizes, or "text:captions" such as "1:4"),
  shuffled together, so each batch holds a random mix.
- `text_only`, `captions_only`: one modality.

The sampler builds *global* batches (per-device batch x processes) from a seed and the epoch, then yields each global
batch as `num_processes` consecutive parts. Accelerate's `BatchSamplerShard` hands part r of every global batch to
rank r, so N processes see exactly the batches one process sees with an N-times larger batch, with no example
duplicated, and a resumed run (which replays the epoch and skips the batches already done) sees the same order.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

CURRICULA = ("alternating", "mixed_uniform", "mixed_non_uniform", "text_only", "captions_only")


def parse_ratio(ratio: str, num_text: int, num_captions: int) -> Fraction:
    """Share of text examples: "natural" or "t:c" -> t / (t + c)."""
    if ratio == "natural":
        return Fraction(num_text, num_text + num_captions)
    try:
        text_part, caption_part = (Fraction(x) for x in ratio.split(":"))
    except ValueError:
        raise ValueError(f"mix_ratio: expected 'natural' or 'text:captions' such as '1:4', got {ratio!r}") from None
    if text_part < 0 or caption_part < 0 or text_part + caption_part == 0:
        raise ValueError(f"mix_ratio: both parts must be >= 0 and not both 0, got {ratio!r}")
    return text_part / (text_part + caption_part)


class CurriculumBatchSampler:
    batch_size = None  # batches vary in size at the ends of passes; tells accelerate not to assume a fixed size
    drop_last = True  # every epoch yields a multiple of num_processes parts, so nothing is ever padded or dropped

    def __init__(self, num_text: int, num_captions: int, curriculum: str, batch_size: int, num_processes: int = 1,
                 seed: int = 0, mix_ratio: str = "natural", num_words: np.ndarray | None = None):
        if curriculum not in CURRICULA:
            raise ValueError(f"curriculum: expected one of {CURRICULA}, got {curriculum!r}")
        needs = {"alternating": (1, 1), "mixed_uniform": (1, 1), "mixed_non_uniform": (0, 0),
                 "text_only": (1, 0), "captions_only": (0, 1)}[curriculum]
        if num_text < needs[0] or num_captions < needs[1] or num_text + num_captions == 0:
            raise ValueError(f"curriculum {curriculum!r} needs text and/or captions; got {num_text} text and "
                             f"{num_captions} caption examples")
        self.num_text, self.num_captions = num_text, num_captions
        self.curriculum = curriculum
        self.num_processes = num_processes
        self.global_batch_size = batch_size * num_processes
        if curriculum == "mixed_uniform" and self.global_batch_size < 2:
            raise ValueError("curriculum 'mixed_uniform' needs a global batch of at least 2 (one text, one caption)")
        self.seed = seed
        self.text_share = parse_ratio(mix_ratio, num_text, num_captions) if curriculum == "mixed_non_uniform" else None
        self.num_words = num_words
        self._per_batch_counts: dict[int, dict[str, np.ndarray | None]] = {}
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    # ---------------------------------------------------------------------------------------------- batches

    def _cycled(self, rng: np.random.Generator, size: int, count: int, offset: int) -> np.ndarray:
        """`count` indices from successive permutations of range(size), shifted by `offset`."""
        reps = -(-count // size) if size else 0
        return np.concatenate([rng.permutation(size) for _ in range(reps)] or [np.empty(0, int)])[:count] + offset

    def _chunks(self, order: np.ndarray) -> list[np.ndarray]:
        return [order[i : i + self.global_batch_size] for i in range(0, len(order), self.global_batch_size)]

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        def text(n):
            return self._cycled(rng, self.num_text, n, 0)
        def captions(n):
            return self._cycled(rng, self.num_captions, n, self.num_text)
        if self.curriculum == "text_only":
            return self._chunks(text(self.num_text))
        if self.curriculum == "captions_only":
            return self._chunks(captions(self.num_captions))
        if self.curriculum == "alternating":
            return self._chunks(text(self.num_text)) + self._chunks(captions(self.num_captions))
        if self.curriculum == "mixed_uniform":
            half_text = self.global_batch_size // 2
            half_captions = self.global_batch_size - half_text
            steps = max(-(-self.num_text // half_text), -(-self.num_captions // half_captions))
            t, c = text(steps * half_text), captions(steps * half_captions)
            return [rng.permutation(np.concatenate([t[i * half_text : (i + 1) * half_text],
                                                    c[i * half_captions : (i + 1) * half_captions]]))
                    for i in range(steps)]
        total = self.num_text + self.num_captions
        num_text = round(total * self.text_share)
        return self._chunks(rng.permutation(np.concatenate([text(num_text), captions(total - num_text)])))

    def _parts(self, batch: np.ndarray) -> list[list[int]]:
        return [part.tolist() for part in np.array_split(batch, self.num_processes)]

    def __iter__(self):
        for batch in self.global_batches(self.epoch):
            if len(batch) >= self.num_processes:  # a final global batch smaller than the process count is dropped
                yield from self._parts(batch)

    def __len__(self) -> int:
        return sum(len(b) >= self.num_processes for b in self.global_batches(self.epoch)) * self.num_processes

    # ---------------------------------------------------------------------------------------------- words seen

    def words_seen(self, global_step: int, gradient_accumulation_steps: int) -> int:
        """Words (of the source lines) in the global batches consumed by `global_step` optimizer steps."""
        if self.num_words is None:
            raise ValueError("words_seen needs the examples' num_words")
        return self._consumed("words", global_step, gradient_accumulation_steps)

    def image_batches_seen(self, global_step: int, gradient_accumulation_steps: int) -> int:
        """Global batches with at least one caption among those consumed by `global_step` optimizer steps (the
        clock of the paper's gate annealing, which counts its caption-phase forward passes)."""
        return self._consumed("image_batches", global_step, gradient_accumulation_steps)

    def _per_batch(self, epoch: int) -> dict[str, np.ndarray]:
        if epoch not in self._per_batch_counts:
            batches = [b for b in self.global_batches(epoch) if len(b) >= self.num_processes]
            self._per_batch_counts[epoch] = {
                "words": (np.array([self.num_words[b].sum() for b in batches], dtype=np.int64)
                          if self.num_words is not None else None),
                "image_batches": np.array([int((b >= self.num_text).any()) for b in batches], dtype=np.int64),
            }
        return self._per_batch_counts[epoch]

    def _consumed(self, count: str, global_step: int, gradient_accumulation_steps: int) -> int:
        total, steps_left, epoch = 0, global_step, 0
        while steps_left > 0:
            per_batch = self._per_batch(epoch)[count]
            steps_in_epoch = -(-len(per_batch) // gradient_accumulation_steps)
            total += int(per_batch[: min(steps_left, steps_in_epoch) * gradient_accumulation_steps].sum())
            steps_left -= steps_in_epoch
            epoch += 1
        return total
