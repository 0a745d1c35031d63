"""Scorer: k rewards per prompt from a reward model, plus the per-prompt distribution.

Two backends behind one callable (`scorer(samples_table) -> scored_table`):
- classifier: a Hugging Face sequence-classification reward model (num_labels=1), fed the
  conversation + response rendered with the reward model's own chat template; returns the raw
  logit (no sigmoid: Algorithm 1 thresholds raw differences).
- embedding: cosine relevance of the response to the prompt (and to the reference answer when
  the row has one) from a sentence-embedding model, mean-pooled (the embedded default: MiniLM).

Inputs are sorted by token length and packed into batches under a token budget, so padding is
small and the model sees few, full batches. A decoder reward model runs the tokens a prompt's k
inputs share (template and prompt) once, and each response on their cached keys and values
(`share_prefix`): k-1 of every k prompt tokens are not computed again. A non-finite reward makes
the row an error row.

An input longer than `max_length` is never cut silently. The classifier keeps the response whole
and drops the start of the conversation (after its leading special tokens), so the reward still
reads all of the response and the latest turn; a response that does not fit even alone makes the
row an error (`reward_input_too_long`). The embedding backend embeds the response alone and cuts
its end. Either way the row's `reward_truncated` column counts its cut inputs. A reward model
without a chat template (BERT-style encoders) reads (conversation, response) as a sentence pair
with its own special tokens ([CLS] ... [SEP] ... [SEP]) and token types.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from generation.schema import ERROR, PROMPT, REFERENCE, RESPONSES, SAMPLES_SCHEMA
from rewarding.config import BUILTIN_JUDGE, Backend, RewardingConfig
from rewarding.schema import (
    REWARD_MAX,
    REWARD_MEAN,
    REWARD_MIN,
    REWARD_STD,
    REWARD_TRUNCATED,
    REWARDS,
    SCORED_SCHEMA,
)
from rsdpo.assets import resolve_model
from rsdpo.shards import conform


def length_batches(lengths: list[int], max_batch: int, max_tokens: int,
                   max_padding: float = 1.0) -> list[list[int]]:
    """Indices grouped longest-first so each batch's padded size (len(batch) * longest) fits the
    token budget, holds at most max_batch sequences, and is at most `max_padding` padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur, longest, real = [], [], 0, 0
    for i in order:
        n = lengths[i]
        longest_if, size_if = max(longest, n), len(cur) + 1
        padded_if = size_if * longest_if
        if cur and (size_if > max_batch or padded_if > max_tokens or padded_if - real - n > max_padding * padded_if):
            batches.append(cur)
            cur, longest_if, real = [], n, 0
        cur.append(i)
        longest, real = longest_if, real + n
    if cur:
        batches.append(cur)
    return batches


log = logging.getLogger("rsdpo")

# A shorter shared prefix saves less compute than placing its cache in a batch costs.
MIN_SHARED_TOKENS = 16


def last_read_index(seq: list[int], pad_id: int | None) -> int:
    """The position a last-token `score` head reads: the last token that is not padding
    (transformers' rule for sequence classification; 0 when every token is `pad_id`)."""
    if pad_id is None:
        return len(seq) - 1
    for i in range(len(seq) - 1, -1, -1):
        if seq[i] != pad_id:
            return i
    return 0


def shared_prefix_len(seqs: list[list[int]], pad_id: int | None) -> int:
    """Tokens every one of `seqs` starts with, stopping short of the position each one's score is
    read from, so that position always lies in the input's own part."""
    common = len(os.path.commonprefix(seqs))
    return min([common] + [last_read_index(s, pad_id) for s in seqs])


# More responses than this share scored from cut inputs is worth a warning in the stage's output.
TRUNCATION_WARN_SHARE = 0.1


def truncation_warning(truncated: int, responses: int, max_length: int) -> str | None:
    """The warning for `truncated` of `responses` scored from cut inputs (reward_truncated), or None."""
    if not responses or truncated / responses <= TRUNCATION_WARN_SHARE:
        return None
    return (f"{truncated} of {responses} responses ({truncated / responses:.0%}) were scored from inputs cut to "
            f"rewarding.max_length={max_length} tokens (column reward_truncated); raise rewarding.max_length "
            f"as far as the reward model's context allows")


