"""Typed messages on the pipe between the router and a model worker.

Two tagged unions: commands go to the worker, events come back. Each pipe end builds one encoder
and one decoder and moves whole messages with `send_bytes`/`recv_bytes`. An `Infer` may also
come straight from an HTTP process, on the worker's direct socket (workers/direct.py).
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


class ModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything a worker needs to load one model."""

    model_id: str
    path: str
    mmproj: str | None = None
    ctx_size: int = 4096
    parallel: int = 4  # slots; llama-server's automatic value
    kv_unified: bool = True  # the slots share one KV cache; else each has ctx_size / parallel
    threads: int | None = None
    threads_batch: int | None = None
    batch_size: int = 2048
    ubatch_size: int = 512
    n_gpu_layers: int = 0
    seed: int = -1
    n_predict: int = -1
    embeddings: bool = False
    pooling: str | None = None
    chat_template: str | None = None
    # llama-server's --reasoning-format (none: <think> stays in the content) and
    # --reasoning-budget (thinking tokens at most, 0: none, -1: no limit) and the message
    # written before the end of a thinking cut short
    reasoning_format: str = "auto"
    reasoning_budget: int = -1
    reasoning_budget_message: str = ""
    spm_infill: bool = False  # /infill puts the suffix before the prefix
    sampling: dict[str, Any] = {}
    # llama.cpp's model and context parameters, as llama-server's flags set them
    flash_attn: str = "auto"  # on | off | auto
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    use_mmap: bool = True
    use_mlock: bool = False
    repack: bool | None = None  # None: wherever this build's llama.cpp can (see the engine)
    split_mode: str | None = None
    main_gpu: int = 0
    tensor_split: list[float] | None = None
    rope_scaling: str | None = None
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    yarn: dict[str, int | float] = {}
    offload_kqv: bool = True
    op_offload: bool | None = None
    swa_full: bool = False
    loras: list[tuple[str, float]] = []
    kv_overrides: dict[str, bool | int | float | str] = {}
    # Where the slots' KV caches are kept while the model is swapped out, and how many bytes
    # such files may take in all (across models); no folder: nothing is kept.
    kept_slots_dir: str | None = None
    kept_slots_bytes: int = 0


# Commands: router -> worker


class Load(_Message, tag="load", frozen=True):
    """The first command a (pre-started) worker gets: which model it is."""

    settings: ModelSettings


class Infer(_Message, tag="infer", frozen=True):
    request_id: int
    route: str
    body: bytes
    ring: str
    # Resumable sessions: every SSE event carries `id: <offset at its end>` for Last-Event-ID.
    event_ids: bool = False
    # A pooled ring comes back for later requests, so the worker keeps it mapped; a session's
    # ring is unlinked once it ends, and a mapping kept would hold its memory.
    pooled: bool = True


class Sleep(_Message, tag="sleep", frozen=True):
    pass


class Wake(_Message, tag="wake", frozen=True):
    pass


class Exit(_Message, tag="exit", frozen=True):
    # With `recycle`, free the model and wait for the next Load instead of exiting.
    recycle: bool = False


class SlotAction(_Message, tag="slot_action", frozen=True):
    """`GET /slots` (`list`) and `POST /slots/{id}` (`save`, `restore`, `erase`), answered at
    once with a SlotAnswer of the same `query`; an action on a busy slot waits for it to end."""

    query: int
    action: str
    slot: int = 0
    path: str = ""


Command = Load | Infer | Sleep | Wake | Exit | SlotAction


# Events: worker -> router


class Loading(_Message, tag="loading", frozen=True):
    value: float


class Ready(_Message, tag="ready", frozen=True):
    info: dict[str, Any]
    direct: str = ""  # where HTTP processes may send requests straight (workers/direct.py)


class LoadFailed(_Message, tag="load_failed", frozen=True):
    message: str


class Ended(_Message, tag="ended", frozen=True):
    """The worker is done with the ring of `request_id`: the answer is whole, or cut short."""

    request_id: int


class Released(_Message, tag="released", frozen=True):
    """The model is freed; the process waits for its next Load."""


class Slept(_Message, tag="slept", frozen=True):
    pass


class Woke(_Message, tag="woke", frozen=True):
    direct: str = ""  # a new address: the one of before the sleep was shut


class SlotAnswer(_Message, tag="slot_answer", frozen=True):
    query: int
    status: int
    body: bytes  # JSON: the answer, or an error body


Event = Loading | Ready | LoadFailed | Ended | Released | Slept | Woke | SlotAnswer


class CommandCodec:
    def __init__(self) -> None:
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(Command).decode


class EventCodec:
    def __init__(self) -> None:
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode = msgspec.msgpack.Decoder(Event).decode


# A worker that cannot load its model exits with this code; the router does not retry it in a loop.
EXIT_LOAD_FAILED = 3
