-- RFM core (aggregates over `paid`, one row per member): recency, frequency over distinct purchase days,
-- monetary, tenure, mean gap between purchase days, and the whole days from the first and last purchase day
-- to :as_of (what the BTYD summary is made of). The rate and share are comparable across members of
-- different ages (and snapshots of a young shop), where raw counts are not.
(epoch(:as_of) - epoch(max(ordered_at))) / 86400.0 AS recency_days,
count(DISTINCT ordered_at::DATE) AS frequency,
count(*) AS order_count,
sum(amount) AS monetary_total,
avg(amount) AS monetary_mean,
(epoch(:as_of) - epoch(min(ordered_at))) / 86400.0 AS tenure_days,
CASE WHEN count(DISTINCT ordered_at::DATE) > 1
     THEN date_diff('day', min(ordered_at)::DATE, max(ordered_at)::DATE) / (count(DISTINCT ordered_at::DATE) - 1.0)
END AS mean_gap_days,
date_diff('day', min(ordered_at)::DATE, :as_of::DATE) AS first_purchase_days_ago,
date_diff('day', max(ordered_at)::DATE, :as_of::DATE) AS last_purchase_days_ago,
count(DISTINCT ordered_at::DATE) * 30.0 / greatest(date_diff('day', min(ordered_at)::DATE, :as_of::DATE), 1)
    AS purchase_days_per_30d,
date_diff('day', max(ordered_at)::DATE, :as_of::DATE) / greatest(date_diff('day', min(ordered_at)::DATE, :as_of::DATE), 1)
    AS recency_share
