#!/usr/bin/env python3
"""Write a llama.cpp GGUF (F16, random weights) at the AFM reference shape
without KV sharing, for side-by-side speed runs against `twain bench
--synthetic afm`: 56 layers, d 2048, 16 query / 2 KV heads of 128, FFN 6656,
vocab 153 600, tied embeddings. Quantize it with llama.cpp afterwards:

    python3 scripts/afm_gguf.py /tmp/afm-f16.gguf
    llama-quantize /tmp/afm-f16.gguf /tmp/afm-q2_k.gguf Q2_K

Needs `pip install gguf numpy`. The vocabulary is placeholder SentencePiece
pieces (byte tokens plus "t<i>"), enough for llama-bench's random prompts.
"""
import sys

import numpy as np
import gguf

LAYERS, D, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 56, 2048, 16, 2, 128, 6656, 153600


def main(path: str) -> None:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("afm-shape-random")
    w.add_context_length(4096)
    w.add_embedding_length(D)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(VOCAB)
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [f"t{i}".encode() for i in range(VOCAB - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (VOCAB - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def rand(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    ones = np.ones(D, dtype=np.float32)
    w.add_tensor("token_embd.weight", rand(VOCAB, D))
    w.add_tensor("output_norm.weight", ones)
    for i in range(LAYERS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones)
        w.add_tensor(p + "ffn_norm.weight", ones)
        w.add_tensor(p + "attn_q.weight", rand(HEADS * HEAD_DIM, D))
        w.add_tensor(p + "attn_k.weight", rand(KV_HEADS * HEAD_DIM, D))
        w.add_tensor(p + "attn_v.weight", rand(KV_HEADS * HEAD_DIM, D))
        w.add_tensor(p + "attn_output.weight", rand(D, HEADS * HEAD_DIM))
        w.add_tensor(p + "ffn_gate.weight", rand(FFN, D))
        w.add_tensor(p + "ffn_up.weight", rand(FFN, D))
        w.add_tensor(p + "ffn_down.weight", rand(D, FFN))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()


if __name__ == "__main__":
    main(sys.argv[1])
