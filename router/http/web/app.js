// llama-router's web page: the model table kept live, downloads, a chat whose answer survives a
// page reload, and a small activity panel. Plain ES module, no build step; every URL is relative,
// so the page talks to the router that served it.
import { marked } from './vendor/marked/marked.esm.js';

const DOMPurify = window.DOMPurify; // vendor/dompurify/purify.min.js, loaded before this module
const STORE = {
  key: 'llama-router.api-key',
  chat: 'llama-router.chat',
  options: 'llama-router.options',
};
const MIB = 1024 * 1024;
const METRICS_SECONDS = 2;

const $ = (selector) => document.querySelector(selector);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function el(tag, { dataset = {}, ...props } = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  node.append(...children);
  return node;
}

// Run a promise whose failure only needs a line in the console.
function quietly(promise, what) {
  promise.catch((error) => console.warn(what, error));
}

function randomId() {
  // crypto.randomUUID needs a secure context; a LAN page over plain http is not one
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return 'web-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function readJson(key, fallback) {
  try {
    return JSON.parse(localStorage.getItem(key)) ?? fallback;
  } catch {
    return fallback;
  }
}

// ---- HTTP: the API key, errors, server-sent events --------------------------------------------

let keyPrompt = null;

// Ask for the key once, however many calls were refused meanwhile.
function askKey(message) {
  keyPrompt ??= new Promise((resolve) => {
    const dialog = $('#key-dialog');
    $('#key-message').textContent = message;
    $('#key-form').onsubmit = (event) => {
      event.preventDefault();
      localStorage.setItem(STORE.key, $('#api-key').value.trim());
      dialog.close();
    };
    dialog.onclose = () => {
      keyPrompt = null;
      $('#forget-key').hidden = !localStorage.getItem(STORE.key);
      resolve();
    };
    dialog.showModal();
    $('#api-key').focus();
  });
  return keyPrompt;
}

// fetch with the stored key; a 401 asks for a key and tries again.
async function api(path, init = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const key = localStorage.getItem(STORE.key);
    const headers = new Headers(init.headers);
    if (key) headers.set('Authorization', `Bearer ${key}`);
    const response = await fetch(path, { ...init, headers });
    if (response.status !== 401 || attempt === 3) return response;
    if (localStorage.getItem(STORE.key) !== key) continue; // a key came while this call ran
    await askKey(key ? 'The router refused that key. Try another.' : 'This router needs a key.');
  }
}

