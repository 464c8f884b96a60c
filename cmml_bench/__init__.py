"""cmml-bench: a benchmark harness for continual missing modality learning."""

__version__ = "0.1.0"
