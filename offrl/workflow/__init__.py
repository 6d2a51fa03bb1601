"""The workflow: diagnosis, checkpoint selection, evaluation and the end-to-end pipeline."""
