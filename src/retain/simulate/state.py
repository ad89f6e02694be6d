"""What one chunk of simulated members is — their latent draws (`Members`) and what happened to them
(`History`) — and the Arrow helpers that make ids and timestamps: shared by the day loop
(`retain.simulate.shop`), the table builders (`retain.simulate.tables`) and the BG/NBD log generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retain import contract as c

DAY_US = 86_400 * 1_000_000
RESPONSE_TYPES = ("persuadable", "unaffected", "sleeping_dog")
BROWSE_TYPES = np.array(c.EVENT_TYPES)
BROWSE_TYPE_SHARES = (0.75, 0.10, 0.15)


@dataclass
class Members:
    """Latent draws for one chunk of members (arrays of equal length)."""

    join_day: np.ndarray
    promo_only: np.ndarray
    rate: np.ndarray
    p_disengage: np.ndarray
    browse_rate: np.ndarray
    cycle: np.ndarray  # index into CYCLE_DAYS, -1 without a cycle
    cycle_category: np.ndarray  # index into CATEGORIES, -1 without a cycle
    first_renewal: np.ndarray
    mix_cdf: np.ndarray  # (n, categories) cumulative category preferences
    spend_level: np.ndarray
    response_type: np.ndarray
    response: np.ndarray  # coupon multiplier on the order intensity at a 30-yuan coupon
    tier: np.ndarray


@dataclass
class History:
    """What happened to one chunk over the simulated days (row arrays, appended per day)."""

    order_member: list
    order_day: list
    order_kind: list  # 0 ordinary, 1 cycle renewal, 2 order on joining
    browse_member: list
    browse_day: list
    offer_member: list
    offer_day: list
    offer_value: list
    offer_treated: list
    offer_stage: list  # each offered member's stage when the offer was sent: 1 active, 2 disengaging, 3 dead
    renewal_member: list
    renewal_day: list
    disengaged_day: np.ndarray
    died_day: np.ndarray


def ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """String ids such as M0000042, built with Arrow (fast for tens of millions of rows)."""
    padded = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, padded, "")


def timestamps(start_us: int, day: np.ndarray, seconds: np.ndarray) -> pa.Array:
    return pa.array(start_us + day.astype(np.int64) * DAY_US + seconds.astype(np.int64) * 1_000_000, pa.timestamp("us"))
