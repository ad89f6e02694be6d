-- Inter-purchase gaps between distinct purchase days: spread, the last gap, and how overdue the member is
-- against their own mean gap. A sorted list of days per member (measured faster here than a window).
WITH per_member AS (
    SELECT member_id, list_sort(list(DISTINCT ordered_at::DATE)) AS days FROM paid GROUP BY member_id
), with_gaps AS (
    SELECT member_id, days,
           list_transform(range(1, len(days)), lambda i: date_diff('day', days[i], days[i + 1])) AS gaps
    FROM per_member
)
SELECT
    member_id,
    list_stddev_samp(gaps) AS gap_std_days,
    list_stddev_samp(gaps) / nullif(list_avg(gaps), 0) AS gap_cv,
    gaps[-1] AS last_gap_days,
    date_diff('day', days[-1], :as_of::DATE) / nullif(list_avg(gaps), 0) AS overdue_ratio
FROM with_gaps
