"""Pairing stage: scored shards (k responses + rewards per prompt) -> TRL preference pairs.

    from pairing.config import PairingConfig, Strategy      # pydantic only
    from pairing.pairs import make_pairs, merge_stats, coverage_warning, PairingResult
    from pairing.card import write_pairs_shard, write_pairs_meta   # a pairs folder: shards, manifest, card
    from pairing import rules                                # numpy-only rules, one per strategy

    python -m pairing --input SCORED --output PAIRS [--config FILE] [key=value ...]
    python -m pairing sweep --input SCORED --output REPORT [--eta ...] [--tau ...]
    python -m pairing validate DIR

Nothing is imported here, so `pairing.config` stays cheap to import.
"""
