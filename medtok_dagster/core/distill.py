"""Distillation initialisation: learn new rows so the frozen model reads and predicts as it did on the pieces.

A new token replaces a run of base tokens (its *pieces*). Mean-style inits leave two gaps, and both
cost bits on held-out text:

* **Input side.** The layers build a word's representation from its pieces over several positions;
  one averaged vector is not read the same way, so the token *after* a new token is mispredicted.
  Following Token Distillation (Dobler, Elliott and de Melo), each new row is learned so that the
  frozen model's final hidden states on text that uses the new token match the hidden states it
  produces on the same text spelled with the pieces (at the new token: those after its last piece).
* **Output side.** Gemma ties its output projection to the input embeddings, so a new row is also
  the vector that predicts the token. Its probability should be what the base model gives the whole
  piece sequence: ``log q(t | context) = Σ log p(piece_i | context, pieces_<i)``. The teacher's hidden
  state before the pieces and its log-normaliser over the base vocabulary are fixed, so this target
  costs no forward pass once the teacher has run.

Both objectives are learned for all new rows at once (one optimiser over one matrix, batches of
contexts, no loop per token), either on one tied row (``tied``) or with separate output rows for the
new tokens only (``untied``: the output row learns the output objective, the input row the input
one). Contexts come from the training corpora only. Optimiser state and rows are checkpointed, so a
killed run resumes where it stopped.

A window is either *isolated* (only the occurrence it was chosen for is a new token in the student;
the other new tokens in it are spelled with their pieces on both sides, so its error is that token's
alone) or *shared* (every new token in it is learned from it: fewer windows, but each row's gradient
carries its neighbours' errors). Rows distillation does not reach get ``subtoken_mean`` plus the
change a ridge map predicts from their pieces (:mod:`medtok_dagster.core.fallback_rows`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medtok_dagster.core.base_model import BaseModelError, check_safetensors
from medtok_dagster.core.fallback_rows import FallbackFit, piece_features, predict_fallback
from medtok_dagster.core.io import InputError, atomic_dir, read_json
from medtok_dagster.core.lm_metrics import bos_id, encode_plain, model_device, pad_id
from medtok_dagster.core.text import WORD_BOUNDARY

MODES = ("tied", "untied")
ROWS_FILE = "distilled_rows.safetensors"
IDS_FILE = "distilled_ids.json"
CHECKPOINT_ROWS_FILE = "rows.safetensors"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TEACHER_CACHE_MB = 2048
"""Default host budget (MB) for the teacher's hidden states; see :attr:`DistillConfig.teacher_cache_mb`."""


@dataclass(frozen=True)
class DistillConfig:
    """How much distillation to do; the defaults are the full (GPU) setting."""

    mode: str = "tied"
    max_tokens: int = 0
    """Distil the this-many new tokens with the most occurrences in the training corpora; 0 = all."""
    contexts_per_token: int = 24
    context_before: int = 24
    """Extended-tokenizer tokens of text kept before an occurrence (the window's context)."""
    context_after: int = 8
    """Tokens kept after an occurrence: the positions whose hidden states are matched."""
    epochs: float = 2.0
    batch_size: int = 16
    learning_rate: float = 2e-3
    output_weight: float = 0.0
    """Weight of the output-side loss (against the pieces' joint probability); untied output rows stay put at 0."""
    keep_output: float = 0.9
    """Tied rows: freeze the directions holding this share of the teacher's final hidden-state energy (0 = off).

    The output layer reads a row through those hidden states, so moving a tied row only orthogonally
    to them changes how the token is read but hardly how it is predicted."""
    isolate: bool = False
    """Each window learns only the occurrence it was chosen for; other new tokens in it are spelled
    with their pieces (a clean error per token, but more windows for the same coverage: measured worse
    per CPU second, README). Off: a window learns every new token in it."""
    min_contexts: int = 4
    """A row learned from fewer windows than this is not kept (it overfits them; README): it gets the fallback."""
    predict_fallback: bool = True
    """Rows distillation did not reach get ``subtoken_mean`` + a change predicted from the distilled ones."""
    checkpoint_every: int = 20
    seed: int = 0
    teacher_cache_mb: int = TEACHER_CACHE_MB
    """Host memory (MB) the teacher's hidden states may take; beyond it each batch recomputes them.

    The input loss compares the student with them at every step, and kept they grow with the data
    (40 GB at MedGemma 4B with every one of 10,000 tokens, docs/memory.md). Over this budget the
    frozen teacher runs again on each batch instead (no gradient): one more forward pass per step
    (measured 1.5× the time per step on a CPU), no host memory. The rows learned are the same
    either way, up to float rounding."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown distillation mode {self.mode!r}; choose one of {MODES}")

    def key(self) -> str:
        """A short hash of every setting that changes the rows: a checkpoint made with others is not resumed.

        Where the teacher's states live (``teacher_cache_mb``) changes nothing learned, so a run
        resumed with another budget continues its checkpoint.
        """
        settings = asdict(self)
        del settings["teacher_cache_mb"]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Context:
    """One training window: student ids (with new tokens), teacher ids (pieces), and their alignment.

    ``aligned[j]`` is the teacher position whose hidden state student position ``j`` should have:
    the same token, or for a new token the last of its pieces. ``targets`` lists the student
    positions followed by a new token, with that token's row index and its pieces' teacher positions.
    """

    student: list[int]
    teacher: list[int]
    aligned: list[int]
    first_new: int
    targets: list[tuple[int, int, list[int]]]


@dataclass
class Plan:
    """Which rows are distilled, from which contexts, and the coverage that results."""

    contexts: list[Context]
    occurrences: Counter
    distilled: set[int]
    selected: list[int]

    def fallback(self, new_ids: Sequence[int]) -> list[int]:
        """New ids that no context reaches: they keep their starting (heuristic) row."""
        return [i for i in new_ids if i not in self.distilled]


def pieces_of(tokens: Sequence[str], base_tokenizer: Any) -> list[list[int]]:
    """Each new token's base ids: its string (``▁`` read as a space) in the base tokenizer."""
    return encode_plain(base_tokenizer, [t.replace(WORD_BOUNDARY, " ") for t in tokens])


