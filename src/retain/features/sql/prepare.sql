-- Orders known before :as_of. A refund counts only once it is recorded before :as_of; one without a
-- date counts from :undated_refund_known (features: the order date plus data.refund_delay_days; labels,
-- which are outcomes, take it as known). `paid` is the population's purchase log.
-- Views, not tables: each family reads only the columns it needs, straight from the source.
CREATE OR REPLACE TEMP VIEW known_orders AS
SELECT
    member_id,
    ordered_at,
    amount,
    category,
    coupon_id,
    status = 'refunded' AND coalesce(refunded_at < :as_of, :undated_refund_known) AS is_refunded
FROM orders
WHERE ordered_at < :as_of;

CREATE OR REPLACE TEMP VIEW paid AS
SELECT member_id, ordered_at, amount, category, coupon_id
FROM known_orders
WHERE NOT is_refunded;
