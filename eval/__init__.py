"""Evaluation and analysis: the BabyLM zero-shot suite, gate analysis, the Narrow Gate toolkit, the few-shot probe;
`python -m gatedgpt2.eval zero-shot|gates|narrow-gate|fewshot|attach-vision-tower`."""