function postJson(path, body) {
  return api(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error?.message ?? `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

// One SSE event block: its id, its data lines joined; comments and empty blocks give null.
function parseEvent(block) {
  let id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
  }
  return id === null && !data.length ? null : { id, data: data.join('\n') };
}

// Read a text/event-stream body event by event. A network chunk may end in the middle of an
// event: that part waits in the buffer, so onEvent only ever sees complete events.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = /\r?\n\r?\n/.exec(buffer))) {
      const event = parseEvent(buffer.slice(0, end.index));
      buffer = buffer.slice(end.index + end[0].length);
      if (event) onEvent(event);
    }
  }
}

// ---- models -----------------------------------------------------------------------------------

const models = new Map(); // id -> entry as GET /models lists it, kept current by events
const rows = new Map(); // id -> the row's elements
let eventCount = 0; // events seen, so an older listing does not undo a newer event
let refreshTimer = null;

const mib = (bytes) => (bytes / MIB).toFixed(1);

function size(bytes) {
  if (bytes >= 1024 * MIB) return `${(bytes / 1024 / MIB).toFixed(2)} GiB`;
  if (bytes >= MIB) return `${mib(bytes)} MiB`;
  return `${(bytes / 1024).toFixed(0)} KiB`;
}

async function refreshModels() {
  const seenBefore = eventCount;
  const response = await api('models');
  if (!response.ok) return;
  const listed = (await response.json()).data;
  const fresh = new Map();
  for (const entry of listed) {
    const known = models.get(entry.id);
    if (known && known.seen > seenBefore) entry.status = known.status; // an event came since
    entry.seen = known?.seen ?? 0;
    fresh.set(entry.id, entry);
  }
  models.clear();
  fresh.forEach((entry, id) => models.set(id, entry));
  renderModels();
}

function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => quietly(refreshModels(), 'models'), 150);
}

function setStatus(id, value, progress) {
  let entry = models.get(id);
  if (!entry) {
    entry = { id, aliases: [], source: 'cache', status: {} };
    models.set(id, entry);
    refreshSoon();
  }
  entry.seen = ++eventCount;
  entry.status = progress ? { value, progress } : { value };
  if (value === 'unloaded') delete entry.memory;
  renderModel(entry);
}

function onModelEvent({ model, event, data = {} }) {
  switch (event) {
    case 'model_status':
      setStatus(model, data.status);
      break;
    case 'status_change':
      setStatus(model, data.status, data.progress);
      if (!data.progress) refreshSoon(); // memory, exit codes, failures
      break;
    case 'download_progress':
      setStatus(model, 'downloading', data.progress);
      break;
    case 'download_finished':
      pullNote(`${model} downloaded.`, 'ok');
      refreshSoon();
      break;
    case 'download_failed':
      if (data.message === 'cancelled') pullNote(`${model}: download cancelled.`);
      else pullNote(`${model}: download failed: ${data.message ?? 'unknown error'}`, 'error');
      refreshSoon();
      break;
    default: // model_remove, models_reload
      refreshSoon();
  }
}

async function watchModels() {
  for (let delay = 500; ; delay = Math.min(delay * 2, 8000)) {
    try {
      const response = await api('models/sse');
      if (response.ok) {
        $('#connection').dataset.state = 'live';
        $('#connection').textContent = 'live';
        delay = 250;
        quietly(refreshModels(), 'models');
        await readEvents(response, (event) => {
          if (!event.data) return;
          try {
            onModelEvent(JSON.parse(event.data));
          } catch (error) {
            console.warn('bad model event', event.data, error);
          }
        });
      }
    } catch (error) {
      console.debug('model events', error);
    }
    $('#connection').dataset.state = 'reconnecting';
    $('#connection').textContent = 'reconnecting…';
    await sleep(delay);
  }
}

function buildRow(id) {
  const button = (action, label, extra = '') =>
    el('button', { type: 'button', textContent: label, className: extra, dataset: { action } });
  const row = {
    li: el('li', { className: 'model', dataset: { modelId: id } }),
    badge: el('span', { className: 'badge' }),
    meta: el('div', { className: 'model-meta' }),
    bar: el('progress', { max: 1, value: 0 }),
    barText: el('span'),
    error: el('div', { className: 'model-error', hidden: true }),
    buttons: {
      load: button('load', 'Load'),
      unload: button('unload', 'Unload'),
      cancel: button('cancel', 'Cancel'),
      delete: button('delete', 'Delete', 'danger'),
    },
  };
  row.progress = el('div', { className: 'progress' }, row.bar, row.barText);
  const name = el('span', { className: 'model-name', textContent: id });
  const actions = el('span', { className: 'actions' }, ...Object.values(row.buttons));
  const head = el('div', { className: 'model-head' }, name, row.badge, actions);
  row.li.append(head, row.meta, row.progress, row.error);
  return row;
}

function showProgress(row, value, progress) {
  let fraction = null;
  let text = '';
  if (value === 'loading' && progress && typeof progress.value === 'number') {
    fraction = progress.value;
    text = `${Math.round(fraction * 100)}%`;
  } else if (value === 'downloading' && progress) {
    const files = Object.values(progress);
    const done = files.reduce((sum, file) => sum + (file.done || 0), 0);
    const total = files.reduce((sum, file) => sum + (file.total || 0), 0);
    fraction = total ? done / total : 0;
    text = `${size(done)} / ${size(total)}`;
  } else if (value === 'loading' || value === 'downloading') {
    fraction = 0;
  }
  row.progress.hidden = fraction === null;
  if (fraction !== null) row.bar.value = Math.min(Math.max(fraction, 0), 1);
  row.barText.textContent = text;
}

function renderModel(entry) {
  let row = rows.get(entry.id);
  if (!row) {
    row = buildRow(entry.id);
    rows.set(entry.id, row);
    placeRows();
  }
  const status = entry.status ?? {};
  const value = status.value ?? 'unloaded';
  const failed = Boolean(status.failed) && value === 'unloaded';
  row.li.dataset.status = failed ? 'failed' : value;
  row.badge.textContent = failed ? `failed (exit ${status.exit_code ?? '?'})` : value;
  const meta = [entry.source];
  if (entry.aliases?.length) meta.push(`aliases: ${entry.aliases.join(', ')}`);
  if (typeof entry.memory === 'number') meta.push(`${mib(entry.memory)} MiB`);
  if (status.reason) meta.push(status.reason);
  row.meta.textContent = meta.filter(Boolean).join(' · ');
  showProgress(row, value, status.progress);
  // a model another server serves is neither loaded nor unloaded here
  const remote = entry.source === 'upstream';
  const running = ['loading', 'loaded', 'sleeping'].includes(value);
  row.buttons.load.hidden = remote || running || value === 'downloading';
  row.buttons.unload.hidden = remote || !running;
  row.buttons.cancel.hidden = value !== 'downloading';
  row.buttons.delete.hidden = !entry.can_remove || value === 'downloading';
}

function placeRows() {
  const list = $('#models');
  [...rows.keys()].sort().forEach((id) => list.append(rows.get(id).li));
  $('#models-empty').hidden = rows.size > 0;
}

function renderModels() {
  for (const [id, row] of rows) {
    if (!models.has(id)) {
      row.li.remove();
      rows.delete(id);
    }
  }
  models.forEach(renderModel);
  placeRows();
  fillModelChoice();
}

const ACTIONS = {
  load: (id) => postJson('models/load', { model: id }),
  unload: (id) => postJson('models/unload', { model: id }),
  cancel: (id) => postJson('models/unload', { model: id }), // unloading a download cancels it
  delete: (id) => api(`models?model=${encodeURIComponent(id)}`, { method: 'DELETE' }),
};

async function onModelAction(event) {
  const button = event.target.closest('button[data-action]');
  if (!button) return;
  const id = button.closest('.model').dataset.modelId;
  const action = button.dataset.action;
  if (action === 'delete' && !confirm(`Delete the files of ${id}?`)) return;
  const row = rows.get(id);
  button.disabled = true;
  row.error.hidden = true;
  try {
    const response = await ACTIONS[action](id);
    if (!response.ok) {
      row.error.textContent = await errorText(response);
      row.error.hidden = false;
    }
  } catch (error) {
    row.error.textContent = String(error);
    row.error.hidden = false;
  } finally {
    button.disabled = false;
    refreshSoon();
  }
}

function pullNote(text, kind = '') {
  $('#pull-note').textContent = text;
  $('#pull-note').dataset.kind = kind;
}

async function onPull(event) {
  event.preventDefault();
  const name = $('#pull-name').value.trim();
  if (!name) return;
  $('#pull').disabled = true;
  try {
    const response = await postJson('models', { model: name });
    if (response.ok) {
      pullNote(`Downloading ${name}…`);
      $('#pull-name').value = '';
    } else {
      pullNote(`${name}: ${await errorText(response)}`, 'error');
    }
  } catch (error) {
    pullNote(String(error), 'error');
  } finally {
    $('#pull').disabled = false;
    refreshSoon();
  }
}

// ---- chat -------------------------------------------------------------------------------------

// Kept in localStorage: the messages, and while an answer streams, its conversation id and the
// byte offset just past the last complete event read (the `id:` of that event).
const chat = readJson(STORE.chat, { messages: [], pending: null });
let live = null; // the answer being read: { controller, answer, element, chunks, firstAt, done }
let leaving = false; // the page is going away: what is stored stays as it is
let saveTimer = null;
let paintQueued = false;

function save() {
  if (leaving) return;
  clearTimeout(saveTimer);
  saveTimer = null;
  localStorage.setItem(STORE.chat, JSON.stringify(chat));
}

function saveSoon() {
  saveTimer ??= setTimeout(save, 200);
}

function markdown(text) {
  return DOMPurify.sanitize(marked.parse(text, { gfm: true, breaks: true }));
}

function messageElement(message) {
  if (message.role === 'user') {
    return el('div', { className: 'message user', textContent: message.content });
  }
  const article = el('article', {
    className: 'message assistant',
    dataset: { convId: message.convId ?? '' },
  });
  const thinking = el('details', { className: 'reasoning', hidden: true });
  thinking.append(el('summary', { textContent: 'Thinking' }), el('div', { className: 'thought' }));
  article.append(
    thinking,
    el('div', { className: 'content' }),
    el('div', { className: 'error', hidden: true }),
    el('div', { className: 'meta' }),
  );
  paintAnswer(article, message);
  return article;
}

function paintAnswer(article, message) {
  article.querySelector('.content').innerHTML = markdown(message.content); // sanitized above
  article.querySelector('.reasoning').hidden = !message.reasoning;
  article.querySelector('.thought').textContent = message.reasoning ?? '';
  const error = article.querySelector('.error');
  error.textContent = message.error ?? '';
  error.hidden = !message.error;
  const meta = [message.model];
  if (message.tps) meta.push(`${message.tps.toFixed(1)} tok/s`);
  if (message.stopped) meta.push('stopped');
  else if (message.interrupted) meta.push('ended early');
  article.querySelector('.meta').textContent = meta.filter(Boolean).join(' · ');
}

function paintSoon() {
  if (paintQueued) return;
  paintQueued = true;
  requestAnimationFrame(() => {
    paintQueued = false;
    if (!live) return;
    const box = $('#messages');
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
    paintAnswer(live.element, live.answer);
    if (atBottom) box.scrollTop = box.scrollHeight;
    $('#chat-stats').textContent = live.answer.tps ? `${live.answer.tps.toFixed(1)} tok/s` : '';
  });
}

function renderConversation() {
  const box = $('#messages');
  box.replaceChildren(...chat.messages.map(messageElement));
  box.scrollTop = box.scrollHeight;
}

function setChatState(state) {
  const section = $('#chat');
  section.dataset.state = state;
  $('#stop').hidden = state === 'idle';
  $('#send').disabled = state !== 'idle';
}

// Read one answer's events: append its text, remember the offset of each complete event.
function onAnswerEvent(event) {
  const { answer } = live;
  if (event.data === '[DONE]') {
    live.done = true;
  } else if (event.data) {
    let chunk = null;
    try {
      chunk = JSON.parse(event.data);
    } catch {
      console.warn('not JSON', event.data);
    }
    if (chunk?.error) answer.error = chunk.error.message ?? JSON.stringify(chunk.error);
    const { content: delta, reasoning_content: thought } = chunk?.choices?.[0]?.delta ?? {};
    if (thought) answer.reasoning = (answer.reasoning ?? '') + thought;
    if (delta) answer.content += delta;
    if (delta || thought) {
      live.chunks += 1;
      live.firstAt ??= performance.now();
      const seconds = (performance.now() - live.firstAt) / 1000;
      if (seconds > 0.2) answer.tps = (live.chunks - 1) / seconds;
    }
    const reported = chunk?.timings?.predicted_per_second;
    if (reported) answer.tps = reported;
  }
  if (event.id !== null && chat.pending) chat.pending.offset = Number(event.id);
  saveSoon();
  paintSoon();
}

// Follow an answer from `open()`'s response to its end; the answer is the last message. A
// connection lost on the way is picked up again from the offset reached.
async function follow(answer, open) {
  const controller = new AbortController();
  const element = $('#messages').lastElementChild;
  live = { controller, answer, element, chunks: 0, firstAt: null, done: false };
  element.classList.add('streaming');
  $('#chat').dataset.convId = answer.convId;
  setChatState('streaming');
  for (let attempt = 0; ; attempt += 1) {
    try {
      const response = await (attempt === 0 ? open : openResume)(controller.signal);
      if (!response.ok) answer.error = await errorText(response);
      else await readEvents(response, onAnswerEvent);
      if (!live.done && !answer.error) answer.interrupted = true; // stopped elsewhere
      break;
    } catch (error) {
      // Stop and New chat abort; a page that goes away keeps its offset for the next one
      if (error.name === 'AbortError' || leaving) return;
      if (attempt === 3 || !chat.pending) {
        answer.error = `connection lost: ${error.message}`;
        break;
      }
      await sleep(500 * (attempt + 1));
    }
  }
  finishAnswer();
}

// GET /v1/stream from the offset reached: the rest of the answer, then its live tail.
async function openResume(signal) {
  const { convId, offset, startedAt = 0 } = chat.pending;
  const url = `v1/stream?conv_id=${encodeURIComponent(convId)}&from=${offset}`;
  for (;;) {
    const response = await api(url, { signal });
    const young = Date.now() - startedAt < 10000;
    // 503: the model is still loading; 404 just after the send: the POST has not arrived yet
    if (response.status !== 503 && !(response.status === 404 && young)) return response;
    await sleep(500);
  }
}

function finishAnswer() {
  if (!live) return;
  const { answer, element } = live;
  live = null;
  chat.pending = null;
  save();
  element.classList.remove('streaming');
  paintAnswer(element, answer);
  $('#chat-stats').textContent = answer.tps ? `${answer.tps.toFixed(1)} tok/s` : '';
  setChatState('idle');
}

function requestOptions() {
  const options = {};
  const maxTokens = parseInt($('#max-tokens').value, 10);
  if (maxTokens > 0) options.max_tokens = maxTokens;
  const extra = $('#extra-json').value.trim();
  if (extra) Object.assign(options, JSON.parse(extra)); // a bad JSON throws: the caller says so
  return options;
}

async function onSend(event) {
  event.preventDefault();
  const text = $('#prompt').value.trim();
  const model = $('#chat-model').value;
  if (!text || !model || live) return;
  let options;
  try {
    options = requestOptions();
  } catch (error) {
    $('#chat-stats').textContent = `Options: ${error.message}`;
    return;
  }
  saveOptions();
  const history = chat.messages
    .filter((message) => message.content)
    .map(({ role, content }) => ({ role, content }));
  const convId = randomId();
  const answer = { role: 'assistant', content: '', model, convId };
  chat.messages.push({ role: 'user', content: text }, answer);
  chat.pending = { convId, offset: 0, startedAt: Date.now() };
  save();
  $('#prompt').value = '';
  renderConversation();
  const messages = [...history, { role: 'user', content: text }];
  const body = { ...options, model, stream: true, messages };
  await follow(answer, (signal) =>
    api('v1/chat/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-Conversation-Id': convId },
      body: JSON.stringify(body),
      signal,
    }),
  );
}

// After a reload: pick the answer up at the offset reached.
async function resumePending() {
  const { pending } = chat;
  const answer = chat.messages.at(-1);
  if (!pending || answer?.convId !== pending.convId) {
    chat.pending = null;
    save();
    return;
  }
  $('#chat').dataset.resumedFrom = String(pending.offset);
  await follow(answer, openResume);
}

async function onStop() {
  const convId = chat.pending?.convId;
  if (!convId || !live) return;
  live.answer.stopped = true;
  live.controller.abort();
  finishAnswer();
  const url = `v1/stream?conv_id=${encodeURIComponent(convId)}`;
  await api(url, { method: 'DELETE' }).catch((error) => console.warn('stop', error));
}

async function onNewChat() {
  await onStop();
  chat.messages = [];
  chat.pending = null;
  save();
  renderConversation();
  $('#chat-stats').textContent = '';
  $('#prompt').focus();
}

function fillModelChoice() {
  const select = $('#chat-model');
  const loaded = [...models.values()].find((entry) => entry.status?.value === 'loaded');
  // the model chosen last; before any choice, a loaded one
  const wanted = readJson(STORE.options, {}).model || loaded?.id || select.value;
  const ids = [...models.values()]
    .filter((entry) => !['downloading', 'downloaded'].includes(entry.status?.value))
    .map((entry) => entry.id)
    .sort();
  const listed = [...select.options].map((option) => option.value);
  if (listed.join('\n') !== ids.join('\n')) {
    select.replaceChildren(...ids.map((id) => el('option', { value: id, textContent: id })));
  }
  if (ids.includes(wanted)) select.value = wanted;
}

function saveOptions() {
  const options = {
    model: $('#chat-model').value,
    maxTokens: $('#max-tokens').value,
    extra: $('#extra-json').value,
  };
  localStorage.setItem(STORE.options, JSON.stringify(options));
}

function loadOptions() {
  const options = readJson(STORE.options, {});
  $('#max-tokens').value = options.maxTokens ?? '';
  $('#extra-json').value = options.extra ?? '';
}

// ---- activity (GET /metrics, Prometheus text) --------------------------------------------------

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
let lastScrape = null;

// name -> model -> value, for the samples that carry a model label
function parseMetrics(text) {
  const samples = new Map();
  for (const line of text.split('\n')) {
    const match = line.startsWith('#') ? null : SAMPLE.exec(line.trim());
    if (!match) continue;
    const labels = {};
    for (const [, name, value] of (match[2] ?? '').matchAll(LABEL)) {
      labels[name] = value.replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    if (labels.model === undefined) continue;
    if (!samples.has(match[1])) samples.set(match[1], new Map());
    const byModel = samples.get(match[1]);
    byModel.set(labels.model, (byModel.get(labels.model) ?? 0) + Number(match[3]));
  }
  return samples;
}

function renderMetrics(samples, now) {
  const get = (name) => samples.get(name) ?? new Map();
  const processing = get('llamacpp:requests_processing');
  const waiting = get('llamarouter_requests_waiting');
  const predicted = get('llamacpp:tokens_predicted_total');
  const names = [...new Set([...processing.keys(), ...waiting.keys(), ...predicted.keys()])].sort();
  const rowsOut = names.map((name) => {
    let rate = '–';
    const before = lastScrape?.predicted.get(name);
    const seconds = lastScrape ? (now - lastScrape.at) / 1000 : 0;
    if (before !== undefined && predicted.has(name) && seconds > 0) {
      const increase = predicted.get(name) - before;
      if (increase >= 0) rate = (increase / seconds).toFixed(1);
    }
    const cells = [name, processing.get(name) ?? 0, waiting.get(name) ?? 0, rate];
    const tds = cells.map((cell) => el('td', { textContent: String(cell) }));
    return el('tr', { dataset: { model: name } }, ...tds);
  });
  $('#metrics').replaceChildren(...rowsOut);
  lastScrape = { at: now, predicted };
}

async function pollMetrics() {
  let response = null;
  try {
    response = await api('metrics');
    if (response.ok) {
      renderMetrics(parseMetrics(await response.text()), performance.now());
      $('#metrics-panel').hidden = false;
    } else {
      $('#metrics-panel').hidden = true;
    }
  } catch {
    $('#metrics-panel').hidden = true;
  }
  // 404: a router without /metrics; 501: started without --metrics. Either way, stay quiet.
  if (response?.status === 404 || response?.status === 501) return;
  setTimeout(pollMetrics, METRICS_SECONDS * 1000);
}

// ---- start ------------------------------------------------------------------------------------

function start() {
  $('#models').addEventListener('click', onModelAction);
  $('#pull-form').addEventListener('submit', onPull);
  $('#chat-form').addEventListener('submit', onSend);
  $('#prompt').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $('#chat-form').requestSubmit();
    }
  });
  $('#stop').addEventListener('click', onStop);
  $('#new-chat').addEventListener('click', onNewChat);
  $('#chat-model').addEventListener('change', saveOptions);
  $('#forget-key').hidden = !localStorage.getItem(STORE.key);
  $('#forget-key').addEventListener('click', () => {
    localStorage.removeItem(STORE.key);
    $('#forget-key').hidden = true;
  });
  window.addEventListener('pagehide', () => {
    save(); // the offset reached, for the next page
    leaving = true;
  });
  window.addEventListener('pageshow', () => {
    leaving = false;
  });
  loadOptions();
  renderConversation();
  setChatState('idle');
  quietly(refreshModels(), 'models');
  watchModels();
  pollMetrics();
  if (chat.pending) resumePending();
}

start();

// for tests/test_web.py, which checks them in the browser
export { parseEvent, parseMetrics, readEvents };
