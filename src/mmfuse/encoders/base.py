"""The common output of every encoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    """What an encoder gives the fusion stage.

    Attributes:
        tokens: ``[B, N, D]`` token states (spatial cells, words, frames).
        mask: ``[B, N]`` bool, True where a token is real (not padding).
        pooled: ``[B, P]`` one vector per row.
        present: ``[B]`` bool, False for rows where this input is missing.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    present: torch.Tensor

    def select(self, index: torch.Tensor) -> Features:
        """Rows ``index`` of every field: expands features of unique items back to rows."""
        return Features(
            self.tokens[index], self.mask[index], self.pooled[index], self.present[index]
        )


def all_present(batch_size: int, device: torch.device) -> torch.Tensor:
    """A ``present`` vector for a batch where no row misses the input."""
    return torch.ones(batch_size, dtype=torch.bool, device=device)
