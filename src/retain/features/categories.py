"""Category features, whose SQL depends on the configured category list.

- `category_mix_sql`: share of paid orders per named category (and "other"), the entropy of the mix
  and the number of distinct categories bought.
- `cycles_sql`: for each replenishment category, the member's own cycle (mean gap between distinct
  purchase days in it), its regularity (coefficient of variation) and how overdue the next purchase is.
"""

from __future__ import annotations


def quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def category_mix_sql(categories: dict[str, str]) -> str:
    named = ", ".join(quote(name) for name in categories)
    shares = ",\n    ".join(
        f"avg((category = {quote(name)})::INT) AS cat_share_{slug}" for name, slug in categories.items()
    )
    other = (
        f"avg((category IS NULL OR category NOT IN ({named}))::INT) AS cat_share_other"
        if categories
        else "1.0 AS cat_share_other"
    )
    return f"""
WITH mix AS (
    SELECT member_id, category, count(*) AS n, sum(count(*)) OVER (PARTITION BY member_id) AS total
    FROM paid GROUP BY member_id, category
), entropy AS (
    SELECT member_id, -sum((n / total) * ln(n / total)) AS category_entropy, count(*) AS n_categories
    FROM mix GROUP BY member_id
)
SELECT
    member_id,
    {shares},
    {other},
    any_value(entropy.category_entropy) AS category_entropy,
    any_value(entropy.n_categories) AS n_categories
FROM paid JOIN entropy USING (member_id)
GROUP BY member_id
"""


def cycles_sql(categories: dict[str, str], replenishment: list[str]) -> str:
    """Per replenishment category: cycle_days_<slug>, cycle_cv_<slug>, cycle_overdue_<slug>; best_cycle_cv."""
    if not replenishment:
        return ""
    listed = ", ".join(quote(name) for name in replenishment)
    columns = []
    for name in replenishment:
        slug = categories.get(name, name)
        q = quote(name)
        columns += [
            f"avg(gap) FILTER (WHERE category = {q}) AS cycle_days_{slug}",
            f"stddev_samp(gap) FILTER (WHERE category = {q}) / nullif(avg(gap) FILTER (WHERE category = {q}), 0)"
            f" AS cycle_cv_{slug}",
            f"(date_diff('day', max(day) FILTER (WHERE category = {q}), :as_of::DATE)"
            f" - avg(gap) FILTER (WHERE category = {q})) AS cycle_overdue_days_{slug}",
        ]
    cv_columns = ", ".join(f"cycle_cv_{categories.get(name, name)}" for name in replenishment)
    return f"""
WITH days AS (
    SELECT DISTINCT member_id, category, ordered_at::DATE AS day FROM paid WHERE category IN ({listed})
), gaps AS (
    SELECT member_id, category, day,
           date_diff('day', lag(day) OVER (PARTITION BY member_id, category ORDER BY day), day) AS gap
    FROM days
), per_member AS (
    SELECT member_id,
        {("," + chr(10) + "        ").join(columns)}
    FROM gaps GROUP BY member_id
)
SELECT *, least({cv_columns}) AS best_cycle_cv FROM per_member
"""
