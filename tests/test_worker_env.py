from cluster.session import WORKER_ENV, scorer_env


def test_a_scorer_with_cores_of_its_own_tokenizes_on_them():
    # the CPU default: half a core beside the engine, one tokenizer thread
    assert scorer_env(0.5) == WORKER_ENV and WORKER_ENV["TOKENIZERS_PARALLELISM"] == "false"
    assert scorer_env(1) == WORKER_ENV
    # gpu-8x-node.yaml reserves 4 CPUs per scorer: 4 tokenizer threads, no more
    env = scorer_env(4)
    assert env["TOKENIZERS_PARALLELISM"] == "true" and env["RAYON_NUM_THREADS"] == "4"
    assert env["HF_HUB_OFFLINE"] == "1"
