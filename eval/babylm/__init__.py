"""The BabyLM 2025 evaluation, as the official pipeline scores it: the tasks (one `Task` record each), candidate
scoring, the zero-shot suite and its files, reading, AoA, (Super)GLUE fine-tuning, and a run's revisions scored as a
submission."""
