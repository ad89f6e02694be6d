-- Refunds known at :as_of (recorded before it): how many of the member's orders came back.
-- refund_share is derived from this and order_count once the families are joined.
SELECT member_id, count(*) AS refunded_orders
FROM known_orders
WHERE is_refunded
GROUP BY member_id
