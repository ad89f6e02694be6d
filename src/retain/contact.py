"""Contact rules: who must not be contacted on a day, whatever their score.

- suppressions (the optional `suppressions` table: opted out, complaint, legal hold) remove a member from
  every list while `until` is empty or not yet passed;
- the frequency cap: at most `decisions.frequency_cap` contacts (offers of any kind, sent to the member
  or held back from them as a control) within `decisions.frequency_window_days`;
- the cool-down: no second win-back coupon within `winback.cooldown_days` (blocks the coupon only); a
  control assignment counts as a coupon, so a held-out member is not sent one while they are measured.

Only what was known before the day counts: offers sent before it, suppressions in the table.
"""

from __future__ import annotations

import pandas as pd

from retain import contract as c
from retain.config import Config
from retain.connection import dataset_connection
from retain.dataset import Dataset
from retain.decisions import WINBACK

COOLDOWN, FREQUENCY_CAP, SUPPRESSED = "cooldown", "frequency_cap", "suppressed"


def blocked(dataset: Dataset, as_of: pd.Timestamp, actions: pd.Series, config: Config) -> pd.Series:
    """The rule that blocks each member's action (`suppressed:<reason>`, `frequency_cap`, `cooldown`),
    empty where none does; `actions` is the unbudgeted action per member (index member_id)."""
    as_of = pd.Timestamp(as_of)
    reason = pd.Series("", index=actions.index, dtype=object)
    with dataset_connection(dataset) as (con, tables):
        if "offers" in tables:
            recent = (
                con.execute(
                    """
                SELECT member_id,
                       count(*) FILTER (WHERE offer_type = 'winback_coupon' AND sent_at >= ?) AS coupons,
                       count(*) FILTER (WHERE sent_at >= ?) AS contacts
                FROM offers WHERE sent_at < ? GROUP BY member_id
                """,
                    [
                        (as_of - pd.Timedelta(days=config.winback.cooldown_days)).to_pydatetime(),
                        (as_of - pd.Timedelta(days=config.decisions.frequency_window_days)).to_pydatetime(),
                        as_of.to_pydatetime(),
                    ],
                )
                .df()
                .set_index(c.MEMBER_ID)
                .reindex(actions.index)
            )
            cooling = (recent["coupons"] > 0).to_numpy() & (actions == WINBACK).to_numpy()
            reason[cooling] = COOLDOWN
            reason[(recent["contacts"] >= config.decisions.frequency_cap).to_numpy()] = FREQUENCY_CAP
        if "suppressions" in tables:
            suppressed = (
                con.execute(
                    """
                SELECT member_id, min(reason) AS reason FROM suppressions
                WHERE until IS NULL OR until >= ? GROUP BY member_id
                """,
                    [as_of.to_pydatetime()],
                )
                .df()
                .set_index(c.MEMBER_ID)["reason"]
            )
            suppressed = suppressed.reindex(actions.index)  # a hash join: isin on text ids is far slower
            found = suppressed.notna().to_numpy()
            reason[found] = (SUPPRESSED + ":" + suppressed[found]).to_numpy()
    return reason
