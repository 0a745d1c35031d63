import math

import pyarrow as pa
import pytest

from generation.schema import SAMPLES_SCHEMA
from rewarding.config import RewardingConfig
from rewarding.scorer import Scorer, kept_positions, last_read_index, length_batches, shared_prefix_len


def test_length_batches_cover_everything_once_within_budget():
    lengths = [5, 100, 3, 50, 50, 7, 1, 99]
    batches = length_batches(lengths, max_batch=3, max_tokens=150)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) * max(lengths[i] for i in b) <= 150 or len(b) == 1
    # longest first: the first batch holds the longest sequence
    assert 1 in batches[0]


def test_length_batches_close_before_padding_passes_the_cap():
    # sorted: 100, 99, 60, 58, 10. With a 10% cap: [100, 99] pads 1 of 200; adding 60 would pad
    # 41 of 300 (13.7%), so 60 opens a batch; [60, 58] pads 2 of 120; 10 would pad 102 of 180.
    lengths = [60, 100, 10, 99, 58]
    assert length_batches(lengths, max_batch=64, max_tokens=10_000, max_padding=0.1) == [[1, 3], [0, 4], [2]]
    # no cap: one batch (the budget holds all five)
    assert length_batches(lengths, max_batch=64, max_tokens=10_000) == [[1, 3, 0, 4, 2]]
    # a cap of 0 only groups equal lengths
    assert length_batches([4, 4, 3], max_batch=8, max_tokens=100, max_padding=0.0) == [[0, 1], [2]]


def _samples(convs, responses, refs=None, errors=None):
    n = len(convs)
    return pa.table({
        "prompt_id": [f"p{i}" for i in range(n)], "prompt": convs, "reference": refs or [None] * n,
        "source": ["t"] * n, "responses": responses,
        "finish_reasons": [["stop"] * len(r) for r in responses],
        "num_tokens": [[1] * len(r) for r in responses], "prompt_tokens": [1] * n, "seed": [0] * n,
        "error": errors or [None] * n}, schema=SAMPLES_SCHEMA)


@pytest.fixture(scope="module")
def minilm():
    return Scorer(RewardingConfig())


def test_embedding_reward_prefers_the_relevant_answer(minilm):
    conv = [[{"role": "user", "content": "What is the capital of France?"}]]
    table = minilm(_samples(conv, [["The capital of France is Paris.", "Bananas are rich in potassium."]]))
    r = table.column("rewards").to_pylist()[0]
    assert r[0] > r[1]
    row = table.to_pylist()[0]
    assert row["reward_max"] == max(r) and row["reward_min"] == min(r)
    assert math.isclose(row["reward_mean"], sum(r) / 2)


def test_reference_pulls_reward_towards_it(minilm):
    conv = [[{"role": "user", "content": "Name a fruit."}]] * 2
    resp = [["An apple.", "A banana."]] * 2
    with_ref = minilm(_samples(conv, resp, refs=[None, "A banana is a fruit."]))
    r0, r1 = with_ref.column("rewards").to_pylist()
    assert r1[1] - r1[0] > r0[1] - r0[0]


def test_error_rows_pass_through_unscored(minilm):
    conv = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    out = minilm(_samples(conv, [[], ["x", "y"]], errors=["prompt_too_long: 9 tokens", None]))
    rows = out.to_pylist()
    assert rows[0]["rewards"] == [] and rows[0]["error"].startswith("prompt_too_long")
    assert rows[0]["reward_mean"] is None and len(rows[1]["rewards"]) == 2


