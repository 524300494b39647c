"""Benchmark: corpus sampling throughput and peak memory against a bare pyarrow scan.

Run from the repository root::

    .venv/bin/python bench/bench_sampling.py --gb 1.0

It builds a Korean corpus of ``--gb`` gigabytes and one of half that size as ``datasets.save_to_disk``
shards in a temporary directory (removed at the end), then measures for each size, side by side:

* ``baseline`` (the "bare pyarrow scan" of a Python text pipeline): memory-map every shard, iterate
  its IPC record batches and hand the text column to Python with ``to_pylist``, nothing else. This
  is what any Python consumer of the corpus pays before doing work of its own;
* ``kernel_scan``: memory-map every shard, iterate its record batches, sum ``pc.utf8_length`` of
  the text column, never leaving Arrow: the fastest any reader can touch the text, reported so the
  gap to pure Arrow is visible too;
* ``sample``: ``sample_corpus(corpus, n_lines=--n-lines)``, whose result stays an Arrow array.

``throughput_ratio`` is sample / baseline speed (target >= 0.5); ``kernel_scan_ratio`` is sample /
kernel-scan speed, for information. Every measurement runs in a fresh spawned process, so
``peak_rss_mb`` is that process's own peak (``VmHWM``) and no run inherits another's memory;
memory-mapped shard pages count as resident once read, as they do in ``ru_maxrss``. Each is
repeated ``--repeats`` times, alternating, and the fastest run counts (the machine may be shared).
Children run with ``OPENBLAS_NUM_THREADS=1`` so NumPy's idle BLAS threads do not compete for the
cores. One JSON object goes to stdout, progress to stderr. Targets: ``throughput_ratio`` >= 0.5,
peak RSS < 1500 MB and flat in corpus size (``rss_growth_ratio`` near 1.0).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _machine import machine  # noqa: E402

RAW_KOREAN = REPO / "data" / "01_raw" / "00_korean"
THROUGHPUT_TARGET = 0.5
PEAK_RSS_LIMIT_MB = 1500
DOCS_PER_TABLE = 20_000

BUILTIN_SENTENCES = [
    "환자는 급성 심근경색으로 응급실에 내원하였다.",
    "고혈압과 당뇨병은 대표적인 만성 질환이다.",
    "서울은 대한민국의 수도이며 정치와 경제의 중심지이다.",
    "조선은 1392년에 이성계가 건국한 나라이다.",
    "위키백과는 누구나 자유롭게 편집할 수 있는 백과사전이다.",
    "이 문서는 한국의 전통 음식에 관한 내용을 다룬다.",
    "김치는 배추와 무를 소금에 절여 양념을 버무려 만든다.",
    "한강은 서울을 동서로 가로지르며 흐르는 강이다.",
    "폐렴은 세균이나 바이러스에 의해 폐에 염증이 생기는 질환이다.",
    "항생제는 세균 감염을 치료하는 데 사용되는 약물이다.",
    "혈압이 지속적으로 높으면 뇌졸중의 위험이 커진다.",
    "그는 대학에서 물리학을 전공하고 연구소에 들어갔다.",
    "오늘 날씨는 맑고 기온은 어제보다 조금 높겠습니다.",
    "정부는 내년 예산안을 국회에 제출했다고 밝혔다.",
    "이 제품은 가볍고 튼튼해서 휴대하기 편리합니다.",
    "주문하신 상품은 영업일 기준 이틀 안에 배송됩니다.",
    "세종대왕은 백성을 위하여 훈민정음을 창제하였다.",
    "제주도는 화산 활동으로 만들어진 섬이다.",
    "당뇨병 환자는 혈당을 규칙적으로 측정해야 한다.",
    "수술 후에는 충분한 휴식과 영양 섭취가 필요하다.",
    "인공지능 기술은 의료 영상 분석에 널리 쓰이고 있다.",
    "이 영화는 개봉 첫 주에 백만 명의 관객을 모았다.",
    "축구 대표팀은 평가전에서 두 골 차로 승리했다.",
    "지하철 2호선은 서울의 주요 지역을 순환한다.",
    "독감 예방 접종은 매년 가을에 받는 것이 좋다.",
    "갑상선 기능 저하증은 피로와 체중 증가를 일으킬 수 있다.",
    "만성 신부전 환자는 정기적으로 투석 치료를 받는다.",
    "아이들은 방학 동안 할머니 댁에서 지냈다.",
    "회의는 다음 주 화요일 오후 세 시에 열릴 예정이다.",
    "그 소설은 일제 강점기의 삶을 생생하게 그려 냈다.",
    "백두산은 한반도에서 가장 높은 산이다.",
    "심전도 검사에서 ST 분절 상승이 관찰되었다.",
    "복부 초음파에서 담낭 결석이 발견되었다.",
    "환자의 체온은 38.5도로 측정되었다.",
    "두통이 심하면 가까운 병원을 방문하십시오.",
    "이 지역은 여름에 비가 많이 내리고 겨울에는 건조하다.",
    "한국어는 교착어로서 조사와 어미가 발달하였다.",
    "고려청자는 비색으로 유명한 도자기이다.",
    "경제 성장률은 전년 대비 2퍼센트 증가했다.",
    "새로운 백신의 임상 시험 결과가 발표되었다.",
    "뇌졸중 초기 증상으로는 편측 마비와 언어 장애가 있다.",
    "철도는 도시와 도시를 잇는 중요한 교통수단이다.",
    "도서관은 평일 오전 아홉 시부터 오후 여섯 시까지 운영한다.",
    "이 알고리즘은 시간 복잡도가 낮아 대용량 데이터에 적합하다.",
    "천식은 기관지가 좁아져 호흡이 곤란해지는 질환이다.",
    "봄이 되면 여의도에는 벚꽃을 보러 온 사람들로 붐빈다.",
    "간 기능 검사에서 AST와 ALT 수치가 상승하였다.",
    "그는 은퇴한 뒤 고향으로 돌아가 농사를 지었다.",
    "우리 팀은 이번 분기 목표를 초과 달성했다.",
    "소아 환자의 약 용량은 체중에 따라 결정한다.",
]
NON_KOREAN_LINES = [
    "Copyright 2021 All rights reserved.",
    "ISBN 978-89-01-23456-7",
    "https://example.org/wiki",
    "1995 | 2003 | 2011",
]


def source_sentences(seed: int) -> list[str]:
    """Korean sentences from the user's sample corpora when present, else the built-in list."""
    from medtok_dagster.core.corpus import sample_corpus
    from medtok_dagster.core.text import has_hangul, split_sentences

    corpora = sorted(p for p in RAW_KOREAN.iterdir() if p.is_dir()) if RAW_KOREAN.is_dir() else []
    sentences: list[str] = []
    for corpus in corpora:
        lines = sample_corpus(corpus, 2_000, seed=seed, lenient=True).lines.to_pylist()
        sentences.extend(
            s for line in lines for s in split_sentences(line) if has_hangul(s) and len(s) >= 8
        )
    return sentences[:20_000] if len(sentences) >= 50 else BUILTIN_SENTENCES


