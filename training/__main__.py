"""`python -m training [--data DIR] [--force-promote] [--config F]`: fit, backtest, log, gate, snapshot."""

import sys

from training.job import main

if __name__ == "__main__":
    sys.exit(main())
