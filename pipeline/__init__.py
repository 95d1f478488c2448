"""The pipeline: what chains the layers below it. `run` is train.py's job (train -> evaluate -> report -> card ->
push), `report` its report, `sweep` a grid of such runs with their evaluations, tables and plots."""