def varied_line(rng: random.Random, sentences: list[str]) -> str:
    """Two to five recombined sentences, some with shuffled words or inserted numbers, so no two repeat."""
    parts = []
    for _ in range(rng.randint(2, 5)):
        words = rng.choice(sentences).split()
        if rng.random() < 0.3:
            rng.shuffle(words)
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), f"{rng.randint(1, 2024)}년")
        parts.append(" ".join(words))
    return " ".join(parts)


def varied_document(rng: random.Random, sentences: list[str]) -> str:
    """A document of paragraphs, with the blank and non-Korean lines real corpora have."""
    lines = []
    for _ in range(rng.randint(1, 10)):
        roll = rng.random()
        lines.append(
            ""
            if roll < 0.08
            else rng.choice(NON_KOREAN_LINES)
            if roll < 0.11
            else varied_line(rng, sentences)
        )
    return "\n".join(lines)


def write_corpora(root: Path, gigabytes: float, shard_mb: int, seed: int) -> dict[str, Path]:
    """Save the full-size corpus and its first half as two ``save_to_disk`` directories."""
    import datasets

    rng = random.Random(seed)
    sentences = source_sentences(seed)
    docs: list[str] = []
    total = 0
    while total < gigabytes * 1e9:
        doc = varied_document(rng, sentences)
        docs.append(doc)
        total += len(doc.encode("utf-8"))
    half = len(docs) // 2
    datasets.disable_progress_bars()
    out = {}
    for label, count in ((f"{gigabytes / 2:g}", half), (f"{gigabytes:g}", len(docs))):
        columns = {
            "id": list(range(count)),
            "url": [f"https://ko.example.org/{i}" for i in range(count)],
            "text": docs[:count],
        }
        out[label] = root / f"corpus_{label}gb"
        datasets.Dataset.from_dict(columns).save_to_disk(
            str(out[label]), max_shard_size=f"{shard_mb}MB"
        )
    return out


