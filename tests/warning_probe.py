"""The trainer's command line with a warning nobody filters and an error, on every rank: what
`tests/test_console.py` expects to see (the warning from rank 0 only, the error from each rank).

    torchrun ... -m tests.warning_probe TRAINER ARGS
"""

from __future__ import annotations

import sys
import warnings

from megatron_ngpt import train
from megatron_ngpt.log import get_logger, process_rank

UNKNOWN_WARNING = "warning probe: a warning no filter knows"
ERROR = "warning probe: an error on rank"

if __name__ == "__main__":
    warnings.warn(UNKNOWN_WARNING, UserWarning, stacklevel=1)
    get_logger().error("%s %d", ERROR, process_rank())
    sys.exit(train.main())