def kept_positions(n: int, cut_order: list[int], max_length: int) -> list[int] | None:
    """Positions of an n-token input to keep so that at most `max_length` remain, dropping the
    positions of `cut_order` in its order; None when dropping all of them is not enough."""
    over = n - max_length
    if over <= 0:
        return list(range(n))
    if over > len(cut_order):
        return None
    drop = set(cut_order[:over])
    return [j for j in range(n) if j not in drop]


@dataclass
class Encoded:
    """Token ids of scorer inputs, each fitted to max_length (None: it cannot be fitted)."""

    ids: list[list[int] | None]
    types: list[list[int]] | None  # token type ids of sentence-pair inputs, else None
    truncated: list[bool]          # the input was cut to fit


@dataclass
class Scores:
    rewards: list[list[float]]  # (n_prompts, k_i) raw rewards; NaN where a response could not be scored whole
    truncated: list[int]        # per prompt: responses scored from a cut input
    too_long: list[str | None]  # per prompt: why a response could not be scored whole, else None


def _last_user_text(conv: list[dict]) -> str:
    return next(m["content"] for m in reversed(conv) if m["role"] == "user")


def _last_token_head(model) -> bool:
    """A decoder with transformers' last-token `score` head (Llama, Qwen2, Mistral, Gemma, ... for
    sequence classification): the models whose shared prefix can run once."""
    try:
        from transformers.modeling_layers import GenericForSequenceClassification
    except ImportError:
        return False
    return isinstance(model, GenericForSequenceClassification)


