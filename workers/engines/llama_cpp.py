"""The llama-cpp-python engine: loads one GGUF model and answers the llama-server routes."""

from __future__ import annotations

import base64
import ctypes
import gc
import os
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib

from workers.cores import WorkerCores, physical_cores
from workers.engine_counters import EngineCounters, Figure
from workers.engines import anthropic, infill, kept_slots
from workers.engines.chat_templates import chat_formatter
from workers.engines.completions import Completions
from workers.engines.decoder import Decoder, slot_context
from workers.engines.generation import SHOWN_PARAMS, checked_tokens, detokenize, token_piece
from workers.engines.prompts import embedding_texts
from workers.engines.response import Response
from workers.engines.sampling import completion_kwargs
from workers.errors import ApiError
from workers.protocol import ModelSettings
from workers.schema import (
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    decode_body,
    decode_object,
)

POOLING = {
    "none": llama_lib.LLAMA_POOLING_TYPE_NONE,
    "mean": llama_lib.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_lib.LLAMA_POOLING_TYPE_CLS,
    "last": llama_lib.LLAMA_POOLING_TYPE_LAST,
    "rank": llama_lib.LLAMA_POOLING_TYPE_RANK,
}

CancelCheck = Callable[[], bool]


GGML_TYPES = {
    "f32": llama_lib.GGML_TYPE_F32,
    "f16": llama_lib.GGML_TYPE_F16,
    "bf16": 30,  # GGML_TYPE_BF16, which llama-cpp-python does not export
    "q8_0": llama_lib.GGML_TYPE_Q8_0,
    "q4_0": llama_lib.GGML_TYPE_Q4_0,
    "q4_1": llama_lib.GGML_TYPE_Q4_1,
    "iq4_nl": llama_lib.GGML_TYPE_IQ4_NL,
    "q5_0": llama_lib.GGML_TYPE_Q5_0,
    "q5_1": llama_lib.GGML_TYPE_Q5_1,
}
FLASH_ATTN = {
    "on": llama_lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_lib.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    "auto": llama_lib.LLAMA_FLASH_ATTN_TYPE_AUTO,
}
SPLIT_MODES = {
    "none": llama_lib.LLAMA_SPLIT_MODE_NONE,
    "layer": llama_lib.LLAMA_SPLIT_MODE_LAYER,
    "row": llama_lib.LLAMA_SPLIT_MODE_ROW,
}
ROPE_SCALINGS = {
    None: llama_lib.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED,
    "none": llama_lib.LLAMA_ROPE_SCALING_TYPE_NONE,
    "linear": llama_lib.LLAMA_ROPE_SCALING_TYPE_LINEAR,
    "yarn": llama_lib.LLAMA_ROPE_SCALING_TYPE_YARN,
}


@contextmanager
def _context_params(flash_attention: int, sequences: int, unified: bool) -> Iterator[None]:
    """Context parameters Llama() does not expose: llama-server's default flash attention is
    `auto` (on wherever the backend supports it), where Llama() knows only on or off; and one
    sequence per slot, in a KV cache they share (llama-server's unified cache) or each in its
    own part of it."""
    init = llama_lib.llama_init_from_model

    def init_with_slots(model: Any, params: Any) -> Any:
        params.flash_attn_type = flash_attention
        params.n_seq_max = max(params.n_seq_max, sequences)
        params.kv_unified = unified or params.kv_unified  # embeddings need it unified
        return init(model, params)

    llama_lib.llama_init_from_model = init_with_slots
    try:
        yield
    finally:
        llama_lib.llama_init_from_model = init


_KV_CACHE_LINE = re.compile(
    r"llama_kv_cache: size = +(?P<size>[\d.]+) MiB.*K \((?P<type_k>\w+)\): +(?P<k>[\d.]+) MiB, "
    r"V \((?P<type_v>\w+)\): +(?P<v>[\d.]+) MiB"
)


