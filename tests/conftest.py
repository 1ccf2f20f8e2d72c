from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakehub import TINY_REPO, FakeHub
from tests.server import RouterProcess
from tests.tinymodels import write_slow_llama, write_tiny_llama


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-a, tiny-b, tiny-c (loose files), slow (43 MB) and a folder model `folded`."""
    root = tmp_path_factory.mktemp("models")
    for seed, name in enumerate(["tiny-a", "tiny-b", "tiny-c"]):
        write_tiny_llama(root / f"{name}.gguf", seed=seed)
    write_slow_llama(root / "slow.gguf", seed=7)
    write_tiny_llama(root / "folded" / "model-q8.gguf", seed=9)
    return root


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    """Start routers with given flags; each is stopped and checked for leftovers at teardown."""
    started: list[RouterProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> RouterProcess:
        server = RouterProcess(list(args), tmp_path / "cache", env)
        started.append(server)
        return server.wait_ready()

    yield start
    for server in started:
        server.stop_and_check()


@pytest.fixture
def hub(models_dir: Path) -> Iterator[FakeHub]:
    """A local hub holding TINY_REPO with a Q4_K_M and a Q8_0 file."""
    hub = FakeHub()
    hub.add(TINY_REPO, "tiny-Q4_K_M.gguf", (models_dir / "tiny-a.gguf").read_bytes())
    hub.add(TINY_REPO, "tiny-Q8_0.gguf", (models_dir / "tiny-b.gguf").read_bytes())
    yield hub
    hub.close()
