"""llama-server's command-line vocabulary: every flag it accepts, from llama.cpp's `common/arg.cpp`
in the pinned llama-cpp-python (the options llama-server parses), plus `--mlock` and
`--no-mmap`, which it took before `--load-mode` and which users' scripts still pass.

One row a flag: its canonical name (the key presets use) and other spellings, its negated
spellings, how many values it takes, and its env name after `LLAMA_ARG_`.
"""

from __future__ import annotations

from typing import NamedTuple


class FlagSpec(NamedTuple):
    name: str
    values: int


_TABLE = """
cache-list cl |  | 0 |
completion-bash |  | 0 |
threads t |  | 1 | THREADS
threads-batch tb |  | 1 |
cpu-mask C |  | 1 |
cpu-range Cr |  | 1 |
cpu-strict |  | 1 |
prio |  | 1 |
poll |  | 1 |
cpu-mask-batch Cb |  | 1 |
cpu-range-batch Crb |  | 1 |
cpu-strict-batch |  | 1 |
prio-batch |  | 1 |
poll-batch |  | 1 |
lookup-cache-static lcs |  | 1 |
lookup-cache-dynamic lcd |  | 1 |
ctx-size c |  | 1 | CTX_SIZE
kv-unified-per-slot |  | 1 | KV_UNIFIED_PER_SLOT
n-predict n predict |  | 1 | N_PREDICT
batch-size b |  | 1 | BATCH
ubatch-size ub |  | 1 | UBATCH
keep |  | 1 |
swa-full |  | 0 | SWA_FULL
swa-checkpoints ctxcp ctx-checkpoints |  | 1 | CTX_CHECKPOINTS
checkpoint-min-step cms |  | 1 | CHECKPOINT_MIN_SPACING_NT
cache-ram cram |  | 1 | CACHE_RAM
kv-unified kvu | no-kvu no-kv-unified | 0 | KV_UNIFIED
cache-idle-slots | no-cache-idle-slots | 0 | CACHE_IDLE_SLOTS
context-shift | no-context-shift | 0 | CONTEXT_SHIFT
flash-attn fa |  | 1 | FLASH_ATTN
perf | no-perf | 0 | PERF
escape e | no-escape | 0 |
reverse-prompt r |  | 1 |
special sp |  | 0 |
warmup | no-warmup | 0 |
spm-infill |  | 0 |
samplers |  | 1 |
seed s |  | 1 |
sampling-seq sampler-seq |  | 1 |
ignore-eos |  | 0 |
temp temperature |  | 1 | TEMPERATURE
top-k |  | 1 | TOP_K
top-p |  | 1 | TOP_P
min-p |  | 1 | MIN_P
top-n-sigma top-nsigma |  | 1 |
xtc-probability |  | 1 |
xtc-threshold |  | 1 |
typical typical-p |  | 1 |
repeat-last-n |  | 1 |
repeat-penalty |  | 1 | REPEAT_PENALTY
presence-penalty |  | 1 | PRESENCE_PENALTY
frequency-penalty |  | 1 | FREQUENCY_PENALTY
dry-multiplier |  | 1 |
dry-base |  | 1 |
dry-allowed-length |  | 1 |
dry-penalty-last-n |  | 1 |
dry-sequence-breaker |  | 1 |
adaptive-target |  | 1 |
adaptive-decay |  | 1 |
dynatemp-range |  | 1 |
dynatemp-exp |  | 1 |
mirostat |  | 1 |
mirostat-lr |  | 1 |
mirostat-ent |  | 1 |
logit-bias l |  | 1 |
grammar |  | 1 |
grammar-file |  | 1 |
json-schema j |  | 1 |
json-schema-file jf |  | 1 |
backend-sampling bs |  | 0 | BACKEND_SAMPLING
pooling |  | 1 | POOLING
rope-scaling |  | 1 | ROPE_SCALING_TYPE
rope-scale |  | 1 | ROPE_SCALE
rope-freq-base |  | 1 | ROPE_FREQ_BASE
rope-freq-scale |  | 1 | ROPE_FREQ_SCALE
yarn-orig-ctx |  | 1 | YARN_ORIG_CTX
yarn-ext-factor |  | 1 | YARN_EXT_FACTOR
yarn-attn-factor |  | 1 | YARN_ATTN_FACTOR
yarn-beta-slow |  | 1 | YARN_BETA_SLOW
yarn-beta-fast |  | 1 | YARN_BETA_FAST
kv-offload kvo | nkvo no-kv-offload | 0 | KV_OFFLOAD
repack | nr no-repack | 0 | REPACK
no-host |  | 0 | NO_HOST
cache-type-k ctk |  | 1 | CACHE_TYPE_K
cache-type-v ctv |  | 1 | CACHE_TYPE_V
defrag-thold dt |  | 1 | DEFRAG_THOLD
parallel np |  | 1 | N_PARALLEL
cont-batching cb | nocb no-cont-batching | 0 | CONT_BATCHING
mmproj mm |  | 1 | MMPROJ
mmproj-url mmu |  | 1 | MMPROJ_URL
mmproj-auto | no-mmproj no-mmproj-auto | 0 | MMPROJ_AUTO
mmproj-offload | no-mmproj-offload | 0 | MMPROJ_OFFLOAD
mmproj-device mmdev |  | 1 |
image-min-tokens |  | 1 | IMAGE_MIN_TOKENS
image-max-tokens |  | 1 | IMAGE_MAX_TOKENS
mtmd-batch-max-tokens |  | 1 | MTMD_BATCH_MAX_TOKENS
video-fps |  | 1 | VIDEO_FPS
video-timestamp-interval |  | 1 | VIDEO_TIMESTAMP_INTERVAL
video-ffmpeg-dir |  | 1 | VIDEO_FFMPEG_DIR
rpc |  | 1 | RPC
load-mode lm |  | 1 | LOAD_MODE
lazy-mode lzm |  | 1 | LAZY_MODE
numa |  | 1 | NUMA
device dev |  | 1 | DEVICE
list-devices |  | 0 |
override-tensor ot |  | 1 | OVERRIDE_TENSOR
cpu-moe cmoe |  | 0 | CPU_MOE
n-cpu-moe ncmoe |  | 1 | N_CPU_MOE
n-cpu-ffn ncffn |  | 1 | N_CPU_FFN
n-gpu-layers ngl gpu-layers |  | 1 | N_GPU_LAYERS
split-mode sm |  | 1 | SPLIT_MODE
tensor-split ts |  | 1 | TENSOR_SPLIT
main-gpu mg |  | 1 | MAIN_GPU
fit |  | 1 | FIT
fit-target fitt |  | 1 | FIT_TARGET
fit-ctx fitc |  | 1 | FIT_CTX
check-tensors |  | 0 |
override-kv |  | 1 |
op-offload | no-op-offload | 0 |
lora |  | 1 |
lora-scaled |  | 1 |
control-vector |  | 1 |
control-vector-scaled |  | 1 |
control-vector-layer-range |  | 2 |
alias a |  | 1 | ALIAS
tags |  | 1 | TAGS
model m |  | 1 | MODEL
model-url mu |  | 1 | MODEL_URL
docker-repo dr |  | 1 | DOCKER_REPO
hf-repo hf hfr |  | 1 | HF_REPO
hf-file hff |  | 1 | HF_FILE
hf-token hft |  | 1 |
embd-normalize |  | 1 |
host |  | 1 | HOST
port |  | 1 | PORT
reuse-port |  | 0 | REUSE_PORT
path |  | 1 | STATIC_PATH
cors-origins |  | 1 | CORS_ORIGINS
cors-methods |  | 1 | CORS_METHODS
cors-headers |  | 1 | CORS_HEADERS
cors-credentials | no-cors-credentials | 0 | CORS_CREDENTIALS
api-prefix |  | 1 | API_PREFIX
webui-config ui-config |  | 1 | UI_CONFIG
webui-config-file ui-config-file |  | 1 | UI_CONFIG_FILE
webui-mcp-proxy ui-mcp-proxy | no-ui-mcp-proxy no-webui-mcp-proxy | 0 | UI_MCP_PROXY
tools |  | 1 | TOOLS
tools-runtime |  | 1 | TOOLS_RUNTIME
mcp-servers-config |  | 1 | MCP_SERVERS_CONFIG
mcp-servers-json |  | 1 | MCP_SERVERS_JSON
agent ag | no-ag no-agent | 0 | AGENT
webui ui | no-ui no-webui | 0 | UI
embeddings embedding |  | 0 | EMBEDDINGS
reranking rerank |  | 0 | RERANKING
api-key |  | 1 |
api-key-file |  | 1 | API_KEY_FILE
ssl-key-file |  | 1 | SSL_KEY_FILE
ssl-cert-file |  | 1 | SSL_CERT_FILE
chat-template-kwargs |  | 1 | CHAT_TEMPLATE_KWARGS
timeout to |  | 1 | TIMEOUT
sse-ping-interval |  | 1 | SSE_PING_INTERVAL
threads-http |  | 1 | THREADS_HTTP
cache-prompt | no-cache-prompt | 0 | CACHE_PROMPT
cache-reuse |  | 1 | CACHE_REUSE
metrics |  | 0 | ENDPOINT_METRICS
props |  | 0 | ENDPOINT_PROPS
slots | no-slots | 0 | ENDPOINT_SLOTS
slot-save-path |  | 1 |
media-path |  | 1 |
models-dir |  | 1 | MODELS_DIR
models-preset |  | 1 | MODELS_PRESET
models-max |  | 1 | MODELS_MAX
models-autoload | no-models-autoload | 0 | MODELS_AUTOLOAD
jinja | no-jinja | 0 | JINJA
reasoning-format |  | 1 | THINK
reasoning rea |  | 1 | REASONING
reasoning-effort |  | 1 | REASONING_EFFORT
reasoning-budget |  | 1 | THINK_BUDGET
reasoning-budget-message |  | 1 | THINK_BUDGET_MESSAGE
reasoning-preserve | no-reasoning-preserve | 0 | REASONING_PRESERVE
chat-template |  | 1 | CHAT_TEMPLATE
chat-template-file |  | 1 | CHAT_TEMPLATE_FILE
skip-chat-parsing | no-skip-chat-parsing | 0 | SKIP_CHAT_PARSING
prefill-assistant | no-prefill-assistant | 0 | PREFILL_ASSISTANT
slot-prompt-similarity sps |  | 1 |
lora-init-without-apply |  | 0 |
sleep-idle-seconds |  | 1 |
log-disable |  | 0 |
log-file |  | 1 | LOG_FILE
log-jsonl | no-log-jsonl | 0 | LOG_JSONL
log-prompts-dir |  | 1 |
log-colors |  | 1 | LOG_COLORS
log-verbose v verbose |  | 0 |
offline |  | 0 | OFFLINE
log-verbosity lv verbosity |  | 1 | LOG_VERBOSITY
log-prefix | no-log-prefix | 0 | LOG_PREFIX
log-timestamps | no-log-timestamps | 0 | LOG_TIMESTAMPS
hf-repo-draft spec-draft-hf hfd hfrd |  | 1 | SPEC_DRAFT_HF_REPO
threads-draft spec-draft-threads td |  | 1 |
threads-batch-draft spec-draft-threads-batch tbd |  | 1 |
cpu-mask-draft spec-draft-cpu-mask Cd |  | 1 |
cpu-range-draft spec-draft-cpu-range Crd |  | 1 |
cpu-strict-draft spec-draft-cpu-strict |  | 1 |
prio-draft spec-draft-prio |  | 1 |
poll-draft spec-draft-poll |  | 1 |
cpu-mask-batch-draft spec-draft-cpu-mask-batch Cbd |  | 1 |
cpu-strict-batch-draft spec-draft-cpu-strict-batch |  | 1 |
prio-batch-draft spec-draft-prio-batch |  | 1 |
poll-batch-draft spec-draft-poll-batch |  | 1 |
cache-type-k-draft spec-draft-type-k ctkd |  | 1 | SPEC_DRAFT_CACHE_TYPE_K
cache-type-v-draft spec-draft-type-v ctvd |  | 1 | SPEC_DRAFT_CACHE_TYPE_V
override-tensor-draft spec-draft-override-tensor otd |  | 1 |
cpu-moe-draft spec-draft-cpu-moe cmoed |  | 0 | SPEC_DRAFT_CPU_MOE
n-cpu-moe-draft spec-draft-n-cpu-moe spec-draft-ncmoe ncmoed |  | 1 | SPEC_DRAFT_N_CPU_MOE
spec-draft-n-max |  | 1 | SPEC_DRAFT_N_MAX
spec-draft-n-min |  | 1 | SPEC_DRAFT_N_MIN
spec-synth-len |  | 1 | SPEC_SYNTH_LEN
spec-synth-rates |  | 1 | SPEC_SYNTH_RATES
draft-p-split spec-draft-p-split |  | 1 | SPEC_DRAFT_P_SPLIT
draft-p-min spec-draft-p-min |  | 1 | SPEC_DRAFT_P_MIN
spec-draft-backend-sampling | no-spec-draft-backend-sampling | 0 | SPEC_DRAFT_BACKEND_SAMPLING
device-draft spec-draft-device devd |  | 1 |
n-gpu-layers-draft spec-draft-ngl ngld gpu-layers-draft |  | 1 | N_GPU_LAYERS_DRAFT
model-draft spec-draft-model md |  | 1 | SPEC_DRAFT_MODEL
spec-type |  | 1 | SPEC_TYPE
spec-ngram-mod-n-min |  | 1 |
spec-ngram-mod-n-max |  | 1 |
spec-ngram-mod-n-match |  | 1 |
spec-ngram-simple-size-n |  | 1 |
spec-ngram-simple-size-m |  | 1 |
spec-ngram-simple-min-hits |  | 1 |
spec-ngram-map-k-size-n |  | 1 |
spec-ngram-map-k-size-m |  | 1 |
spec-ngram-map-k-min-hits |  | 1 |
spec-ngram-map-k4v-size-n |  | 1 |
spec-ngram-map-k4v-size-m |  | 1 |
spec-ngram-map-k4v-min-hits |  | 1 |
draft-max draft draft-n |  | 1 | DRAFT_MAX
draft-n-min draft-min |  | 1 | DRAFT_MIN
spec-ngram-size-n |  | 1 |
spec-ngram-size-m |  | 1 |
spec-ngram-min-hits |  | 1 |
embd-gemma-default |  | 0 |
fim-qwen-1.5b-default |  | 0 |
fim-qwen-3b-default |  | 0 |
fim-qwen-7b-default |  | 0 |
fim-qwen-7b-spec |  | 0 |
fim-qwen-14b-spec |  | 0 |
fim-qwen-30b-default |  | 0 |
gpt-oss-20b-default |  | 0 |
gpt-oss-120b-default |  | 0 |
vision-gemma-4b-default |  | 0 |
vision-gemma-12b-default |  | 0 |
spec-default |  | 0 |
mlock |  | 0 | MLOCK
mmap | no-mmap | 0 |
"""


def _parse(table: str) -> tuple[dict[str, FlagSpec], dict[str, str], dict[str, str]]:
    by_spelling: dict[str, FlagSpec] = {}
    negations: dict[str, str] = {}
    env_stems: dict[str, str] = {}
    for row in table.strip().splitlines():
        names, negated, values, env = (cell.strip() for cell in row.split("|"))
        spellings = names.split()
        spec = FlagSpec(spellings[0], int(values))
        for spelling in spellings:
            by_spelling[spelling] = spec
        for spelling in negated.split():
            negations[spelling] = spec.name
        if env:
            env_stems[env.lower().replace("_", "-")] = spec.name
    return by_spelling, negations, env_stems


# spelling without dashes -> flag; negated spelling -> canonical name; env stem -> canonical name
LLAMA_SERVER_FLAGS, NEGATED_FLAGS, ENV_NAMES = _parse(_TABLE)
