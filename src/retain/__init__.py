"""retain: churn and repurchase prediction, and the retention decisions they drive."""

__version__ = "0.1.0"
