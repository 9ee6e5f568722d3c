"""``python -m tuner.train``: the earlier name of ``python -m tuner.retrain``, kept so that old commands work."""

import sys

from tuner.retrain import main

if __name__ == "__main__":
    sys.exit(main())
