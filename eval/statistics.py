"""Every statistical test and estimate the package reports, in one place: correlation (Spearman), the Kruskal-Wallis
tests of the gate analysis with their effect size and their nulls (word types, within-word permutations, the percentile
in a null sample), the resampling of whole captions, the comparisons of runs across seeds (paired t, Welch, pooled
variance, Holm's adjustment, McNemar item by item), ordinary least squares with its coefficient tests, and the R^2 gain
of the reading task. The modules that report them (eval/interpret/gates.py, eval/interpret/gate_controls.py,
eval/babylm/reading.py, pipeline/sweep_tables.py) build their data and read these."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats


def spearman(x, y) -> dict:
    """Spearman's rho with its p and n; rho and p are None where it is undefined (under 3 values, or one constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "p": None, "n": int(len(x))}
    result = stats.spearmanr(x, y)
    return {"rho": float(result.statistic), "p": float(result.pvalue), "n": int(len(x))}


def kruskal_groups(groups: dict) -> tuple[float, float]:
    # A hard gate is exactly 0 or 1, so whole groups can be one tied value, where the test is undefined (scipy: an
    # error, or NaN); all tied is no evidence of a difference: H = 0, p = 1.
    if np.ptp(np.concatenate(list(groups.values()))) == 0:
        return 0.0, 1.0
    h, p = stats.kruskal(*groups.values())
    return float(h), float(p)


def _pos_groups(gates: np.ndarray, pos: np.ndarray, min_count: int) -> dict:
    return {p: gates[pos == p] for p in sorted(set(pos)) if (pos == p).sum() >= min_count}


def pos_tests(gates: np.ndarray, pos: np.ndarray, min_count: int) -> dict:
    """Kruskal-Wallis across POS with >= `min_count` occurrences, with its effect size epsilon^2 = H / (N - 1) (H
    grows with N for any fixed difference, however small), then pairwise Mann-Whitney U with BH correction. The
    occurrences of one word are not independent: see `word_type_test` and `within_word_type_null`."""
    groups = _pos_groups(gates, pos, min_count)
    if len(groups) < 2:
        return {"kruskal_wallis": None, "groups": {p: len(g) for p, g in groups.items()}, "pairwise": []}
    h, p_h = kruskal_groups(groups)
    n = sum(len(g) for g in groups.values())
    pairs = list(itertools.combinations(groups, 2))
    p_raw = [float(np.nan_to_num(stats.mannwhitneyu(groups[a], groups[b]).pvalue, nan=1.0)) for a, b in pairs]
    p_adjusted = stats.false_discovery_control(p_raw, method="bh")
    return {
        "kruskal_wallis": {"H": h, "p": p_h, "df": len(groups) - 1, "n": n, "epsilon_squared": h / (n - 1)},
        "groups": {p: {"n": int(len(g)), "mean": float(g.mean()), "median": float(np.median(g))}
                   for p, g in groups.items()},
        "pairwise": [{"a": a, "b": b, "p": p, "p_bh": float(q)} for (a, b), p, q in zip(pairs, p_raw, p_adjusted)],
    }


def word_type_test(gates: np.ndarray, pos: np.ndarray, words: Sequence[str], min_types: int = 3) -> dict:
    """Kruskal-Wallis across POS with one value per word type (its mean gate, under its most frequent POS), so that
    the many occurrences of one word count once; POS with fewer than `min_types` word types are left out."""
    by_type = defaultdict(list)
    for word, tag, gate in zip(words, pos, gates):
        by_type[word].append((tag, gate))
    type_pos = {w: Counter(t for t, _ in v).most_common(1)[0][0] for w, v in by_type.items()}
    type_gate = {w: float(np.mean([g for _, g in v])) for w, v in by_type.items()}
    groups = {tag: np.array([type_gate[w] for w in by_type if type_pos[w] == tag])
              for tag in sorted(set(type_pos.values()))}
    groups = {tag: g for tag, g in groups.items() if len(g) >= min_types}
    if len(groups) < 2:
        return {"kruskal_wallis": None, "types": {tag: len(g) for tag, g in groups.items()}}
    h, p = kruskal_groups(groups)
    n = sum(len(g) for g in groups.values())
    return {"kruskal_wallis": {"H": h, "p": p, "df": len(groups) - 1, "n": n, "epsilon_squared": h / (n - 1)},
            "types": {tag: {"n": int(len(g)), "mean": float(g.mean())} for tag, g in groups.items()}}


