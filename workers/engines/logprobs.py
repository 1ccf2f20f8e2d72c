"""Token log-probabilities: OpenAI's chat `logprobs`/`top_logprobs`, completions `logprobs: N`,
and llama-server's `n_probs` (`completion_probabilities` on /completion).

As llama-server computes them by default: a softmax over the model's logits for the step that
sampled the token, before the request's samplers, so they are the model's own distribution
whatever the temperature or penalties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama_lib
import numpy as np

from workers.errors import ApiError

MAX_TOP = 20  # OpenAI's limit for top_logprobs


@dataclass(frozen=True)
class TokenProbs:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the most likely tokens at this step, most likely first
    text: str | None = None  # what the token added to the answer's text, once it is known


def token_probs(ctx: Any, index: int, token: int, top: int, scratch: np.ndarray) -> TokenProbs:
    """The sampled token's log-probability and the `top` most likely, from the logits of batch
    position `index` (read before the next decode overwrites them). `scratch` holds a
    vocabulary's floats: this runs between two decodes, so it allocates nothing."""
    n_vocab = len(scratch)
    logits = np.ctypeslib.as_array(llama_lib.llama_get_logits_ith(ctx, index), shape=(n_vocab,))
    peak = float(logits.max())
    np.subtract(logits, peak, out=scratch)
    np.exp(scratch, out=scratch)
    log_total = peak + float(np.log(scratch.sum()))
    best: list[tuple[int, float]] = []
    if top > 0:
        count = min(top, n_vocab)
        ids = np.argpartition(logits, n_vocab - count)[n_vocab - count :]
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        best = [(int(i), float(logits[i]) - log_total) for i in ids]
    return TokenProbs(token, float(logits[token]) - log_total, best)


def wanted(request: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives per token the request asks for, or None for no log-probabilities.
    Chat: `logprobs: true` with `top_logprobs` (0 to 20); completions: `logprobs: N`; every
    route: llama-server's `n_probs`."""
    n_probs = request.get("n_probs")
    if isinstance(n_probs, int) and not isinstance(n_probs, bool) and n_probs > 0:
        return n_probs
    logprobs, top = request.get("logprobs"), request.get("top_logprobs")
    if chat:
        if top is not None and logprobs is not True:
            raise ApiError(400, "top_logprobs requires logprobs to be set to true")
        if logprobs is not True:
            return None
        top = top or 0
    else:
        if logprobs is None or logprobs is False:
            return None
        top = 0 if logprobs is True else logprobs
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
        raise ApiError(400, f"the number of log-probabilities must be between 0 and {MAX_TOP}")
    return top


class Shapes:
    """Log-probabilities in the shapes of OpenAI and llama-server, with each token's text."""

    def __init__(self, piece: Any) -> None:
        self._piece = piece  # token id -> its bytes

    def _entry(self, token: int, logprob: float, text: str | None = None) -> dict[str, Any]:
        raw = self._piece(token)
        return {
            "id": token,
            "token": raw.decode("utf-8", errors="ignore") if text is None else text,
            "bytes": list(raw),
            "logprob": logprob,
        }

    def content(self, probs: list[TokenProbs]) -> list[dict[str, Any]]:
        """OpenAI chat's `logprobs.content`, which is also llama-server's
        `completion_probabilities`."""
        return [
            {
                **self._entry(p.token, p.logprob, p.text),
                "top_logprobs": [self._entry(token, logprob) for token, logprob in p.top],
            }
            for p in probs
        ]

    def legacy(self, probs: list[TokenProbs], text_offset: int) -> dict[str, Any]:
        """OpenAI completions' `logprobs` (`tokens`, `token_logprobs`, `top_logprobs`,
        `text_offset`), with llama-server's `content` list beside them."""
        tokens, offsets = [], []
        for p in probs:
            text = self._entry(p.token, p.logprob, p.text)["token"]
            tokens.append(text)
            offsets.append(text_offset)
            text_offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [p.logprob for p in probs],
            "top_logprobs": [
                {self._piece(t).decode("utf-8", errors="ignore"): lp for t, lp in p.top}
                for p in probs
            ],
            "text_offset": offsets,
            "content": self.content(probs),
        }
