"""Category features, whose SQL depends on the configured category list.

- `category_mix_aggregates`: share of paid orders per named category (and "other"); `category_mix_summary`
  derives the entropy of the mix and the number of categories bought.
- `cycles_sql`: for each replenishment category, the member's own cycle (mean gap between distinct
  purchase days in it), its regularity (coefficient of variation) and how overdue the next purchase is.
"""

from __future__ import annotations

from retain.connection import quote


def category_mix_aggregates(categories: dict[str, str]) -> str:
    """Aggregates over `paid`: the share of a member's paid orders in each named category and in "other"."""
    named = ", ".join(quote(name) for name in categories) or "NULL"
    shares = [
        f"count(*) FILTER (WHERE category = {quote(name)}) / count(*) AS cat_share_{slug}"
        for name, slug in categories.items()
    ]
    other = f"category IS NULL OR category NOT IN ({named})"
    shares.append(f"count(*) FILTER (WHERE {other}) / count(*) AS cat_share_other")
    return ",\n".join(shares)


def category_mix_summary(categories: dict[str, str]) -> str:
    """Select expressions over the shares: `category_entropy` (nats) and `n_categories` (buckets bought,
    "other" counting once)."""
    shares = [f"cat_share_{slug}" for slug in [*categories.values(), "other"]]
    entropy = " + ".join(f"CASE WHEN {s} > 0 THEN {s} * ln({s}) ELSE 0 END" for s in shares)
    bought = " + ".join(f"({s} > 0)::INT" for s in shares)
    return f"0.0 - ({entropy}) AS category_entropy, {bought} AS n_categories"


def cycles_sql(categories: dict[str, str], replenishment: list[str]) -> str:
    """Per replenishment category: cycle_days_<slug>, cycle_cv_<slug>, cycle_overdue_days_<slug>; best_cycle_cv."""
    if not replenishment:
        return ""
    listed = ", ".join(quote(name) for name in replenishment)
    columns = []
    for name in replenishment:
        slug, where = categories.get(name, name), f"category = {quote(name)}"
        columns += [
            f"any_value(list_avg(gaps)) FILTER (WHERE {where}) AS cycle_days_{slug}",
            f"any_value(list_stddev_samp(gaps) / nullif(list_avg(gaps), 0)) FILTER (WHERE {where}) AS cycle_cv_{slug}",
            f"any_value(date_diff('day', days[-1], :as_of::DATE) - list_avg(gaps)) FILTER (WHERE {where})"
            f" AS cycle_overdue_days_{slug}",
        ]
    cv_columns = ", ".join(f"cycle_cv_{categories.get(name, name)}" for name in replenishment)
    body = ",\n        ".join(columns)
    return f"""
WITH days AS (
    SELECT member_id, category, list_sort(list(DISTINCT ordered_at::DATE)) AS days
    FROM paid WHERE category IN ({listed}) GROUP BY member_id, category
), gaps AS (
    SELECT *, list_transform(range(1, len(days)), lambda i: date_diff('day', days[i], days[i + 1])) AS gaps FROM days
), per_member AS (
    SELECT member_id,
        {body}
    FROM gaps GROUP BY member_id
)
SELECT *, least({cv_columns}) AS best_cycle_cv FROM per_member
"""
