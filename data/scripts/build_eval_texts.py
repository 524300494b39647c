"""Build the English and code no-regression texts for `tokenizer_efficiency`.

Korean vocabulary must not make English or code more expensive, so the efficiency report always
measures both. The texts come from files every Debian/Python install has, so they can be rebuilt
byte-for-byte: licence texts (English prose) and a few pure-Python standard-library modules (code).

Run: `.venv/bin/python data/scripts/build_eval_texts.py --out data/03_eval`
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

LICENCES = ("/usr/share/common-licenses/Apache-2.0", "/usr/share/common-licenses/GPL-3")
CODE_MODULES = ("textwrap", "heapq", "bisect", "fnmatch")
CODE_BLOCK_LINES = 20


def english_paragraphs(paths: tuple[str, ...]) -> list[str]:
    """Non-trivial prose paragraphs (blank-line separated, re-flowed to one line each)."""
    paragraphs = []
    for path in paths:
        for block in Path(path).read_text(encoding="utf-8").split("\n\n"):
            text = " ".join(block.split())
            if len(text) >= 80:
                paragraphs.append(text)
    return paragraphs


def code_blocks(modules: tuple[str, ...]) -> list[str]:
    """Consecutive 20-line blocks of standard-library source, newlines kept."""
    blocks = []
    for name in modules:
        lines = inspect.getsource(__import__(name)).splitlines()
        for start in range(0, len(lines), CODE_BLOCK_LINES):
            block = "\n".join(lines[start : start + CODE_BLOCK_LINES])
            if block.strip():
                blocks.append(block)
    return blocks


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/03_eval"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "english.jsonl", english_paragraphs(LICENCES))
    write_jsonl(args.out / "code.jsonl", code_blocks(CODE_MODULES))


if __name__ == "__main__":
    main()
