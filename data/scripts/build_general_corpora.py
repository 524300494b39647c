"""Build the general-Korean sample corpora under ``data/01_raw/00_korean``.

Why this exists: the tokenizer stages need general (non-medical) Korean prose next to the medical
inputs, and the platform reads any arrow dataset it finds under ``01_raw/00_korean/<corpus>/``.
We cannot ship a scraped web corpus, so the samples are converted from freely licensed Korean text
that ordinary package managers install. The output is deterministic: files are visited in sorted
order, so a rerun over the same package versions writes byte-identical files.

What it reads (install commands are in ``data/README.md``):

* ``libreoffice_help``: the Korean LibreOffice help pages installed by the Debian package
  ``libreoffice-help-ko`` (``/usr/share/libreoffice/help/ko/text/**/*.html``). Text column ``text``.
* ``debian_docs``: Korean Debian documentation: the FAQ (``debian-faq-ko``,
  ``/usr/share/doc/debian/FAQ/ko/*.ko.html``), the amd64 installation guide
  (``installation-guide-amd64``, ``/usr/share/doc/installation-guide-amd64/ko/*.html``) and the
  project history (``debian-history``, ``/usr/share/doc/debian-history/docs/*.ko.html``).
  Text column ``content``.
* ``gimp_help``: the Korean GIMP manual installed by ``gimp-help-ko``
  (``/usr/share/gimp/2.0/help/ko/*.html``); only partly translated, so the Korean-share filter below
  matters most here. Text column ``body``.
* ``kolaw_kobill``: the ``kolaw`` (Constitution of the Republic of Korea) and ``kobill`` (ten
  National Assembly bills) text files shipped inside the ``konlpy`` wheel, read straight from the
  ``.whl`` zip (``pip download --no-deps konlpy==0.6.0``). Text column ``document``.

Every corpus has one row per paragraph: an HTML block element, a line of the constitution (one
clause each), or a kobill paragraph re-joined from the bills' fixed-width wrapping (page numbers and
the flattened old/new comparison tables, unreadable as text, are dropped). A second column
``source`` names the file the row came from. Markup, navigation, code listings and hidden platform
variants are dropped; text is NFC-normalised with whitespace collapsed; rows that are not mainly
Korean (Hangul under ``MIN_HANGUL_SHARE`` of the letters: untranslated English, markup examples,
formulas) or that are only command-line options are dropped; duplicates are removed within each
corpus (first occurrence kept). Shards are capped at ``MAX_SHARD_SIZE`` so the larger corpora span
several arrow files.

Run: `.venv/bin/python data/scripts/build_general_corpora.py --out data/01_raw/00_korean`
"""

from __future__ import annotations

import argparse
import re
import shutil
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from datasets import Dataset

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "01_raw" / "00_korean"
DEFAULT_LIBREOFFICE_HELP = Path("/usr/share/libreoffice/help/ko")
DEFAULT_DEBIAN_FAQ = Path("/usr/share/doc/debian/FAQ/ko")
DEFAULT_INSTALLATION_GUIDE = Path("/usr/share/doc/installation-guide-amd64/ko")
DEFAULT_DEBIAN_HISTORY = Path("/usr/share/doc/debian-history/docs")
DEFAULT_GIMP_HELP = Path("/usr/share/gimp/2.0/help/ko")
DEFAULT_KONLPY_WHEEL = Path("/tmp/konlpy_wheel/konlpy-0.6.0-py2.py3-none-any.whl")
KONLPY_CORPUS_DIR = "konlpy/data/corpus/"
KONLPY_CORPORA = (f"{KONLPY_CORPUS_DIR}kolaw/", f"{KONLPY_CORPUS_DIR}kobill/")
# Small enough that libreoffice_help (about 2 MB of arrow) is written as several shards.
MAX_SHARD_SIZE = "1MB"
# A row is Korean prose when Hangul syllables are at least this share of its Hangul + Latin letters.
MIN_HANGUL_SHARE = 0.2

# Elements that start and end a row of text.
BLOCK_TAGS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "td", "th", "caption", "blockquote", "div", "tr"}
)
# Elements whose whole subtree is page chrome or code, never prose.
SKIP_TAGS = frozenset({"head", "script", "style", "noscript", "header", "footer", "aside", "nav", "pre"})
# Classes with the same meaning: LibreOffice code samples and debug footer, DocBook navigation and TOC.
SKIP_CLASSES = frozenset(
    {"bascode", "pycode", "code", "codeintable", "smathcode", "debug", "navheader", "navfooter", "toc"}
)
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

