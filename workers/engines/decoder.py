"""Continuous batching: one thread owns the llama.cpp context and advances every sequence at once.

Each request runs in its own thread (workers/model.py) and asks the decoder for a sequence in a
free slot, then takes its tokens as they come. Every step the decoder puts into one batch the
next token of every generating sequence and, as far as the batch size allows, the next chunk of
every prompt still being read; it calls llama_decode once and samples each sequence's token with
that sequence's own sampler chain (its seed, penalties, grammar and logit bias, all inside
llama.cpp). A sequence may run a few tokens ahead of its reader, so that the reader's work
(text, the ring, the note to the router) overlaps the next decode.

Each slot remembers the tokens its KV cells hold. A new prompt goes to the free slot whose cache
shares the longest start with it (llama-server's rule) and decodes only the rest.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp
import llama_cpp.llama_cpp as llama_lib
import numpy as np

from workers.cores import WorkerCores
from workers.engine_counters import EngineCounters, Figure
from workers.engines.logprobs import TokenProbs, token_probs
from workers.engines.token_sampler import Candidates, TokenSampler
from workers.errors import ApiError

T = TypeVar("T")

LOOKAHEAD = 8  # tokens a sequence may be ahead of its reader
LONG_PROMPT = 64  # tokens; a batch with a shorter prompt chunk ends sooner than a cancel matters
PROMPT_SIMILARITY = 0.1  # llama-server's --slot-prompt-similarity
_WAIT_SECONDS = 0.1  # a reader waiting for a token looks at its cancel flag this often
# How often the decoder looks at its share of the cores, which the router updates every second
# and other workers change when they start or stop decoding.
THREADS_CHECK_SECONDS = 0.02


Step = tuple["Sequence", list[int], bool]


@dataclass(eq=False)
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # the tokens its KV cells hold, in order
    sequence: Sequence | None = None
    last: Sequence | None = None  # the one before, for /slots
    last_used: float = 0.0
    # A cache kept on disk while the model was swapped out (its file, its tokens), loaded
    # back only when a prompt goes to this slot because it shares its start.
    kept: tuple[Path, list[int]] | None = None

    @property
    def known(self) -> list[int]:
        """The tokens this slot can offer a prompt: in its cells, or in its kept file."""
        return self.cached or (self.kept[1] if self.kept else [])


@dataclass(eq=False)
class Sequence:
    """One generation: fed by the decoder thread, read by its request's thread."""

    slot: Slot
    prompt: list[int]
    reused: int  # prompt tokens whose KV cells were already there
    sampler: TokenSampler  # owned and freed by the decoder
    limit: int | None  # tokens to sample at most
    cancelled: Callable[[], bool]
    ready: threading.Condition  # its reader waits here for tokens
    params: dict[str, Any] = field(default_factory=dict)  # as /slots shows them
    top_probs: int | None = None  # with log-probabilities: how many alternatives per token
    fed: int = 0  # tokens of this sequence in the KV cache
    sampled: int = 0
    next_token: int | None = None  # sampled, decoded at the next step
    out: deque[int] = field(default_factory=deque)
    out_probs: deque[TokenProbs] = field(default_factory=deque)  # beside `out`, if asked for
    forced: deque[int] = field(default_factory=deque)  # to be taken instead of sampled
    # sees each sampled token on the decoder thread and may answer the tokens to force next,
    # so that a thinking budget ends at its token and not a reader's lookahead later
    steer: Callable[[int], list[int] | None] | None = None
    done: bool = False  # no more tokens will come
    closing: bool = False  # its reader has gone
    error: str | None = None
    started: float = 0.0
    first_token: float = 0.0  # time.perf_counter() of the first sampled token

    @property
    def prompt_left(self) -> int:
        return len(self.prompt) - self.fed if self.fed < len(self.prompt) else 0


