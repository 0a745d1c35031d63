"""The embedded independent judge, and the pair accuracy of any scorer.

    python -m rewarding.judge            # build (once, cached) and print its held-out pair accuracy

`builtin:smollm2-judge` is a reward model that never scores training data: SmolLM2-135M-Instruct's
frozen backbone with a linear `score` head (LlamaForSequenceClassification, num_labels=1, served by
the classifier backend like any reward model) fitted by Bradley-Terry on reference-vs-corrupted
pairs (rewarding/preference.py) built from AlpacaEval's GPT-4 answers of the TRAIN split only. Its
signal (which answer a language model's last hidden state places nearer a GPT-4 answer than a
broken one) is another model's, fitted on another task, than the embedded training reward's
(MiniLM cosine relevance). The backbone stays frozen so that building it costs one forward pass
per text (1400 texts: 292 s measured on this 2-core machine while other jobs shared it) and is cached under rsdpo.assets.cache_dir().

pair_accuracy scores such pairs of held-out prompts with any Scorer: the share where the reference
is ranked above its corruption (ties count half), overall and per corruption kind.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from generation.config import PromptsConfig, Split
from generation.schema import PROMPT, PROMPT_ID, REFERENCE
from rewarding.config import BUILTIN_JUDGE, Backend, RewardingConfig
from rewarding.preference import fit_bradley_terry, reference_pairs
from rsdpo.assets import cache_dir, resolve_model

JUDGE_BASE = "builtin:smollm2-135m-instruct"
JUDGE_VERSION = "v2"      # bump when the recipe below changes: a new cache folder is built
FIT_PROMPTS = 200         # AlpacaEval train-split prompts the head is fitted on (x 6 corruptions)
PAIR_WORDS = 48           # references clipped to this many words: the ~64-token regime of eval responses
L2_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0)  # chosen on a validation quarter of the fitting prompts
SEED = 0


def reference_rows(split: Split, limit: int | None) -> list[tuple[str, list[dict], str]]:
    """(prompt_id, conversation, GPT-4 reference) of AlpacaEval's `split`, from the installed wheel."""
    from generation.prompts import load_prompts

    table = load_prompts(PromptsConfig(source="builtin:alpaca_eval", split=split, limit=limit)).table
    return [(p, c, r) for p, c, r in zip(table.column(PROMPT_ID).to_pylist(), table.column(PROMPT).to_pylist(),
                                         table.column(REFERENCE).to_pylist(), strict=True) if r]


def heldout_pairs(n_prompts: int) -> list[dict]:
    """Reference-vs-corrupted pairs of the first n_prompts AlpacaEval held-out prompts (never fitted on)."""
    return reference_pairs(reference_rows(Split.HELDOUT, n_prompts), PAIR_WORDS, SEED)


def pair_accuracy(scorer, pairs: list[dict]) -> dict:
    """Share of pairs whose chosen answer the scorer ranks above the rejected (ties half), overall and per
    kind. Scored without the reference (a reference-aware scorer would compare the answer with itself)."""
    rewards = scorer.score([p["prompt"] for p in pairs], [[p["chosen"], p["rejected"]] for p in pairs],
                           [None] * len(pairs))  # (n_pairs, 2)
    margin = np.array([c - r for c, r in rewards])
    hit = np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))
    kinds = [p["kind"] for p in pairs]
    return {"pairs": len(pairs), "accuracy": float(hit.mean()),
            "by_kind": {k: float(hit[[x == k for x in kinds]].mean()) for k in dict.fromkeys(kinds)}}


def _features(scorer, convs: list[list[dict]], responses: list[str]) -> np.ndarray:
    """(n, d) final hidden state at the position the classifier head reads, for each rendered
    (conversation, response): the same rendering, truncation and position as Scorer.score uses."""
    import torch

    from rewarding.scorer import last_read_index, length_batches

    c = scorer.config
    enc = scorer.classifier_inputs(convs, responses).ids
    if None in enc:
        raise ValueError(f"an answer does not fit max_length={c.max_length} tokens; raise max_length")
    out: list = [None] * len(enc)
    backbone = scorer.model.model
    with torch.inference_mode():
        for idx in length_batches([len(e) for e in enc], c.batch_size, c.max_batch_tokens, scorer.max_padding):
            ids, mask, _ = scorer._pad([enc[i] for i in idx])
            hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, t, d)
            for row, i in enumerate(idx):
                out[i] = hidden[row, last_read_index(enc[i], scorer.pad_id)].float().cpu().numpy()
    return np.stack(out)


