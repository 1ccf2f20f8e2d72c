"""The Hugging Face repos llama.cpp's server tests name, filled with tiny random-weight models.

Every file a test or a `ServerPreset` downloads is here under its own repo and path, so the tests
run with no network. The weights are random, so tests that check what a trained model writes
fail on both servers alike; what is compared is everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.fakehub import FakeHub
from tests.tinymodels import write_tiny_llama

POOLING_CLS = 2
SPACE_PIECE = "\u2581"  # SentencePiece's space: text detokenizes back with its spaces


@dataclass(frozen=True)
class HubFile:
    repo: str
    path: str
    pooling: int | None = None
    shards: int = 1


# The repos and files that `utils.py` (ServerPreset, ServerProcess) and the unit tests name; a
# router-mode id is `repo:TAG`, TAG read from the file name, so the names keep the real tags.
HUB_FILES = (
    HubFile("ggml-org/models", "tinyllamas/stories260K.gguf"),
    HubFile("ggml-org/models", "tinyllamas/split/stories15M-q8_0.gguf", shards=3),
    HubFile("ggml-org/models", "bert-bge-small/ggml-model-f16.gguf", pooling=POOLING_CLS),
    HubFile("ggml-org/models", "jina-reranker-v1-tiny-en/ggml-model-f16.gguf"),
    HubFile("ggml-org/test-model-stories260K", "stories260K-F32.gguf"),
    HubFile("ggml-org/test-model-stories260K-infill", "stories260K-infill-F32.gguf"),
    HubFile("ggml-org/stories15M_MOE", "stories15M_MOE-F16.gguf"),
    HubFile("ggml-org/tinygemma3-GGUF", "tinygemma3-Q8_0.gguf"),
    HubFile("ggml-org/test-model-router-download", "test-model-router-download-F16.gguf"),
    HubFile("ggml-org/tiny-llamas", "stories15M-q4_0.gguf"),  # test_speculative's draft model
)

# What llama-server's router lists from its cache once the tests' session fixture
# (`ServerPreset.load_all`, which starts every preset with `--hf-repo`) has run.
CACHE_IDS = (
    "ggml-org/tinygemma3-GGUF:Q8_0",
    "ggml-org/test-model-stories260K:F32",
    "ggml-org/test-model-stories260K-infill:F32",
    "ggml-org/stories15M_MOE:F16",
)

# test_router_remote_preset starts a router from a repo that holds only a preset.ini.
REMOTE_PRESET = (
    "ggml-org/test-preset-ci",
    "preset.ini",
    "[tinygemma3-preset]\n"
    "hf-repo = ggml-org/tinygemma3-GGUF:Q8_0\n"
    "\n"
    "[stories260K-test]\n"
    "hf-repo = ggml-org/test-model-stories260K\n",
)


def build_hub(models_dir: Path) -> FakeHub:
    """Write every model under `models_dir` and serve them all from a hub on 127.0.0.1."""
    hub = FakeHub()
    for seed, file in enumerate(HUB_FILES):
        written = write_tiny_llama(
            models_dir / file.repo / file.path,
            seed=seed,
            pooling=file.pooling,
            shards=file.shards,
            pieces=(SPACE_PIECE,),
        )
        folder = Path(file.path).parent
        shards = [written]
        if file.shards > 1:
            shards = sorted(written.parent.glob(f"{Path(file.path).stem}-*-of-*.gguf"))
        for shard in shards:
            hub.add(file.repo, str(folder / shard.name), shard.read_bytes())
    repo, path, text = REMOTE_PRESET
    hub.add(repo, path, text.encode())
    return hub
