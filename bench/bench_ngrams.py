"""Benchmark: Hangul n-gram counting, the Python ``Counter`` oracle against the DuckDB implementation.

Run from the repository root::

    .venv/bin/python bench/bench_ngrams.py --mb 100

It builds ``--mb`` megabytes of Korean lines by recombining sentences (1–4 per line) taken from the
sample corpora under ``data/01_raw/00_korean/`` when any can be loaded with
``datasets.load_from_disk`` (every string column that contains Hangul), otherwise from a built-in
list, and writes them to a temporary zstd parquet file with a ``text`` column, the format of the
platform's corpus samples. Both implementations then start from that file:

* ``python``: read the column into Python strings and run ``count_hangul_ngrams_python``;
* ``duckdb``: ``count_hangul_ngrams(path)``.

The two alternate ``--repeats`` times and the fastest run of each counts, because the machine may
be shared; every run is listed under ``runs`` with its wall and CPU seconds (DuckDB's threads
included), and the load average before and after is recorded. ``identical_counts`` is true when the two frames
are equal, row for row. One JSON object goes to stdout, progress to stderr. Target: ``speedup``
(python / duckdb) >= 10.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _machine import machine  # noqa: E402

from medtok_dagster.core.text import has_hangul, split_sentences  # noqa: E402
from medtok_dagster.core.vocab import count_hangul_ngrams, count_hangul_ngrams_python  # noqa: E402

RAW_KOREAN = REPO / "data" / "01_raw" / "00_korean"
SPEEDUP_TARGET = 10.0
MAX_SENTENCES = 200_000
PROBE_ROWS = 100

BUILTIN_SENTENCES = [
    "당뇨병 환자는 혈당을 정기적으로 측정해야 합니다.",
    "고혈압은 심혈관 질환의 주요 위험 인자입니다.",
    "급성 심근경색이 의심되면 즉시 심전도 검사를 시행한다.",
    "만성 신부전 환자에서 빈혈이 흔히 동반된다.",
    "폐렴의 가장 흔한 원인균은 폐렴구균이다.",
    "갑상선기능항진증 환자는 체중 감소와 빈맥을 호소한다.",
    "위식도역류질환의 치료에는 양성자펌프억제제가 사용된다.",
    "뇌졸중 발생 후 세 시간 이내에 혈전용해제를 투여할 수 있다.",
    "소아의 열성 경련은 대개 양호한 경과를 보인다.",
    "항생제 내성균 감염은 병원 내 감염의 중요한 문제이다.",
    "간경변증 환자는 식도정맥류 출혈의 위험이 높다.",
    "천식 발작 시 흡입용 기관지확장제를 우선 사용한다.",
    "류마티스관절염은 대칭적인 다발성 관절염으로 나타난다.",
    "골다공증은 폐경 후 여성에서 흔하게 발생한다.",
    "패혈증 환자에게는 조기에 수액과 항생제를 투여해야 한다.",
    "임신성 당뇨병은 출산 후 대부분 정상으로 회복된다.",
    "만성 폐쇄성 폐질환의 가장 중요한 원인은 흡연이다.",
    "신증후군은 단백뇨와 부종, 저알부민혈증을 특징으로 한다.",
    "급성 충수염은 우하복부 통증으로 시작하는 경우가 많다.",
    "결핵 치료는 최소 육 개월 이상 약물을 복용해야 한다.",
    "오늘은 날씨가 맑고 바람이 조금 불었다.",
    "우리는 주말에 가족과 함께 공원에 산책을 갔다.",
    "서울은 대한민국의 수도이며 인구가 가장 많은 도시이다.",
    "도서관에서 새로 나온 소설책을 빌려 읽었다.",
    "회의는 오후 세 시에 본관 대회의실에서 열린다.",
    "학생들은 시험 기간에 늦게까지 공부하는 경우가 많다.",
    "그 영화는 개봉 첫 주에 많은 관객을 모았다.",
    "경제 성장률이 예상보다 낮게 발표되었다.",
    "지하철 이호선은 출퇴근 시간에 매우 혼잡하다.",
    "새로운 정책은 다음 달부터 시행될 예정이다.",
    "환자의 활력징후는 혈압, 맥박, 호흡수, 체온을 포함한다.",
    "수술 전에는 금식 여부와 복용 중인 약물을 확인한다.",
    "간호사는 투약 전 환자 확인을 두 가지 방법으로 시행한다.",
    "인슐린 주사 부위는 매번 바꾸어 지방이영양증을 예방한다.",
    "저혈당 증상으로는 식은땀, 떨림, 의식 저하가 있다.",
    "심방세동 환자는 뇌경색 예방을 위해 항응고제를 복용한다.",
    "요로감염은 여성에서 남성보다 훨씬 흔하다.",
    "빈혈의 원인을 찾기 위해 말초혈액도말 검사를 시행한다.",
    "아토피피부염은 소아기에 흔한 만성 염증성 피부질환이다.",
    "편두통은 박동성 두통과 오심, 구토를 동반할 수 있다.",
    "코로나바이러스감염증(COVID-19)은 호흡기를 통해 전파된다.",
    "예방접종은 감염병을 예방하는 가장 효과적인 방법이다.",
    "치매 환자의 가족은 돌봄 부담을 크게 느낀다.",
    "우울증은 적절한 치료를 받으면 호전될 수 있다.",
    "비만은 당뇨병과 고혈압의 발생 위험을 높인다.",
    "규칙적인 운동은 심혈관 건강에 도움이 된다.",
    "염분 섭취를 줄이면 혈압을 낮추는 데 효과가 있다.",
    "대장내시경은 대장암 조기 발견에 유용하다.",
    "유방암 검진은 40세 이상 여성에게 권고된다.",
    "전립선비대증은 노년 남성에서 배뇨 곤란을 일으킨다.",
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _hangul_columns(dataset: Any) -> list[str]:
    """String columns whose first rows contain Hangul: the text of a corpus, whatever it is called."""
    probe = dataset.select(range(min(PROBE_ROWS, len(dataset))))
    return [
        name
        for name, feature in dataset.features.items()
        if getattr(feature, "dtype", None) in ("string", "large_string")
        and any(isinstance(v, str) and has_hangul(v) for v in probe[name])
    ]


def corpus_sentences(root: Path, limit: int) -> list[str]:
    """Hangul sentences from every ``save_to_disk`` corpus under ``root`` (all splits), at most ``limit``."""
    if not root.is_dir():
        return []
    from datasets import DatasetDict, load_from_disk

    sentences: list[str] = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            loaded = load_from_disk(str(directory))
        except (FileNotFoundError, ValueError) as exc:
            log(f"skipping {directory.name}: {exc}")
            continue
        splits = list(loaded.values()) if isinstance(loaded, DatasetDict) else [loaded]
        for split in splits:
            for column in _hangul_columns(split):
                for text in split[column]:
                    sentences.extend(s for s in split_sentences(text or "") if has_hangul(s))
                    if len(sentences) >= limit:
                        return sentences[:limit]
    return sentences


def build_lines(sentences: list[str], megabytes: float, seed: int) -> list[str]:
    """Lines of 1–4 random sentences until their UTF-8 size reaches ``megabytes``."""
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    lines: list[str] = []
    size = 0
    while size < target:
        line = " ".join(rng.choices(sentences, k=rng.randint(1, 4)))
        lines.append(line)
        size += len(line.encode("utf-8"))
    return lines


def run_python(path: Path) -> pd.DataFrame:
    lines = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    return count_hangul_ngrams_python(lines)


def cpu_seconds() -> float:
    """User + system time of this process, DuckDB's worker threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn: Callable[[], pd.DataFrame]) -> tuple[dict[str, float], pd.DataFrame]:
    """Wall and CPU seconds of one run: on a shared machine the CPU time shows the work itself."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    frame = fn()
    return {
        "wall_s": round(time.perf_counter() - wall, 3),
        "cpu_s": round(cpu_seconds() - cpu, 3),
    }, frame


def frames_identical(left: pd.DataFrame, right: pd.DataFrame) -> bool:
    try:
        pd.testing.assert_frame_equal(left, right)
    except AssertionError as exc:
        log(f"frames differ: {exc}")
        return False
    return True


def write_corpus(path: Path, megabytes: float, seed: int) -> dict[str, Any]:
    """Write the benchmark corpus as a zstd parquet ``text`` column and describe it."""
    sentences = corpus_sentences(RAW_KOREAN, MAX_SENTENCES)
    source = (
        f"{RAW_KOREAN.relative_to(REPO)} ({len(sentences)} sentences)"
        if sentences
        else f"built-in ({len(BUILTIN_SENTENCES)} sentences)"
    )
    lines = build_lines(sentences or BUILTIN_SENTENCES, megabytes, seed)
    pq.write_table(pa.table({"text": pa.array(lines, pa.large_string())}), path, compression="zstd")
    text_mb = sum(len(line.encode("utf-8")) for line in lines) / 1e6
    log(f"{len(lines):,} lines, {text_mb:.1f} MB from {source}")
    return {"text_mb": round(text_mb, 1), "lines": len(lines), "source": source}


def measure(
    path: Path, repeats: int
) -> tuple[dict[str, list[dict[str, float]]], dict[str, pd.DataFrame]]:
    """Alternate the two implementations ``repeats`` times; return every run and the last frames."""
    runs: dict[str, list[dict[str, float]]] = {"python": [], "duckdb": []}
    frames: dict[str, pd.DataFrame] = {}
    for repeat in range(repeats):
        for name, fn in (
            ("python", lambda: run_python(path)),
            ("duckdb", lambda: count_hangul_ngrams(path)),
        ):
            run, frames[name] = timed(fn)
            runs[name].append(run)
            log(
                f"run {repeat + 1}/{repeats} {name}: {run['wall_s']:.2f} s wall, {run['cpu_s']:.2f} s CPU"
            )
    return runs, frames


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mb", type=float, default=100.0, help="megabytes of Korean text to build (default 100)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each implementation, alternating; the fastest counts",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    info = machine(duckdb=duckdb.__version__)
    with tempfile.TemporaryDirectory(prefix="bench-ngrams-") as tmp:
        path = Path(tmp) / "lines.parquet"
        corpus = write_corpus(path, args.mb, args.seed)
        runs, frames = measure(path, args.repeats)
    python_s, duckdb_s = (min(run["wall_s"] for run in runs[name]) for name in ("python", "duckdb"))
    report = {
        **corpus,
        "ngrams": len(frames["duckdb"]),
        "ngram_occurrences": int(frames["duckdb"]["count"].sum()),
        "identical_counts": frames_identical(frames["python"], frames["duckdb"]),
        "python_s": round(python_s, 2),
        "duckdb_s": round(duckdb_s, 2),
        "speedup": round(python_s / duckdb_s, 1),
        "meets_target": python_s / duckdb_s >= SPEEDUP_TARGET,
        "runs": runs,
        "machine": {**info, "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(report, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
