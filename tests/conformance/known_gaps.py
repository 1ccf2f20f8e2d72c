"""Tests that pass on llama-server and are known to fail on llama-router, each with its reason:
a feature that belongs to another open issue. `make conformance` fails on any other such test.
The README lists the same tests."""

from __future__ import annotations

API = "issue 11 (the rest of llama-server's API)"
SAME_ORIGIN = "issue 12: same-origin unless --cors-origins (llama-server allows any origin)"
WEB_UI = "issue 12 (the web page): the web UI's /cors-proxy"

KNOWN_GAPS: dict[str, str] = {
    **{
        f"test_completion.py::test_completion_response_fields[I believe the meaning of life is-"
        f"{n}-response_fields{index}]": API
        for index, n in enumerate((8, 32))
    },
    "test_completion.py::test_n_probs_stream": API,
    "test_completion.py::test_n_probs_post_sampling": API,
    "test_chat_completion.py::test_chat_template": API,
    "test_chat_completion.py::test_verbose_debug": API,
    "test_chat_completion.py::test_logprobs": API,
    "test_chat_completion.py::test_return_progress[64-4-False]": API,
    "test_chat_completion.py::test_return_progress[64-2-True]": API,
    "test_chat_completion.py::test_chat_completions_token_count": API,
    **{
        f"test_security.py::test_cors_options[{case}]": SAME_ORIGIN
        for case in (
            "localhost-Access-Control-Allow-Origin-localhost",
            "web.mydomain.fr-Access-Control-Allow-Origin-web.mydomain.fr",
            "origin-Access-Control-Allow-Credentials-true",
            "web.mydomain.fr-Access-Control-Allow-Methods-GET, POST, DELETE, OPTIONS",
            "web.mydomain.fr-Access-Control-Allow-Headers-*",
        )
    },
    "test_security.py::test_cors_origins_defaults_to_localhost_with_tools_enabled": SAME_ORIGIN,
    "test_security.py::test_cors_proxy_only_forwards_explicit_proxy_headers": WEB_UI,
}
