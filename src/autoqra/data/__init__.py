"""Task data: the synthetic generator (`generator`), user and Hugging Face sources and the split files
(`sources`), and the encoding of examples for a model (`encoding`)."""

from autoqra.data.encoding import TooLong, calibration_ids, collate, encode, labelled_max, prompt_ids, truncated
from autoqra.data.generator import FAMILIES, SPLITS, generate, make_example
from autoqra.data.sources import load_user, read_split, task_splits, with_system, write_splits

__all__ = ["FAMILIES", "SPLITS", "TooLong", "calibration_ids", "collate", "encode", "generate", "labelled_max",
           "load_user", "make_example", "prompt_ids", "read_split", "task_splits", "truncated", "with_system",
           "write_splits"]
