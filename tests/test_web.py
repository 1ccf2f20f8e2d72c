"""The web page at `/` in a real headless Chromium, driven by Selenium, against a real router:
the key prompt, the live model table, a load, a chat answer that survives a page reload, and a
pull from a local hub. Every state it checks is also saved as a screenshot in
build/test-artifacts/web/.

The browser is Debian's Chromium and its chromedriver (`make install-test` installs them); the
paths are given, so Selenium Manager never runs and nothing is downloaded.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.fakehub import TINY_REPO, FakeHub
from tests.server import ROOT, RouterProcess, free_port
from tests.tinymodels import EOS_TOKEN

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = [
    "--headless=new",
    "--no-sandbox",  # root, in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]
ARTIFACTS = ROOT / "build" / "test-artifacts" / "web"
KEY = "web-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODELS = ["folded", "slow", "tiny-a", "tiny-b", "tiny-c"]
# A long answer from the slow model, with EOS banned so it cannot end early: it lasts a few
# seconds, long enough to reload the page in its middle.
ANSWER_TOKENS = 1500
NO_EOS = json.dumps({"logit_bias": {str(EOS_TOKEN): -100}})
# JavaScript prefixes: the model table's row of the model given as the script's first argument,
# and the cells of the activity panel's row of the slow model.
ROW = "const row = document.querySelector(`.model[data-model-id='${arguments[0]}']`);"
METRICS_ANSWERED = (
    "return performance.getEntriesByType('resource')"
    ".some(entry => new URL(entry.name).pathname === '/metrics')"
)
NOTE_SAYS = "return document.querySelector('#pull-note').textContent.includes(arguments[0])"
SLOW_METRICS = "const cells = document.querySelector(\"#metrics tr[data-model='slow']\")?.cells;"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: `make install-test` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def wait_until(driver: WebDriver, script: str, timeout: float = 20.0, *args: Any) -> Any:
    """Poll a JavaScript expression (`return …`) until it gives something truthy."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(script, *args), f"never true: {script}"
    )