class Scorer:
    def __init__(self, config: RewardingConfig):
        import torch
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        self.config = config
        if config.model == BUILTIN_JUDGE:
            from rewarding.judge import judge_dir  # built on first use, then cached

            self.model_path = judge_dir()
        else:
            self.model_path = resolve_model(config.model)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device)
        dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[config.dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=config.trust_remote_code)
        kwargs = {"dtype": dtype, "trust_remote_code": config.trust_remote_code,
                  "use_safetensors": not config.allow_pickle_weights}
        match config.backend:
            case Backend.CLASSIFIER:
                model = AutoModelForSequenceClassification.from_pretrained(self.model_path, **kwargs)
                if model.config.num_labels != 1:
                    raise ValueError(f"{self.model_path}: reward model must have num_labels=1, "
                                     f"has {model.config.num_labels}")
                if self.tokenizer.pad_token_id is None:
                    self.tokenizer.pad_token = self.tokenizer.eos_token
                model.config.pad_token_id = self.tokenizer.pad_token_id
            case Backend.EMBEDDING:
                model = AutoModel.from_pretrained(self.model_path, **kwargs)
        self.tokenizer.padding_side = "right"
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.max_padding = config.max_padding if config.max_padding is not None else (
            0.1 if self.device.type == "cpu" else 1.0)
        self.model = model.to(self.device).eval()
        self.share_prefix = config.backend == Backend.CLASSIFIER and config.share_prefix and _last_token_head(model)
        self.oom_splits = 0  # batches halved after an out-of-memory error (reported in manifests)

    def _forward(self, enc: Encoded, groups: list[list[int]] | None = None):
        """Run the model over encoded inputs in length-sorted, token-budgeted batches. `groups` lists
        the indices of inputs that share a prompt: with `share_prefix`, their common tokens run once.
        Returns (n,) raw logits (classifier) or (n, d) L2-normalised embeddings (embedding); an input
        that could not be fitted gets NaN."""
        import torch

        c = self.config
        run = [i for i, e in enumerate(enc.ids) if e is not None]
        ids = {i: enc.ids[i] for i in run}
        owner = dict.fromkeys(run, -1)  # per input: index of the shared prefix it continues, or -1
        prefixes: list[list[int]] = []
        for rows in groups if self.share_prefix and groups else []:
            rows = [r for r in rows if r in ids]
            if len(rows) > 1 and (n := shared_prefix_len([ids[r] for r in rows], self.pad_id)) >= MIN_SHARED_TOKENS:
                for r in rows:
                    owner[r] = len(prefixes)
                prefixes.append(ids[rows[0]][:n])
        out: dict[int, object] = {}
        with torch.inference_mode():
            try:
                caches = self._prefix_caches(prefixes)
            except NotImplementedError as e:  # found only once the model has run
                log.warning("%s: %s; share_prefix is off for this reward model", self.model_path, e)
                self.share_prefix, owner, prefixes, caches = False, dict.fromkeys(run, -1), [], []
            parts = [ids[i][len(prefixes[owner[i]]):] if owner[i] >= 0 else ids[i] for i in run]
            for idx in length_batches([len(p) for p in parts], c.batch_size, c.max_batch_tokens, self.max_padding):
                items = [(parts[b], caches[owner[run[b]]] if owner[run[b]] >= 0 else None,
                          enc.types[run[b]] if enc.types else None) for b in idx]
                for b, v in zip(idx, self._halving(self._run_batch, items), strict=True):
                    out[run[b]] = v
        if not out:
            return np.full((len(enc.ids),), np.nan)
        some = np.asarray(next(iter(out.values())))
        missing = np.full(some.shape, np.nan, dtype=some.dtype)
        return np.stack([out.get(i, missing) for i in range(len(enc.ids))])

    def _halving(self, fn, items: list) -> list:
        """fn(items); on out-of-memory, halve the batch and retry, down to one input."""
        import torch

        try:
            return fn(items)
        except torch.OutOfMemoryError:
            if len(items) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.oom_splits += 1
            half = len(items) // 2
            return self._halving(fn, items[:half]) + self._halving(fn, items[half:])

    def _pad(self, ids_list: list[list[int]], types_list: list[list[int]] | None = None):
        """Right-padded (ids, mask, token types or None) tensors. Padding with numpy: tokenizer.pad
        walks Python lists and was a quarter of a GPU scorer's time (bench/README.md)."""
        import torch

        longest = max(map(len, ids_list))
        ids_np = np.full((len(ids_list), longest), self.pad_id, dtype=np.int64)
        mask_np = np.zeros((len(ids_list), longest), dtype=np.int64)
        types_np = np.zeros((len(ids_list), longest), dtype=np.int64) if types_list else None
        for row, seq in enumerate(ids_list):
            ids_np[row, : len(seq)] = seq
            mask_np[row, : len(seq)] = 1
            if types_np is not None:
                types_np[row, : len(seq)] = types_list[row]
        return (torch.from_numpy(ids_np).to(self.device), torch.from_numpy(mask_np).to(self.device),
                None if types_np is None else torch.from_numpy(types_np).to(self.device))

    def _prefix_caches(self, prefixes: list[list[int]]) -> list:
        """Keys and values of each shared prefix, as one (layers, 2, kv_heads, len, head_dim) tensor."""
        import torch

        c = self.config
        caches: list = [None] * len(prefixes)

        def run(batch: list[int]) -> list:
            ids, mask, _ = self._pad([prefixes[j] for j in batch])
            kv = self.model(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
            if any(getattr(layer, "is_sliding", False) for layer in kv.layers):
                raise NotImplementedError("sliding-window attention layers")
            stacked = torch.stack([torch.stack((layer.keys, layer.values)) for layer in kv.layers])
            # right padding: a prefix's own positions never saw the padding after them
            return [stacked[:, :, b, :, : len(prefixes[j])] for b, j in enumerate(batch)]

        for idx in length_batches([len(p) for p in prefixes], c.batch_size, c.max_batch_tokens, self.max_padding):
            for j, kv in zip(idx, self._halving(run, idx), strict=True):
                caches[j] = kv
        return caches

    def _run_batch(self, items: list[tuple[list[int], object, list[int] | None]]) -> list:
        """One padded forward pass over (token ids, prefix cache or None, token types or None)
        items: an input with a cache continues from it, at the positions after its prefix."""
        import torch

        ids, mask, types = self._pad([seq for seq, _, _ in items],
                                     [t for _, _, t in items] if items[0][2] is not None else None)
        extra = {} if types is None else {"token_type_ids": types}
        if self.config.backend == Backend.EMBEDDING:
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, t, d)
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            return list(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy())  # (b, d)
        caches = [kv for _, kv, _ in items]
        if all(kv is None for kv in caches):
            return list(self.model(input_ids=ids, attention_mask=mask, **extra).logits[:, 0].float().cpu().numpy())
        from transformers import DynamicCache

        lens = [0 if kv is None else kv.shape[-2] for kv in caches]
        some = next(kv for kv in caches if kv is not None)
        n_layers, _, heads, _, dim = some.shape
        past = some.new_zeros((n_layers, 2, len(items), heads, max(lens), dim))
        past_mask = torch.zeros((len(items), max(lens)), dtype=mask.dtype, device=mask.device)
        for row, (kv, n) in enumerate(zip(caches, lens, strict=True)):
            if kv is not None:
                past[:, :, row, :, :n] = kv
                past_mask[row, :n] = 1
        # prefixes of different lengths are right-padded too: the mask hides the gap, and each
        # input's positions continue from its own prefix's length
        positions = torch.tensor(lens, device=mask.device)[:, None] + torch.arange(ids.shape[1], device=mask.device)
        out = self.model(input_ids=ids, attention_mask=torch.cat([past_mask, mask], dim=1), position_ids=positions,
                         past_key_values=DynamicCache(ddp_cache_data=[(k, v) for k, v in past]))
        return list(out.logits[:, 0].float().cpu().numpy())  # (b,) raw

    def _fit(self, ids: list[list[int]], types: list[list[int]] | None, cut_orders: list[list[int]]) -> Encoded:
        """Fit each input to max_length by dropping its cuttable positions in order (kept_positions)."""
        fitted: list[list[int] | None] = []
        fitted_types: list[list[int]] | None = [] if types is not None else None
        truncated = []
        for n, (seq, order) in enumerate(zip(ids, cut_orders, strict=True)):
            keep = kept_positions(len(seq), order, self.config.max_length)
            truncated.append(keep is None or len(keep) < len(seq))
            fitted.append(None if keep is None else [seq[j] for j in keep])
            if fitted_types is not None:
                fitted_types.append([] if keep is None else [types[n][j] for j in keep])
        return Encoded(fitted, fitted_types, truncated)

    def classifier_inputs(self, convs: list[list[dict]], responses: list[str]) -> Encoded:
        """Token ids of each (conversation, response) as the classifier reads them. With a chat template:
        the rendered conversation, whose cuttable part is the conversation before the response (after its
        leading special tokens), earliest first. Without one: the sentence pair (conversation as plain
        turns, response), with the tokenizer's special tokens and token types; the first sentence is the
        cuttable part."""
        tok = self.tokenizer
        if tok.chat_template:
            texts, starts, opening = [], [], {}
            for conv, response in zip(convs, responses, strict=True):
                text = tok.apply_chat_template(conv + [{"role": "assistant", "content": response}], tokenize=False)
                key = id(conv)
                if key not in opening:  # the same conversation with an empty reply: where they part, the reply starts
                    opening[key] = tok.apply_chat_template(conv + [{"role": "assistant", "content": ""}],
                                                           tokenize=False)
                texts.append(text)
                starts.append(len(os.path.commonprefix([text, opening[key]])))
            enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
            special = set(tok.all_special_ids)
            orders = []
            for ids, offsets, start in zip(enc["input_ids"], enc["offset_mapping"], starts, strict=True):
                lead = next((j for j, t in enumerate(ids) if t not in special), len(ids))
                orders.append([j for j in range(lead, len(ids)) if offsets[j][1] <= start])
            return self._fit(enc["input_ids"], None, orders)
        # No template: plain turns, the convention of template-less reward models.
        firsts = ["\n\n".join(f"{m['role']}: {m['content']}" for m in conv) + "\n\n" for conv in convs]
        enc = tok(firsts, [f"assistant: {r}" for r in responses], add_special_tokens=True)
        orders = [[j for j, s in enumerate(enc.sequence_ids(n)) if s == 0] for n in range(len(firsts))]
        return self._fit(enc["input_ids"], enc.get("token_type_ids"), orders)

    def _embedding_inputs(self, texts: list[str]) -> Encoded:
        """Token ids of texts to embed, with the tokenizer's special tokens; the end is cut first."""
        enc = self.tokenizer(texts, add_special_tokens=True)
        orders = [[j for j, s in enumerate(enc.sequence_ids(n)) if s == 0][::-1] for n in range(len(texts))]
        return self._fit(enc["input_ids"], None, orders)

    def score(self, convs: list[list[dict]], responses: list[list[str]], refs: list[str | None]) -> list[list[float]]:
        """(n_prompts, k_i) raw rewards for each prompt's responses; NaN where a response does not fit
        max_length whole."""
        return self._score(convs, responses, refs).rewards

    def _score(self, convs: list[list[dict]], responses: list[list[str]], refs: list[str | None]) -> Scores:
        """Raw rewards of each prompt's responses, with what had to be cut to score them."""
        flat = [(i, r) for i, rs in enumerate(responses) for r in rs]
        if not flat:
            return Scores([[] for _ in responses], [0] * len(responses), [None] * len(responses))
        match self.config.backend:
            case Backend.CLASSIFIER:
                groups: dict[int, list[int]] = {}
                for row, (i, _) in enumerate(flat):
                    groups.setdefault(i, []).append(row)
                enc = self.classifier_inputs([convs[i] for i, _ in flat], [r for _, r in flat])
                vals = self._forward(enc, list(groups.values()))  # (N,)
                cut = enc.truncated
            case Backend.EMBEDDING:
                # Unique prompt and reference texts are embedded once per batch, not once per response.
                anchors = sorted({_last_user_text(c) for c in convs} | {r for r in refs if r})
                anchor_row = {t: j for j, t in enumerate(anchors)}
                enc = self._embedding_inputs(anchors + [r for _, r in flat])
                emb = self._forward(enc)   # (A + N, d)
                cut = enc.truncated[len(anchors):]  # a response's end was cut
                a_emb, r_emb = emb[: len(anchors)], emb[len(anchors):]
                p_idx = np.array([anchor_row[_last_user_text(convs[i])] for i, _ in flat])
                vals = (r_emb * a_emb[p_idx]).sum(-1)                 # (N,) cos(response, prompt)
                w = self.config.reference_weight
                has_ref = np.array([bool(refs[i]) for i, _ in flat])
                if w > 0 and has_ref.any():
                    ref_idx = np.array([anchor_row[refs[i]] if refs[i] else 0 for i, _ in flat])
                    ref_cos = (r_emb * a_emb[ref_idx]).sum(-1)
                    vals = np.where(has_ref, (1 - w) * vals + w * ref_cos, vals)
        scores = Scores([[] for _ in responses], [0] * len(responses), [None] * len(responses))
        for row, ((i, _), v) in enumerate(zip(flat, vals.tolist(), strict=True)):
            scores.rewards[i].append(float(v))
            scores.truncated[i] += cut[row]
            if enc.ids[row] is None and scores.too_long[i] is None:
                scores.too_long[i] = (
                    f"reward_input_too_long: response {len(scores.rewards[i]) - 1} does not fit "
                    f"rewarding.max_length={self.config.max_length} tokens even without the conversation; "
                    f"raise rewarding.max_length or lower generation.max_tokens")
        return scores

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = conform(batch, SAMPLES_SCHEMA, "scorer input")
        errors = batch.column(ERROR).to_pylist()
        responses = [rs if err is None else [] for rs, err in
                     zip(batch.column(RESPONSES).to_pylist(), errors, strict=True)]
        scores = self._score(batch.column(PROMPT).to_pylist(), responses, batch.column(REFERENCE).to_pylist())
        rewards = scores.rewards
        stats: dict[str, list] = {REWARD_MEAN: [], REWARD_STD: [], REWARD_MIN: [], REWARD_MAX: []}
        for i, rs in enumerate(rewards):
            errors[i] = errors[i] or scores.too_long[i]
            if rs and not all(math.isfinite(r) for r in rs):
                errors[i] = errors[i] or f"nonfinite_reward: {sum(not math.isfinite(r) for r in rs)} of {len(rs)}"
            arr = np.asarray(rs, dtype=np.float64)
            ok = bool(rs) and errors[i] is None
            stats[REWARD_MEAN].append(float(arr.mean()) if ok else None)
            stats[REWARD_STD].append(float(arr.std()) if ok else None)
            stats[REWARD_MIN].append(float(arr.min()) if ok else None)
            stats[REWARD_MAX].append(float(arr.max()) if ok else None)
        columns = {name: batch.column(name) for name in SAMPLES_SCHEMA.names}
        columns[ERROR] = pa.array(errors, pa.string())
        columns[REWARDS] = pa.array(rewards, pa.list_(pa.float64()))
        columns |= stats
        columns[REWARD_TRUNCATED] = pa.array(scores.truncated, pa.int32())
        return pa.table(columns, schema=SCORED_SCHEMA)
