"""One rank of `tests.distributed.run_on_ranks`: start gloo, call the target, save its result.

    python -m tests.ranks package.module:function '[json args]' RESULT_DIR   (under torchrun)
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def main(target: str, args: str, result_dir: str) -> None:
    module_name, function_name = target.split(":")
    dist.init_process_group("gloo")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        result = function(*json.loads(args))
        torch.save(result, os.path.join(result_dir, f"rank{dist.get_rank()}.pt"))
    except BaseException:
        # The other ranks may wait in a collective: end this one at once, torchrun ends the rest.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
