"""Tiny random-weight llama GGUF models: real files that llama.cpp loads in milliseconds."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

BYTE_TOKENS = 256
VOCAB = 3 + BYTE_TOKENS
EOS_TOKEN = 2
# Fill-in-the-middle tokens as Qwen2.5-Coder names them, by llama.cpp's role for each.
FIM_TOKENS = {
    "pre": "<|fim_prefix|>",
    "suf": "<|fim_suffix|>",
    "mid": "<|fim_middle|>",
    "pad": "<|fim_pad|>",
    "rep": "<|repo_name|>",
    "sep": "<|file_sep|>",
}


def write_tiny_llama(
    path: Path,
    seed: int = 0,
    embedding: int = 64,
    blocks: int = 2,
    heads: int = 4,
    feed_forward: int = 128,
    context: int = 4096,
    pooling: int | None = None,
    shards: int = 1,
    pieces: tuple[str, ...] = (),
    fim: tuple[str, ...] = (),
    chat_template: str | None = None,
) -> Path:
    """A llama model with a byte vocabulary (`<unk>`, `<s>`, `</s>`, then `<0x00>`..`<0xFF>`).

    With `shards` > 1 it is written as `<stem>-00001-of-0000N.gguf` … and the first is returned.
    `pieces` are extra normal tokens after the bytes: `("▁",)` makes a space one token that
    detokenizes back to a space, as in a real SentencePiece vocabulary. `fim` names roles of
    FIM_TOKENS to add after them as control tokens, with the GGUF keys llama.cpp reads them by.
    """
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_count = 3 + 9 * blocks
    per_shard = -(-tensor_count // shards) if shards > 1 else 0
    writer = gguf.GGUFWriter(str(path), "llama", split_max_tensors=per_shard)
    writer.add_name(path.stem)
    writer.add_context_length(context)
    writer.add_embedding_length(embedding)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(embedding // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if pooling is not None:
        writer.add_pooling_type(gguf.PoolingType(pooling))
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(BYTE_TOKENS)]
    controls = [FIM_TOKENS[role] for role in fim]
    vocab = VOCAB + len(pieces) + len(controls)
    writer.add_token_list([*tokens, *pieces, *controls])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([2, 3, 3] + [6] * BYTE_TOKENS + [1] * len(pieces) + [3] * len(controls))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(EOS_TOKEN)
    writer.add_unk_token_id(0)
    for offset, role in enumerate(fim):
        writer.add_uint32(f"tokenizer.ggml.fim_{role}_token_id", VOCAB + len(pieces) + offset)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    def tensor(name: str, *shape: int, scale: float = 0.02) -> None:
        values = rng.normal(0.0, scale, size=shape).astype(np.float32)
        writer.add_tensor(name, values)

    def ones(name: str, size: int) -> None:
        writer.add_tensor(name, np.ones(size, dtype=np.float32))

    tensor("token_embd.weight", vocab, embedding, scale=1.0)
    ones("output_norm.weight", embedding)
    tensor("output.weight", vocab, embedding, scale=0.5)
    for block in range(blocks):
        prefix = f"blk.{block}"
        ones(f"{prefix}.attn_norm.weight", embedding)
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"{prefix}.{part}.weight", embedding, embedding)
        ones(f"{prefix}.ffn_norm.weight", embedding)
        tensor(f"{prefix}.ffn_gate.weight", feed_forward, embedding)
        tensor(f"{prefix}.ffn_up.weight", feed_forward, embedding)
        tensor(f"{prefix}.ffn_down.weight", embedding, feed_forward)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path if shards <= 1 else path.with_name(f"{path.stem}-00001-of-{shards:05d}.gguf")


def write_slow_llama(path: Path, seed: int = 0) -> Path:
    """About 43 MB: a few hundred tokens per second, for requests that must stay busy a while."""
    return write_tiny_llama(path, seed=seed, embedding=512, blocks=4, heads=8, feed_forward=1024)


def write_tiny_bert(path: Path, seed: int = 0, embedding: int = 32, blocks: int = 1) -> Path:
    """An encoder-only BERT with a WordPiece vocabulary: it makes embeddings, never text."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_name(path.stem)
    writer.add_context_length(512)
    writer.add_embedding_length(embedding)
    writer.add_block_count(blocks)
    writer.add_feed_forward_length(embedding * 2)
    writer.add_head_count(2)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_token_type_count(2)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("bert")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    tokens += [f"##{letter}" for letter in "abcdefghijklmnopqrstuvwxyz"]
    writer.add_token_list(tokens)
    writer.add_token_types([3, 2, 3, 3, 3] + [1] * (len(tokens) - 5))
    writer.add_unk_token_id(1)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(3)
    writer.add_sep_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_mask_token_id(4)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.normal(0.0, 0.02, size=shape).astype(np.float32))

    def ones(name: str, size: int) -> None:
        writer.add_tensor(name, np.ones(size, dtype=np.float32))

    def zeros(name: str, size: int) -> None:
        writer.add_tensor(name, np.zeros(size, dtype=np.float32))

    tensor("token_embd.weight", len(tokens), embedding)
    tensor("token_types.weight", 2, embedding)
    tensor("position_embd.weight", 512, embedding)
    ones("token_embd_norm.weight", embedding)
    zeros("token_embd_norm.bias", embedding)
    for block in range(blocks):
        prefix = f"blk.{block}"
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"{prefix}.{part}.weight", embedding, embedding)
            zeros(f"{prefix}.{part}.bias", embedding)
        ones(f"{prefix}.attn_output_norm.weight", embedding)
        zeros(f"{prefix}.attn_output_norm.bias", embedding)
        tensor(f"{prefix}.ffn_up.weight", embedding * 2, embedding)
        zeros(f"{prefix}.ffn_up.bias", embedding * 2)
        tensor(f"{prefix}.ffn_down.weight", embedding, embedding * 2)
        zeros(f"{prefix}.ffn_down.bias", embedding)
        ones(f"{prefix}.layer_output_norm.weight", embedding)
        zeros(f"{prefix}.layer_output_norm.bias", embedding)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_lora(path: Path, seed: int = 0, embedding: int = 64, rank: int = 4) -> Path:
    """A LoRA adapter for `write_tiny_llama`'s models that moves the output layer a lot."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
    lora_a = rng.normal(0.0, 1.0, size=(rank, embedding)).astype(np.float32)
    lora_b = rng.normal(0.0, 4.0, size=(VOCAB, rank)).astype(np.float32)
    writer.add_tensor("output.weight.lora_a", lora_a)
    writer.add_tensor("output.weight.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