BASELINE_METHOD = "pyarrow IPC stream batches (memory-mapped) + to_pylist of the text column"
KERNEL_SCAN_METHOD = (
    "pyarrow IPC stream batches (memory-mapped) + pc.sum(pc.utf8_length(text column))"
)


def baseline_scan(corpus: Path) -> dict[str, Any]:
    """Memory-map each arrow shard, iterate batches, hand the text column to Python (``to_pylist``)."""
    import pyarrow as pa

    documents = 0
    for shard in sorted(corpus.glob("data-*.arrow")):
        with pa.memory_map(str(shard)) as source:
            for batch in pa.ipc.open_stream(source):
                documents += len(batch.column("text").to_pylist())
    return {"documents": documents}


def kernel_scan(corpus: Path) -> dict[str, Any]:
    """Memory-map each arrow shard, iterate batches, sum the UTF-8 length of the text column in Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chars = 0
    for shard in sorted(corpus.glob("data-*.arrow")):
        with pa.memory_map(str(shard)) as source:
            for batch in pa.ipc.open_stream(source):
                chars += pc.sum(pc.utf8_length(batch.column("text"))).as_py() or 0
    return {"chars": chars}


def sample_run(corpus: Path, n_lines: int, seed: int) -> dict[str, Any]:
    from medtok_dagster.core.corpus import sample_corpus

    sample = sample_corpus(corpus, n_lines, seed=seed)
    return {
        "lines_seen": sample.lines_seen,
        "sample_lines": len(sample.lines),
        "sample_type": f"{type(sample.lines).__name__}<{sample.lines.type}>",
        "sample_mb": round(sample.lines.nbytes / 1e6, 1),
        "shards": len(sample.shards),
    }


def child(kind: str, corpus: str, n_lines: int, seed: int, queue: Any) -> None:
    """One measurement in a fresh process: imports happen before the clock starts."""
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    import pyarrow  # noqa: F401

    import medtok_dagster.core.corpus  # noqa: F401

    runs = {
        "baseline": lambda: baseline_scan(Path(corpus)),
        "kernel_scan": lambda: kernel_scan(Path(corpus)),
        "sample": lambda: sample_run(Path(corpus), n_lines, seed),
    }
    start = time.perf_counter()
    result = runs[kind]()
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak_rss_mb()
    queue.put(result)


def peak_rss_mb() -> float:
    """This process's peak resident set: ``VmHWM`` on Linux, because ``ru_maxrss`` survives ``exec``
    and would report the parent's peak in a spawned child; ``ru_maxrss`` elsewhere."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, corpus: Path, n_lines: int, seed: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=child, args=(kind, str(corpus), n_lines, seed, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def corpus_bytes(corpus: Path) -> int:
    return sum(p.stat().st_size for p in corpus.glob("*.arrow"))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import pyarrow

    report: dict[str, Any] = {
        "machine": machine(pyarrow=pyarrow.__version__),
        "n_lines": args.n_lines,
        "seed": args.seed,
        "repeats": args.repeats,
        "baseline": BASELINE_METHOD,
        "arrow_kernel_scan": KERNEL_SCAN_METHOD,
    }
    root = Path(tempfile.mkdtemp(prefix="medtok-bench-", dir=args.tmp_dir))
    try:
        start = time.perf_counter()
        corpora = write_corpora(root, args.gb, args.shard_mb, args.seed)
        report["generate_s"] = round(time.perf_counter() - start, 1)
        print(f"corpora written in {report['generate_s']} s", file=sys.stderr)
        keys = (
            "corpus_bytes",
            "shards",
            "lines_seen",
            "sample_lines",
            "sample_type",
            "sample_mb",
            "baseline_mb_s",
            "sample_mb_s",
            "throughput_ratio",
            "arrow_kernel_scan_mb_s",
            "kernel_scan_ratio",
            "peak_rss_mb",
            "baseline_peak_rss_mb",
            "kernel_scan_peak_rss_mb",
            "baseline_seconds",
            "kernel_scan_seconds",
            "sample_seconds",
        )
        for key in keys:
            report[key] = {}
        for label, corpus in corpora.items():
            size = corpus_bytes(corpus)
            runs: dict[str, list[dict[str, Any]]] = {
                "baseline": [],
                "kernel_scan": [],
                "sample": [],
            }
            for _ in range(args.repeats):
                for kind in runs:
                    runs[kind].append(measure(kind, corpus, args.n_lines, args.seed))
                    print(f"{label} GB {kind}: {runs[kind][-1]}", file=sys.stderr)
            best = {kind: min(r["seconds"] for r in results) for kind, results in runs.items()}
            report["corpus_bytes"][label] = size
            for key in ("shards", "lines_seen", "sample_lines", "sample_type", "sample_mb"):
                report[key][label] = runs["sample"][0][key]
            report["baseline_mb_s"][label] = round(size / 1e6 / best["baseline"], 1)
            report["sample_mb_s"][label] = round(size / 1e6 / best["sample"], 1)
            report["throughput_ratio"][label] = round(best["baseline"] / best["sample"], 3)
            report["arrow_kernel_scan_mb_s"][label] = round(size / 1e6 / best["kernel_scan"], 1)
            report["kernel_scan_ratio"][label] = round(best["kernel_scan"] / best["sample"], 3)
            report["peak_rss_mb"][label] = round(max(r["peak_rss_mb"] for r in runs["sample"]), 1)
            report["baseline_peak_rss_mb"][label] = round(
                max(r["peak_rss_mb"] for r in runs["baseline"]), 1
            )
            report["kernel_scan_peak_rss_mb"][label] = round(
                max(r["peak_rss_mb"] for r in runs["kernel_scan"]), 1
            )
            for kind in runs:
                report[f"{kind}_seconds"][label] = [round(r["seconds"], 3) for r in runs[kind]]
        half, full = list(corpora)
        report["rss_growth_ratio"] = round(
            report["peak_rss_mb"][full] / report["peak_rss_mb"][half], 3
        )
        report["peak_rss_ok"] = max(report["peak_rss_mb"].values()) < PEAK_RSS_LIMIT_MB
        report["throughput_ok"] = min(report["throughput_ratio"].values()) >= THROUGHPUT_TARGET
        report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gb",
        type=float,
        default=1.0,
        help="size of the larger corpus; half of it is measured too",
    )
    parser.add_argument(
        "--n-lines", type=int, default=1_000_000, help="sample size passed to sample_corpus"
    )
    parser.add_argument(
        "--shard-mb", type=int, default=500, help="max_shard_size for save_to_disk (its default)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per measurement; the fastest counts"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tmp-dir", default=None, help="where to build the corpora (default: system temp)"
    )
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
