"""Confidence intervals that use the benchmark's design: a crossed bootstrap over run seeds and units.

A method's score is a table ``values[seed, unit]``: one row per run seed, one column per unit of evaluation
(a concept, or a (concept, prompt, image seed) image). The units are the same for every seed and every method,
because the harness fixes each image's seed by protocol, concept and prompt; so two methods can be compared
unit by unit, which removes the units' own spread from the difference (some prompts are hard for everyone).

Each bootstrap replicate draws run seeds and units independently, with replacement (the crossed,
"two-way" bootstrap for a seeds × units design), and takes the mean of the chosen cells; a paired comparison
draws the units once for both methods and each method's seeds on their own (two methods' seeds are separate
trainings). Intervals are percentile intervals of the replicates::

    interval(values)                     # Interval(mean, low, high) of one method
    paired_difference(a, b)              # of mean(a) − mean(b), the units drawn once for both
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
REPLICATES = 2000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided confidence interval at ``level``."""

    mean: float
    low: float
    high: float
    level: float = LEVEL

    def excludes(self, value: float = 0.0) -> bool:
        return not self.low <= value <= self.high

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.low:.4g}, {self.high:.4g}]"


def _table(values) -> np.ndarray:
    table = np.asarray(values, dtype=np.float64)
    if table.ndim == 1:
        table = table[None, :]
    if table.ndim != 2 or 0 in table.shape:
        raise ValueError(f"values must be a non-empty seeds × units table, got shape {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError("values hold NaN or inf: drop the units that were not measured before bootstrapping")
    return table


def _counts(rng, n: int, replicates: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each replicate (a draw of n with replacement)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=replicates)


def replicate_means(values, replicates: int = REPLICATES, seed: int = 0, unit_counts: np.ndarray | None = None,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """Bootstrap replicates of the table's mean: run seeds and units drawn independently with replacement
    (``unit_counts`` [replicates, units]: given draws of the units, shared with another method's table).

    Drawing counts instead of indices makes a replicate one weighted mean, w_s · V · w_u / (S U)."""
    table = _table(values)
    rng = rng or np.random.default_rng(seed)
    n_seeds, n_units = table.shape
    seed_counts = _counts(rng, n_seeds, replicates)
    if unit_counts is None:
        unit_counts = _counts(rng, n_units, replicates)
    return np.einsum("bs,su,bu->b", seed_counts, table, unit_counts) / (n_seeds * n_units)


def _parts(table: np.ndarray) -> tuple[float, np.ndarray, float]:
    """(variance of the seed means, the unit means, the residual mean square of the additive seed + unit fit:
    the seed × unit noise, 0 with one seed)."""
    n_seeds, n_units = table.shape
    rows, cols = table.mean(1), table.mean(0)
    var_rows = float(rows.var(ddof=1)) if n_seeds > 1 else 0.0
    resid = table - rows[:, None] - cols[None, :] + table.mean()
    mse = float((resid**2).sum() / ((n_seeds - 1) * (n_units - 1))) if n_seeds > 1 and n_units > 1 else 0.0
    return var_rows, cols, mse


def _scaled_interval(mean: float, reps: np.ndarray, terms: list[tuple[float, float]], level: float) -> Interval:
    """A percentile interval of the replicates, rescaled to the variance ``Σ terms`` and widened from the normal
    to Student's t quantile at Satterthwaite's degrees of freedom (``terms``: (variance term ≥ 0, its df)).

    The crossed bootstrap alone counts the seed × unit noise twice (once with the seeds, once with the units)
    and shrinks the seed spread by (S − 1)/S. The variance components (Owen's ANOVA estimate, each component
    kept ≥ 0) fix the scale; the replicates keep their shape."""
    from scipy import stats as st

    variance = sum(v for v, _ in terms)
    spread = float(reps.std())
    if variance <= 0.0 or spread == 0.0:
        return Interval(float(mean), float(mean), float(mean), level)
    df = variance**2 / sum(v**2 / d for v, d in terms if d > 0 and v > 0)
    widen = st.t.ppf(0.5 + level / 2, df) / st.norm.ppf(0.5 + level / 2)
    centred = (reps - reps.mean()) * (np.sqrt(variance) / spread) * widen
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(centred, [tail, 1.0 - tail])
    return Interval(float(mean), float(mean + low), float(mean + high), level)


def _seed_terms(table: np.ndarray) -> tuple[list[tuple[float, float]], float]:
    """One method's seed and noise variance terms of its mean, and its noise (MSE) for the unit term."""
    n_seeds, n_units = table.shape
    var_rows, _, mse = _parts(table)
    seed_var = max(var_rows - mse / n_units, 0.0)  # the seed effect's own variance, net of the noise in a row mean
    return [(seed_var / n_seeds, n_seeds - 1), (mse / (n_seeds * n_units), (n_seeds - 1) * (n_units - 1))], mse


def interval(values, level: float = LEVEL, replicates: int = REPLICATES, seed: int = 0) -> Interval:
    """The mean of a seeds × units table and its interval: crossed-bootstrap replicates, scaled to the variance
    σ²_seed/S + σ²_unit/U + σ²_noise/(S U) from the table's variance components."""
    table = _table(values)
    n_seeds, n_units = table.shape
    terms, mse = _seed_terms(table)
    cols = table.mean(0)
    unit_var = max((float(cols.var(ddof=1)) if n_units > 1 else 0.0) - mse / n_seeds, 0.0)
    terms.append((unit_var / n_units, n_units - 1))
    return _scaled_interval(table.mean(), replicate_means(table, replicates, seed), terms, level)


def paired_difference(a, b, level: float = LEVEL, replicates: int = REPLICATES, seed: int = 0) -> Interval:
    """mean(a) − mean(b) with its interval. The tables share their units (columns, in one order): each replicate
    draws the units once for both. Their run seeds are independent trainings, drawn separately (the two tables
    may have different numbers of seeds). Variance: each method's seed and noise terms, plus the spread of the
    per-unit differences net of that noise, over U (a unit effect both methods share cancels)."""
    ta, tb = _table(a), _table(b)
    if ta.shape[1] != tb.shape[1]:
        raise ValueError(f"paired tables must share their units, got {ta.shape[1]} and {tb.shape[1]} columns: compare "
                         "runs of one protocol with the same evaluation settings")
    rng = np.random.default_rng(seed)
    units = _counts(rng, ta.shape[1], replicates)
    reps = replicate_means(ta, replicates, unit_counts=units, rng=rng) - \
        replicate_means(tb, replicates, unit_counts=units, rng=rng)
    n_units = ta.shape[1]
    terms_a, mse_a = _seed_terms(ta)
    terms_b, mse_b = _seed_terms(tb)
    diff = ta.mean(0) - tb.mean(0)
    unit_var = max((float(diff.var(ddof=1)) if n_units > 1 else 0.0) - mse_a / ta.shape[0] - mse_b / tb.shape[0], 0.0)
    terms = [*terms_a, *terms_b, (unit_var / n_units, n_units - 1)]
    return _scaled_interval(ta.mean() - tb.mean(), reps, terms, level)


def unpaired_difference(a, b, level: float = LEVEL, replicates: int = REPLICATES, seed: int = 0) -> Interval:
    """The same difference with each method's interval computed on its own (units drawn separately): what
    ignoring the shared units costs, a wider interval whenever some units are harder for every method."""
    ia, ib = interval(a, level, replicates, seed), interval(b, level, replicates, seed + 1)
    half = np.hypot(ia.high - ia.low, ib.high - ib.low) / 2
    mean = ia.mean - ib.mean
    return Interval(float(mean), float(mean - half), float(mean + half), level)


def indistinguishable_from_best(tables: dict[str, np.ndarray], higher_is_better: bool = True,
                                level: float = LEVEL, replicates: int = REPLICATES, seed: int = 0) -> tuple[str, set[str]]:
    """(the best method by mean, every method whose paired difference to it has an interval containing 0)."""
    if not tables:
        raise ValueError("no methods to compare")
    sign = 1.0 if higher_is_better else -1.0
    best = max(tables, key=lambda m: sign * _table(tables[m]).mean())
    ties = {m for m in tables if m != best and
            not paired_difference(tables[m], tables[best], level, replicates, seed).excludes(0.0)}
    return best, ties


def win_tie_loss(tables: dict[str, np.ndarray], higher_is_better: bool = True, level: float = LEVEL,
                 replicates: int = REPLICATES, seed: int = 0) -> dict[str, dict[str, str]]:
    """For every ordered pair of methods: "win", "tie" or "loss" of the first, by whether their paired
    difference's interval lies above 0, contains it, or lies below it (direction by ``higher_is_better``)."""
    out: dict[str, dict[str, str]] = {m: {} for m in tables}
    names = list(tables)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            d = paired_difference(tables[a], tables[b], level, replicates, seed)
            better = d.low > 0 if higher_is_better else d.high < 0
            worse = d.high < 0 if higher_is_better else d.low > 0
            out[a][b] = "win" if better else "loss" if worse else "tie"
            out[b][a] = {"win": "loss", "loss": "win", "tie": "tie"}[out[a][b]]
    return out
