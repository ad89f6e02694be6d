-- Offers received before :as_of (control members received nothing); a redemption counts once it happened.
SELECT
    member_id,
    count(*) FILTER (WHERE treated) AS offers_received,
    count(*) FILTER (WHERE treated AND redeemed_at < :as_of) AS offers_redeemed,
    (epoch(:as_of) - epoch(max(sent_at) FILTER (WHERE treated))) / 86400.0 AS days_since_last_offer
FROM offers
WHERE sent_at < :as_of
GROUP BY member_id
