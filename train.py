"""Train a GatedGPT2: `accelerate launch train.py [configs/<name>.yaml] [--key value ...]`.

Without arguments this is the demo: it generates the embedded grounded world, trains a tokenizer and a small GatedGPT2
on it, evaluates it on the world's held-out sets and writes a report (configs/demo.yaml). See README.md.
"""

from gatedgpt2.pipeline.run import run
from gatedgpt2.trainer.arguments import parse_args


def main(argv=None, callbacks=None) -> dict:
    return run(*parse_args(argv), callbacks=callbacks)


if __name__ == "__main__":
    main()