def test_classifier_returns_raw_logits_independent_of_batching(tiny_reward_model):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    conv = [[{"role": "user", "content": "Write a poem about rain."}], [{"role": "user", "content": "Hi"}]]
    responses = [["Rain falls on the sea.", "No.", "The quick brown fox jumps over the lazy dog again."], ["Hello!"]]
    batched = Scorer(RewardingConfig(backend="classifier", model=str(tiny_reward_model), batch_size=64))
    single = Scorer(RewardingConfig(backend="classifier", model=str(tiny_reward_model), batch_size=1))
    a = batched(_samples(conv, responses)).column("rewards").to_pylist()
    b = single(_samples(conv, responses)).column("rewards").to_pylist()
    for x, y in zip(sum(a, []), sum(b, []), strict=True):
        assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5)
    # raw logit, computed by hand from the model: no sigmoid applied
    tok = AutoTokenizer.from_pretrained(tiny_reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    text = tok.apply_chat_template(conv[1] + [{"role": "assistant", "content": "Hello!"}], tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.inference_mode():
        logit = model(**ids).logits[0, 0].item()
    assert math.isclose(a[1][0], logit, rel_tol=1e-4, abs_tol=1e-5)


def test_shared_prefix_stops_before_the_token_the_score_head_reads():
    pad = 0
    assert shared_prefix_len([[5, 6, 7, 8], [5, 6, 7, 9], [5, 6, 1]], pad) == 2
    # one input is all of another's start: the shorter keeps its last token (the one scored)
    assert shared_prefix_len([[5, 6, 7], [5, 6, 7, 8, 9]], pad) == 2
    # trailing pad-id tokens are not read, so the prefix stops before the last other token
    assert last_read_index([5, 6, 7, 0, 0], pad) == 2 and last_read_index([0, 0], pad) == 0
    assert shared_prefix_len([[5, 6, 7, 0], [5, 6, 7, 0]], pad) == 2
    assert shared_prefix_len([[5, 6], [5, 6]], None) == 1


def test_shared_prefix_runs_once_and_rewards_match_running_every_input_in_full(tiny_reward_model):
    rain = "Write a long poem about rain falling on the grey northern sea at night, in the style of an old ballad."
    convs = [[{"role": "user", "content": rain}],
             [{"role": "user", "content": "Explain, step by step and with one worked example, how binary search "
                                          "finds an item in a sorted list of numbers."}],
             [{"role": "user", "content": "Hi"}],            # too short a prompt to share: runs in full
             [{"role": "user", "content": rain + " Again."}]]  # one response: nothing to share
    responses = [["Rain falls on the sea.", "No.", "The quick brown fox jumps over the lazy dog again and again.",
                  "Grey water, grey sky, and the rain between them, all night long, all night long."],
                 ["Look at the middle; go left or right.", "It halves the list each time, so it takes log n steps.",
                  "Binary.", "Compare with the middle item, then repeat on the half that can hold it."],
                 ["Hello!", "Hi there, how can I help?"], ["Rain."]]
    computed = {}

    def scorer(share: bool) -> Scorer:
        sc = Scorer(RewardingConfig(backend="classifier", model=str(tiny_reward_model), share_prefix=share))
        real_forward = sc.model.forward

        def counting(*args, **kwargs):  # tokens the model runs, padding included
            computed[share] = computed.get(share, 0) + kwargs["input_ids"].numel()
            return real_forward(*args, **kwargs)

        sc.model.forward = counting
        return sc

    shared, full = scorer(True), scorer(False)
    a = shared(_samples(convs, responses)).column("rewards").to_pylist()
    b = full(_samples(convs, responses)).column("rewards").to_pylist()
    for x, y in zip(sum(a, []), sum(b, []), strict=True):
        assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5)
    # here: 552 tokens against 1122, and rewards equal to 1.2e-7
    assert computed[True] < 0.75 * computed[False], computed


def test_classifier_refuses_multi_label_models(tmp_path, tiny_reward_model):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    cfg = AutoConfig.from_pretrained(tiny_reward_model)
    cfg.num_labels = 2
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_reward_model).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels=1"):
        Scorer(RewardingConfig(backend="classifier", model=str(tmp_path)))


