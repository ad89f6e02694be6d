-- Recent activity against the period before (aggregates over `paid`): orders and spend in the last 30/90/180 days.
count(*) FILTER (WHERE ordered_at >= :as_of - INTERVAL 30 DAY) AS orders_30d,
count(*) FILTER (WHERE ordered_at >= :as_of - INTERVAL 90 DAY) AS orders_90d,
count(*) FILTER (WHERE ordered_at >= :as_of - INTERVAL 180 DAY) AS orders_180d,
count(*) FILTER (WHERE ordered_at >= :as_of - INTERVAL 180 DAY AND ordered_at < :as_of - INTERVAL 90 DAY)
    AS orders_prev_90d,
coalesce(sum(amount) FILTER (WHERE ordered_at >= :as_of - INTERVAL 90 DAY), 0) AS spend_90d,
count(*) FILTER (WHERE ordered_at >= :as_of - INTERVAL 90 DAY)
    - count(*) FILTER (WHERE ordered_at >= :as_of - INTERVAL 180 DAY AND ordered_at < :as_of - INTERVAL 90 DAY)
    AS orders_trend_90d
