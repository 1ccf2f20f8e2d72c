"""A model's slots survive a swap: their KV caches go to files when the model is unloaded,
evicted or put to sleep, and when it loads again each slot is offered its file, loaded as soon
as a prompt that shares its start comes, so a conversation that resumes after its model was
swapped out decodes only its new turn, and a load costs nothing for caches nobody comes back to.

The router picks one folder per model and settings (a cache fits only the weights and context
it was made with); all such folders together stay within a byte budget, the oldest files going
first.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from workers.engines.decoder import Decoder, forget_kept
from workers.errors import ApiError

log = logging.getLogger("llama-router")


def _slot_file(folder: Path, slot: int) -> Path:
    return folder / f"slot-{slot}.bin"


def keep(decoder: Decoder, folder: Path, budget: int) -> None:
    """Every slot's cache to files: its KV state, and its tokens to match prompts against."""
    folder.mkdir(parents=True, exist_ok=True)
    for slot in decoder.slots:
        path = _slot_file(folder, slot.seq_id)
        if not slot.cached:
            if slot.kept is None:  # a kept cache nobody came back for stays kept
                forget_kept(path)
            continue
        try:
            # the old list goes first: a worker stopped before the new one is written leaves a
            # file without a list, forgotten at the next load, not one beside an older list
            path.with_suffix(".tokens").unlink(missing_ok=True)
            decoder.save(slot.seq_id, path)
            path.with_suffix(".tokens").write_text(json.dumps(slot.cached))
        except (ApiError, OSError) as error:
            log.warning("could not keep slot %d in %s: %s", slot.seq_id, path, error)
            forget_kept(path)
    _prune(folder.parent, budget)


def bring_back(decoder: Decoder, folder: Path) -> None:
    """Offer each kept cache to its slot; it is loaded when a prompt that shares it comes."""
    for slot in decoder.slots:
        path = _slot_file(folder, slot.seq_id)
        try:
            tokens = json.loads(path.with_suffix(".tokens").read_text())
        except (OSError, ValueError):
            forget_kept(path)
            continue
        if path.is_file() and isinstance(tokens, list):
            decoder.offer_kept(slot.seq_id, path, tokens)


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
        forget_kept(path)
        total -= size
