"""llama-server's `/infill`: the fill-in-the-middle prompt built from the model's FIM tokens,
then generated and answered as `/completion` answers (server-common.cpp, format_prompt_infill)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama_lib
import msgspec

from workers.engines.completions import Completions
from workers.engines.decoder import slot_context
from workers.engines.generation import checked_tokens
from workers.engines.response import Response
from workers.errors import ApiError
from workers.schema import InfillChunk, InfillRequest, decode_body, decode_object

CancelCheck = Callable[[], bool]
Tokenize = Callable[[str], list[int]]

# What separates the files of `input_extra` when the model has no file separator token
SNIPPET = "\n\n--- snippet ---\n\n"
# llama-server's fixed names, until it takes them from the request
REPO_NAME = "myproject\n"
FILE_NAME = "filename\n"


@dataclass(frozen=True)
class FimTokens:
    """The model's fill-in-the-middle tokens; -1 for those it lacks (LLAMA_TOKEN_NULL)."""

    pre: int
    suf: int
    mid: int
    rep: int
    sep: int

    @classmethod
    def of(cls, vocab: Any) -> FimTokens:
        return cls(
            pre=llama_lib.llama_vocab_fim_pre(vocab),
            suf=llama_lib.llama_vocab_fim_suf(vocab),
            mid=llama_lib.llama_vocab_fim_mid(vocab),
            rep=llama_lib.llama_vocab_fim_rep(vocab),
            sep=llama_lib.llama_vocab_fim_sep(vocab),
        )

    def require(self) -> None:
        """llama-server's answer to a model without the three it needs: 501, naming them."""
        missing = "".join(
            f"{name} token is missing. "
            for name, token in (("prefix", self.pre), ("suffix", self.suf), ("middle", self.mid))
            if token < 0
        )
        if missing:
            raise ApiError(501, f"Infill is not supported by this model: {missing}")


@dataclass(frozen=True)
class Budget:
    """What bounds the parts of the prompt: the batch (prefix 3/4 of it, suffix and `prompt`
    the rest), the slot's context less the batch and twice the server's `--n-predict` (the
    files of `input_extra`)."""

    n_batch: int
    n_predict: int
    n_ctx: int


def infill_tokens(
    fim: FimTokens,
    tokenize: Tokenize,
    prefix: list[int],
    suffix: list[int],
    prompt: list[int],
    extra: list[InfillChunk],
    budget: Budget,
    bos: int | None,
    suffix_first: bool,
) -> list[int]:
    """`[extra]<BOS><PRE>prefix prompt<SUF>suffix<MID>`, as format_prompt_infill builds it; with
    `suffix_first` (--spm-infill) the suffix part comes before the prefix part. The extra context
    takes the repo-level pattern (https://arxiv.org/pdf/2409.12186) when the model has its
    tokens: `<REP>myproject\\n<SEP>name\\ntext…<SEP>filename\\n`."""
    context: list[int] = []
    if fim.rep >= 0:
        context += [fim.rep, *tokenize(REPO_NAME)]
    for chunk in extra:
        if fim.sep >= 0:
            context += [fim.sep, *tokenize(chunk.filename + "\n")]
        else:
            context += tokenize(SNIPPET)
        context += tokenize(chunk.text)
    if fim.sep >= 0:
        context += [fim.sep, *tokenize(FILE_NAME)]

    quarter = budget.n_batch // 4
    prefix = prefix[len(prefix) - min(len(prefix), 3 * quarter) :]
    suffix = suffix[: max(0, quarter - (2 + len(prompt)))]
    context_taken = min(max(0, budget.n_ctx - budget.n_batch - 2 * budget.n_predict), len(context))

    head = [fim.pre, *prefix, *prompt]
    tail = [fim.suf, *suffix]
    if suffix_first:
        head, tail = tail, head
    if bos is not None:
        head = [bos, *head]
    return [*context[len(context) - context_taken :], *head, *tail, fim.mid]


def infill(completions: Completions, body: bytes, cancelled: CancelCheck) -> Response:
    """The FIM prompt as token ids in the body's `prompt`, then `/completion` with the rest of
    the body, as llama-server hands it on."""
    llm = completions.llm
    vocab = llm._model.vocab
    fim = FimTokens.of(vocab)
    fim.require()
    request = decode_body(body, InfillRequest)

    def plain(text: str) -> list[int]:
        return llm.tokenize(text.encode(), add_bos=False, special=False)

    def mixed(value: str | list[int | str]) -> list[int]:
        """A text, or token ids mixed with texts, read as plain text (no special tokens)."""
        tokens: list[int] = []
        for item in [value] if isinstance(value, str) else value:
            tokens += plain(item) if isinstance(item, str) else [item]
        return checked_tokens(tokens, llm)

    settings = completions.settings
    tokens = infill_tokens(
        fim,
        plain,
        prefix=mixed(request.input_prefix),
        suffix=mixed(request.input_suffix),
        prompt=llm.tokenize(request.prompt.encode(), add_bos=False, special=True),
        extra=request.input_extra,
        budget=Budget(settings.batch_size, settings.n_predict, slot_context(llm)),
        bos=llm.token_bos() if llama_lib.llama_vocab_get_add_bos(vocab) else None,
        suffix_first=settings.spm_infill,
    )
    completion = {**decode_object(body), "prompt": tokens}
    return completions.native(msgspec.json.encode(completion), cancelled)