@contextmanager
def _llama_log(lines: list[str]) -> Iterator[None]:
    """llama.cpp's own log lines while loading: what it made of the settings (the KV cache it
    allocated), whatever llama-cpp-python's verbosity."""
    from llama_cpp._logger import llama_log_callback

    @llama_lib.llama_log_callback
    def collect(_level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    llama_lib.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_lib.llama_log_set(llama_log_callback, ctypes.c_void_p(0))


def _kv_cache(lines: list[str]) -> dict[str, Any] | None:
    """The KV cache llama.cpp reported allocating: total MiB, and K and V types and sizes."""
    for line in lines:
        if match := _KV_CACHE_LINE.search(line):
            return {
                "size_mib": float(match["size"]),
                "type_k": match["type_k"],
                "type_v": match["type_v"],
                "k_mib": float(match["k"]),
                "v_mib": float(match["v"]),
            }
    return None


@contextmanager
def _model_params(report: Callable[[float], None], repack: bool) -> Iterator[None]:
    """Model parameters Llama() does not expose: llama.cpp's load progress callback, and
    whether weights may move into repacked (extra) buffers."""
    default_params = llama_lib.llama_model_default_params

    @llama_lib.llama_progress_callback
    def on_progress(value: float, _user: ctypes.c_void_p) -> bool:
        report(float(value))
        return True

    def params_with_progress() -> Any:
        params = default_params()
        params.progress_callback = on_progress
        params.use_extra_bufts = repack
        return params

    llama_lib.llama_model_default_params = params_with_progress
    try:
        yield
    finally:
        llama_lib.llama_model_default_params = default_params


class LlamaEngine:
    def __init__(
        self,
        settings: ModelSettings,
        report_progress: Callable[[float], None],
        cores: WorkerCores,
        beat: Callable[[], None],
        counters: EngineCounters,
    ) -> None:
        self.settings = settings
        self.counters = counters
        self.slots = settings.parallel
        self._report_progress = report_progress
        self._cores = cores
        self._beat = beat
        self.llm: llama_cpp.Llama | None = None
        self._decoder: Decoder | None = None
        self.kv_cache: dict[str, Any] | None = None
        self._completions: Completions | None = None
        self._load()

    # --- lifetime -----------------------------------------------------------------------------

    def _load(self) -> None:
        s = self.settings
        if not os.path.isfile(s.path):
            raise FileNotFoundError(f"model file not found: {s.path}")
        pooling = POOLING.get(s.pooling or "", llama_lib.LLAMA_POOLING_TYPE_UNSPECIFIED)
        yarn_factors: dict[str, Any] = dict(s.yarn)
        log_lines: list[str] = []
        with (
            _llama_log(log_lines),
            _model_params(self._report_progress, _repack(s.repack)),
            _context_params(FLASH_ATTN[s.flash_attn], s.parallel, s.kv_unified),
        ):
            self.llm = llama_cpp.Llama(
                model_path=s.path,
                n_ctx=s.ctx_size,
                n_batch=s.batch_size,
                n_ubatch=s.ubatch_size,
                n_threads=self._threads[0],
                n_threads_batch=self._threads[1],
                n_gpu_layers=s.n_gpu_layers,
                split_mode=SPLIT_MODES[s.split_mode or "layer"],
                main_gpu=s.main_gpu,
                tensor_split=s.tensor_split,
                use_mmap=s.use_mmap,
                use_mlock=s.use_mlock,
                kv_overrides=s.kv_overrides or None,
                seed=s.seed if s.seed >= 0 else llama_lib.LLAMA_DEFAULT_SEED,
                embedding=s.embeddings,
                pooling_type=pooling,
                type_k=GGML_TYPES[s.cache_type_k],
                type_v=GGML_TYPES[s.cache_type_v],
                rope_scaling_type=ROPE_SCALINGS[s.rope_scaling],
                rope_freq_base=s.rope_freq_base,
                rope_freq_scale=s.rope_freq_scale,
                offload_kqv=s.offload_kqv,
                op_offload=s.op_offload,
                swa_full=s.swa_full,
                chat_format=None,
                verbose=False,
                **yarn_factors,
            )
        self.kv_cache = _kv_cache(log_lines)
        if s.loras:
            _apply_loras(self.llm, s.loras)
        if s.embeddings:  # generation by default; an embeddings request switches for its call
            llama_lib.llama_set_embeddings(self.llm._ctx.ctx, False)
        self._decoder = Decoder(
            self.llm,
            self.slots,
            self._cores,
            self._threads,
            self._beat,
            self.counters,
            self._generates(),
        )
        self._slot_ctx = slot_context(self.llm)  # still shown while the model sleeps
        if s.kept_slots_dir:
            kept_slots.bring_back(self._decoder, Path(s.kept_slots_dir))

    @property
    def _threads(self) -> tuple[int, int]:
        """The most threads this model uses for one token and for a prompt: its own `threads`
        and `threads-batch`, else the machine's cores; the shared budget may give it fewer."""
        threads = self.settings.threads or physical_cores()
        return threads, self.settings.threads_batch or threads

    @property
    def decoder(self) -> Decoder:
        self.model  # noqa: B018  (loads a sleeping model, and its decoder with it)
        assert self._decoder is not None
        return self._decoder

    def keep_slots(self) -> None:
        """The slots' KV caches to files, for the next load of this model."""
        folder = self.settings.kept_slots_dir
        if folder and self._decoder is not None:
            kept_slots.keep(self._decoder, Path(folder), self.settings.kept_slots_bytes)

    def sleep(self) -> None:
        self.keep_slots()
        if self._decoder is not None:
            self._decoder.shut()
            self._decoder = None
        self.llm = None
        self._completions = None
        gc.collect()

    def wake(self) -> None:
        if self.llm is None:
            self._load()

    @property
    def model(self) -> llama_cpp.Llama:
        if self.llm is None:
            self._load()
        assert self.llm is not None
        return self.llm

    def info(self) -> dict[str, Any]:
        llm = self.model
        meta = llm.metadata
        return {
            "model_path": self.settings.path,
            "n_ctx": slot_context(llm),
            "n_ctx_train": llm._model.n_ctx_train(),
            "n_embd": llm.n_embd(),
            "n_vocab": llm.n_vocab(),
            "n_params": llm._model.n_params(),
            "size": llm._model.size(),
            "architecture": meta.get("general.architecture", ""),
            "chat_template": self.settings.chat_template or meta.get("tokenizer.chat_template", ""),
            "bos_token": _piece(llm, llm.token_bos()),
            "eos_token": _piece(llm, llm.token_eos()),
            "embeddings": self.settings.embeddings,
            "pooling": _pooling_name(int(llm.pooling_type())) if self.settings.embeddings else None,
            "modalities": {"vision": self.settings.mmproj is not None, "audio": False},
            "kv_cache": self.kv_cache,
            "n_parallel": self.slots,
            "default_params": self._default_params(),
        }

    def _default_params(self) -> dict[str, Any]:
        """What a request without sampling fields gets, as llama-server's /props shows it."""
        params = completion_kwargs({}, self.settings, lambda _: [])
        shown = {name: params[key] for key, name in SHOWN_PARAMS.items() if key in params}
        seed = self.settings.seed
        n_predict = -1 if params["max_tokens"] is None else params["max_tokens"]
        return {
            **shown,
            "n_predict": n_predict,
            "seed": seed if seed >= 0 else llama_lib.LLAMA_DEFAULT_SEED,
        }

    # --- slots --------------------------------------------------------------------------------

    def slot_action(self, action: str, slot: int, path: str) -> Any:
        """`GET /slots` (`list`) and `POST /slots/{id}?action=save|restore|erase`."""
        if action == "list":
            if self._decoder is None:  # asleep: nothing runs, nothing is cached
                return [
                    {"id": i, "n_ctx": self._slot_ctx, "speculative": False,
                     "is_processing": False}
                    for i in range(self.slots)
                ]  # fmt: skip
            llm = self.model
            return self._decoder.describe(
                lambda tokens: detokenize(llm, tokens, special=True)
            )
        if action == "erase":
            return self.decoder.erase(slot)
        done = self.decoder.save(slot, Path(path)) if action == "save" else None
        if action == "restore":
            done = self.decoder.restore(slot, Path(path))
        if done is None:
            raise ApiError(400, "Invalid action")
        return {"id_slot": done.pop("id_slot"), "filename": Path(path).name, **done}

    # --- routes -------------------------------------------------------------------------------

    def handle(self, route: str, body: bytes, cancelled: CancelCheck) -> Response:
        handler = _ROUTES.get(route)
        if handler is None:
            raise ApiError(404, f"route {route} is not served by this model")
        return handler(self, body, cancelled)

    def _generates(self) -> bool:
        metadata = self.model.metadata
        architecture = metadata.get("general.architecture", "?")
        return metadata.get(f"{architecture}.attention.causal") != "false"

    def _require_generation(self) -> None:
        """As llama-server: `--embeddings` adds embeddings to generation; only an encoder (BERT
        and its kin: attention that is not causal) cannot generate."""
        metadata = self.model.metadata
        architecture = metadata.get("general.architecture", "?")
        if metadata.get(f"{architecture}.attention.causal") == "false":
            raise ApiError(
                400,
                f"model '{self.settings.model_id}' is an encoder-only model ({architecture}): "
                "it makes embeddings and cannot generate text",
            )

    @property
    def completions(self) -> Completions:
        self._require_generation()
        llm = self.model
        if self._completions is None:  # sleep() drops it with the model
            bos, eos = _piece(llm, llm.token_bos()), _piece(llm, llm.token_eos())
            formatter = chat_formatter(llm, self.settings, bos, eos)
            self._completions = Completions(llm, self.decoder, self.settings, formatter)
        return self._completions

    def chat(self, body: bytes, cancelled: CancelCheck) -> Response:
        return self.completions.chat(body, cancelled)

    def text_completions(self, body: bytes, cancelled: CancelCheck) -> Response:
        return self.completions.completions(body, cancelled)

    def native_completion(self, body: bytes, cancelled: CancelCheck) -> Response:
        """llama-server's own `/completion`: `content`/`stop` objects instead of OpenAI choices."""
        return self.completions.native(body, cancelled)

    def apply_template(self, body: bytes, cancelled: CancelCheck) -> Response:
        """llama-server's `/apply-template`: the prompt the chat route would decode, ungenerated."""
        request, _, _ = self.completions.shaped(decode_object(body))
        _, _, prompt = self.completions.render(request)
        return Response.json(200, {"prompt": prompt})

    def chat_input_tokens(self, body: bytes, cancelled: CancelCheck) -> Response:
        """llama-server's count of a chat request's prompt tokens, ungenerated."""
        request, _, _ = self.completions.shaped(decode_object(body))
        tokens, _ = self.completions.chat_tokens(request)
        return Response.json(200, {"input_tokens": len(tokens)})

    def infill(self, body: bytes, cancelled: CancelCheck) -> Response:
        return infill.infill(self.completions, body, cancelled)

    def messages(self, body: bytes, cancelled: CancelCheck) -> Response:
        return anthropic.messages(self.completions, body, cancelled)

    def count_tokens(self, body: bytes, cancelled: CancelCheck) -> Response:
        return anthropic.count_tokens(self.completions, body)

    def embeddings(self, body: bytes, cancelled: CancelCheck) -> Response:
        request = decode_body(body, EmbeddingRequest)
        if not self.settings.embeddings:
            raise ApiError(
                501, "This server does not support embeddings. Start it with `--embeddings`"
            )
        llm = self.model
        if int(llm.pooling_type()) == llama_lib.LLAMA_POOLING_TYPE_NONE:
            raise ApiError(
                400,
                "Pooling type 'none' is not OAI compatible. Please use a different pooling type",
            )
        texts = embedding_texts(request.input, llm)
        vectors, tokens = self.decoder.exclusively(lambda: self._embed(llm, texts))
        self.counters.add(Figure.PROMPT_TOKENS, tokens)  # its prompt is decoded, as a chat's
        self.counters.add(Figure.DECODES, len(texts))
        as_base64 = request.encoding_format == "base64"
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": _base64_floats(vector) if as_base64 else vector,
            }
            for index, vector in enumerate(vectors)
        ]
        result = {
            "object": "list",
            "data": data,
            "model": request.model or self.settings.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Response.json(200, result)

    @staticmethod
    def _embed(llm: llama_cpp.Llama, texts: list[str]) -> tuple[list[Any], int]:
        """The context makes embeddings only for this call, so that generation keeps its logits;
        embed() clears the KV cache, so no slot's cache is reused afterwards."""
        llama_lib.llama_set_embeddings(llm._ctx.ctx, True)
        try:
            vectors, tokens = llm.embed(texts, normalize=True, return_count=True)
        finally:
            llama_lib.llama_set_embeddings(llm._ctx.ctx, False)
            llm.reset()
        return vectors, tokens

    def tokenize(self, body: bytes, cancelled: CancelCheck) -> Response:
        request = decode_body(body, TokenizeRequest)
        llm = self.model
        tokens = llm.tokenize(
            request.content.encode(), add_bos=request.add_special, special=request.parse_special
        )
        if not request.with_pieces:
            return Response.json(200, {"tokens": tokens})
        pieces = [{"id": token, "piece": _piece_value(llm, token)} for token in tokens]
        return Response.json(200, {"tokens": pieces})

    def detokenize(self, body: bytes, cancelled: CancelCheck) -> Response:
        request = decode_body(body, DetokenizeRequest)
        tokens = checked_tokens(request.tokens, self.model)
        text = detokenize(self.model, tokens)
        return Response.json(200, {"content": text})


_ROUTES: dict[str, Callable[[LlamaEngine, bytes, CancelCheck], Response]] = {
    "/v1/chat/completions": LlamaEngine.chat,
    "/chat/completions": LlamaEngine.chat,
    "/v1/completions": LlamaEngine.text_completions,
    "/completions": LlamaEngine.native_completion,  # as in llama-server: not the OpenAI shape
    "/completion": LlamaEngine.native_completion,
    "/v1/embeddings": LlamaEngine.embeddings,
    "/embeddings": LlamaEngine.embeddings,
    "/tokenize": LlamaEngine.tokenize,
    "/detokenize": LlamaEngine.detokenize,
    "/chat/completions/input_tokens": LlamaEngine.chat_input_tokens,
    "/v1/chat/completions/input_tokens": LlamaEngine.chat_input_tokens,
    "/apply-template": LlamaEngine.apply_template,
    "/infill": LlamaEngine.infill,
    "/v1/messages": LlamaEngine.messages,
    "/v1/messages/count_tokens": LlamaEngine.count_tokens,
}

ROUTES = frozenset(_ROUTES)


def _repack(asked: bool | None) -> bool:
    """Whether weights may move into llama.cpp's extra (AMX, repacked) buffers. By default not
    where this build uses AMX: there the pinned llama.cpp crashes on the first batch of several
    tokens of any quantized model (llama-server too, unless started with --no-repack)."""
    if asked is not None:
        return asked
    return b"AMX_INT8 = 1" not in llama_lib.llama_print_system_info()


def _apply_loras(llm: llama_cpp.Llama, loras: list[tuple[str, float]]) -> None:
    """Every `--lora`/`--lora-scaled` adapter at its scale (Llama() takes only one). The model
    frees them with itself."""
    adapters = []
    for path, _ in loras:
        adapter = llama_lib.llama_adapter_lora_init(llm._model.model, path.encode())
        if not adapter:
            raise ValueError(f"failed to load LoRA adapter {path}")
        adapters.append(adapter)
    array = (llama_lib.llama_adapter_lora_p_ctypes * len(adapters))(*adapters)
    scales = (ctypes.c_float * len(loras))(*(scale for _, scale in loras))
    if llama_lib.llama_set_adapters_lora(llm._ctx.ctx, array, len(adapters), scales):
        raise ValueError("failed to apply the LoRA adapters")


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _piece(llm: llama_cpp.Llama, token: int) -> str:
    if token < 0:
        return ""
    return detokenize(llm, [token], special=True)


def _piece_value(llm: llama_cpp.Llama, token: int) -> str | list[int]:
    raw = token_piece(llm._model.vocab, token, special=True)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


def _pooling_name(value: int) -> str:
    return next((name for name, code in POOLING.items() if code == value), "unspecified")
