-- Subscriptions (周期购) started before :as_of; one that ends at or after :as_of is still active.
SELECT
    member_id,
    count(*) FILTER (WHERE ended_at IS NULL OR ended_at >= :as_of) AS active_subscriptions,
    count(*) AS subscriptions_ever
FROM subscriptions
WHERE started_at < :as_of
GROUP BY member_id
