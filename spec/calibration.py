"""Calibration data: what a faithful selection scores layers, channels or weights on. No torch.

The papers' criteria (ShortGPT's Block Influence, Wanda's |W|·‖X‖, SparseGPT's layer Hessian, ...)
are computed from activations on a small set of text from the training distribution, never from
the held-out split the quality axis is measured on. An operating point that uses such a criterion
declares its calibration data here, so it is part of the submission's hash and recorded with the run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .catalog import Frozen

CalibrationSet = Literal["embedded-train"]
CALIBRATION_SETS: dict[str, str] = {
    "embedded-train": "16 evenly spaced 16 KB stretches of the embedded model's train split (Jane Austen), "
    "shipped as harness/embedded/calibration.txt; random token ids on a random-weight catalog model",
}


class Calibration(Frozen):
    """Which text, how much of it and which windows: everything that changes what a selection removes."""

    dataset: CalibrationSet = Field(
        "embedded-train", description="the calibration set: " + CALIBRATION_SETS["embedded-train"]
    )
    sequences: int = Field(32, ge=1, le=1024, description="calibration sequences (the papers use 128 of 2048 tokens)")
    length: int = Field(
        256, ge=16, le=8192, description="tokens per sequence, BOS included; capped at the model's context length"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="picks the windows of the set, so calibration is repeatable")

    def length_on(self, max_positions: int) -> int:
        """The sequence length used on a model of `max_positions` positions: the declared one, capped."""
        return min(self.length, max_positions)
