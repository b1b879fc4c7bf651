"""End-to-end cases (VQ-VAE, prior, sampling, data): filled in as those paths land."""
from __future__ import annotations

from typing import Iterator

from .harness import Case, Settings, register


@register
def model_cases(s: Settings) -> Iterator[Case]:
    return iter(())
