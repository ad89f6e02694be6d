-- How the member buys (aggregates over `paid`): coupon use and promotion-day shopping.
avg((coupon_id IS NOT NULL)::INT) AS coupon_share,
avg((:promo_condition)::INT) AS promo_share
