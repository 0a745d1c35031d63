"""Pairs that training would see as one: chosen and rejected identical once truncated to the
training length (OpenRLHF issue 1311 keeps such pairs; their DPO gradient is zero, and they still
count as data). Pure: the caller hands in a tokenizer object (loaded with load_tokenizer).

DPO (TRL 1.16 DPOTrainer, truncation keep_start) tokenises the prompt with the generation prompt and
prompt + answer with the policy's chat template, and trains on the first `max_length` tokens of
each. When the prompt alone fills them, neither answer is seen (TRL drops those rows itself, without
a count in our manifests); when the two answers agree on every token before the cut, the part where
they differ is cut off and TRL keeps a pair with zero gradient. Either way the pair teaches nothing.

    used by pairing.make_pairs(..., tokenizer=...) (python -m pairing, and the pipeline's commit task)
"""

from __future__ import annotations

from enum import StrEnum


class Cut(StrEnum):
    PROMPT = "prompt_fills_max_length"   # the prompt alone reaches max_length: no answer token is seen
    DIFFERENCE = "difference_cut_off"    # the answers agree on every token before the cut


def _ids(tokenizer, conversation: list[dict], answer: str | None) -> list[int]:
    """Token ids as DPO sees them: the conversation (+ the assistant's answer) in the chat template."""
    if answer is None:
        out = tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=True)
    else:
        out = tokenizer.apply_chat_template(conversation + [{"role": "assistant", "content": answer}],
                                            tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def truncation_cuts(tokenizer, prompts: list[list[dict]], chosen: list[str], rejected: list[str],
                    max_length: int) -> list[Cut | None]:
    """Per pair: why training at `max_length` tokens would see chosen and rejected as the same
    sequence, or None when it sees them differ."""
    cuts: list[Cut | None] = []
    for conv, c, r in zip(prompts, chosen, rejected, strict=True):
        if len(_ids(tokenizer, conv, None)) >= max_length:
            cuts.append(Cut.PROMPT)
        elif _ids(tokenizer, conv, c)[:max_length] == _ids(tokenizer, conv, r)[:max_length]:
            cuts.append(Cut.DIFFERENCE)
        else:
            cuts.append(None)
    return cuts


def load_tokenizer(model: str):
    """The policy's tokenizer (with its chat template) from a local folder or builtin name."""
    from transformers import AutoTokenizer

    from rsdpo.assets import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model(model))
