"""Data layer: StaICC datasets and splits, StaICC's samplers, templates, user files, prompt building.

    from abft.data import load_dataset, test_pairs, train_pairs, default_template, PromptBuilder
    ds = load_dataset("sst2")
    builder = PromptBuilder(tokenizer, ds.info.label_words, default_template(ds.info))
    test = builder.build_pairs(ds, test_pairs(ds, k=4))          # StaICC's 1024 test prompts
    train = builder.build_pairs(ds, train_pairs(ds, k=4, n=512, seed=0))

    log(splits_summary(describe_splits(ds, test_samples=1024)))  # split sizes, distinct test queries

See abft.data.prompts for the label-token decision ("space" vs "staicc" mode), abft.data.userdata for user
files and their splits (a split column, or separate train / test files).
"""

from .prompts import Prompt, PromptBuilder
from .sampling import LCG, demonstration_sets, test_pairs, train_pairs, validation_pairs
from .splits import describe_splits, splits_summary, splits_warning
from .staicc import (
    PAPER_DATASETS,
    Dataset,
    DatasetInfo,
    dataset_info,
    list_datasets,
    load_dataset,
    read_dataset_file,
    restricted_loads,
)
from .templates import L9_TABLE, Template, consistency_templates, default_template
from .userdata import (
    dataset_stem,
    format_file_spec,
    load_any,
    load_user_dataset,
    parse_file_spec,
    rows_from_examples,
)

# `test_pairs` is a library function, not a pytest test: keep pytest from collecting it when imported.
test_pairs.__test__ = False

__all__ = [
    "L9_TABLE",
    "LCG",
    "PAPER_DATASETS",
    "Dataset",
    "DatasetInfo",
    "Prompt",
    "PromptBuilder",
    "Template",
    "consistency_templates",
    "dataset_info",
    "dataset_stem",
    "default_template",
    "demonstration_sets",
    "describe_splits",
    "format_file_spec",
    "list_datasets",
    "load_any",
    "load_dataset",
    "load_user_dataset",
    "parse_file_spec",
    "read_dataset_file",
    "restricted_loads",
    "rows_from_examples",
    "splits_summary",
    "splits_warning",
    "test_pairs",
    "train_pairs",
    "validation_pairs",
]