# kobill layout: the bills are hard-wrapped (often mid-word) with a blank line after every line.
# A wrapped line is long and has no final full stop; a new paragraph starts indented, with a circled
# number, a dash or "N. ". The old/new comparison table runs from its title to the cost-estimate
# note or the end of the file.
BILL_TABLE_START = "구조문대비표"
BILL_TABLE_END = "비용추계서"
MIN_WRAPPED_LINE = 20
PAGE_NUMBER = re.compile(r"^\s*-\s*\d+\s*-\s*$")
PARAGRAPH_START = re.compile(r"\s|[\u2460-\u2473]|-|\d+\.\s")

HANGUL = re.compile(r"[\uac00-\ud7a3]")
LATIN = re.compile(r"[A-Za-z]")
# A row that is nothing but command-line options, e.g. GIMP's "-b, --batch=명령".
OPTIONS_ONLY = re.compile(r"(?:--?[A-Za-z][\w-]*(?:=\S+)?,?\s*)+")
WHITESPACE = re.compile(r"\s+")


@dataclass
class Node:
    """A parsed HTML element: children are nested nodes or text strings."""

    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _TreeBuilder(HTMLParser):
    """Builds a :class:`Node` tree; entities are decoded by ``convert_charrefs``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self._stack[-1].children.append(node)
        if tag not in VOID_TAGS:
            self._stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._stack[-1].children.append(Node(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


def parse_html(markup: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(markup)
    builder.close()
    return builder.root


def _is_skipped(node: Node) -> bool:
    return node.tag in SKIP_TAGS or bool(node.classes() & SKIP_CLASSES)


def _switchinline_case(node: Node) -> Node | None:
    """LibreOffice inline switch: the ``default*`` case (what most readers see), else the first case."""
    cases = [child for child in node.children if isinstance(child, Node)]
    for case in cases:
        if case.attrs.get("id", "").startswith("default"):
            return case
    return cases[0] if cases else None


def html_paragraphs(root: Node) -> list[str]:
    """Raw text of every block element, in document order, nested blocks as separate rows."""
    paragraphs: list[str] = []
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            paragraphs.append("".join(buffer))
            buffer.clear()

    def walk(node: Node | str) -> None:
        if isinstance(node, str):
            buffer.append(node)
            return
        if _is_skipped(node):
            return
        if "switchinline" in node.classes():
            case = _switchinline_case(node)
            if case is not None:
                walk(case)
            return
        if node.tag == "br":
            buffer.append(" ")
        is_block = node.tag in BLOCK_TAGS
        if is_block:
            flush()
        for child in node.children:
            walk(child)
        if is_block:
            flush()

    walk(root)
    flush()
    return paragraphs


def normalise(text: str) -> str:
    return WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def is_korean_prose(text: str) -> bool:
    """Hangul is at least ``MIN_HANGUL_SHARE`` of the letters and the row is not an option synopsis."""
    hangul = len(HANGUL.findall(text))
    mostly_korean = hangul > 0 and hangul >= MIN_HANGUL_SHARE * (hangul + len(LATIN.findall(text)))
    return mostly_korean and OPTIONS_ONLY.fullmatch(text) is None


def clean_rows(rows: Iterable[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Normalise, keep Korean rows, dedupe on text (first source wins); returns (texts, sources)."""
    texts: list[str] = []
    sources: list[str] = []
    seen: set[str] = set()
    for raw, source in rows:
        text = normalise(raw)
        if not is_korean_prose(text) or text in seen:
            continue
        seen.add(text)
        texts.append(text)
        sources.append(source)
    return texts, sources


def html_rows(root: Path, pattern: str, label: str) -> Iterator[tuple[str, str]]:
    """(paragraph, ``label/relative path``) for every HTML file under ``root``, in sorted path order."""
    for path in sorted(root.glob(pattern)):
        tree = parse_html(path.read_text(encoding="utf-8"))
        source = f"{label}/{path.relative_to(root).as_posix()}"
        for paragraph in html_paragraphs(tree):
            yield paragraph, source


def debian_docs_rows(faq: Path, installation_guide: Path, history: Path) -> Iterator[tuple[str, str]]:
    """The three Korean Debian manuals one after another, each labelled with its package name."""
    yield from html_rows(faq, "*.ko.html", "debian-faq-ko")
    yield from html_rows(installation_guide, "*.html", "installation-guide-amd64")
    yield from html_rows(history, "*.ko.html", "debian-history")


def _continues(previous: str, line: str) -> bool:
    """Whether ``line`` is the wrapped tail of ``previous`` in a kobill text."""
    return (
        len(previous.strip()) >= MIN_WRAPPED_LINE
        and not previous.rstrip().endswith(".")
        and not PARAGRAPH_START.match(line)
    )


