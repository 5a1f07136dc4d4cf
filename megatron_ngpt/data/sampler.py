"""Hand each data-parallel rank its micro-batches of every global batch, resumable exactly.

Layout: the run reads the dataset as one stream of samples. A step (global batch) takes the next
``global_batch_size`` samples; of these, data-parallel rank ``r`` takes the contiguous block
``[r * B/dp, (r + 1) * B/dp)`` and cuts it into ``B / (dp * micro_batch_size)`` micro-batches in
order. With ``consumed_samples = c`` at the start of a step, rank r's j-th micro-batch is samples::

    c + r * B/dp + j * mbs  ...  c + r * B/dp + (j + 1) * mbs - 1

So the position of the whole run is one number, the global ``consumed_samples``; resuming from it
gives exactly the samples an uninterrupted run would have seen, even with a different number of
data-parallel ranks. Past the end of the dataset the stream wraps around (sample ``i`` is dataset
item ``i mod len``) when ``wrap`` is set, else iteration raises :class:`DataExhaustedError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset


class DataExhaustedError(RuntimeError):
    """The dataset has fewer samples than the run asks for and wrapping around is off."""


class _RankBatchSampler:
    """Index lists of this rank's micro-batches from a position on, until the data runs out."""

    def __init__(self, loader: MicroBatchLoader, start_micro: int):
        self.loader = loader
        self.start_micro = start_micro

    def __iter__(self) -> Iterator[list[int]]:
        micro = self.start_micro
        while (indices := self.loader.micro_batch_indices(micro)) is not None:
            yield indices
            micro += 1


class MicroBatchLoader:
    """Iterate this rank's micro-batches as dicts of stacked tensors (see the module docstring)."""

    def __init__(self, dataset: Dataset, micro_batch_size: int, global_batch_size: int,
                 dp_rank: int, dp_size: int, consumed_samples: int = 0, wrap: bool = True,
                 num_workers: int = 0):
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                             f"micro_batch_size x dp_size = {micro_batch_size} x {dp_size}")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_size})")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.global_batch_size = global_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.wrap = wrap
        self.num_workers = num_workers
        self.micro_batches_per_step = global_batch_size // (micro_batch_size * dp_size)
        self.load_state_dict({"consumed_samples": consumed_samples})

    @property
    def consumed_samples(self) -> int:
        """Global samples consumed by completed steps (a partly read step counts as not read)."""
        steps = self._micro_yielded // self.micro_batches_per_step
        return self._start_samples + steps * self.global_batch_size

    def state_dict(self) -> dict[str, int]:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._start_samples = int(state["consumed_samples"])
        if self._start_samples < 0:
            raise ValueError(f"consumed_samples must not be negative, got {self._start_samples}")
        self._micro_yielded = 0
        self._iterator: Iterator[dict[str, Any]] | None = None

    def micro_batch_indices(self, micro: int) -> list[int] | None:
        """Dataset indices of this rank's `micro`-th micro-batch counted from the start position;
        None past the end of the dataset when not wrapping around."""
        step, j = divmod(micro, self.micro_batches_per_step)
        first = (self._start_samples + step * self.global_batch_size
                 + self.dp_rank * (self.global_batch_size // self.dp_size)
                 + j * self.micro_batch_size)
        samples = range(first, first + self.micro_batch_size)
        size = len(self.dataset)
        if not self.wrap and samples[-1] >= size:
            return None
        return [i % size for i in samples]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            # Continues from where the previous iteration stopped, even inside a step.
            sampler = _RankBatchSampler(self, self._micro_yielded)
            self._iterator = iter(DataLoader(self.dataset, batch_sampler=sampler,
                                             num_workers=self.num_workers))
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise DataExhaustedError(
                f"the dataset has {len(self.dataset)} samples, fewer than this run needs after "
                f"{self.consumed_samples} consumed samples; build it with more samples "
                "(train_iters x global_batch_size) or allow wrapping around") from None
        self._micro_yielded += 1
        return batch
