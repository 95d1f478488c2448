"""What tests, bench/ and experiments/ share: tiny models and runs, the environments that load checkpoints as users
do, the BabyLM fixture files, the lock, and the plain-torch port of the paper's code. No test lives here."""