def shot(driver: WebDriver, state: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{state}.png"))


def row_status(driver: WebDriver, model: str) -> Any:
    return driver.execute_script(ROW + "return row?.dataset.status ?? null", model)


def click_row_button(driver: WebDriver, model: str, action: str) -> None:
    row = driver.find_element(By.CSS_SELECTOR, f".model[data-model-id='{model}']")
    row.find_element(By.CSS_SELECTOR, f"button[data-action='{action}']").click()


def stored_chat(driver: WebDriver) -> Any:
    return driver.execute_script("return JSON.parse(localStorage.getItem('llama-router.chat'))")


def page_errors(driver: WebDriver) -> list[str]:
    """Errors and warnings of the page's code (a refused call, such as the 401 that asks for
    the key, is logged by the browser itself and is no error of the page)."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] in ("SEVERE", "WARNING") and entry["source"] != "network"
    ]


def replayed_text(server: RouterProcess, conv: str) -> str:
    """The answer a client that never dropped got: every content delta of the session."""
    reply = server.get(f"/v1/stream?conv_id={quote(conv, safe='')}&from=0", headers=AUTH)
    assert reply.status_code == 200, reply.text
    text = []
    for line in reply.content.decode().split("\n"):
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


def raw_get(server: RouterProcess, path: str) -> int:
    """A GET with the path sent as written (requests would remove the dot segments)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


def test_page_is_public_and_the_api_behind_it_is_not(router, models_dir: Path) -> None:
    server = router("--models-dir", str(models_dir), "--api-key", KEY)
    page = server.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in ("/web/app.js", "/web/app.css", "/web/vendor/marked/marked.esm.js"):
        assert server.get(path).status_code == 200, path
    assert server.get("/web/app.js").headers["content-type"].startswith("text/javascript")
    assert server.get("/web/vendor/dompurify/LICENSE").status_code == 200
    assert server.get("/web/nothing.js").json()["error"]["code"] == 404
    assert raw_get(server, "/web/../models/sse") == 404
    assert raw_get(server, "/web/%2e%2e/app.py") == 404
    assert server.get("/models/sse").status_code == 401
    assert server.post("/web/app.js").status_code == 401
    paths = server.get("/openapi.json", headers=AUTH).json()["paths"]
    assert "/" not in paths and not any(path.startswith("/web") for path in paths)


def test_key_models_load_and_a_chat_that_survives_a_reload(
    router, models_dir: Path, browser: WebDriver
) -> None:
    server = router("--models-dir", str(models_dir), "--api-key", KEY, "--metrics")
    browser.get(server.url + "/")

    # /models is public, so the table fills; the live events need the key, so the page asks
    wait_until(browser, "return document.querySelector('#key-dialog').open")
    wait_until(browser, "return document.querySelectorAll('#models .model').length === 5")
    shot(browser, "key-prompt")
    browser.find_element(By.ID, "api-key").send_keys(KEY)
    browser.find_element(By.ID, "key-submit").click()
    wait_until(browser, "return document.querySelector('#connection').dataset.state === 'live'")
    assert not browser.execute_script("return document.querySelector('#key-dialog').open")
    assert browser.execute_script("return localStorage.getItem('llama-router.api-key')") == KEY
    ids = browser.execute_script(
        "return [...document.querySelectorAll('#models .model')].map(r => r.dataset.modelId)"
    )
    assert ids == MODELS
    assert {row_status(browser, model) for model in MODELS} == {"unloaded"}
    shot(browser, "models")

    # a load, followed through /models/sse only: the page is never reloaded meanwhile
    browser.execute_script(
        """
        window.notReloaded = true;
        window.seen = [];
        const row = document.querySelector(".model[data-model-id='tiny-a']");
        const bar = row.querySelector('progress');
        const note = () => window.seen.push([row.dataset.status, bar.hidden ? null : bar.value]);
        new MutationObserver(note).observe(row, {attributes: true, subtree: true});
        """
    )
    click_row_button(browser, "tiny-a", "load")
    wait_until(browser, "return window.seen.some(([status]) => status === 'loaded')")
    seen = browser.execute_script("return window.seen")
    statuses = [status for status, _ in seen]
    assert statuses.index("loading") < statuses.index("loaded"), seen
    loading_bar = [value for status, value in seen if status == "loading"]
    assert loading_bar and all(value is not None for value in loading_bar), seen
    memory = ROW + "return row.querySelector('.model-meta').textContent.includes('MiB')"
    wait_until(browser, memory, 20, "tiny-a")
    assert browser.execute_script("return window.notReloaded")
    assert server.status("tiny-a") == "loaded"
    shot(browser, "loaded")

    # the activity panel shows the router's /metrics
    wait_until(browser, "return !document.querySelector('#metrics-panel').hidden")
    wait_until(browser, "return document.querySelector(\"#metrics tr[data-model='tiny-a']\")")

    # a long answer streams…
    Select(browser.find_element(By.ID, "chat-model")).select_by_value("slow")
    browser.find_element(By.CSS_SELECTOR, ".options summary").click()
    browser.find_element(By.ID, "max-tokens").send_keys(str(ANSWER_TOKENS))
    browser.find_element(By.ID, "extra-json").send_keys(NO_EOS)
    browser.find_element(By.ID, "prompt").send_keys("Tell me a long story.")
    browser.find_element(By.ID, "send").click()
    wait_until(browser, "return document.querySelector('#chat').dataset.state === 'streaming'")
    conv = browser.execute_script("return document.querySelector('#chat').dataset.convId")
    assert conv
    wait_until(
        browser,
        "const chat = JSON.parse(localStorage.getItem('llama-router.chat'));"
        "return chat.pending && chat.pending.offset > 6000",
        60,
    )
    wait_until(browser, "return /tok\\/s/.test(document.querySelector('#chat-stats').textContent)")
    shot(browser, "chat-streaming")
    assert browser.find_element(By.CSS_SELECTOR, ".message.assistant .content").text

    # …the page reloads in its middle, and picks the answer up where it was
    browser.refresh()
    resumed_from = int(
        wait_until(browser, "return document.querySelector('#chat').dataset.resumedFrom")
    )
    assert resumed_from >= 6000
    # the answer is a request in flight
    wait_until(browser, SLOW_METRICS + "return cells?.[1].textContent === '1'")
    assert browser.execute_script("return document.querySelector('#chat').dataset.state") != "idle"
    shot(browser, "chat-resumed")
    wait_until(browser, "return document.querySelector('#chat').dataset.state === 'idle'", 60)
    # its tokens per second between two scrapes
    wait_until(browser, SLOW_METRICS + "return parseFloat(cells?.[3].textContent) > 0")
    shot(browser, "chat-done")
    (session,) = server.post(
        "/v1/streams/lookup", {"conversation_ids": [conv]}, headers=AUTH
    ).json()
    assert session["is_done"] and session["total_bytes"] > resumed_from  # it went on after
    chat = stored_chat(browser)
    assert chat["pending"] is None
    answer = chat["messages"][-1]
    assert answer["role"] == "assistant" and answer["convId"] == conv
    assert "error" not in answer
    assert answer["content"] == replayed_text(server, conv)
    assert len(answer["content"]) >= ANSWER_TOKENS // 2
    last = browser.find_element(By.CSS_SELECTOR, ".message.assistant:last-child")
    assert last.get_attribute("data-conv-id") == conv
    assert last.find_element(By.CSS_SELECTOR, ".content").text
    assert "tok/s" in last.find_element(By.CSS_SELECTOR, ".meta").text

    # the same page on a phone's screen: one column
    browser.set_window_size(390, 844)
    try:
        wait_until(
            browser,
            "return getComputedStyle(document.querySelector('.layout'))"
            ".gridTemplateColumns.split(' ').length === 1",
        )
        shot(browser, "phone")
    finally:
        browser.set_window_size(1280, 900)
    dark = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", dark)
    try:
        wait_until(browser, "return matchMedia('(prefers-color-scheme: dark)').matches")
        shot(browser, "dark")
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert page_errors(browser) == []


def test_pull_shows_progress_and_lists_the_model(
    router, models_dir: Path, hub: FakeHub, browser: WebDriver
) -> None:
    server = router("--models-dir", str(models_dir), env={"HF_ENDPOINT": hub.url})
    hub.seconds_per_chunk = 0.12  # about 2 s for the file of 15 chunks
    # an answer is Markdown, and what it says is never markup the page runs (stored from
    # another address of the origin: the page itself saves its own conversation when it goes)
    hostile = '**bold** <img src="data:," onerror="window.ran = 1"><script>window.ran = 2</script>'
    stored = {"messages": [{"role": "assistant", "content": hostile}], "pending": None}
    browser.get(server.url + "/health")
    browser.execute_script(
        "localStorage.setItem('llama-router.chat', arguments[0])", json.dumps(stored)
    )
    browser.get(server.url + "/")
    wait_until(browser, "return document.querySelector('#connection').dataset.state === 'live'")
    answer = browser.find_element(By.CSS_SELECTOR, ".message.assistant .content")
    assert answer.find_element(By.TAG_NAME, "strong").text == "bold"
    assert answer.find_element(By.TAG_NAME, "img").get_attribute("onerror") is None
    assert not answer.find_elements(By.TAG_NAME, "script")
    assert browser.execute_script("return window.ran") is None
    name = f"{TINY_REPO}:Q4_K_M"
    browser.find_element(By.ID, "pull-name").send_keys(name)
    browser.find_element(By.ID, "pull").click()
    wait_until(
        browser,
        ROW + "const bar = row?.querySelector('progress');"
        "return row?.dataset.status === 'downloading' && bar.value > 0 && bar.value < 1",
        20,
        name,
    )
    shot(browser, "pull-progress")
    wait_until(browser, NOTE_SAYS, 20, "downloaded")
    wait_until(
        browser,
        ROW + "return row?.dataset.status === 'unloaded' && row.querySelector('.progress').hidden"
        " && !row.querySelector(\"button[data-action='delete']\").hidden",
        20,
        name,
    )
    assert server.model(name)["source"] == "cache"
    assert name in browser.execute_script(
        "return [...document.querySelectorAll('#chat-model option')].map(o => o.value)"
    )
    shot(browser, "pull-done")

    # a second pull, cancelled while it runs: the row goes away
    other = f"{TINY_REPO}:Q8_0"
    pull_field = browser.find_element(By.ID, "pull-name")
    pull_field.send_keys(other)
    browser.find_element(By.ID, "pull").click()
    wait_until(browser, ROW + "return row?.dataset.status === 'downloading'", 20, other)
    click_row_button(browser, other, "cancel")
    wait_until(browser, ROW + "return !row", 20, other)
    wait_until(browser, NOTE_SAYS, 20, "cancelled")
    shot(browser, "pull-cancelled")
    assert page_errors(browser) == []


def test_event_and_metrics_parsers_in_the_browser(
    router, models_dir: Path, browser: WebDriver
) -> None:
    """The page's own parsers: an SSE body cut into 1-byte reads (events split anywhere, a
    character split inside its UTF-8 bytes, CRLF lines) gives only whole events, and the event
    a read ends in the middle of waits; Prometheus text gives per-model sums."""
    server = router("--models-dir", str(models_dir))
    browser.get(server.url + "/")
    body = (
        'id: 31\ndata: {"content":"é✓ 🦙"}\n\n'
        ": ping\n\n"
        "id: 57\r\ndata: first\r\ndata: second\r\n\r\n"
        "id: 70\ndata: [DONE]\n\n"
        'id: 99\ndata: {"cut": tr'
    )
    events = browser.execute_async_script(
        """
        const [body, done] = arguments;
        const { readEvents } = await import('./web/app.js');
        const bytes = new TextEncoder().encode(body);
        let at = 0;
        const stream = new ReadableStream({
          pull(controller) {
            if (at < bytes.length) controller.enqueue(bytes.slice(at, ++at));
            else controller.close();
          },
        });
        const seen = [];
        await readEvents(new Response(stream), (event) => seen.push(event));
        done(seen);
        """,
        body,
    )
    assert events == [
        {"id": "31", "data": '{"content":"é✓ 🦙"}'},
        {"id": "57", "data": "first\nsecond"},
        {"id": "70", "data": "[DONE]"},
    ]
    metrics = (
        "# HELP llamacpp:requests_processing Number of requests processing.\n"
        "# TYPE llamacpp:requests_processing gauge\n"
        'llamacpp:requests_processing{model="a"} 1\n'
        'llamacpp:requests_processing{model="b,c}\\"d",slot="0"} 2\n'
        'llamacpp:requests_processing{slot="1",model="b,c}\\"d"} 3\n'
        "llamacpp:requests_processing 9\n"
        'llamacpp:tokens_predicted_total{model="a"} 1.5e3 1700000000000\n'
    )
    parsed = browser.execute_async_script(
        """
        const [text, done] = arguments;
        const { parseMetrics } = await import('./web/app.js');
        const samples = parseMetrics(text);
        done(Object.fromEntries([...samples].map(([name, m]) => [name, Object.fromEntries(m)])));
        """,
        metrics,
    )
    assert parsed == {
        "llamacpp:requests_processing": {"a": 1, 'b,c}"d': 5},
        "llamacpp:tokens_predicted_total": {"a": 1500},
    }


def test_thinking_shows_apart_from_the_answer(
    router, models_dir: Path, browser: WebDriver
) -> None:
    server = router("--models-dir", str(models_dir))
    browser.get(server.url + "/")
    wait_until(browser, "return document.querySelector('#connection').dataset.state === 'live'")
    Select(browser.find_element(By.ID, "chat-model")).select_by_value("tiny-a")
    browser.find_element(By.CSS_SELECTOR, ".options summary").click()
    grammar = 'root ::= "<think>" [a-z]{3,8} "</think>" [a-z]{3,8}'
    browser.find_element(By.ID, "extra-json").send_keys(json.dumps({"grammar": grammar}))
    browser.find_element(By.ID, "prompt").send_keys("Think first.")
    browser.find_element(By.ID, "send").click()
    wait_until(  # a tiny model's answer may be over before a look at it streaming
        browser,
        "return document.querySelector('#chat').dataset.state === 'idle'"
        " && document.querySelector('.message.assistant .content').textContent !== ''",
    )
    answer = browser.find_element(By.CSS_SELECTOR, ".message.assistant")
    thought = answer.find_element(By.CSS_SELECTOR, ".reasoning .thought")
    assert thought.get_attribute("textContent").isalpha()
    content = answer.find_element(By.CSS_SELECTOR, ".content").text
    assert content.isalpha() and "think" not in content
    answer.find_element(By.CSS_SELECTOR, ".reasoning summary").click()
    shot(browser, "chat-thinking")
    # started without --metrics: the activity panel hides once its scrape is answered
    wait_until(browser, METRICS_ANSWERED)
    assert browser.execute_script("return document.querySelector('#metrics-panel').hidden")
    assert page_errors(browser) == []


def test_a_model_served_elsewhere_shows_why_it_is_unavailable_and_no_load_button(
    router, tmp_path: Path, browser: WebDriver
) -> None:
    preset = tmp_path / "far.ini"
    preset.write_text(f"[far]\nupstream = http://127.0.0.1:{free_port()}/v1\n")
    server = router("--models-preset", str(preset), "--upstream-check-seconds", "0.3")
    browser.get(server.url + "/")
    wait_until(browser, ROW + "return row?.dataset.status === 'unavailable'", 20, "far")
    text = ROW + "return row.querySelector('.model-meta').textContent"
    meta = browser.execute_script(text, "far")
    assert meta.startswith("upstream") and server.model("far")["status"]["reason"] in meta
    hidden = ROW + "return [...row.querySelectorAll('button')].filter(b => !b.hidden).length"
    assert browser.execute_script(hidden, "far") == 0