def percentile_in(observed: float, null: Sequence[float]) -> dict:
    """The observed value's percentile in a null sample and the one-sided p, (1 + #null >= observed) / (1 + n)."""
    null = np.asarray(null, float)
    return {"percentile": float(100 * (null < observed).mean()),
            "p": float((1 + (null >= observed).sum()) / (1 + len(null))),
            "null_mean": float(null.mean()), "null_95th": float(np.quantile(null, 0.95)), "n": int(len(null))}


def shuffled_within_words(values: np.ndarray, words: Sequence[str], generator: np.random.Generator) -> np.ndarray:
    """`values` with each word's entries permuted among that word's occurrences."""
    shuffled = values.copy()
    words = np.asarray(words)
    for word in np.unique(words):
        where = np.flatnonzero(words == word)
        if len(where) > 1:
            shuffled[where] = values[generator.permutation(where)]
    return shuffled


def within_word_type_null(gates: np.ndarray, pos: np.ndarray, words: Sequence[str], min_count: int,
                          permutations: int = 199, seed: int = 0) -> dict | None:
    """Does part of speech tell more about the gate than the word itself does? The occurrence-level H against its
    null with every word's gates shuffled among that word's occurrences (keeping each word's gates, breaking only
    their link to the POS a word takes in context): the observed H's percentile in the null and the permutation p,
    (1 + null H >= observed) / (1 + permutations)."""
    groups = _pos_groups(gates, pos, min_count)
    if len(groups) < 2:
        return None
    observed, _ = kruskal_groups(groups)
    generator = np.random.default_rng(seed)
    null = np.array([kruskal_groups(_pos_groups(shuffled_within_words(gates, words, generator), pos, min_count))[0]
                     for _ in range(permutations)])
    return {"H": observed, **percentile_in(observed, null), "permutations": permutations}


