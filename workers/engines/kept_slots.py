"""A model's slots survive a swap: their KV caches go to files when the model is unloaded,
evicted or put to sleep, and come back when it loads again, so a conversation that resumes
after its model was swapped out decodes only its new turn.

The router picks one folder per model and settings (a cache fits only the weights and context
it was made with); all such folders together stay within a byte budget, the oldest files going
first.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from workers.engines.decoder import Decoder
from workers.errors import ApiError

log = logging.getLogger("llama-router")


def _slot_file(folder: Path, slot: int) -> Path:
    return folder / f"slot-{slot}.bin"


def keep(decoder: Decoder, folder: Path, budget: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for slot in decoder.slots:
        path = _slot_file(folder, slot.seq_id)
        if not slot.cached:
            path.unlink(missing_ok=True)
            continue
        try:
            decoder.save(slot.seq_id, path)
        except ApiError as error:
            log.warning("could not keep slot %d in %s: %s", slot.seq_id, path, error.message)
            path.unlink(missing_ok=True)
    _prune(folder.parent, budget)


def bring_back(decoder: Decoder, folder: Path) -> int:
    """Restore every kept slot; the files go, as the slots will change. Tokens restored."""
    restored = 0
    for slot in decoder.slots:
        path = _slot_file(folder, slot.seq_id)
        if not path.is_file():
            continue
        try:
            restored += decoder.restore(slot.seq_id, path)["n_restored"]
        except ApiError as error:
            log.warning("could not restore slot %d from %s: %s", slot.seq_id, path, error.message)
        finally:
            path.unlink(missing_ok=True)
    return restored


def _prune(root: Path, budget: int) -> None:
    """Oldest files first, until every model's kept slots fit the budget."""
    files = []
    for path in root.glob("*/slot-*.bin"):
        with contextlib.suppress(OSError):  # another worker may prune the same file
            files.append((path.stat().st_mtime, path.stat().st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= budget:
            return
        path.unlink(missing_ok=True)
        total -= size
