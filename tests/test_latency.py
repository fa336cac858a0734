"""The CPU timing path: workloads keep their scenario's shape, summaries are the right order statistics."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from prunereg.adapters.latency import Workload, measure_pair, summary
from prunereg.spec.catalog import Phase, Scenario


@pytest.fixture(scope="module")
def model():
    config = AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return AutoModelForCausalLM.from_config(config).eval()


def test_decode_step_keeps_the_context_length(model):
    work = Workload(model, Scenario(phase=Phase.decode, batch_size=3, seq_len=20))
    assert work.cache.get_seq_length() == 20
    for _ in range(4):
        work.step()
        assert work.cache.get_seq_length() == 21
        work.reset()
        assert work.cache.get_seq_length() == 20


def test_prefill_workload_has_the_scenario_shape(model):
    work = Workload(model, Scenario(phase=Phase.prefill, batch_size=2, seq_len=16))
    assert work.prompt.shape == (2, 16) and work.cache is None


def test_measure_pair_returns_one_sample_per_repeat(model):
    dense, pruned = measure_pair(model, model, Scenario(phase=Phase.decode, batch_size=1, seq_len=8), warmup=1, repeats=5)
    assert len(dense) == len(pruned) == 5 and all(t > 0 for t in dense + pruned)


def test_summary_takes_median_and_20th_80th_percentiles():
    stats = summary([float(x) for x in range(1, 12)])  # 1..11
    assert stats == {"median": 6.0, "p20": 3.0, "p80": 9.0}
