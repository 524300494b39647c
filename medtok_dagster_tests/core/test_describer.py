"""The LLM describer is killed mid-run and resumes to exactly the output of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core.describer import describe_with_llm, read_checkpoint

TOKENS = [(f"▁토큰{i}", 262144 + i) for i in range(48)]
RUNNER = """
import json, sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from medtok_dagster.core.describer import describe_with_llm
model_dir, checkpoint = sys.argv[1], Path(sys.argv[2])
tokens = [tuple(t) for t in json.loads(sys.argv[3])]
describe_with_llm(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir), tokens, checkpoint,
                  batch_size=4, checkpoint_every=8, max_new_tokens=6)
"""


def describe(model_dir, checkpoint):
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    return describe_with_llm(model, tokenizer, TOKENS, checkpoint, batch_size=4, checkpoint_every=8, max_new_tokens=6)


def test_killed_describer_resumes_to_the_same_output(tiny_gemma_dir, tmp_path):
    checkpoint = tmp_path / "resumed.jsonl"
    process = subprocess.Popen([sys.executable, "-c", RUNNER, str(tiny_gemma_dir), str(checkpoint), json.dumps(TOKENS)])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(read_checkpoint(checkpoint)) < 8:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(read_checkpoint(checkpoint))
    assert 8 <= done_before < len(TOKENS), done_before
    with checkpoint.open("a", encoding="utf-8") as handle:
        handle.write('{"token": "torn')
    resumed = describe(tiny_gemma_dir, checkpoint)
    uninterrupted = describe(tiny_gemma_dir, tmp_path / "fresh.jsonl")
    assert [(d.token, d.token_id, d.description) for d in resumed] == [(d.token, d.token_id, d.description) for d in uninterrupted]
    assert len(read_checkpoint(checkpoint)) == len(TOKENS)
