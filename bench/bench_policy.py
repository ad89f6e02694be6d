"""Does the policy make money? The budgeted coupon list against three rules a team would otherwise use,
scored on the simulator's truth, where each member's real coupon effect is known.

For every member the simulator's chain gives, with and without a coupon of each tier sent the day
before `as_of`: the expected paid orders over `decisions.value_horizon_days` (a coupon raises the
order rate for its 14 days, and a disengaging member who orders then is won back) and P(at least one
order in the 14 days) (= P(redeem)). The true profit of a list is, summed over its members,

    (orders with coupon - orders without) x the member's mean order amount x margin_rate
    - send_cost - P(redeem with coupon) x coupon value

Every list is charged against the same daily budget with the same cost estimate (the policy's: send
cost + its P(redeem) x coupon value; the true cost column shows what each list really spends), has no
control group and no contact rules, so only the choice of members and tiers differs. Subscription
offers are switched off (the simulator holds no truth for them). Each rule sends the tier that made it
the most true profit, in hindsight.

Needs the demo dataset and its champions: `make demo` (or `make train`) first.

    python bench/bench_policy.py [--data data/demo]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from retain import decisions
from retain import features as feature_builder
from retain.config import load_config
from retain.dataset import open_dataset
from retain.registry import Registry
from retain.scoring import Scorer
from retain.simulate.oracle import oracle_probabilities
from retain.simulate.process import PROCESS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument(
        "--min-churn-risk", type=float, help="winback.min_churn_risk for this run (default: retain.toml's)"
    )
    args = parser.parse_args()
    config = load_config()
    # No subscription offers, no control group: a coupon-only list, all of it contacted.
    config = dataclasses.replace(
        config,
        subscription=dataclasses.replace(config.subscription, uplift=0.0),
        decisions=dataclasses.replace(config.decisions, holdout_share=0.0),
    )
    if args.min_churn_risk is not None:
        config = dataclasses.replace(
            config, winback=dataclasses.replace(config.winback, min_churn_risk=args.min_churn_risk)
        )
    dataset = open_dataset(args.data)
    as_of = dataset.observed_until
    truth = pd.read_parquet(dataset.path / "truth.parquet")
    scorer = Scorer.from_registry(Registry(config.mlflow), config)
    features = feature_builder.build(dataset, as_of, config.data)
    scored = scorer.score(features, as_of)
    members = scored.index

    orders = dataset.read("orders", ["member_id", "amount", "status"])
    amount = orders[orders["status"] != "refunded"].groupby("member_id")["amount"].mean().reindex(members)
    horizon = config.decisions.value_horizon_days
    without = oracle_probabilities(truth, as_of, horizon).reindex(members)
    tiers = config.winback.coupon_tiers
    without_window = oracle_probabilities(truth, as_of, PROCESS.coupon_days).reindex(members)
    truth_by_tier = {}
    for label, value in tiers.items():
        with_coupon = oracle_probabilities(truth, as_of, horizon, coupon_value=value).reindex(members)
        gain = (with_coupon["expected_orders"] - without["expected_orders"]) * amount * config.decisions.margin_rate
        redeem = oracle_probabilities(truth, as_of, PROCESS.coupon_days, coupon_value=value)["p_repurchase"]
        redeem = redeem.reindex(members)
        truth_by_tier[label] = pd.DataFrame(
            {
                "gain": gain.to_numpy(),
                "true_cost": config.winback.send_cost + redeem.to_numpy() * value,
                "true_uplift": (redeem - without_window["p_repurchase"]).to_numpy(),
            },
            index=members,
        )

    # The model's cost of each member at each tier: the one budget every list is charged with.
    matrix = decisions.Columns(features).matrix(scorer.uplift.feature_names)
    model_cost = {}
    p_buy = decisions.p_buy_in_window(scored["repurchase_prob"].to_numpy(), config)
    # as the scorer passes them: the prior is scaled by the reach and picked by the lifecycle stage
    reachable = 1.0 - scored["churn_risk"].to_numpy()
    stage = scored["segment"].str.rsplit("_", n=1).str[0].to_numpy()
    uplifts = scorer.uplift.predict_tiers(matrix, list(tiers.values()), reachable, stage)
    for (label, value), uplift in zip(tiers.items(), uplifts, strict=True):
        model_cost[label] = pd.Series(decisions.coupon_cost(scorer.uplift, p_buy, uplift, value, config), index=members)

    budget = config.winback.daily_budget
    status = decisions.choose(scored, pd.Series("", index=members), as_of, config)
    chosen = scored[status == decisions.CONTACT]
    labels = np.asarray(list(tiers))
    policy_tier = pd.Series(chosen["offer_detail"].to_numpy(), index=chosen.index)
    rows = [evaluate("retain policy (uplift x value, budgeted)", policy_tier, truth_by_tier, model_cost)]

    rng = np.random.default_rng(0)
    at_risk = scored.index[scored["churn_risk"].to_numpy() >= config.decisions.churn_threshold]
    orders_of_rules = {
        "top churn risk": scored["churn_risk"].sort_values(ascending=False, kind="stable").index,
        "random": members[rng.permutation(len(members))],
        "everyone at risk (random order)": at_risk[rng.permutation(len(at_risk))],
    }
    for name, order in orders_of_rules.items():
        best = None
        for label in labels:
            cost = model_cost[label].reindex(order).to_numpy()
            take = order[np.cumsum(cost) <= budget]
            row = evaluate(f"{name} ({label})", pd.Series(label, index=take), truth_by_tier, model_cost)
            best = row if best is None or row["true profit"] > best["true profit"] else best
        rows.append(best)

    # The ceiling: each member's best tier and order by true profit per unit of budget (needs the truth).
    profit = pd.DataFrame({label: t["gain"] - t["true_cost"] for label, t in truth_by_tier.items()})
    best_tier = profit.idxmax(axis=1)
    cost = pd.Series([model_cost[label].loc[m] for m, label in best_tier.items()], index=members)
    ratio = profit.max(axis=1) / cost

    def oracle(name: str, eligible: pd.Index) -> dict:
        order = ratio.loc[eligible][ratio.loc[eligible] > 0].sort_values(ascending=False, kind="stable").index
        take = order[np.cumsum(cost.loc[order].to_numpy()) <= budget]
        return evaluate(name, best_tier.loc[take], truth_by_tier, model_cost)

    # The same ceiling among the members the policy may reach (churn risk >= winback's minimum): most of
    # the unrestricted ceiling lies with disengaging members whose churn risk is still low.
    may_reach = scored.index[scored["churn_risk"].to_numpy() >= decisions.winback_min_churn_risk(config)]
    ceilings = [
        oracle("oracle: true effects (the ceiling, not a rule)", members),
        oracle("oracle among members the policy may reach", may_reach),
    ]

    table = pd.DataFrame([*rows, *ceilings]).set_index("list")
    pd.set_option("display.width", 200)
    print(f"as of {as_of.date()}, {len(members):,} members, budget {budget:,.0f} {config.data.currency}")
    print(table.round(1).to_string())
    print_expected_value_check(chosen, policy_tier, truth_by_tier)

    # How well the uplift model ranks the true coupon effect (the tier most sent).
    top_label = policy_tier.value_counts().index[0] if len(policy_tier) else labels[0]
    predicted = scorer.uplift.predict_tiers(matrix, [tiers[top_label]], reachable, stage)[0]
    true_uplift = truth_by_tier[top_label]["true_uplift"].to_numpy()
    rho = stats.spearmanr(predicted, true_uplift).statistic
    print(f"uplift model ({scorer.uplift.kind}): Spearman with the true uplift at {top_label}: {rho:.3f}")
    uplift_tags = (scorer.tags or {}).get("uplift", {})
    print(f"held-out Qini coefficient (from training): {uplift_tags.get('retain.metric.qini', 'n/a')}")
    policy = table.iloc[0]["true profit"]
    for ceiling in ceilings:
        print(f"policy / {ceiling['list']}: {policy / ceiling['true profit']:.1%}")
    beaten = all(policy > other for other in table["true profit"].iloc[1 : -len(ceilings)])
    print(f"policy beats every rule on true profit: {beaten}")
    return 0 if beaten else 1


def print_expected_value_check(chosen: pd.DataFrame, tier: pd.Series, truth_by_tier: dict) -> None:
    """The list's predicted expected value against its true profit, overall and per lifecycle stage
    (issue 12: within 25% wherever a stage holds 100 members or more), and the share of coupons that
    went to members at risk or worse."""
    true = pd.Series(
        [truth_by_tier[label].loc[m, "gain"] - truth_by_tier[label].loc[m, "true_cost"] for m, label in tier.items()],
        index=tier.index,
        dtype=float,
    )
    stage = chosen["segment"].str.rsplit("_", n=1).str[0]
    groups = [("the whole list", chosen.index), *((name, rows.index) for name, rows in chosen.groupby(stage))]
    source = "uplift: " + chosen["uplift_source"].astype(str)  # the learnt uplift, or the prior (overlap rule)
    groups += [(name, rows.index) for name, rows in chosen.groupby(source)]
    print("predicted expected value against true profit (the same members, the same tiers):")
    for name, rows in groups:
        predicted, actual = chosen.loc[rows, "expected_value"].sum(), true.loc[rows].sum()
        ratio = predicted / actual if actual else float("nan")
        print(
            f"  {name:<16} {len(rows):>6,} members: predicted {predicted:>12,.0f}, "
            f"true {actual:>12,.0f}, ratio {ratio:5.2f}"
        )
    at_risk = stage.isin(["at_risk", "sleeping", "lost"]).mean() if len(stage) else float("nan")
    print(f"coupons to members at risk, sleeping or lost: {at_risk:.1%}")


def evaluate(name: str, tier: pd.Series, truth_by_tier: dict, model_cost: dict) -> dict:
    """True incremental margin, true cost and profit of sending each listed member its tier."""
    gain = true_cost = charged = 0.0
    for label, members in tier.groupby(tier).groups.items():
        t = truth_by_tier[label].loc[members]
        gain += float(t["gain"].sum())
        true_cost += float(t["true_cost"].sum())
        charged += float(model_cost[label].loc[members].sum())
    return {
        "list": name,
        "members": len(tier),
        "budget charged": charged,
        "true incremental margin": gain,
        "true cost": true_cost,
        "true profit": gain - true_cost,
    }


if __name__ == "__main__":
    sys.exit(main())
