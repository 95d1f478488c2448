"""BabyLM's words-seen checkpoints: the schedule, and the revision names (`chck_10M`) checkpoints are saved and pushed
under."""

from __future__ import annotations

from fractions import Fraction

# BabyLM checkpoint schedule: every 1M words to 10M, every 10M to 100M, every 100M to 1B.
BABYLM_REVISION_WORDS = [m * 10**6 for m in (*range(1, 10), *range(10, 100, 10), *range(100, 1001, 100))]


def revision_name(words: int) -> str:
    for unit, size in (("M", 10**6), ("K", 10**3)):
        if words % size == 0:
            return f"chck_{words // size}{unit}"
    return f"chck_{words}"


def revision_words(name: str) -> int:
    """The inverse of `revision_name`: "chck_10M" -> 10_000_000."""
    if not name.startswith("chck_"):
        raise ValueError(f"{name!r} is not a revision name (chck_<words>, e.g. chck_10M)")
    try:
        [words] = parse_revision_words(name.removeprefix("chck_"))
    except ValueError:
        raise ValueError(f"{name!r} is not a revision name (chck_<words>, e.g. chck_10M)") from None
    return words


def parse_revision_words(spec: str | None) -> list[int]:
    """"babylm" or a comma list with K/M suffixes ("50K,100K,1M") -> sorted word counts."""
    if not spec:
        return []
    if spec == "babylm":
        return BABYLM_REVISION_WORDS
    scale = {"K": 10**3, "M": 10**6}
    counts = []
    for part in spec.replace(" ", "").split(","):
        try:
            unit = scale.get(part[-1:].upper(), 1)
            words = Fraction(part[:-1] if unit > 1 else part) * unit
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"revision_words: expected 'babylm' or a list like '50K,100K,1M', got {spec!r}") from None
        if words < 1 or words.denominator != 1:
            raise ValueError(f"revision_words: {part!r} is {float(words):g} words; each revision is a whole number of "
                             f"words seen, at least 1 (in {spec!r})")
        counts.append(int(words))
    return sorted(counts)
