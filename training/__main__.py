"""`python -m training ...` is `retain train ...` (the same options): kept for scripts written before it."""

import sys

from retain.cli import main

if __name__ == "__main__":
    sys.argv = ["retain", "train", *sys.argv[1:]]
    main()
