"""The embedded default model: a small Llama that prunereg trains itself and ships.

Only paths live here (no torch import), so that spec-level code can name the model
cheaply. Load it with plain transformers, e.g.
``AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)``; see
README.md beside this file for the corpus, the evaluation protocol and the numbers.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE / "model"  # config.json, model.safetensors (bf16), tokenizer files
EVAL_SPLIT = HERE / "eval.txt"  # held-out chapters, disjoint from training
CALIBRATION_SET = HERE / "calibration.txt"  # stretches of the train split, for faithful selections
CARD = HERE / "card.json"  # measured numbers: dense and unigram perplexity, provenance