class Decoder:
    def __init__(
        self,
        llm: llama_cpp.Llama,
        slots: int,
        cores: WorkerCores,
        threads: tuple[int, int],
        beat: Callable[[], None],
        counters: EngineCounters,
        warm_up: bool = True,
    ) -> None:
        self._llm = llm
        self.counters = counters
        self._warming = warm_up  # until the first decode is done, nothing else may use the context
        self._ctx = llm._ctx.ctx
        self._memory = llama_lib.llama_get_memory(self._ctx)
        self._vocab = llm._model.vocab
        self._probs_scratch = np.empty(llm.n_vocab(), dtype=np.float32)
        self._candidates = Candidates(llm.n_vocab())
        self._n_ctx = slot_context(llm)  # the most tokens one sequence may hold
        self._n_cells = llm.n_ctx()
        self._shared = self._n_ctx == self._n_cells and slots > 1
        self._n_batch = max(1, llm.n_batch)
        self._n_swa = int(llama_lib.llama_model_n_swa(llm._model.model))
        self._batch = llama_lib.llama_batch_init(max(self._n_batch, slots), 0, 1)
        self._cores = cores
        self._caps = threads  # most threads for one token, for a prompt chunk
        self._threads = (0, 0)
        self._threads_checked = 0.0
        self._beat = beat
        self.slots = [Slot(seq_id) for seq_id in range(slots)]
        self._admitted: list[Sequence] = []
        self._active: list[Sequence] = []
        self._errands: list[tuple[Slot, Callable[[Slot], Any], Future[Any]]] = []
        self._paused = False
        self._closed = False
        # One lock over all shared state; the decoder waits for work, start() and exclusively()
        # for a slot or the context to be free, and each reader for its sequence's tokens.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)
        self._abort_batch: list[Sequence] = []
        self._abort = llama_lib.ggml_abort_callback(self._should_abort)
        self._thread = threading.Thread(target=self._run, name="decoder", daemon=True)
        self._thread.start()

    # --- the request's side ---------------------------------------------------------------------

    def start(
        self,
        prompt: list[int],
        sampler: TokenSampler,
        limit: int | None,
        cancelled: Callable[[], bool],
        reuse: bool = True,
        params: dict[str, Any] | None = None,
        top_probs: int | None = None,
        forced: list[int] | None = None,
        steer: Callable[[int], list[int] | None] | None = None,
    ) -> Sequence:
        """A sequence for `prompt` in the free slot that has most of it cached."""
        with self._lock:
            while self._paused or (slot := self._free_slot(prompt)) is None:
                self._changed.wait()
            reused = _common_prefix(slot.known, prompt) if reuse else 0
            reused = min(reused, len(prompt) - 1)  # the last prompt token gives the logits
            ready = threading.Condition(self._lock)
            sequence = Sequence(
                slot, prompt, reused, sampler, limit, cancelled, ready, params or {}, top_probs
            )
            sequence.started = time.perf_counter()
            sequence.forced.extend(forced or [])
            sequence.steer = steer
            slot.sequence = sequence
            self._admitted.append(sequence)
            self._work.notify()
        return sequence

    def tokens(self, sequence: Sequence) -> Iterator[tuple[int, TokenProbs | None]]:
        """The sequence's tokens as they are sampled, each with its log-probabilities if the
        sequence asked for them; ends when it is done or cancelled."""
        while True:
            with self._lock:
                while not sequence.out and not sequence.done:
                    if sequence.cancelled():
                        return
                    sequence.ready.wait(_WAIT_SECONDS)
                if sequence.error is not None:
                    raise ApiError(500, sequence.error)
                if not sequence.out:
                    return
                if len(sequence.out) >= LOOKAHEAD:
                    self._work.notify()  # room ahead: the decoder feeds it again
                taken = list(sequence.out)
                sequence.out.clear()
                probs: list[TokenProbs | None] = [None] * len(taken)
                if sequence.top_probs is not None:
                    probs = list(sequence.out_probs)
                    sequence.out_probs.clear()
            yield from zip(taken, probs, strict=True)

    def close(self, sequence: Sequence) -> None:
        with self._lock:
            sequence.closing = True
            # counted out now, not when the decoder next retires it: a client that has its
            # whole answer and reads /metrics at once sees the request done
            self._count_processing()
            self._work.notify()

    def _count_processing(self) -> None:
        processing = sum(1 for sequence in self._active if not sequence.closing)
        self.counters.set(Figure.PROCESSING, processing)

    def exclusively(self, work: Callable[[], T]) -> T:
        """Run `work` (an embedding) alone on the context, which it leaves empty."""
        with self._lock:
            while self._warming or self._paused or self._admitted or self._active:
                self._changed.wait()
            self._paused = True
        try:
            return work()
        finally:
            with self._lock:
                for slot in self.slots:
                    slot.cached = []
                self._paused = False
                self._changed.notify_all()

    # --- slots, as /slots shows and keeps them -------------------------------------------------

    def describe(self, detokenize: Callable[[list[int]], str]) -> list[dict[str, Any]]:
        """llama-server's /slots entries: every slot, and the request it runs or ran last."""
        with self._lock:
            entries = [self._describe(slot) for slot in self.slots]
        for entry in entries:  # outside the lock: a long prompt takes a while
            if "prompt" in entry:
                entry["prompt"] = detokenize(entry["prompt"])
        return entries

    def _describe(self, slot: Slot) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": slot.seq_id,
            "n_ctx": self._n_ctx,
            "speculative": False,
            "is_processing": slot.sequence is not None,
        }
        sequence = slot.sequence or slot.last
        if sequence is None:
            return entry
        working = slot.sequence is not None
        remaining = -1 if sequence.limit is None else max(0, sequence.limit - sequence.sampled)
        return {
            **entry,
            "n_prompt_tokens": len(sequence.prompt),
            "n_prompt_tokens_processed": min(sequence.fed, len(sequence.prompt)) - sequence.reused,
            "n_prompt_tokens_cache": sequence.reused,
            "params": sequence.params,
            "next_token": [
                {
                    "has_next_token": not sequence.done and working,
                    "has_new_line": False,
                    # as llama-server: an idle slot keeps none of its last task's budget
                    "n_remain": remaining if working else -1,
                    "n_decoded": sequence.sampled if working else 0,
                }
            ],
            "prompt": sequence.prompt,
        }

    def save(self, slot_id: int, path: Path) -> dict[str, Any]:
        def save(slot: Slot) -> dict[str, Any]:
            started = time.perf_counter()
            tokens = (llama_lib.llama_token * len(slot.cached))(*slot.cached)
            written = llama_lib.llama_state_seq_save_file(
                self._ctx, str(path).encode(), slot.seq_id, tokens, len(slot.cached)
            )
            if written == 0:
                raise ApiError(500, "Unable to save slot")
            return {
                "id_slot": slot.seq_id,
                "n_saved": len(slot.cached),
                "n_written": written,
                "timings": {"save_ms": (time.perf_counter() - started) * 1e3},
            }

        return self.when_free(slot_id, save)

    def restore(self, slot_id: int, path: Path) -> dict[str, Any]:
        def restore(slot: Slot) -> dict[str, Any]:
            started = time.perf_counter()
            read = self._load_slot(slot, path)
            return {
                "id_slot": slot.seq_id,
                "n_restored": len(slot.cached),
                "n_read": read,
                "timings": {"restore_ms": (time.perf_counter() - started) * 1e3},
            }

        return self.when_free(slot_id, restore)

    def _load_slot(self, slot: Slot, path: Path) -> int:
        """In the decoder thread: the slot's cells and tokens from a file; bytes read."""
        llama_lib.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
        slot.cached = []
        slot.kept = None
        tokens = (llama_lib.llama_token * self._n_ctx)()
        count = ctypes.c_size_t(0)
        read = llama_lib.llama_state_seq_load_file(
            self._ctx, str(path).encode(), slot.seq_id, tokens, self._n_ctx, ctypes.byref(count)
        )
        restored = list(tokens[: count.value])
        problem = None
        if read == 0:
            problem = "No available space in KV cache or invalid slot save file"
        elif any(not 0 <= token < self._llm.n_vocab() for token in restored):
            problem = "Invalid tokens in slot save file"
        if problem:
            llama_lib.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
            raise ApiError(400, f"Unable to restore slot: {problem}")
        slot.cached = restored
        return int(read)

    def offer_kept(self, slot_id: int, path: Path, tokens: list[int]) -> None:
        """A cache kept on disk for this slot, loaded when a prompt that shares it comes."""
        with self._lock:
            self.slots[slot_id].kept = (path, tokens)

    def erase(self, slot_id: int) -> dict[str, Any]:
        def erase(slot: Slot) -> dict[str, Any]:
            erased = len(slot.cached)
            llama_lib.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
            slot.cached = []
            slot.kept = None
            return {"id_slot": slot.seq_id, "n_erased": erased}

        return self.when_free(slot_id, erase)

    def when_free(self, slot_id: int, work: Callable[[Slot], T]) -> T:
        """Run `work` on a slot in the decoder thread, once nothing runs in that slot (as
        llama-server defers a slot action until its slot is done)."""
        if not 0 <= slot_id < len(self.slots):
            raise ApiError(400, "Invalid slot ID")
        future: Future[T] = Future()
        with self._lock:
            self._errands.append((self.slots[slot_id], work, future))
            self._work.notify()
        return future.result()

    def _run_errands(self) -> None:
        """Under the lock, in the decoder thread: the slot actions whose slot is free."""
        for errand in [e for e in self._errands if e[0].sequence is None]:
            self._errands.remove(errand)
            slot, work, future = errand
            try:
                future.set_result(work(slot))
            except Exception as error:
                future.set_exception(error)

    def shut(self) -> None:
        with self._lock:
            self._closed = True
            self._work.notify()
        self._thread.join()
        llama_lib.llama_batch_free(self._batch)

    def _free_slot(self, prompt: list[int]) -> Slot | None:
        """A slot whose reader has let go is free already, before the decoder retires its
        sequence at its next step (as llama-server lets a slot go as soon as its task ends):
        a follow-up sent at once, while a long prompt's decode runs, finds its turn there."""
        free = [slot for slot in self.slots if self._let_go(slot.sequence)]
        return choose_slot(free, prompt) if free else None

    def _let_go(self, sequence: Sequence | None) -> bool:
        """No sequence, or one whose reader is gone and that already had its seat (a seated
        one leaves before the next is seated; an unseated one would be seated beside it)."""
        return sequence is None or (sequence.closing and sequence not in self._admitted)

    # --- the decoder thread ---------------------------------------------------------------------

    def _run(self) -> None:
        if self._warming:
            self._warm_up()
        while True:
            with self._lock:
                while not self._closed and not self._has_work():
                    if not self._active:
                        self._cores.idle()
                    self._work.wait()
                self._run_errands()
                if self._closed:
                    self._end_all("the model is unloading")
                    self._cores.idle()
                    return
                self._cores.busy(self._caps[0])
                plan = self._plan()
            if plan:
                self._step(plan)

    def _warm_up(self) -> None:
        """As llama-server at load: one decode of BOS and EOS, then an empty cache, so that the
        first request does not pay for llama.cpp's first run. In this thread, whose OpenMP
        threads every later decode uses."""
        llm = self._llm
        tokens = [token for token in (llm.token_bos(), llm.token_eos()) if token >= 0] or [0]
        array = (llama_lib.llama_token * len(tokens))(*tokens)
        with self._lock:
            llama_lib.llama_decode(self._ctx, llama_lib.llama_batch_get_one(array, len(tokens)))
            llama_lib.llama_memory_clear(self._memory, True)
            self._warming = False
            self._changed.notify_all()

    def _has_work(self) -> bool:
        if self._admitted or any(s.closing for s in self._active):
            return True
        if any(slot.sequence is None for slot, _, _ in self._errands):
            return True
        return any(
            s.prompt_left or (s.next_token is not None and len(s.out) < LOOKAHEAD)
            for s in self._active
        )

    def _plan(self) -> list[Step]:
        """Under the lock: admit, retire, and choose each sequence's tokens for this step."""
        self._retire()
        for sequence in self._admitted:
            self._seat(sequence)
        self._admitted.clear()
        self._count_processing()
        plan = plan_step(self._active, self._n_batch)
        self._make_room(sum(len(tokens) for _, tokens, _ in plan))
        return plan

    def _retire(self) -> None:
        for sequence in [s for s in self._active if s.closing]:
            self._active.remove(sequence)
            sequence.sampler.free()
            slot = sequence.slot
            if slot.sequence is sequence:  # else the next request has the slot already
                slot.sequence = None
            slot.last = sequence
            slot.last_used = time.monotonic()
        if any(slot.sequence is None for slot in self.slots):
            self._changed.notify_all()

    def _seat(self, sequence: Sequence) -> None:
        """Keep the slot's cached start of the prompt, drop the rest of its cells."""
        slot, keep = sequence.slot, sequence.reused
        if slot.kept is not None:
            path = slot.kept[0]
            try:
                if keep:  # the prompt came for this kept cache: load it now
                    self._load_slot(slot, path)
                    # what the file holds decides, not the token list kept beside it: a worker
                    # stopped between writing the two leaves the list of an older cache
                    keep = min(keep, _common_prefix(slot.cached, sequence.prompt))
            except ApiError:
                keep = 0
            finally:
                slot.kept = None
                forget_kept(path)
        if not llama_lib.llama_memory_seq_rm(self._memory, slot.seq_id, keep, -1):
            keep = 0
        elif keep and llama_lib.llama_memory_seq_pos_min(self._memory, slot.seq_id) > max(
            0, keep - self._n_swa
        ):
            keep = 0  # a sliding-window cache no longer holds what the rest must attend to
        if keep == 0:
            llama_lib.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
        sequence.reused = sequence.fed = keep
        slot.cached = sequence.prompt[:keep]
        self._active.append(sequence)
        # in slot order: with a cache per slot, llama.cpp splits a batch whose sequence ids are
        # out of order into several decodes
        self._active.sort(key=lambda active: active.slot.seq_id)

    def _make_room(self, needed: int) -> None:
        """The KV cache is shared by every slot: idle slots give up their cache, oldest first,
        when the cells would not hold this step."""
        if not self._shared:
            return
        used = sum(len(slot.cached) for slot in self.slots)
        for slot in sorted(self.slots, key=lambda s: s.last_used):
            if used + needed <= self._n_cells:
                return
            if slot.sequence is None and slot.cached:
                llama_lib.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
                used -= len(slot.cached)
                slot.cached = []

    def _step(self, plan: list[Step]) -> None:
        batch = self._batch
        sampled_at: list[tuple[Sequence, int]] = []
        count = 0
        for sequence, tokens, wants_logits in plan:
            position = sequence.fed
            for offset, token in enumerate(tokens):
                batch.token[count] = token
                batch.pos[count] = position + offset
                batch.n_seq_id[count] = 1
                batch.seq_id[count][0] = sequence.slot.seq_id
                batch.logits[count] = False
                count += 1
            if wants_logits:
                batch.logits[count - 1] = True
                sampled_at.append((sequence, count - 1))
        batch.n_tokens = count
        self._use_threads()
        reading = any(len(tokens) > LONG_PROMPT for _, tokens, _ in plan)
        if reading:  # a long prompt's decode ends early once nobody in the batch waits for it
            self._abort_batch = [sequence for sequence, _, _ in plan]
            llama_lib.llama_set_abort_callback(self._ctx, self._abort, None)
        try:
            status = llama_lib.llama_decode(self._ctx, batch)
        finally:
            if reading:
                llama_lib.llama_set_abort_callback(self._ctx, llama_lib.ggml_abort_callback(), None)
        self._beat()
        if status != 0:
            self._failed(plan, status)
            return
        self._count_decode()
        now = time.perf_counter()
        tokens_out = [
            (sequence, self._next_token(sequence, index), index) for sequence, index in sampled_at
        ]
        probs = [
            token_probs(self._ctx, index, token, sequence.top_probs, self._probs_scratch)
            if sequence.top_probs is not None
            else None
            for sequence, token, index in tokens_out
        ]
        with self._lock:
            for sequence, tokens, _ in plan:
                sequence.fed += len(tokens)
                sequence.slot.cached.extend(tokens)
                sequence.next_token = None
            for (sequence, token, _), token_prob in zip(tokens_out, probs, strict=True):
                self._sampled(sequence, token, now)
                if token_prob is not None:
                    sequence.out_probs.append(token_prob)
                sequence.ready.notify()

    def _next_token(self, sequence: Sequence, index: int) -> int:
        if sequence.forced:
            token = sequence.forced.popleft()
            sequence.sampler.accept(token)  # the penalties and the grammar see it
            return token
        token = sequence.sampler.sample(self._ctx, index, self._candidates)
        if sequence.steer is not None and (forced := sequence.steer(token)):
            sequence.forced.extend(forced)
        return token

    def _count_decode(self) -> None:
        counters = self.counters
        counters.add(Figure.DECODES, 1)
        counters.add(Figure.BUSY_SLOTS, len(self._active))
        counters.raise_to(Figure.TOKENS_MAX, max(sequence.fed for sequence in self._active))

    def _sampled(self, sequence: Sequence, token: int, now: float) -> None:
        if not sequence.first_token:
            sequence.first_token = now
        sequence.out.append(token)
        sequence.sampled += 1
        ended = (
            llama_lib.llama_vocab_is_eog(self._vocab, token)
            or (sequence.limit is not None and sequence.sampled >= sequence.limit)
            or sequence.fed + 1 >= self._n_ctx
        )
        if ended:
            sequence.done = True
        else:
            sequence.next_token = token

    def _failed(self, plan: list[Step], status: int) -> None:
        """A decode that did not happen: its sequences end, and their cells are dropped."""
        if status == 1:
            message = f"the context is full: its {self._n_cells} tokens are shared by every slot"
        else:
            message = f"llama_decode failed with status {status}"
        with self._lock:
            for sequence, _, _ in plan:
                slot = sequence.slot
                llama_lib.llama_memory_seq_rm(self._memory, slot.seq_id, 0, -1)
                slot.cached = []
                sequence.done = True
                if status != 2:  # 2: aborted, because every reader in it was cancelled
                    sequence.error = message
                sequence.ready.notify()

    def _end_all(self, message: str) -> None:
        for sequence in [*self._admitted, *self._active]:
            sequence.done = True
            sequence.error = message
            sequence.ready.notify()
            sequence.sampler.free()
        self._admitted.clear()
        self._active.clear()
        for _, _, future in self._errands:
            future.set_exception(ApiError(503, message))
        self._errands.clear()
        self._changed.notify_all()

    def _should_abort(self, _data: ctypes.c_void_p) -> bool:
        """Asked by llama.cpp between graph nodes of a long prompt's decode: the worker is alive."""
        self._beat()
        return all(sequence.cancelled() for sequence in self._abort_batch)

    def _use_threads(self) -> None:
        now = time.monotonic()
        if now - self._threads_checked < THREADS_CHECK_SECONDS:
            return
        self._threads_checked = now
        share = self._cores.threads()
        threads = (min(share, self._caps[0]), min(share, self._caps[1]))
        if threads != self._threads:
            llama_lib.llama_set_n_threads(self._ctx, *threads)
            self._threads = threads
            self._cores.applied(threads[0])


