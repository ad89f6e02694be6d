-- Browsing before :as_of: counts by type in the last 30/90 days, the trend, and days since the last event.
SELECT
    member_id,
    count(*) FILTER (WHERE event_type = 'view' AND event_at >= :as_of - INTERVAL 30 DAY) AS views_30d,
    count(*) FILTER (WHERE event_type = 'view' AND event_at >= :as_of - INTERVAL 90 DAY) AS views_90d,
    count(*) FILTER (WHERE event_type = 'favorite' AND event_at >= :as_of - INTERVAL 90 DAY) AS favorites_90d,
    count(*) FILTER (WHERE event_type = 'cart' AND event_at >= :as_of - INTERVAL 30 DAY) AS carts_30d,
    count(*) FILTER (WHERE event_type = 'cart' AND event_at >= :as_of - INTERVAL 90 DAY) AS carts_90d,
    count(*) FILTER (WHERE event_at >= :as_of - INTERVAL 90 DAY)
        - count(*) FILTER (WHERE event_at >= :as_of - INTERVAL 180 DAY AND event_at < :as_of - INTERVAL 90 DAY)
        AS events_trend_90d,
    count(*) AS events_total,
    (epoch(:as_of) - epoch(max(event_at))) / 86400.0 AS days_since_last_event
FROM events
WHERE event_at < :as_of
GROUP BY member_id
