"""Evaluation of a trained model on a pinned evaluation set. Plain modules, no Dagster.

evalset.py (load/validate the set, keep its prompts out of training, freeze an eval split) ->
generate.py (batched greedy answers from a loaded model) -> metrics.py (degeneration, implicit-reward
accuracy, log-prob margin) ; judge.py (pairwise win-rate from an OpenAI-compatible chat endpoint).
"""
