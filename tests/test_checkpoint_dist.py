"""Out-of-core surgery under torchrun: two gloo ranks share the calibration batches, make the
plan a single process makes, and fine-tune the slim Llama with FSDP2; the result reloads."""
from __future__ import annotations

import hashlib
import json

import pytest
from util import EXAMPLES, load_example, torchrun

import surgeon

pytest.importorskip("transformers")


def test_two_ranks_make_one_plan_and_fsdp_fine_tuning_lowers_the_loss(tmp_path):
    torchrun(EXAMPLES / "llm_checkpoint.py", "--out", str(tmp_path), "--steps", "6", timeout=400)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and all(r["fsdp"] for r in ranks)
    assert ranks[0]["plan_sha256"] == ranks[1]["plan_sha256"] and ranks[0]["removed"] > 0
    example = load_example("llm_checkpoint")
    vocab = json.loads((tmp_path / "src" / "config.json").read_text())["vocab_size"]
    alone = surgeon.slim_checkpoint(tmp_path / "src", tmp_path / "alone", 0.25, importance="activation",
                                    calibration=example.batches(vocab)[:4], progress=False)
    assert hashlib.sha256(alone.to_json().encode()).hexdigest() == ranks[0]["plan_sha256"]
    for r in ranks:
        assert r["losses"][-1] < 0.8 * r["losses"][0], r["losses"]
    assert ranks[0]["reloaded_equal"] is True
    assert (tmp_path / "finetuned" / "surgeon.json").is_file()
