"""What a loaded dataset's splits hold, for the run's records and for the person running it.

    desc = describe_splits(dataset, test_samples=cfg.data.test_samples)   # a JSON-ready dict
    log(splits_summary(desc))        # "data reviews (seeded split of the file): 7 calibration / 30 ..."
    warning = splits_warning(desc)   # None, or one line: too few distinct test queries, queries reused, ...

Distinct queries are distinct query *texts*: a file holding the same sentence twice has one query. The test
prompts are data.sampling.test_pairs': prompt j asks test query j mod len(test), so `test_samples` above the
test split reuses queries with other demonstrations. StaICC's own protocol asks each of its 512 test queries
twice (1024 prompts); more reuse than that, or fewer than MIN_TEST_QUERIES distinct queries, is warned about:
such prompts are not independent samples, and a standard error that counts prompts understates the
uncertainty. For a user's dataset a test query that also appears in the calibration or demonstration split
is warned about too (StaICC's fixed splits have a few; they are recorded, not warned about).
"""

from __future__ import annotations

from ..errors import Text, param
from .staicc import Dataset

MIN_TEST_QUERIES = 50
STAICC_REUSE = 2  # StaICC's 1024 test prompts over 512 test queries
_MADE_BY = {
    "staicc": "StaICC's split",
    "seeded": "seeded split of the file",
    "column": "the file's split column",
    "files": "separate split files",
}


def describe_splits(dataset: Dataset, test_samples: int | None = None) -> dict:
    """Split sizes (rows), distinct test queries, and with `test_samples` what the test prompts ask.

    Keys: dataset, made_by (staicc / seeded / column / files), calibration, demonstration, test (rows),
    test_distinct_queries, test_queries_in_other_splits (distinct test texts also in calibration or
    demonstration); with test_samples: test_prompts, test_prompt_queries (distinct query texts the prompts ask),
    prompts_per_query (test_prompts / test_prompt_queries, 2 decimals).
    """
    rows = dataset.rows
    test_texts = {rows[i][0] for i in dataset.test}
    other = {rows[i][0] for i in (*dataset.calibration, *dataset.demonstration)}
    out = {
        "dataset": dataset.info.name,
        "made_by": getattr(dataset, "made_by", "staicc"),
        "calibration": len(dataset.calibration),
        "demonstration": len(dataset.demonstration),
        "test": len(dataset.test),
        "test_distinct_queries": len(test_texts),
        "test_queries_in_other_splits": len(test_texts & other),
    }
    if test_samples is not None and dataset.test:
        m = len(dataset.test)
        asked = {rows[dataset.test[j]][0] for j in range(min(test_samples, m))}  # query j % m, j < test_samples
        out["test_prompts"] = test_samples
        out["test_prompt_queries"] = len(asked)
        out["prompts_per_query"] = round(test_samples / len(asked), 2) if asked else 0.0
    return out


def splits_summary(desc: dict) -> str:
    """One line for the log, e.g. `data reviews (seeded split of the file): 7 calibration / 30 demonstration /
    3 test rows, 3 distinct test queries; 16 test prompts ask 3 of them (5.33 per query)`."""
    made_by = _MADE_BY.get(desc.get("made_by"), str(desc.get("made_by")))
    line = (
        f"data {desc['dataset']} ({made_by}): {desc['calibration']} calibration / {desc['demonstration']} "
        f"demonstration / {desc['test']} test rows, {desc['test_distinct_queries']} distinct test queries"
    )
    if "test_prompts" in desc:
        line += (
            f"; {desc['test_prompts']} test prompts ask {desc['test_prompt_queries']} of them"
            f" ({desc['prompts_per_query']:g} per query)"
        )
    return line


def splits_warning(desc: dict, min_queries: int = MIN_TEST_QUERIES) -> Text | None:
    """One line naming every problem of the test set (no prefix: the caller writes `warning: ...`), or None."""
    problems = []
    queries = desc.get("test_prompt_queries", desc["test_distinct_queries"])
    if queries < min_queries:
        problems.append(f"only {queries} distinct test queries (fewer than {min_queries}): accuracy on them is coarse")
    if desc.get("prompts_per_query", 0) > STAICC_REUSE:
        problems.append(
            f"the {desc['test_prompts']} test prompts reuse {queries} queries ({desc['prompts_per_query']:g} each, "
            f"StaICC's protocol {STAICC_REUSE}); they are not independent, so the standard error understates the "
            f"uncertainty: lower {param('test_samples')} toward {STAICC_REUSE * queries} or add test rows"
        )
    if desc.get("made_by") != "staicc" and desc.get("test_queries_in_other_splits"):
        problems.append(
            f"{desc['test_queries_in_other_splits']} test queries also appear in the calibration or demonstration "
            "split (duplicate texts in the data); remove the duplicates for an honest test"
        )
    if not problems:
        return None
    return Text(f"{desc['dataset']}: " + "; ".join(problems))
