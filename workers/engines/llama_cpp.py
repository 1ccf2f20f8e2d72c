"""The llama-cpp-python engine: loads one GGUF model and answers the llama-server routes."""

from __future__ import annotations

import base64
import ctypes
import gc
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_lib
import psutil

from workers.engines.chat_templates import chat_formatter
from workers.engines.completions import Completions
from workers.engines.generation import checked_tokens
from workers.engines.response import Response
from workers.errors import ApiError
from workers.protocol import ModelSettings
from workers.schema import (
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    decode_body,
)

# llama-server's default: one thread per physical core (llama-cpp-python would use half of them).
DEFAULT_THREADS = psutil.cpu_count(logical=False) or os.cpu_count() or 1

POOLING = {
    "none": llama_lib.LLAMA_POOLING_TYPE_NONE,
    "mean": llama_lib.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_lib.LLAMA_POOLING_TYPE_CLS,
    "last": llama_lib.LLAMA_POOLING_TYPE_LAST,
    "rank": llama_lib.LLAMA_POOLING_TYPE_RANK,
}

CancelCheck = Callable[[], bool]


@contextmanager
def _load_progress(report: Callable[[float], None]) -> Iterator[None]:
    """Hook llama.cpp's load progress callback into Llama(), which does not expose it."""
    default_params = llama_lib.llama_model_default_params

    @llama_lib.llama_progress_callback
    def on_progress(value: float, _user: ctypes.c_void_p) -> bool:
        report(float(value))
        return True

    def params_with_progress() -> Any:
        params = default_params()
        params.progress_callback = on_progress
        return params

    llama_lib.llama_model_default_params = params_with_progress
    try:
        yield
    finally:
        llama_lib.llama_model_default_params = default_params


class LlamaEngine:
    def __init__(self, settings: ModelSettings, report_progress: Callable[[float], None]) -> None:
        self.settings = settings
        self._report_progress = report_progress
        self.llm: llama_cpp.Llama | None = None
        self._completions: Completions | None = None
        self._load()

    # --- lifetime -----------------------------------------------------------------------------

    def _load(self) -> None:
        s = self.settings
        if not os.path.isfile(s.path):
            raise FileNotFoundError(f"model file not found: {s.path}")
        pooling = POOLING.get(s.pooling or "", llama_lib.LLAMA_POOLING_TYPE_UNSPECIFIED)
        with _load_progress(self._report_progress):
            self.llm = llama_cpp.Llama(
                model_path=s.path,
                n_ctx=s.ctx_size,
                n_batch=s.batch_size,
                n_ubatch=s.ubatch_size,
                n_threads=s.threads or DEFAULT_THREADS,
                n_threads_batch=s.threads_batch or s.threads or DEFAULT_THREADS,
                n_gpu_layers=s.n_gpu_layers,
                seed=s.seed if s.seed >= 0 else llama_lib.LLAMA_DEFAULT_SEED,
                embedding=s.embeddings,
                pooling_type=pooling,
                chat_format=None,
                verbose=False,
            )

    def sleep(self) -> None:
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
            "n_ctx": llm.n_ctx(),
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
        }

    # --- routes -------------------------------------------------------------------------------

    def handle(self, route: str, body: bytes, cancelled: CancelCheck) -> Response:
        handler = _ROUTES.get(route)
        if handler is None:
            raise ApiError(404, f"route {route} is not served by this model")
        return handler(self, body, cancelled)

    def _require_generation(self) -> None:
        if self.settings.embeddings:
            raise ApiError(
                501, "This server does not support completions. Start it without `--embeddings`"
            )

    @property
    def completions(self) -> Completions:
        self._require_generation()
        llm = self.model
        if self._completions is None:  # sleep() drops it with the model
            bos, eos = _piece(llm, llm.token_bos()), _piece(llm, llm.token_eos())
            formatter = chat_formatter(llm, self.settings, bos, eos)
            self._completions = Completions(llm, self.settings, formatter)
        return self._completions

    def chat(self, body: bytes, cancelled: CancelCheck) -> Response:
        return self.completions.chat(body, cancelled)

    def text_completions(self, body: bytes, cancelled: CancelCheck) -> Response:
        return self.completions.completions(body, cancelled)

    def native_completion(self, body: bytes, cancelled: CancelCheck) -> Response:
        """llama-server's own `/completion`: `content`/`stop` objects instead of OpenAI choices."""
        return self.completions.native(body, cancelled)

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
        texts = _embedding_texts(request.input, llm)
        vectors, tokens = llm.embed(texts, normalize=True, return_count=True)
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
        text = self.model.detokenize(tokens).decode("utf-8", errors="replace")
        return Response.json(200, {"content": text})


_ROUTES: dict[str, Callable[[LlamaEngine, bytes, CancelCheck], Response]] = {
    "/v1/chat/completions": LlamaEngine.chat,
    "/chat/completions": LlamaEngine.chat,
    "/v1/completions": LlamaEngine.text_completions,
    "/completions": LlamaEngine.text_completions,
    "/completion": LlamaEngine.native_completion,
    "/v1/embeddings": LlamaEngine.embeddings,
    "/embeddings": LlamaEngine.embeddings,
    "/tokenize": LlamaEngine.tokenize,
    "/detokenize": LlamaEngine.detokenize,
}

ROUTES = frozenset(_ROUTES)


def _embedding_texts(value: str | list[Any], llm: llama_cpp.Llama) -> list[str]:
    """Strings, one token list, or several token lists, as llama-server accepts them."""
    if isinstance(value, str):
        items: list[Any] = [value]
    elif value and all(isinstance(item, int) for item in value):
        items = [value]
    else:
        items = value
    texts = []
    for item in items:
        if isinstance(item, list) and all(isinstance(token, int) for token in item):
            item = llm.detokenize(checked_tokens(item, llm)).decode("utf-8", errors="replace")
        if not isinstance(item, str):
            raise ApiError(400, "input must be a string, a list of strings or token ids")
        if not item:
            raise ApiError(400, "Input content cannot be empty")
        texts.append(item)
    if not texts:
        raise ApiError(400, "Input content cannot be empty")
    return texts


def _base64_floats(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _piece(llm: llama_cpp.Llama, token: int) -> str:
    if token < 0:
        return ""
    return llm.detokenize([token], special=True).decode("utf-8", errors="replace")


def _piece_value(llm: llama_cpp.Llama, token: int) -> str | list[int]:
    raw = llm.detokenize([token], special=True)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


def _pooling_name(value: int) -> str:
    return next((name for name, code in POOLING.items() if code == value), "unspecified")
