-- Membership: tier level (1 = lowest of five) and days since joining, for members who joined before :as_of.
-- The tier counts only where it was already held before :as_of (tier_since); a members table without
-- that date holds today's tier, which at an earlier as_of would be the future, so it is left out.
SELECT
    member_id,
    CASE WHEN tier_since < :as_of THEN
        CASE tier WHEN 'bronze' THEN 1 WHEN 'silver' THEN 2 WHEN 'gold' THEN 3 WHEN 'platinum' THEN 4 WHEN 'diamond' THEN 5 END
    END AS tier_level,
    (epoch(:as_of) - epoch(joined_at)) / 86400.0 AS member_age_days
FROM members
WHERE joined_at IS NULL OR joined_at < :as_of
