"""Evaluation: BabyLM zero-shot scoring, gate analysis, Narrow Gate toolkit, few-shot probe (issues 4, 5, 7)."""
