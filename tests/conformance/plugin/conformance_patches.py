"""Loaded into llama.cpp's server tests with `-p conformance_patches`, for both servers alike.

The one change: a test that fetches a file by its huggingface.co address (`utils.download_file`,
through `wget`) gets it from the local hub instead, and any other address fails at once rather
than reaching the network.
"""

from __future__ import annotations

import os
from typing import Any

import wget

HUB_URL = os.environ["CONFORMANCE_HUB_URL"]
HF_PREFIX = "https://huggingface.co/"
_download = wget.download


def _download_from_local_hub(url: str, *args: Any, **kwargs: Any) -> Any:
    if not url.startswith(HF_PREFIX):
        raise RuntimeError(f"conformance run: no network, and {url} is not on the local hub")
    return _download(HUB_URL.rstrip("/") + "/" + url[len(HF_PREFIX) :], *args, **kwargs)


wget.download = _download_from_local_hub