def build_judge(out: Path, base: str = JUDGE_BASE, n_prompts: int = FIT_PROMPTS, max_length: int = 512) -> dict:
    """Fit the head on AlpacaEval train-split pairs and write the judge folder `out` (atomically)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rewarding.scorer import Scorer

    t0 = time.perf_counter()
    base_path = resolve_model(base)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1, dtype=torch.bfloat16,
                                                               pad_token_id=tok.pad_token_id)
    torch.nn.init.zeros_(model.score.weight)  # fitted below; zero until then
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    scorer = Scorer(RewardingConfig(backend=Backend.CLASSIFIER, model=str(tmp), max_length=max_length,
                                 dtype="bfloat16"))

    pairs = reference_pairs(reference_rows(Split.TRAIN, n_prompts), PAIR_WORDS, SEED)
    texts: dict[tuple[str, str], int] = {}  # (prompt_id, answer) -> feature row: each text runs once
    for p in pairs:
        for answer in (p["chosen"], p["rejected"]):
            texts.setdefault((p["prompt_id"], answer), len(texts))
    conv_of = {p["prompt_id"]: p["prompt"] for p in pairs}
    feats = _features(scorer, [conv_of[pid] for pid, _ in texts], [a for _, a in texts])  # (n_texts, d)
    sd = feats.std(0) + 1e-6  # standardised features: one l2 fits every dimension's scale
    diff = np.stack([(feats[texts[(p["prompt_id"], p["chosen"])]] - feats[texts[(p["prompt_id"], p["rejected"])]])
                     / sd for p in pairs])  # (n_pairs, d)

    ids = list(dict.fromkeys(p["prompt_id"] for p in pairs))
    val_ids = set(ids[::4])
    val = np.array([p["prompt_id"] in val_ids for p in pairs])
    val_acc = {}
    for l2 in L2_GRID:
        w = fit_bradley_terry(diff[~val], l2)
        val_acc[l2] = float(((diff[val] @ w) > 0).mean())
    best = max(L2_GRID, key=lambda l2: (val_acc[l2], l2))  # ties: the stronger penalty
    w = fit_bradley_terry(diff, best)
    with torch.no_grad():
        model.score.weight.copy_(torch.from_numpy(w / sd).to(model.score.weight.dtype)[None, :])
    model.save_pretrained(tmp, safe_serialization=True)
    record = {
        "judge": BUILTIN_JUDGE, "version": JUDGE_VERSION, "base": str(base_path),
        "fitted_on": f"AlpacaEval train split, first {n_prompts} prompts with a reference, "
                     f"{len(pairs)} reference-vs-corrupted pairs ({PAIR_WORDS}-word answers)",
        "l2": best, "validation_accuracy_by_l2": {str(k): v for k, v in val_acc.items()},
        "train_accuracy": float(((diff @ w) > 0).mean()), "build_s": round(time.perf_counter() - t0, 1),
    }
    (tmp / "judge.json").write_text(json.dumps(record, indent=2) + "\n")
    try:
        tmp.rename(out)
    except OSError:  # another process finished the same build first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def judge_dir() -> Path:
    """The embedded judge's folder, built on first use (minutes on 2 CPU cores)."""
    out = cache_dir() / f"smollm2-judge-{JUDGE_VERSION}"
    if not (out / "judge.json").exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"[rsdpo] building the independent judge {BUILTIN_JUDGE} into {out} (once)", file=sys.stderr)
        build_judge(out)
    return out


if __name__ == "__main__":
    from rewarding.scorer import Scorer

    folder = judge_dir()
    print(json.dumps(json.loads((folder / "judge.json").read_text()), indent=2))
    check = pair_accuracy(Scorer(RewardingConfig(backend=Backend.CLASSIFIER, model=BUILTIN_JUDGE, dtype="bfloat16")),
                          heldout_pairs(40))
    print(json.dumps({"folder": str(folder), "heldout_pair_accuracy": check}, indent=2))