def piece_map(
    tokenizer: Any, base_tokenizer: Any, new_ids: Sequence[int], base_len: int
) -> dict[int, list[int]]:
    """Each new id's pieces: the base ids its string is spelled with."""
    return {
        i: [p for p in ids if p < base_len]
        for i, ids in zip(
            new_ids, pieces_of(tokenizer.convert_ids_to_tokens(list(new_ids)), base_tokenizer)
        )
    }


def count_occurrences(encoded: Sequence[Sequence[int]], base_len: int) -> Counter:
    """How often each new id occurs in the (extended-tokenizer) training lines."""
    counts: Counter = Counter()
    for ids in encoded:
        counts.update(i for i in ids if i >= base_len)
    return counts


def coverage(
    tokenizer: Any, base_len: int, distilled: set[int], texts: Sequence[str]
) -> tuple[float, int]:
    """Share of new-token occurrences in ``texts`` whose rows were distilled, and the occurrence count.

    On held-out text this says how much of what a reader meets the learned rows carry; the rest
    is read through the fallback rows.
    """
    counts = count_occurrences(encode_plain(tokenizer, list(texts)), base_len)
    total = sum(counts.values())
    return (sum(n for i, n in counts.items() if i in distilled) / total if total else 0.0), total


def _window(line: Sequence[int], position: int, before: int, after: int) -> tuple[int, int]:
    return max(position - before, 0), min(position + after + 1, len(line))


def build_context(
    ids: Sequence[int],
    bos: int,
    base_len: int,
    pieces: dict[int, list[int]],
    keep: int | None = None,
) -> Context | None:
    """Student and teacher sequences for one window of extended ids (both start with ``<bos>``).

    With ``keep`` (an index into ``ids``) only that occurrence stays a new token in the student;
    every other new token is spelled with its pieces on both sides, so the window's hidden-state
    error is the kept token's alone. Without it every new token in the window is learned at once.
    """
    student, teacher, aligned = [bos], [bos], [0]
    targets = []
    for index, token in enumerate(ids):
        is_new = token >= base_len
        spelled = pieces[token] if is_new else [token]
        if is_new and (keep is None or index == keep):
            run = list(range(len(teacher), len(teacher) + len(spelled)))
            targets.append((len(student) - 1, token - base_len, run))
            student.append(token)
            teacher.extend(spelled)
            aligned.append(len(teacher) - 1)
            continue
        for piece in spelled:
            student.append(piece)
            teacher.append(piece)
            aligned.append(len(teacher) - 1)
    if not targets:
        return None
    return Context(student, teacher, aligned, targets[0][0] + 1, targets)


def plan_contexts(
    encoded: Sequence[Sequence[int]],
    new_ids: Sequence[int],
    pieces: dict[int, list[int]],
    base_len: int,
    bos: int,
    config: DistillConfig,
) -> Plan:
    """Choose windows so that each selected token appears in up to ``contexts_per_token`` of them.

    Rare tokens pick their windows first; a shared window counts for every new token inside it, so
    frequent tokens are mostly covered by other tokens' windows and no compute is spent twice. A
    token counts as distilled only if at least ``min_contexts`` windows teach it.
    """
    occurrences = count_occurrences(encoded, base_len)
    ranked = sorted(
        (i for i in new_ids if occurrences[i] and pieces.get(i)), key=lambda i: (-occurrences[i], i)
    )
    selected = ranked[: config.max_tokens] if config.max_tokens else ranked
    where: dict[int, list[tuple[int, int]]] = {i: [] for i in selected}
    for line_no, ids in enumerate(encoded):
        for position, token in enumerate(ids):
            if token in where:
                where[token].append((line_no, position))
    rng = random.Random(config.seed)
    covered: Counter = Counter()
    contexts: list[Context] = []
    seen: set[tuple[int, int, int, int]] = set()
    for token in sorted(selected, key=lambda i: (occurrences[i], i)):
        spots = where[token][:]
        rng.shuffle(spots)
        for line_no, position in spots:
            if covered[token] >= config.contexts_per_token:
                break
            start, end = _window(
                encoded[line_no], position, config.context_before, config.context_after
            )
            window = (line_no, start, end, token if config.isolate else -1)
            if window in seen:
                continue
            seen.add(window)
            context = build_context(
                encoded[line_no][start:end],
                bos,
                base_len,
                pieces,
                keep=position - start if config.isolate else None,
            )
            if context is None:
                continue
            contexts.append(context)
            covered.update({t + base_len for _, t, _ in context.targets})
    rng.shuffle(contexts)
    learned = {token for token, windows in covered.items() if windows >= config.min_contexts}
    return Plan(contexts, occurrences, learned, selected)