def test_out_of_memory_halves_the_batch_down_to_one(minilm, monkeypatch):
    import torch

    conv = [[{"role": "user", "content": "What is the capital of France?"}]]
    responses = [["Paris.", "It is Paris, a city on the Seine.", "Lyon?", "Marseille is large.", "No idea."]]
    expected = minilm(_samples(conv, responses)).column("rewards").to_pylist()
    real_forward = minilm.model.forward

    def forward_that_ooms_above_two(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: batch too large")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(minilm, "max_padding", 1.0)  # one batch of all seven texts (CPU default caps padding)
    monkeypatch.setattr(minilm.model, "forward", forward_that_ooms_above_two)
    got = minilm(_samples(conv, responses)).column("rewards").to_pylist()
    assert minilm.oom_splits > 0
    for a, b in zip(expected[0], got[0], strict=True):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)

    def always_oom(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated: nothing fits")

    monkeypatch.setattr(minilm.model, "forward", always_oom)
    with pytest.raises(torch.OutOfMemoryError):
        minilm(_samples(conv, [["one"]]))


def test_kept_positions_drop_the_cut_order_first_and_only_what_is_over():
    # 10 tokens, budget 7: 3 must go; the cut order is prompt positions 1..5 (position 0 is a
    # leading special token, 6..9 the response), earliest first: 1, 2, 3 go.
    assert kept_positions(10, [1, 2, 3, 4, 5], 7) == [0, 4, 5, 6, 7, 8, 9]
    assert kept_positions(5, [1, 2], 8) == [0, 1, 2, 3, 4]  # fits: nothing goes
    assert kept_positions(10, [1, 2], 7) is None            # 3 over, only 2 may go
    assert kept_positions(6, [5, 4, 3], 4) == [0, 1, 2, 3]  # an end-first order cuts the end


def _long_conversation(words: int) -> list[dict]:
    return [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": " ".join(f"word{i % 7}" for i in range(words)) + " Now answer: what is rain?"}]


def test_classifier_keeps_the_response_whole_and_cuts_the_conversation_start(tiny_reward_model):
    """The prompt alone fills max_length: cut on the right (as before), every response lost its
    text and all scored the same. Now the conversation's start goes, the response stays whole."""
    sc = Scorer(RewardingConfig(backend="classifier", model=str(tiny_reward_model), max_length=64))
    conv = _long_conversation(200)
    responses = ["Rain is water falling from clouds.", "No.", "The quick brown fox jumps over the lazy dog."]
    out = sc(_samples([conv], [responses])).to_pylist()[0]
    assert len(set(out["rewards"])) == 3  # the responses are what differs
    assert out["error"] is None and out["reward_truncated"] == 3
    enc = sc.classifier_inputs([conv] * 3, responses)
    full = [sc.tokenizer(sc.tokenizer.apply_chat_template(conv + [{"role": "assistant", "content": r}],
                                                          tokenize=False), add_special_tokens=False)["input_ids"]
            for r in responses]
    tail = sc.tokenizer("Rain is water falling from clouds.<|im_end|>\n", add_special_tokens=False)["input_ids"]
    for ids, whole in zip(enc.ids, full, strict=True):
        assert len(whole) > 64 and len(ids) == 64
        assert ids[0] == whole[0] == sc.tokenizer.convert_tokens_to_ids("<|im_start|>")  # leading special kept
        assert ids[1:] == whole[len(whole) - 63:]  # the conversation's start went, the end (the reply) stayed
    assert enc.ids[0][-len(tail):] == tail and enc.truncated == [True] * 3


def test_a_response_longer_than_max_length_is_a_row_error_not_a_cut(tiny_reward_model):
    sc = Scorer(RewardingConfig(backend="classifier", model=str(tiny_reward_model), max_length=32))
    convs = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Hi"}]]
    long = " ".join(["rain falls on the sea"] * 20)
    rows = sc(_samples(convs, [["Hello!", long], ["Hello!", "Hi."]])).to_pylist()
    assert rows[0]["error"].startswith("reward_input_too_long: response 1") and rows[0]["reward_mean"] is None
    assert rows[1]["error"] is None and rows[1]["reward_truncated"] == 0 and len(rows[1]["rewards"]) == 2


@pytest.fixture(scope="module")
def tiny_bert_reward(tmp_path_factory):
    """A BERT-style reward model built offline: WordPiece tokenizer with [CLS]/[SEP] pair template,
    no chat template, BertForSequenceClassification with one label."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from rsdpo.tiny import _CORPUS

    out = tmp_path_factory.mktemp("tiny_bert_rm")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_CORPUS + ["user assistant system"], trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tok)
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(fast), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=256, num_labels=1, pad_token_id=fast.pad_token_id)
    BertForSequenceClassification(cfg).save_pretrained(out, safe_serialization=True)
    return out


def test_encoder_reward_model_reads_a_sentence_pair_with_its_special_tokens(tiny_bert_reward):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    sc = Scorer(RewardingConfig(backend="classifier", model=str(tiny_bert_reward), max_length=48))
    tok = AutoTokenizer.from_pretrained(tiny_bert_reward)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_reward).eval()
    cls, sep = tok.cls_token_id, tok.sep_token_id
    conv = [{"role": "user", "content": "What is the capital of France?"}]
    responses = ["The capital of France is Paris.", "The quick brown fox."]
    out = sc(_samples([conv], [responses])).to_pylist()[0]
    # by hand: the pair (conversation as plain turns, response), as BERT-style reward models are trained
    for r, reward in zip(responses, out["rewards"], strict=True):
        ids = tok("user: What is the capital of France?\n\n", f"assistant: {r}", return_tensors="pt")
        assert ids["input_ids"][0, 0] == cls and (ids["input_ids"][0] == sep).sum() == 2
        assert ids["token_type_ids"][0].max() == 1
        with torch.inference_mode():
            assert math.isclose(reward, model(**ids).logits[0, 0].item(), rel_tol=1e-4, abs_tol=1e-5)
    # too long: the conversation is cut, [CLS] stays first, the response and both [SEP] stay
    long = _long_conversation(80)
    enc = sc.classifier_inputs([long], ["The capital of France is Paris."])
    (ids,), (types,) = enc.ids, enc.types
    reply = tok("assistant: The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    assert len(ids) == 48 and ids[0] == cls and ids.count(sep) == 2 and enc.truncated == [True]
    assert ids[-len(reply) - 1:] == reply + [sep] and types[-len(reply) - 1:] == [1] * (len(reply) + 1)


def test_rewarding_stage_counts_truncations_in_its_manifest_and_warns(tmp_path, capsys, tiny_reward_model):
    import json

    from rewarding.__main__ import main
    from rsdpo.shards import write_shard

    convs = [_long_conversation(200), [{"role": "user", "content": "Hi"}]]
    write_shard(_samples(convs, [["Rain.", "Sun."], ["Hello!", "Hi."]]), tmp_path / "in" / "shard-00000.parquet",
                SAMPLES_SCHEMA)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "backend=classifier",
                 f"model={tiny_reward_model}", "max_length=64"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["responses_truncated"] == 2 and manifest["counts"]["row_errors"] == 0
    assert "2 of 4 responses (50%)" in manifest["warnings"][0] and "WARNING" in capsys.readouterr().err
