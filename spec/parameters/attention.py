"""Dynamic attention sparsity: key blocks kept per query block (sparse_attention)."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from ..catalog import ModelArchitecture
from ..taxonomy import Granularity
from .base import AdapterParams, one_of


class SparseAttentionParams(AdapterParams):
    """Dynamic NK of attention: each query block keeps a share of its causal key blocks (sink and local always).

    Query block i (positions i*block_size ...) sees key blocks 0..i. It keeps the first `sink_blocks`,
    the last `local_blocks` (the diagonal included) and a choice of the others, so that
    round((1 - sparsity) * (i + 1)) blocks are kept, never fewer than sink and local together. The
    count depends on i alone, so the declaration, the cost model and the FLOPs hold for either policy:
    'seeded' chooses by (seed, layer, i), so decoding a token uses the key blocks of its query block;
    'estimated' chooses per (batch row, query head, layer) by MInference's block-sparse estimate
    (arXiv 2407.02490) from the input, online (adapters/sparse_attention.py), so no calibration.
    """

    granularities = frozenset({Granularity.key_block})

    sparsity: float = Field(ge=0.0, le=0.95, description="share of causal key blocks dropped per query block")
    block_size: int = Field(
        64, ge=16, le=1024, multiple_of=16, description="tokens per query and key block (whole kernel tiles of 16)"
    )
    sink_blocks: int = Field(1, ge=0, le=64, description="first key blocks always kept")
    local_blocks: int = Field(1, ge=1, le=64, description="most recent key blocks always kept (the diagonal included)")
    policy: Literal["seeded", "estimated"] = Field(
        "seeded",
        description="how the key blocks beyond sink and local are chosen",
        json_schema_extra=one_of(
            {
                "seeded": "a seeded choice of the other key blocks of each query block and layer",
                "estimated": (
                    "MInference's online block-sparse estimate, per batch row and query head: mean-pooled queries of "
                    "the previous query block against mean-pooled keys, the highest-scoring key blocks kept"
                ),
            }
        ),
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds the choice of key blocks")

    def required_blocks(self, query_block: int) -> set[int]:
        """The sink and local key blocks of a query block: kept whatever the sparsity."""
        sink = range(min(self.sink_blocks, query_block + 1))
        local = range(max(0, query_block - self.local_blocks + 1), query_block + 1)
        return set(sink) | set(local)

    def misfit(self, arch: ModelArchitecture) -> str | None:
        if self.block_size >= arch.max_position_embeddings:
            return f"block_size {self.block_size} leaves a single block in {arch.max_position_embeddings} positions: nothing to drop"
        return None

    def kept_block_count(self, query_block: int) -> int:
        causal = query_block + 1
        return min(causal, max(len(self.required_blocks(query_block)), round((1.0 - self.sparsity) * causal)))

    def kept_blocks(self, query_block: int, layer: int) -> list[int]:
        """The sorted key blocks that query block `query_block` of layer `layer` attends to (seeded policy)."""
        if self.policy != "seeded":
            raise ValueError("the estimated policy chooses key blocks from the input (adapters/sparse_attention.py)")
        required = self.required_blocks(query_block)
        others = [j for j in range(query_block + 1) if j not in required]
        random.Random(f"{self.seed}/{layer}/{query_block}").shuffle(others)
        return sorted(required | set(others[: self.kept_block_count(query_block) - len(required)]))