def forget_kept(path: Path) -> None:
    """A kept slot's files, once used or overwritten."""
    path.unlink(missing_ok=True)
    path.with_suffix(".tokens").unlink(missing_ok=True)


def slot_context(llm: llama_cpp.Llama) -> int:
    """The most tokens one slot may hold: the whole context when the slots share it."""
    return int(llama_lib.llama_n_ctx_seq(llm._ctx.ctx))


def choose_slot(free: list[Slot], prompt: list[int]) -> Slot:
    """llama-server's choice among free slots: the one whose cache is most like the prompt, if
    alike enough; otherwise an empty one, or else the one used longest ago."""
    best = max(free, key=lambda slot: _common_prefix(slot.known, prompt))
    if prompt and _common_prefix(best.known, prompt) / len(prompt) > PROMPT_SIMILARITY:
        return best
    return min(free, key=lambda slot: (bool(slot.known), slot.last_used))


def plan_step(active: list[Sequence], n_batch: int) -> list[Step]:
    """One batch: first the next token of every generating sequence whose reader keeps up, then
    chunks of the prompts being read, as far as `n_batch` allows. Each entry is a sequence, its
    tokens, and whether a token is sampled after them (the last of a prompt, or a generated one)."""
    plan: list[Step] = []
    room = n_batch
    for sequence in active:
        if sequence.next_token is not None and len(sequence.out) < LOOKAHEAD:
            plan.append((sequence, [sequence.next_token], True))
            room -= 1
    for sequence in active:
        if room <= 0:
            break
        if left := sequence.prompt_left:
            chunk = sequence.prompt[sequence.fed : sequence.fed + min(left, room)]
            plan.append((sequence, chunk, len(chunk) == left))
            room -= len(chunk)
    return plan


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length
