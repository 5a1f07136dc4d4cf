"""Training entry point.

    torchrun --nproc_per_node N -m megatron_ngpt.train --config CONFIG.yaml [key=value | --flag ...]

Rank, world size and addresses come from torchrun or SLURM. Arguments after ``--config`` set config
fields in order, the last one winning (see `megatron_ngpt.arguments`). With ``--save RUN_DIR``
pointing at a run that has a checkpoint, training resumes from its latest complete checkpoint.
"""

from __future__ import annotations

import os
import sys
import traceback

from megatron_ngpt.arguments import parse_train_args
from megatron_ngpt.config import ConfigError
from megatron_ngpt.log import get_logger


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_train_args(sys.argv[1:] if argv is None else argv).validate_for_training()
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    # DeepSpeed and megatron-core load only past this point, so that `--help` is instant.
    from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed
    from megatron_ngpt.training.trainer import Trainer

    log = get_logger()
    p = cfg.parallel
    dims = init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                            cfg.training.device)
    try:
        code = Trainer.build(cfg, dims).train()
    except ConfigError as err:
        log.error("config error: %s", err)
        code = 2
    except Exception:
        # Other ranks may be waiting in a collective: leave at once instead of hanging in
        # the process-group teardown, and let the launcher see the failure.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    shutdown_distributed()
    return code


if __name__ == "__main__":
    sys.exit(main())