def bill_paragraphs(lines: list[str]) -> list[str]:
    """Re-join a kobill text's wrapped lines (kept verbatim, so a wrap inside a word leaves no space)."""
    paragraphs: list[str] = []
    previous = ""
    in_table = False
    for line in lines:
        if BILL_TABLE_START in line:
            in_table = True
        elif BILL_TABLE_END in line:
            in_table = False
        if in_table or not line.strip() or PAGE_NUMBER.match(line):
            continue
        if paragraphs and _continues(previous, line):
            paragraphs[-1] += line
        else:
            paragraphs.append(line)
        previous = line
    return paragraphs


def konlpy_rows(wheel: Path) -> Iterator[tuple[str, str]]:
    """(paragraph, ``konlpy/kolaw/…`` or ``konlpy/kobill/…``) for the corpora inside the konlpy wheel."""
    with zipfile.ZipFile(wheel) as archive:
        members = sorted(
            name for name in archive.namelist() if name.startswith(KONLPY_CORPORA) and name.endswith(".txt")
        )
        for name in members:
            lines = archive.read(name).decode("utf-8").splitlines()
            paragraphs = bill_paragraphs(lines) if "/kobill/" in name else lines
            source = "konlpy/" + name.removeprefix(KONLPY_CORPUS_DIR)
            for paragraph in paragraphs:
                yield paragraph, source


def save_corpus(out_dir: Path, name: str, text_column: str, rows: Iterable[tuple[str, str]]) -> Dataset:
    """Replace ``out_dir/name`` with an arrow dataset of ``{text_column, source}`` columns.

    The dataset is written to a hidden sibling first (the platform ignores dot-directories) and
    swapped in afterwards, so a failed run never leaves a half-written corpus behind.
    """
    texts, sources = clean_rows(rows)
    if not texts:
        raise SystemExit(f"{name}: no Korean rows extracted")
    dataset = Dataset.from_dict({text_column: texts, "source": sources})
    target = out_dir / name
    staging = out_dir / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    dataset.save_to_disk(str(staging), max_shard_size=MAX_SHARD_SIZE)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="corpora root (default: %(default)s)")
    parser.add_argument(
        "--libreoffice-help",
        type=Path,
        default=DEFAULT_LIBREOFFICE_HELP,
        help="Korean LibreOffice help root from libreoffice-help-ko (default: %(default)s)",
    )
    parser.add_argument(
        "--debian-faq",
        type=Path,
        default=DEFAULT_DEBIAN_FAQ,
        help="Korean Debian FAQ HTML directory from debian-faq-ko (default: %(default)s)",
    )
    parser.add_argument(
        "--installation-guide",
        type=Path,
        default=DEFAULT_INSTALLATION_GUIDE,
        help="Korean installation guide HTML directory from installation-guide-amd64 (default: %(default)s)",
    )
    parser.add_argument(
        "--debian-history",
        type=Path,
        default=DEFAULT_DEBIAN_HISTORY,
        help="debian-history docs directory holding the *.ko.html pages (default: %(default)s)",
    )
    parser.add_argument(
        "--gimp-help",
        type=Path,
        default=DEFAULT_GIMP_HELP,
        help="Korean GIMP manual directory from gimp-help-ko (default: %(default)s)",
    )
    parser.add_argument(
        "--konlpy-wheel",
        type=Path,
        default=DEFAULT_KONLPY_WHEEL,
        help="konlpy wheel from `pip download --no-deps konlpy==0.6.0` (default: %(default)s)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sources = [args.libreoffice_help, args.debian_faq, args.installation_guide, args.debian_history, args.gimp_help]
    missing = [str(path) for path in [*sources, args.konlpy_wheel] if not path.exists()]
    if missing:
        raise SystemExit(f"missing sources (install commands in data/README.md): {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    corpora = {
        "libreoffice_help": ("text", html_rows(args.libreoffice_help, "text/**/*.html", "libreoffice-help-ko")),
        "debian_docs": ("content", debian_docs_rows(args.debian_faq, args.installation_guide, args.debian_history)),
        "gimp_help": ("body", html_rows(args.gimp_help, "*.html", "gimp-help-ko")),
        "kolaw_kobill": ("document", konlpy_rows(args.konlpy_wheel)),
    }
    for name, (text_column, rows) in corpora.items():
        dataset = save_corpus(args.out, name, text_column, rows)
        size = sum(len(text.encode("utf-8")) for text in dataset[text_column])
        print(f"{name}: {dataset.num_rows} rows, {size} UTF-8 bytes in column {text_column!r}")


if __name__ == "__main__":
    main()
