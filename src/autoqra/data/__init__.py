"""Task data: the synthetic generator (`generator`), user and Hugging Face sources and the split files
(`sources`), and the encoding of examples for a model (`encoding`)."""

from autoqra.data.encoding import TooLong, collate, encode, labelled_max, prompt_ids, truncated
from autoqra.data.generator import FAMILIES, SPLITS, generate, make_example
from autoqra.data.sources import load_user, read_split, task_splits, write_splits

__all__ = ["FAMILIES", "SPLITS", "TooLong", "collate", "encode", "generate", "labelled_max", "load_user",
           "make_example", "prompt_ids", "read_split", "task_splits", "truncated", "write_splits"]