def decoder_of(model: Any) -> Any:
    """The text decoder (final hidden states after the last norm): Gemma 3 text or image-text alike."""
    decoder = model.get_decoder()
    return getattr(decoder, "language_model", decoder)


def softcap_of(model: Any) -> float | None:
    """The final logit soft-cap, if the model has one (Gemma 2 does; Gemma 3 sets none)."""
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    return getattr(config, "final_logit_softcapping", None)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap · tanh(logits / cap)``, as the model applies it to its logits; unchanged without a cap."""
    return torch.tanh(logits / cap) * cap if cap else logits


@dataclass
class TeacherTargets:
    """What the frozen model does on the piece spelling, kept for the student to match.

    ``hidden[c]`` holds the teacher's final hidden states of context ``c`` at the student positions
    the losses read: from ``first_new - lead`` to the end, where ``lead`` is 1 with the output
    objective (its first entry is the position that predicts the first new token) and 0 without.
    They are bfloat16 on the host and grow with the data (windows × positions × width), so they are
    kept only within ``DistillConfig.teacher_cache_mb``; beyond it ``hidden`` is None and each batch
    runs the teacher again (:func:`batch_states`). ``gram`` is ``Σ hᵀh`` over the ``count`` states
    at every student position (float64, on the model's device): the projector needs only this
    width × width sum, never the states stacked together. The output entries cover every student
    position from the one that predicts the first new token on: its context, its index in the
    context's kept states (``position``), the teacher's log-normaliser over the base vocabulary
    there, and, where the next student token is new, that token's row and its pieces' joint
    log-probability (``next_row`` is -1 where the next token is a base token).
    """

    hidden: list[torch.Tensor] | None
    lead: int
    scale: float
    gram: torch.Tensor
    count: int
    context: torch.Tensor
    position: torch.Tensor
    lse: torch.Tensor
    next_row: torch.Tensor
    logp: torch.Tensor


def _padded(
    sequences: Sequence[Sequence[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(s) for s in sequences)
    ids = torch.tensor([list(s) + [pad] * (longest - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (longest - len(s)) for s in sequences], device=device)
    return ids, mask


def autocast(device: torch.device) -> Any:
    """bfloat16 compute where the hardware has it (rows and losses stay float32); a no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(
        "cpu", dtype=torch.bfloat16, enabled=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


@dataclass
class _Entries:
    """Output entries of one teacher batch, before they are flattened into :class:`TeacherTargets`."""

    rows: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    pieces: list[int] = field(default_factory=list)


@dataclass
class _Outputs:
    """The flat output entries of :class:`TeacherTargets`, gathered over every teacher batch."""

    context: list[int] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    next_row: list[int] = field(default_factory=list)


def teacher_forward(model: Any, batch: Sequence[Context], pad: int) -> torch.Tensor:
    """The frozen model's final hidden states on ``batch`` spelled with pieces (batch × longest × width)."""
    device = model_device(model)
    ids, mask = _padded([c.teacher for c in batch], pad, device)
    with autocast(device):
        return decoder_of(model)(
            input_ids=ids, attention_mask=mask, use_cache=False
        ).last_hidden_state


def kept_states(states: torch.Tensor, batch: Sequence[Context], lead: int) -> list[torch.Tensor]:
    """Each context's teacher states (bfloat16) at the student positions from ``first_new - lead`` on.

    Only these are read: the input loss from the first new token on, the output loss from the
    position before it. The window's context before them serves the teacher alone.
    """
    return [
        states[row, context.aligned[context.first_new - lead :]].to(torch.bfloat16)
        for row, context in enumerate(batch)
    ]


def cache_bytes(contexts: Sequence[Context], lead: int, width: int) -> int:
    """Bytes the kept teacher states of ``contexts`` take in bfloat16 (what the host cache would hold)."""
    return sum(len(c.student) - c.first_new + lead for c in contexts) * width * 2


@torch.no_grad()
def batch_states(
    model: Any,
    contexts: Sequence[Context],
    indices: Sequence[int],
    targets: TeacherTargets,
    pad: int,
) -> dict[int, torch.Tensor]:
    """The kept teacher states of the contexts ``indices``, on the model's device.

    Moved from the host cache where the states fit it; otherwise the frozen teacher runs on the
    batch's piece spelling again, which costs a forward pass but no memory that grows with the data.
    """
    device = model_device(model)
    if targets.hidden is not None:
        return {index: targets.hidden[index].to(device) for index in indices}
    batch = [contexts[i] for i in indices]
    return dict(zip(indices, kept_states(teacher_forward(model, batch, pad), batch, targets.lead)))


def _add_entries(
    row: int, context: Context, index: int, normaliser: _Entries, joint: _Entries, out: _Outputs
) -> None:
    """The output entries of context ``index`` (batch row ``row``) from the first prediction of a new token on.

    Each entry gets a log-normaliser term and, where a new token follows, one joint term per
    piece (pointing back at the entry). Its ``position`` indexes the context's kept states, which
    start (``lead`` = 1) at the position that predicts the first new token.
    """
    next_new = {position: (new_row, pieces) for position, new_row, pieces in context.targets}
    first = context.first_new - 1
    for position in range(first, len(context.student) - 1):
        normaliser.rows.append(row)
        normaliser.positions.append(context.aligned[position])
        out.context.append(index)
        out.position.append(position - first)
        new_row, piece_positions = next_new.get(position, (-1, []))
        out.next_row.append(new_row)
        for predictor, piece in zip(
            [context.aligned[position], *piece_positions[:-1]], piece_positions
        ):
            joint.rows.append(row)
            joint.positions.append(predictor)
            joint.owner.append(len(out.next_row) - 1)
            joint.pieces.append(context.teacher[piece])


@torch.no_grad()
def teacher_targets(
    model: Any,
    contexts: Sequence[Context],
    base_len: int,
    pad: int,
    batch_size: int,
    with_output: bool = True,
    cache_mb: int = TEACHER_CACHE_MB,
) -> TeacherTargets:
    """Run the frozen model once over every context spelled with pieces (base vocabulary only).

    Logits are computed only at the positions that matter: the aligned positions from the first
    prediction of a new token on (for the log-normaliser) and the positions inside each piece run
    (for the joint log-probability). Without the output objective only hidden states are used,
    which saves the output layer's cost (most of a small model's forward pass). The states the
    losses read are kept on the host when they fit ``cache_mb``; the Gram and the output entries
    are gathered in this pass either way, since the projector is needed before the first step.
    """
    device = model_device(model)
    head = model.get_output_embeddings().weight[:base_len]
    cap = softcap_of(model)
    lead = int(with_output)
    cached = cache_bytes(contexts, lead, head.shape[1]) <= cache_mb * 10**6
    entries, lse_of, logp_of = _Outputs(), [], []
    hidden_of: dict[int, torch.Tensor] = {}
    gram = torch.zeros(head.shape[1], head.shape[1], dtype=torch.float64, device=device)
    for indices in length_batches([len(c.teacher) for c in contexts], batch_size):
        batch = [contexts[i] for i in indices]
        states = teacher_forward(model, batch, pad)
        gram += _gram(
            torch.cat([states[row, c.aligned] for row, c in enumerate(batch)]).to(torch.bfloat16)
        )
        if cached:
            hidden_of.update(zip(indices, (h.cpu() for h in kept_states(states, batch, lead))))
        if not with_output:
            continue
        normaliser, joint = _Entries(), _Entries()
        for row, (index, context) in enumerate(zip(indices, batch)):
            _add_entries(row, context, index, normaliser, joint, entries)
        lse_of.extend(_logsumexp(states, normaliser, head, cap).tolist())
        logp_of.extend(_piece_logprobs(states, joint, head, cap))
    logp = torch.zeros(len(entries.next_row), dtype=torch.float64)
    for index, value in logp_of:
        logp[index] += value
    count = sum(len(c.aligned) for c in contexts)
    return TeacherTargets(
        [hidden_of[i] for i in range(len(contexts))] if cached else None,
        lead,
        float(torch.trace(gram)) / count,
        gram,
        count,
        torch.tensor(entries.context, dtype=torch.long),
        torch.tensor(entries.position, dtype=torch.long),
        torch.tensor(lse_of, dtype=torch.float32),
        torch.tensor(entries.next_row, dtype=torch.long),
        logp.float(),
    )


def _gram(states: torch.Tensor) -> torch.Tensor:
    """``hᵀh`` of one batch's hidden states: a float32 product (fast on any accelerator), summed in float64."""
    states = states.float()
    return (states.T @ states).double()


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random | None = None
) -> list[list[int]]:
    """Indices grouped into batches of similar length, in random order when ``rng`` is given.

    A batch is padded to its longest sequence, and padding is computed like text: random batches
    of the demo's windows cost 1.39× (student) and 1.56× (teacher) the unpadded tokens, sorted ones
    1.01×, so distillation runs 1.34× faster (README). Ties are broken at random, so each epoch
    groups the windows differently.
    """
    jitter = rng or random.Random(0)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], jitter.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        rng.shuffle(batches)
    return batches