def caption_bootstrap(captions: np.ndarray, statistic: Callable[[np.ndarray], float], resamples: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of `statistic(indices)` over resamples of whole captions with replacement."""
    generator = np.random.default_rng(seed)
    ids, inverse = np.unique(captions, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(ids))]
    values = []
    for _ in range(resamples):
        drawn = generator.integers(0, len(ids), len(ids))
        value = statistic(np.concatenate([members[k] for k in drawn]))
        if value is not None and np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def epsilon_squared(gates: np.ndarray, labels: np.ndarray) -> float | None:
    """Kruskal-Wallis H / (N - 1) across the label groups (H grows with N for any fixed difference; this does not)."""
    groups = {label: gates[labels == label] for label in np.unique(labels)}
    if len(groups) < 2:
        return None
    h, _ = kruskal_groups(groups)
    return h / (len(gates) - 1)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """b - a over the seeds both runs have (a seed is the same initialisation and data order in both): the mean
    difference, its std, the 95% t interval, the paired t-test's p, the effect size d_z = mean / std, and Welch's p
    for the two samples taken as unpaired."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    first, second = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    difference = second - first
    mean, std = float(difference.mean()), float(difference.std(ddof=1))
    half_width = float(stats.t.ppf(0.975, len(seeds) - 1) * std / math.sqrt(len(seeds)))
    if std > 0:
        p = float(stats.ttest_rel(second, first).pvalue)
    else:  # every seed moved by the same amount: certain if it moved, no evidence if it did not
        p = 0.0 if mean != 0 else 1.0
    unpaired = stats.ttest_ind(second, first, equal_var=False).pvalue if np.ptp(np.r_[first, second]) > 0 else 1.0
    return {"seeds": seeds, "a_mean": float(first.mean()), "b_mean": float(second.mean()), "mean": mean, "std": std,
            "ci95": [mean - half_width, mean + half_width], "half_width": half_width, "p_paired_t": p,
            "d_z": mean / std if std > 0 else None, "p_welch": float(np.nan_to_num(unpaired, nan=1.0)),
            "differences": difference.tolist()}


def mcnemar(correct_a: list[int], correct_b: list[int]) -> dict:
    """Item-by-item comparison of two models on the same items: the items only one gets right, and the exact
    two-sided binomial p of that split (McNemar's exact test)."""
    if len(correct_a) != len(correct_b):
        raise ValueError(f"the two runs scored different item lists ({len(correct_a)} and {len(correct_b)} items)")
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    p = float(stats.binomtest(only_b, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    return {"items": int(len(a)), "only_a": only_a, "only_b": only_b, "p": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (for comparisons of several runs with one reference)."""
    order = np.argsort(p_values)
    adjusted, running = np.empty(len(p_values)), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def pooled_variance(entries: dict, samples: list[dict[int, float]]) -> None:
    """Adds to each paired-difference entry the test with the seed variance pooled over every run of the family
    (one-way ANOVA's residual variance, df = N - k): the runs' seeds vary alike, and a pooled estimate over many runs
    is far steadier than one from 3 seeds. The difference of means, its 95% CI and p (t with df = N - k)."""
    samples = [np.array(list(s.values())) for s in samples if len(s) > 0]
    dof = sum(len(s) for s in samples) - len(samples)
    if dof < 1:
        return
    variance = sum(float(((s - s.mean()) ** 2).sum()) for s in samples) / dof
    critical = float(stats.t.ppf(0.975, dof))
    for e in entries.values():
        n = len(e["seeds"])
        difference = e["b_mean"] - e["a_mean"]
        se = math.sqrt(variance * 2 / n)
        e.update(pooled_std=math.sqrt(variance), pooled_dof=dof,
                 ci95_pooled=[difference - critical * se, difference + critical * se],
                 p_pooled=float(2 * stats.t.sf(abs(difference) / se, dof)) if se > 0 else float(difference == 0))


def r_squared(frame, outcome: str, predictors: tuple[str, ...], linear: tuple[str, ...] = ()) -> float:
    """R^2 of an OLS of `outcome` on an intercept, the predictors, every pairwise product of them and the `linear`
    terms (the statsmodels formula `y ~ a + b + a:b + c`), over the rows where none of them is missing."""
    rows = frame[[outcome, *predictors, *linear]].dropna()
    columns = [rows[p].to_numpy(float) for p in predictors]
    columns += [a * b for a, b in itertools.combinations(columns, 2)]
    design = np.column_stack([np.ones(len(rows)), *columns, *(rows[p].to_numpy(float) for p in linear)])
    y = rows[outcome].to_numpy(float)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coefficients
    centred = y - y.mean()
    return float(1.0 - residual @ residual / (centred @ centred))


def r_squared_gain(frame, outcome: str, baseline: tuple[str, ...]) -> float:
    """(R^2 with surprisal - R^2 without) / (1 - R^2 without), in %. Surprisal (`pred`) enters alone, without
    interactions, as in the pipeline's formulas; each model is fit on its own complete rows, as there."""
    without = r_squared(frame, outcome, baseline)
    return 100.0 * (r_squared(frame, outcome, baseline, ("pred",)) - without) / (1.0 - without)


def ols(x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> dict:
    """Ordinary least squares of y on the design x (its columns named by `names`): n, R^2, and each coefficient with
    its standard error, t and two-sided p (df = n - rank)."""
    beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ beta
    dof = len(y) - rank
    covariance = residual @ residual / dof * np.linalg.pinv(x.T @ x)
    se = np.sqrt(np.diag(covariance))
    t = beta / np.where(se > 0, se, np.nan)
    return {
        "n": int(len(y)), "r2": float(1 - residual @ residual / ((y - y.mean()) @ (y - y.mean()))),
        "coefficients": {n: {"beta": float(b), "se": float(s), "t": float(tt), "p": float(2 * stats.t.sf(abs(tt), dof))}
                         for n, b, s, tt in zip(names, beta, se, t)},
    }
