"""Readable text for a CRM agent, in Chinese or English (`decisions.language`): the labels of the features
behind a score, and the wording of an offer (`subscription_offer`: "母婴 每30天").

A CRM agent reads "距上次购买天数 = 142 (提高流失风险)", not "recency_days". Category columns
(`cat_share_baby`, `cycle_cv_beauty`, ...) are labelled from the category names in `data.categories`.
"""

from __future__ import annotations

import numpy as np

LANGUAGES = ("zh", "en")
LABELS: dict[str, tuple[str, str]] = {
    "recency_days": ("距上次购买天数", "days since the last order"),
    "frequency": ("购买天数", "days with an order"),
    "order_count": ("订单数", "orders"),
    "monetary_total": ("累计消费金额", "total spend"),
    "monetary_mean": ("平均订单金额", "mean order value"),
    "tenure_days": ("首购至今天数", "days since the first order"),
    "mean_gap_days": ("平均购买间隔天数", "mean days between orders"),
    "orders_30d": ("近30天订单数", "orders in the last 30 days"),
    "orders_90d": ("近90天订单数", "orders in the last 90 days"),
    "orders_180d": ("近180天订单数", "orders in the last 180 days"),
    "orders_prev_90d": ("前一个90天订单数", "orders in the 90 days before that"),
    "spend_90d": ("近90天消费金额", "spend in the last 90 days"),
    "orders_trend_90d": ("近90天订单趋势", "order trend over 90 days"),
    "coupon_share": ("用券订单占比", "share of orders with a coupon"),
    "promo_share": ("大促订单占比", "share of orders in promotions"),
    "gap_std_days": ("购买间隔标准差", "spread of days between orders"),
    "gap_cv": ("购买间隔变异系数", "irregularity of days between orders"),
    "last_gap_days": ("最近一次购买间隔", "last gap between orders"),
    "overdue_ratio": ("超出平常间隔的倍数", "how overdue against the usual gap"),
    "refunded_orders": ("退款订单数", "refunded orders"),
    "refund_share": ("退款占比", "share of orders refunded"),
    "views_30d": ("近30天浏览次数", "views in the last 30 days"),
    "views_90d": ("近90天浏览次数", "views in the last 90 days"),
    "favorites_90d": ("近90天收藏次数", "favourites in the last 90 days"),
    "carts_30d": ("近30天加购次数", "add-to-carts in the last 30 days"),
    "carts_90d": ("近90天加购次数", "add-to-carts in the last 90 days"),
    "events_trend_90d": ("近90天浏览趋势", "browsing trend over 90 days"),
    "events_total": ("累计浏览互动次数", "browsing events in total"),
    "days_since_last_event": ("距上次浏览天数", "days since the last visit"),
    "offers_received": ("收到的优惠券数", "coupons received"),
    "offers_redeemed": ("使用的优惠券数", "coupons redeemed"),
    "days_since_last_offer": ("距上次发券天数", "days since the last coupon"),
    "active_subscriptions": ("在订周期购数", "active subscriptions"),
    "subscriptions_ever": ("订阅过的周期购数", "subscriptions ever"),
    "tier_level": ("会员等级", "membership tier"),
    "member_age_days": ("入会天数", "days since joining"),
    "best_cycle_cv": ("最规律品类的周期波动", "regularity of the most regular category"),
    "category_entropy": ("品类分散度", "spread over categories"),
    "n_categories": ("购买品类数", "categories bought"),
    "first_purchase_days_ago": ("首个购买日至今天数", "days since the first purchase day"),
    "last_purchase_days_ago": ("最后购买日至今天数", "days since the last purchase day"),
    "bgnbd_p_alive": ("BG/NBD 活跃概率", "BG/NBD probability still active"),
    "bgnbd_expected_purchases": ("BG/NBD 预期购买次数", "BG/NBD expected purchases"),
    "bgnbd_p_purchase": ("BG/NBD 购买概率", "BG/NBD probability of a purchase"),
}
PREFIXES: dict[str, tuple[str, str]] = {
    "cat_share_": ("{}订单占比", "share of orders in {}"),
    "cycle_days_": ("{}购买周期天数", "{} cycle in days"),
    "cycle_cv_": ("{}购买周期波动", "irregularity of the {} cycle"),
    "cycle_overdue_days_": ("{}周期超期天数", "days overdue on the {} cycle"),
    "promo_days_ahead_": ("未来大促天数", "promotion days ahead"),
}
DIRECTIONS = {"raises": ("提高流失风险", "raises churn risk"), "lowers": ("降低流失风险", "lowers churn risk")}


def label(feature: str, language: str, categories: dict[str, str]) -> str:
    """The readable label of a feature column (the column name itself when it has none)."""
    k = LANGUAGES.index(language) if language in LANGUAGES else 0
    if feature in LABELS:
        return LABELS[feature][k]
    names = {slug: name for name, slug in categories.items()}
    for prefix, texts in PREFIXES.items():
        if feature.startswith(prefix):
            slug = feature.removeprefix(prefix)
            return texts[k].format(names.get(slug, slug) if k == 0 else slug.replace("_", " "))
    return feature


def describe(feature: str, value: float, direction: str, language: str, categories: dict[str, str]) -> str:
    """One reason as a sentence a CRM agent reads: 'label = value (direction)'."""
    k = LANGUAGES.index(language) if language in LANGUAGES else 0
    direction_text = DIRECTIONS.get(direction, (direction,) * 2)[k]
    return f"{label(feature, language, categories)} = {shown_value(value)} ({direction_text})"


def shown_value(value: float | None) -> str:
    """A value as an agent reads it, never in exponent notation: 0 below 0.0005 (BG/NBD's expected
    purchases of a long-lapsed member is 2e-16), four significant digits below 1,000, whole numbers
    with thousands separators above."""
    if value is None or np.isnan(value):
        return "—"
    if abs(value) < 0.0005:
        return "0"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def subscription_offer(category: str, cycle_days: float, language: str) -> str:
    """A subscription (周期购) offer in words: the category and the member's own cycle."""
    every = "{} 每{}天" if language == "zh" else "{} every {} days"
    return every.format(category, round(cycle_days))
