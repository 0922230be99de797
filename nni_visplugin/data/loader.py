"""Batches over in-memory tensors."""
from __future__ import annotations

from typing import Iterator

import torch

__all__ = ["TensorLoader", "bilevel_halves"]


class TensorLoader:
    """Batches over in-memory tensors; reshuffled each pass by its own seeded generator."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False, seed: int = 0):
        if len(x) != len(y):
            raise ValueError("x and y differ in length")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self._gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def state_dict(self) -> dict:
        return {"generator": self._gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._gen.set_state(state["generator"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self._gen) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            yield self.x[idx], self.y[idx]


def bilevel_halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the two halves of ``n`` training images (DARTS, section 2.3: the weights learn on
    one, the architecture on the other), drawn by a seeded permutation; the second is the larger
    one when ``n`` is odd."""
    if n < 2:
        raise ValueError("the training split needs at least 2 samples to be halved for the bilevel search")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2], perm[n // 2:]
