"""Training entry point.

    torchrun --nproc_per_node N -m megatron_ngpt.train --config CONFIG.yaml [key=value | --flag ...]

Rank, world size and addresses come from torchrun or SLURM. Arguments after ``--config`` set config
fields in order, the last one winning (see `megatron_ngpt.arguments`). With ``--save RUN_DIR``
pointing at a run that has a checkpoint, training resumes from its newest usable checkpoint.

Exit status: 0 done (or stopped at `training.exit_interval`), 1 crash, 2 bad input (config, files,
checkpoint; one line names it), 3 preempted with a checkpoint saved (requeue), 4 diverged (non-
finite values; nothing saved), 130 interrupted by Ctrl-C with a checkpoint saved.
"""

from __future__ import annotations

import os
import sys
import traceback

from megatron_ngpt.arguments import parse_train_args
from megatron_ngpt.config import ConfigError
from megatron_ngpt.log import get_logger

BAD_INPUT_EXIT_CODE = 2


def _leave(code: int) -> None:
    """Exit at once: other ranks may wait in a collective that this rank will never join, and
    the launcher must see the failure (torchrun then stops them)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_train_args(sys.argv[1:] if argv is None else argv).validate_for_training()
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return BAD_INPUT_EXIT_CODE
    # DeepSpeed and megatron-core load only past this point, so that `--help` is instant.
    from megatron_ngpt.data.files import DataError
    from megatron_ngpt.parallel.deepspeed_internals import DeepSpeedLayoutError
    from megatron_ngpt.parallel.state import init_distributed, shutdown_distributed
    from megatron_ngpt.training.checkpoint import CheckpointError
    from megatron_ngpt.training.run_lock import RunDirectoryBusy
    from megatron_ngpt.training.trainer import Trainer

    log = get_logger()
    p = cfg.parallel
    dims = init_distributed(p.tensor_model_parallel_size, p.pipeline_model_parallel_size,
                            cfg.training.device)
    try:
        code = Trainer.build(cfg, dims).train()
    except ConfigError as err:
        log.error("config error: %s", err)
        _leave(BAD_INPUT_EXIT_CODE)
    except (CheckpointError, DataError, RunDirectoryBusy, FileNotFoundError) as err:
        log.error("error: %s", err)
        _leave(BAD_INPUT_EXIT_CODE)
    except OSError as err:  # a read-only or full disk: name the file, no traceback
        log.error("error: %s%s", err.strerror or err,
                  f": {err.filename}" if getattr(err, "filename", None) else "")
        _leave(BAD_INPUT_EXIT_CODE)
    except DeepSpeedLayoutError as err:
        log.error("error: %s", err)
        _leave(1)
    except Exception:
        traceback.print_exc()
        _leave(1)
    shutdown_distributed()
    return code


if __name__ == "__main__":
    sys.exit(main())
