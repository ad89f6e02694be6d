-- Inter-purchase gaps over distinct purchase days: spread, the last gap, and how overdue the member is
-- against their own mean gap (days since the last purchase day / mean gap).
WITH days AS (
    SELECT DISTINCT member_id, ordered_at::DATE AS day FROM paid
), gaps AS (
    SELECT member_id, day, date_diff('day', lag(day) OVER (PARTITION BY member_id ORDER BY day), day) AS gap
    FROM days
)
SELECT
    member_id,
    stddev_samp(gap) AS gap_std_days,
    stddev_samp(gap) / nullif(avg(gap), 0) AS gap_cv,
    arg_max(gap, day) AS last_gap_days,
    date_diff('day', max(day), :as_of::DATE) / nullif(avg(gap), 0) AS overdue_ratio
FROM gaps
GROUP BY member_id