def _logits(
    states: torch.Tensor, entries: _Entries, head: torch.Tensor, cap: float | None
) -> torch.Tensor:
    device = states.device
    picked = states[
        torch.tensor(entries.rows, device=device), torch.tensor(entries.positions, device=device)
    ]
    with autocast(device):
        logits = picked @ head.T
    return softcap(logits.float(), cap)


def _logsumexp(
    states: torch.Tensor, entries: _Entries, head: torch.Tensor, cap: float | None
) -> torch.Tensor:
    """The base vocabulary's log-normaliser at each entry's position."""
    return torch.logsumexp(_logits(states, entries, head, cap), dim=-1).cpu()


def _piece_logprobs(
    states: torch.Tensor, entries: _Entries, head: torch.Tensor, cap: float | None
) -> list[tuple[int, float]]:
    """``(entry, log p(piece))`` for every piece of every new token (summed per entry by the caller)."""
    if not entries.rows:
        return []
    logits = _logits(states, entries, head, cap)
    pieces = torch.tensor(entries.pieces, device=logits.device)
    logprobs = logits.gather(-1, pieces[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return list(zip(entries.owner, logprobs.double().cpu().tolist()))


def output_loss(
    rows: torch.Tensor,
    targets: TeacherTargets,
    teacher: dict[int, torch.Tensor],
    select: torch.Tensor,
    cap: float | None,
) -> torch.Tensor:
    """Cross-entropy of the extended output layer against the teacher, learned by the new rows only.

    At each position the target distribution is the teacher's: the spelled new token gets its
    pieces' joint probability ``P`` and the base vocabulary keeps its own (frozen) logits, so the
    loss reduces to ``logsumexp(all logits) - P * z_new`` up to a constant. Every position is thus a
    negative for every new token that does not follow there, and a new token that does follow is
    pulled towards ``P``, not towards certainty. ``teacher`` holds the kept states
    (:func:`batch_states`) of every context the entries ``select`` belong to.
    """
    hidden = torch.stack(
        [
            teacher[c][p]
            for c, p in zip(targets.context[select].tolist(), targets.position[select].tolist())
        ]
    )
    z = softcap(hidden.float() @ rows.float().T, cap)
    lse = targets.lse[select].to(rows.device)
    total = torch.logaddexp(lse, torch.logsumexp(z, dim=-1))
    next_row = targets.next_row[select].to(rows.device)
    has_new = next_row >= 0
    target_logit = torch.where(
        has_new, z.gather(-1, next_row.clamp(min=0)[:, None]).squeeze(-1), lse
    )
    probability = torch.where(
        has_new, targets.logp[select].to(rows.device).exp(), torch.zeros_like(lse)
    )
    return (total - lse - probability * (target_logit - lse)).mean()


def output_preserving_projector(
    targets: TeacherTargets, share: float, device: torch.device
) -> torch.Tensor | None:
    """``I - U Uᵀ`` for the top principal directions ``U`` of the teacher's final hidden states.

    Those directions carry ``share`` of the hidden states' energy; a row change projected onto the
    rest barely moves any logit ``h · row``, so a tied row keeps its calibrated output while its
    input side is learned. ``None`` when ``share`` is 0. Built from ``targets.gram`` alone, so its
    memory is width × width whatever the number of windows.
    """
    if share <= 0:
        return None
    second_moment = (targets.gram / targets.count).to(device, torch.float32)
    eigenvalues, eigenvectors = torch.linalg.eigh(second_moment)
    order = torch.argsort(eigenvalues, descending=True)
    energy = torch.cumsum(eigenvalues[order], 0) / eigenvalues.sum()
    kept = int(torch.searchsorted(energy, torch.tensor(share, device=device))) + 1
    top = eigenvectors[:, order[:kept]]
    return torch.eye(second_moment.shape[0], device=device) - top @ top.T


def input_embeds(model: Any, ids: torch.Tensor, rows: torch.Tensor, base_len: int) -> torch.Tensor:
    """Input embeddings with the new positions read from ``rows`` (which carry the gradient)."""
    embedding = model.get_input_embeddings()
    is_new = ids >= base_len
    base = embedding(ids.masked_fill(is_new, 0))
    scale = getattr(embedding, "embed_scale", 1.0)
    new = torch.nn.functional.embedding((ids - base_len).clamp(min=0), rows) * scale
    return torch.where(is_new[..., None], new.to(base.dtype), base)


def input_loss(
    model: Any,
    contexts: Sequence[Context],
    indices: Sequence[int],
    rows: torch.Tensor,
    targets: TeacherTargets,
    teacher: dict[int, torch.Tensor],
    base_len: int,
    pad: int,
) -> torch.Tensor:
    """Normalised squared distance of the student's final hidden states to the teacher's, from the first new token on.

    ``teacher`` holds the contexts' kept states (:func:`batch_states`), on the model's device.
    """
    device = model_device(model)
    batch = [contexts[i] for i in indices]
    ids, mask = _padded([c.student for c in batch], pad, device)
    with autocast(device):
        states = decoder_of(model)(
            inputs_embeds=input_embeds(model, ids, rows, base_len),
            attention_mask=mask,
            use_cache=False,
        ).last_hidden_state
    errors = []
    for row, (index, context) in enumerate(zip(indices, batch)):
        span = slice(context.first_new, len(context.student))
        matched = teacher[index][targets.lead :].float()
        errors.append((states[row, span].float() - matched).pow(2).sum(-1))
    return torch.cat(errors).mean() / targets.scale


@dataclass
class DistillResult:
    """Learned rows (input, and output if untied), which ids they cover, and how the losses moved."""

    input_rows: torch.Tensor
    output_rows: torch.Tensor | None
    distilled: list[int]
    fallback: list[int]
    selected: list[int]
    contexts: int
    steps: int
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    fallback_fit: FallbackFit | None = None

    def fallback_rule(self) -> str:
        """What the rows distillation did not reach hold (for metadata and the saved ids)."""
        return self.fallback_fit.describe() if self.fallback_fit else "subtoken_mean"


def _save_checkpoint(
    directory: Path,
    rows: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Rows, Adam moments and the step, written atomically (safetensors + JSON, never pickle)."""
    from safetensors.torch import save_file

    moments = {}
    for group_index, group in enumerate(optimizer.param_groups):
        for param_index, param in enumerate(group["params"]):
            for name, value in optimizer.state.get(param, {}).items():
                tensor = value if torch.is_tensor(value) else torch.tensor(value)
                moments[f"{group_index}.{param_index}.{name}"] = tensor.detach().cpu().contiguous()
    with atomic_dir(directory) as staging:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in rows.items()},
            str(staging / CHECKPOINT_ROWS_FILE),
        )
        save_file(moments, str(staging / OPTIMIZER_FILE))
        (staging / STATE_FILE).write_text(json.dumps(state))


def _load_checkpoint(
    directory: Path, key: str, rows: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """Restore rows and Adam moments if ``directory`` holds a checkpoint of these exact settings."""
    from safetensors.torch import load_file

    if not (directory / STATE_FILE).exists():
        return None
    state = read_json(directory / STATE_FILE)
    if state.get("key") != key:
        return None
    saved = load_file(str(directory / CHECKPOINT_ROWS_FILE))
    with torch.no_grad():
        for name, tensor in rows.items():
            tensor.copy_(saved[name].to(tensor.device, tensor.dtype))
    moments = load_file(str(directory / OPTIMIZER_FILE))
    for group_index, group in enumerate(optimizer.param_groups):
        for param_index, param in enumerate(group["params"]):
            entries = {
                k.split(".", 2)[2]: v
                for k, v in moments.items()
                if k.startswith(f"{group_index}.{param_index}.")
            }
            if entries:
                optimizer.state[param] = {
                    k: (v.to(param.device) if v.dim() else v) for k, v in entries.items()
                }
    return state


def run_key(config: DistillConfig, new_ids: Sequence[int], corpus_digest: str, base: str) -> str:
    """Identifies one distillation problem: settings, the new ids, the corpus and the base model.

    Two base models of one shape (a fine-tune, another size's sibling) would otherwise resume each
    other's checkpoints; ``base`` is :func:`medtok_dagster.core.base_model.identity`.
    """
    payload = json.dumps(
        {
            "config": config.key(),
            "ids": [min(new_ids, default=0), max(new_ids, default=0), len(new_ids)],
            "corpus": corpus_digest,
            "base": base,
        }
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def corpus_digest(lines: Sequence[str]) -> str:
    """A content hash of the training lines (a changed corpus means a new distillation)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def entries_of(targets: TeacherTargets, indices: Sequence[int]) -> torch.Tensor:
    """The output entries that belong to the contexts ``indices`` (host indices into the entries)."""
    chosen = torch.tensor(list(indices), device=targets.context.device)
    return torch.nonzero(torch.isin(targets.context, chosen)).squeeze(-1)


@torch.no_grad()
def mean_output_loss(
    model: Any,
    contexts: Sequence[Context],
    rows: torch.Tensor,
    targets: TeacherTargets,
    pad: int,
    batch_size: int,
) -> float:
    """:func:`output_loss` over every entry, a batch of contexts at a time (a progress figure, no gradient).

    Without the states cached this runs the teacher over every context once more.
    """
    cap, total = softcap_of(model), 0.0
    for indices in length_batches([len(c.teacher) for c in contexts], batch_size):
        select = entries_of(targets, indices)
        teacher = batch_states(model, contexts, indices, targets, pad)
        total += float(output_loss(rows, targets, teacher, select, cap)) * len(select)
    return total / max(len(targets.context), 1)


def distill(
    model: Any,
    tokenizer: Any,
    base_tokenizer: Any,
    lines: Sequence[str],
    new_ids: Sequence[int],
    base_len: int,
    config: DistillConfig,
    checkpoint_dir: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
    base_identity: str = "",
) -> DistillResult:
    """Learn the new rows of ``model`` (already resized, rows at a heuristic start) from ``lines``.

    The model's weights are frozen; only copies of the new rows are optimised, and the returned rows
    are not written into the model (see :func:`apply`). ``new_ids`` must be ``base_len`` onwards.
    Everything is computed on the model's device; the returned rows are on the host.
    ``base_identity`` (:func:`medtok_dagster.core.base_model.identity`) keys the checkpoint, so
    a checkpoint of another base model is never resumed.
    """
    new_ids = sorted(new_ids)
    if new_ids != list(range(base_len, base_len + len(new_ids))):
        raise ValueError("new ids must be contiguous from the base vocabulary size")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.eval()
    bos, pad = bos_id(tokenizer), pad_id(tokenizer)
    pieces = piece_map(tokenizer, base_tokenizer, new_ids, base_len)
    plan = plan_contexts(encode_plain(tokenizer, lines), new_ids, pieces, base_len, bos, config)
    log(
        f"{len(plan.contexts)} contexts cover {len(plan.distilled)} of {len(new_ids)} new tokens ({len(plan.selected)} selected)"
    )
    device = model_device(model)
    start = (
        model.get_input_embeddings()
        .weight[base_len : base_len + len(new_ids)]
        .detach()
        .float()
        .clone()
        .to(device)
    )
    named = {"input": torch.nn.Parameter(start.clone())}
    if config.mode == "untied":
        named["output"] = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adam(list(named.values()), lr=config.learning_rate)
    if not plan.contexts:
        return DistillResult(
            start.cpu(),
            start.cpu() if "output" in named else None,
            [],
            plan.fallback(new_ids),
            plan.selected,
            0,
            0,
            0,
        )
    started = time.monotonic()
    with_output = config.output_weight > 0
    targets = teacher_targets(
        model, plan.contexts, base_len, pad, config.batch_size, with_output, config.teacher_cache_mb
    )
    teacher_seconds = time.monotonic() - started
    states_mb = cache_bytes(plan.contexts, targets.lead, start.shape[1]) / 1e6
    if targets.hidden is None:
        log(
            f"teacher states ({states_mb:.0f} MB) exceed teacher_cache_mb "
            f"({config.teacher_cache_mb}): recomputed per batch"
        )
    cap = softcap_of(model)
    before = (
        mean_output_loss(model, plan.contexts, start, targets, pad, config.batch_size)
        if with_output
        else float("nan")
    )
    steps_per_epoch = math.ceil(len(plan.contexts) / config.batch_size)
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    key = run_key(config, new_ids, corpus_digest(lines), base_identity)
    state = _load_checkpoint(checkpoint_dir, key, named, optimizer) if checkpoint_dir else None
    first_step = state["step"] if state else 0
    history: list[dict[str, float]] = state["history"] if state else []
    if state:
        log(f"resuming distillation at step {first_step} of {total_steps}")
    order_rng = random.Random(config.seed)
    lengths = [len(c.student) for c in plan.contexts]
    orders = [
        length_batches(lengths, config.batch_size, order_rng)
        for _ in range(math.ceil(total_steps / steps_per_epoch))
    ]
    weight = config.output_weight
    projector = (
        output_preserving_projector(targets, config.keep_output, device)
        if config.mode == "tied"
        else None
    )
    loop_started, student_tokens = time.monotonic(), 0
    for step in range(first_step, total_steps):
        epoch, offset = divmod(step, steps_per_epoch)
        indices = orders[epoch][offset]
        teacher = batch_states(model, plan.contexts, indices, targets, pad)
        hidden_loss = input_loss(
            model, plan.contexts, indices, named["input"], targets, teacher, base_len, pad
        )
        predict_loss = (
            output_loss(
                named.get("output", named["input"]),
                targets,
                teacher,
                entries_of(targets, indices),
                cap,
            )
            if with_output
            else torch.zeros(())
        )
        optimizer.zero_grad(set_to_none=True)
        (hidden_loss + weight * predict_loss).backward()
        optimizer.step()
        if projector is not None:
            with torch.no_grad():
                named["input"].copy_(start + (named["input"] - start) @ projector)
        student_tokens += sum(len(plan.contexts[i].student) for i in indices)
        history.append(
            {
                "step": step + 1,
                "hidden_loss": round(hidden_loss.item(), 5),
                "output_loss": round(predict_loss.item(), 5),
            }
        )
        if checkpoint_dir and (
            (step + 1) % config.checkpoint_every == 0 or step + 1 == total_steps
        ):
            _save_checkpoint(
                checkpoint_dir, named, optimizer, {"key": key, "step": step + 1, "history": history}
            )
        if (step + 1) % max(1, total_steps // 10) == 0:
            log(
                f"distill step {step + 1}/{total_steps}: hidden {hidden_loss.item():.4f}, output {predict_loss.item():.4f}"
            )
    loop_seconds = time.monotonic() - loop_started
    keep = torch.tensor([i in plan.distilled for i in new_ids], device=device)[:, None]
    rows = {name: torch.where(keep, value.detach(), start) for name, value in named.items()}
    fit = None
    if config.predict_fallback:
        rows["input"], fit = predict_fallback(
            start,
            rows["input"],
            piece_features(
                start, model.get_input_embeddings().weight.detach(), [pieces[i] for i in new_ids]
            ),
            [i - base_len for i in sorted(plan.distilled)],
            [i - base_len for i in plan.fallback(new_ids)],
            config.seed,
        )
    after = (
        mean_output_loss(
            model, plan.contexts, rows.get("output", rows["input"]), targets, pad, config.batch_size
        )
        if with_output
        else float("nan")
    )
    stats = {
        "teacher_seconds": round(teacher_seconds, 2),
        "student_seconds": round(loop_seconds, 2),
        "student_tokens": student_tokens,
        "tokens_per_second": round(student_tokens / max(loop_seconds, 1e-9), 1),
        "output_loss_before": round(before, 4),
        "output_loss_after": round(after, 4),
        "output_entries": len(targets.context),
        "teacher_states_mb": round(states_mb, 3),
        "teacher_states_cached": targets.hidden is not None,
        "frozen_directions": 0
        if projector is None
        else round(float(projector.shape[0] - torch.trace(projector))),
    }
    return DistillResult(
        rows["input"].cpu(),
        rows["output"].cpu() if "output" in rows else None,
        sorted(plan.distilled),
        plan.fallback(new_ids),
        plan.selected,
        len(plan.contexts),
        total_steps,
        first_step,
        history,
        stats,
        fit,
    )


@torch.no_grad()
def apply(model: Any, result: DistillResult, base_len: int) -> None:
    """Write distilled rows into the model: input rows, and output rows if the model's head is untied."""
    count = result.input_rows.shape[0]
    embedding = model.get_input_embeddings().weight
    embedding[base_len : base_len + count] = result.input_rows.to(embedding.device, embedding.dtype)
    if result.output_rows is not None:
        head = model.get_output_embeddings().weight
        if head.data_ptr() == embedding.data_ptr():
            raise ValueError(
                "untied output rows need a model whose output projection is not tied to its input embeddings"
            )
        head[base_len : base_len + count] = result.output_rows.to(head.device, head.dtype)


class DistilledRowsError(ValueError):
    """Saved distilled rows that cannot be used: the message names the file and what is wrong."""


IDS_FIELDS = ("distilled", "fallback", "selected", "base_model")
REMATERIALIZE = "re-materialize distilled_embeddings"


def save_rows(directory: Path, result: DistillResult, base_identity: str) -> None:
    """The learned rows (safetensors) and which ids they cover and which base model made them (JSON)."""
    from safetensors.torch import save_file

    tensors = {"input": result.input_rows.contiguous()}
    if result.output_rows is not None:
        tensors["output"] = result.output_rows.contiguous()
    save_file(tensors, str(directory / ROWS_FILE))
    (directory / IDS_FILE).write_text(
        json.dumps(
            {
                "distilled": result.distilled,
                "fallback": result.fallback,
                "selected": result.selected,
                "fallback_fit": asdict(result.fallback_fit) if result.fallback_fit else None,
                "base_model": base_identity,
            }
        )
    )


def _read_ids(path: Path) -> dict[str, Any]:
    """``distilled_ids.json``, with every field :func:`load_rows` needs."""
    if not path.is_file():
        raise DistilledRowsError(f"{path}: missing; {REMATERIALIZE}")
    try:
        ids = read_json(path)
    except InputError as exc:
        raise DistilledRowsError(f"{exc}; {REMATERIALIZE}") from exc
    missing = [name for name in IDS_FIELDS if not isinstance(ids, dict) or name not in ids]
    if missing:
        raise DistilledRowsError(f"{path}: no {', '.join(missing)}; {REMATERIALIZE}")
    return ids


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The rows file's tensors, after checking it holds every byte its header promises."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        check_safetensors(path)
        tensors = load_file(str(path))
    except (BaseModelError, SafetensorError) as exc:
        reason = str(exc).split("; re-")[0].removeprefix(f"{path}: ")
        raise DistilledRowsError(f"{path}: {reason}; {REMATERIALIZE}") from exc
    if "input" not in tensors or tensors["input"].dim() != 2:
        raise DistilledRowsError(f'{path}: no 2-D tensor "input"; {REMATERIALIZE}')
    return tensors


def load_rows(directory: Path, expected_rows: int, base_identity: str) -> DistillResult:
    """Rows saved by :func:`save_rows`, checked before any model is loaded.

    Refuses a missing or damaged file, rows made for another tokenizer (a different count) and
    rows distilled from another base model (one of the same shape would otherwise load silently);
    :func:`check_width` checks them against the model once it is loaded.
    """
    rows_path = directory / ROWS_FILE
    if not rows_path.exists():
        raise FileNotFoundError(
            f"{rows_path}: no distilled rows; materialize distilled_embeddings for this variant first"
        )
    ids = _read_ids(directory / IDS_FILE)
    if ids["base_model"] != base_identity:
        raise DistilledRowsError(
            f"{directory / IDS_FILE}: rows distilled from base model {ids['base_model']!r}, but the "
            f"base model is {base_identity!r}; {REMATERIALIZE}"
        )
    tensors = _read_tensors(rows_path)
    for name, tensor in tensors.items():
        if tensor.shape[0] != expected_rows:
            raise DistilledRowsError(
                f"{rows_path}: {tensor.shape[0]} {name} rows, but the tokenizer has {expected_rows} new tokens; {REMATERIALIZE}"
            )
    fit = ids.get("fallback_fit")
    return DistillResult(
        tensors["input"],
        tensors.get("output"),
        ids["distilled"],
        ids["fallback"],
        ids["selected"],
        0,
        0,
        0,
        fallback_fit=FallbackFit(**fit) if fit else None,
    )


def check_width(directory: Path, result: DistillResult, width: int) -> None:
    """Refuse loaded rows whose width is not the model's hidden size."""
    for rows in (result.input_rows, result.output_rows):
        if rows is not None and rows.shape[1] != width:
            raise DistilledRowsError(
                f"{directory / ROWS_FILE}: rows {rows.shape[1]} wide, but the model's embeddings are {width} wide; {REMATERIALIZE}"
            )
