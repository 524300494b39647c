"""The LLM describer: few-shot prompt, first-sentence answers, and a killed run resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time

from transformers import AutoModelForCausalLM, AutoTokenizer

from medtok_dagster.core.describer import (
    EXAMPLES,
    SENTENCE_END_RE,
    describe_with_llm,
    few_shot_prompt,
    first_sentence,
    read_checkpoint,
    sentence_stop,
)

TOKENS = [(f"▁토큰{i}", 262144 + i) for i in range(48)]
RUNNER = """
import json, sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from medtok_dagster.core.describer import describe_with_llm
model_dir, checkpoint = sys.argv[1], Path(sys.argv[2])
tokens = [tuple(t) for t in json.loads(sys.argv[3])]
model = AutoModelForCausalLM.from_pretrained(model_dir)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
settings = dict(batch_size=4, checkpoint_every=8, max_new_tokens=6)
describe_with_llm(model, tokenizer, tokens, checkpoint, **settings)
"""


def describe(model_dir, checkpoint):
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(model_dir),
        AutoTokenizer.from_pretrained(model_dir),
    )
    return describe_with_llm(
        model, tokenizer, TOKENS, checkpoint, batch_size=4, checkpoint_every=8, max_new_tokens=6
    )


def test_killed_describer_resumes_to_the_same_output(tiny_gemma_dir, tmp_path):
    checkpoint = tmp_path / "resumed.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(tiny_gemma_dir), str(checkpoint), json.dumps(TOKENS)]
    )
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
    assert [(d.token, d.token_id, d.description) for d in resumed] == [
        (d.token, d.token_id, d.description) for d in uninterrupted
    ]
    assert len(read_checkpoint(checkpoint)) == len(TOKENS)


GLOSSARY = {
    "당뇨병": "diabetes mellitus",
    "당뇨병성신증": "diabetic nephropathy",
    "임신성당뇨병": "gestational diabetes mellitus",
}


def test_prompt_is_few_shot_with_dictionary_context():
    prompt = few_shot_prompt("▁당뇨병을", GLOSSARY)
    assert prompt.count("Gloss:") == len(EXAMPLES) + 1 and prompt.endswith("Gloss:")
    assert (
        "Token: 당뇨병을\nDictionary: 당뇨병 = diabetes mellitus; "
        "당뇨병성신증 = diabetic nephropathy; "
        "임신성당뇨병 = gestational diabetes mellitus\nGloss:" in prompt
    )
    assert few_shot_prompt("▁쀍", GLOSSARY).endswith("Token: 쀍\nDictionary: none\nGloss:")


def test_only_the_first_sentence_of_an_answer_is_kept():
    assert (
        first_sentence(" diabetes mellitus, a disease. It is common")
        == "diabetes mellitus, a disease"
    )
    assert first_sentence("kidney failure\nToken: 간") == "kidney failure"
    assert first_sentence("None.") == ""


def test_generation_stops_each_row_at_the_end_of_its_first_sentence(gemma_tokenizer):
    import torch

    prompt = gemma_tokenizer("Gloss:", add_special_tokens=False)["input_ids"]
    answers = [
        gemma_tokenizer(text, add_special_tokens=False)["input_ids"]
        for text in (" blood sugar.", " blood sugar and")
    ]
    assert len(answers[0]) == len(answers[1])
    stop = sentence_stop(gemma_tokenizer, len(prompt))[0]
    assert stop(torch.tensor([prompt + a for a in answers]), None).tolist() == [True, False]


def test_described_tokens_are_single_clean_sentences(tiny_gemma_dir, tmp_path):
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(tiny_gemma_dir),
        AutoTokenizer.from_pretrained(tiny_gemma_dir),
    )
    described = describe_with_llm(
        model,
        tokenizer,
        TOKENS[:4],
        tmp_path / "c.jsonl",
        GLOSSARY,
        batch_size=2,
        max_new_tokens=12,
    )
    assert [d.token for d in described] == [t for t, _ in TOKENS[:4]]
    assert all(d.method == "llm" and not SENTENCE_END_RE.search(d.description) for d in described)
