-- How the member buys: coupon use, refunds (as known at :as_of) and promotion-day shopping.
SELECT
    member_id,
    avg(CASE WHEN NOT is_refunded THEN (coupon_id IS NOT NULL)::INT END) AS coupon_share,
    avg(is_refunded::INT) AS refund_share,
    avg(CASE WHEN NOT is_refunded THEN (:promo_condition)::INT END) AS promo_share
FROM known_orders
GROUP BY member_id
