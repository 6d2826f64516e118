"""benchmarks/paper_report.py: Table 1's grid and the claim verdicts from cell JSONs."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from abft.evaluation.predictions import paired_change

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import paper_report  # noqa: E402


def _cell(dataset, method, before, after=None, f1_after=None, calibrated=None):
    stage = lambda acc, f1: {"accuracy": acc, "accuracy_se": 0.01, "macro_f1": f1, "prompts": 256}  # noqa: E731
    row = {"cell": f"t1-smollm2-{dataset}-{method}-s0", "table": "table1", "model": "smollm2-135m",
           "dataset": dataset, "method": method, "before": stage(before, before)}  # fmt: skip
    if after is not None:
        row["after"] = stage(after, after if f1_after is None else f1_after)
    if calibrated is not None:
        row["cell"] = f"t1-smollm2-{dataset}-calibration"
        row["before"] |= {"calibrated_accuracy": calibrated, "calibrated_macro_f1": calibrated}
    return row["cell"], row


def test_grid_mean_and_verdicts():
    rows = dict(
        [
            _cell("sst2", "abft", 0.60, 0.90),
            _cell("sst2", "e2e", 0.60, 0.91),
            _cell("sst2", "base", 0.60, calibrated=0.70),
            _cell("trec", "abft", 0.40, 0.52, f1_after=0.30),  # accuracy up, macro-F1 down
            _cell("trec", "e2e", 0.40, 0.50),
        ]
    )
    grid = paper_report.table1(rows, "smollm2-135m")
    assert grid["sst2"]["calibration"].value == pytest.approx(0.70)
    assert grid["trec"]["abft"].value == pytest.approx(0.52)
    markdown = paper_report.grid_markdown(grid, "smollm2-135m")
    assert "mean of 1" in markdown  # only SST-2 has all four columns
    lines = {
        "gain": paper_report.pair_claim(grid, "smollm2-135m", "abft", "vanilla", "p"),
        "ten": paper_report.pair_claim(grid, "smollm2-135m", "abft", "vanilla", "p", at_least=0.5),
        "e2e": paper_report.pair_claim(grid, "smollm2-135m", "e2e", "abft", "p"),
    }
    assert "**holds**" in lines["gain"] and "mean of 2 of 8" in lines["gain"]
    assert "**does not hold**" in lines["ten"]  # +0.21 with s.e. 0.01 is far below +0.5
    assert "cannot be decided" in lines["e2e"]  # -0.005 with s.e. 0.01
    assert "t1-smollm2-trec-abft-s0" in paper_report.f1_disagreements(rows)
    assert "sst2-abft" not in paper_report.f1_disagreements(rows)
    rows |= dict([_cell("hate", "abft", 0.56, 0.55, f1_after=0.40)])  # accuracy held, macro-F1 fell beyond its noise
    rows |= dict([_cell("emotion", "abft", 0.56, 0.55, f1_after=0.55)])  # both held
    assert "t1-smollm2-hate-abft-s0 (accuracy -0.010 +- 0.014, macro-F1 -0.160)" in paper_report.f1_disagreements(rows)
    assert "emotion" not in paper_report.f1_disagreements(rows)


def test_seeds_are_averaged_with_their_spread():
    rows = dict([_cell("sst2", "abft", 0.6, 0.8)])
    name, second = _cell("sst2", "abft", 0.6, 0.9)
    rows[name.replace("s0", "s1")] = second
    est = paper_report.table1(rows, "smollm2-135m")["sst2"]["abft"]
    assert (est.value, est.spread, est.n) == (pytest.approx(0.85), pytest.approx(0.1), 2)
    assert est.se == pytest.approx(0.01)  # the same prompts: the seeds' errors are not independent
    assert "2 seeds" in est.cell()


def test_protocol_claims_say_what_abft_does_and_how_it_compares_with_e2e():
    def stage(out_of_domain, template, unseen, zero_shot=0.7):
        return {
            "generalization": {"out_of_domain_accuracy": out_of_domain},
            "template": {"consistency": template},
            "demo": {"consistency": 0.5},
            "unseen_label": {"unseen_label": {"accuracy": unseen}, "zero_shot": {"accuracy": zero_shot}},
        }

    def t23(dataset, method, after):
        cell = f"t23-smollm2-{dataset}-{method}-s0"
        return cell, {
            "cell": cell,
            "dataset": dataset,
            "method": method,
            "before": stage(0.4, 0.8, 0.1),
            "after": after,
        }

    rows = dict([t23("sst2", "abft", stage(0.7, 0.7, 0.6)), t23("sst2", "e2e", stage(0.6, 0.7, 0.2))])
    lines = paper_report.protocol_claims(rows)
    assert "out of domain, ABFT above E2E" in lines[0] and "cannot be decided yet" in lines[0]
    assert "1 of 1 datasets, mean difference +0.100 (sst2)" in lines[0]
    rows |= dict([t23("trec", "abft", stage(0.5, 0.65, 0.5)), t23("subjective", "abft", stage(0.6, 0.72, 0.4))])
    rows |= dict([t23("rotten_tomatoes", "e2e", stage(0.9, 0.9, 0.9))])  # a dataset with one method only
    lines = {line.split(":")[0]: line for line in paper_report.protocol_claims(rows)}
    ood = lines["- out of domain, ABFT above vanilla"]
    assert "**holds**: 3 of 3 datasets, mean difference +0.200 +- 0.058" in ood  # s.d. 0.1 over 3 datasets
    assert "1 of 1 datasets" in lines["- out of domain, ABFT above E2E (paper"]  # rotten_tomatoes left out
    assert "**does not hold**: 0 of 3 datasets" in lines["- template consistency rises with ABFT (paper, Llama3-8B"]
    closed = lines["- unseen labels"]  # gap to 0-shot: before 0.1 - 0.7, after (0.6, 0.5, 0.4) - 0.7
    assert "mean difference +0.400" in closed and "**holds**" in closed


def test_change_from_vanilla_uses_the_paired_error_when_every_cell_has_one():
    name, row = _cell("sst2", "abft", 0.60, 0.62)
    loose = paper_report.pair_claim(paper_report.table1({name: row}, "smollm2-135m"), "smollm2-135m", "abft",
                                    "vanilla", "p")  # fmt: skip
    assert "cannot be decided" in loose and "+- 0.014" in loose  # hypot(0.01, 0.01)
    row["change"] = {"se": 0.005}
    tight = paper_report.pair_claim(paper_report.table1({name: row}, "smollm2-135m"), "smollm2-135m", "abft",
                                    "vanilla", "p")  # fmt: skip
    assert "**holds**" in tight and "+- 0.005" in tight


def test_protocol_table_shows_each_protocol_before_and_after():
    stage = lambda x: {  # noqa: E731
        "generalization": {"in_domain_accuracy": x, "out_of_domain_accuracy": x / 2},
        "template": {"consistency": x},
        "demo": {"consistency": x},
        "unseen_label": {"unseen_label": {"accuracy": x / 4}, "zero_shot": {"accuracy": x / 2}},
    }
    rows = {"t23-smollm2-sst2-abft-s0": {"cell": "t23-smollm2-sst2-abft-s0", "before": stage(0.6), "after": stage(0.8)}}
    table = paper_report.protocol_markdown(rows)
    assert "| t23-smollm2-sst2-abft-s0 | 0.600 -> **0.800** | 0.300 -> **0.400** |" in table
    assert table.endswith("0.150 -> **0.200** | 0.300 -> **0.400** |")
    assert paper_report.protocol_markdown({}) is None


def _ceiling(dataset, base, trained, prompts=128):
    """A ceiling cell: (none, target in ABFT's heads, target in every head) accuracies of each model."""
    rows = lambda accs: [{"edit": e, "heads": h, "accuracy": a} for (e, h), a in  # noqa: E731
                         zip((("none", "-"), ("target", "filter"), ("target", "all")), accs, strict=True)]  # fmt: skip
    row = {"cell": f"ceil-smollm2-{dataset}-abft-s0", "table": "ceiling", "model": "smollm2-135m",
           "dataset": dataset, "method": "abft", "prompts": prompts,
           "base": rows(base), "trained": rows(trained)}  # fmt: skip
    return row["cell"], row


def test_ceiling_lines_explain_only_where_abft_falls_short():
    rows = dict(
        [
            _cell("sst2", "abft", 0.60, 0.90),
            _cell("sst2", "e2e", 0.60, 0.91),
            _ceiling("sst2", (0.60, 0.85, 0.90), (0.88, 0.89, 0.90)),
            _cell("trec", "abft", 0.40, 0.55),
            _cell("trec", "e2e", 0.40, 0.80),
            _ceiling("trec", (0.30, 0.59, 0.69), (0.46, 0.67, 0.70)),
        ]
    )
    rows["t1-smollm2-trec-e2e-s0"]["validation"] = {"prompts": 128, "best_accuracy": 0.82}
    table = paper_report.ceiling_markdown(rows)
    assert "| trec | 128 | 0.300 | 0.590 | 0.690 | 0.460 | 0.670 | 0.820 |" in table
    assert "| sst2 | 128 | 0.600 | 0.850 | 0.900 | 0.880 | 0.890 | - |" in table  # E2E's validation not recorded
    summary, *why = paper_report.ceiling_claims(rows, paper_report.table1(rows, "smollm2-135m"))
    assert "stops short of its own target" in summary and "on 1 of 2 datasets (trec 0.460 -> 0.670)" in summary
    assert "above E2E's validation accuracy on 0 of 1 ()" in summary  # TREC's 0.67 is below E2E's 0.82
    assert len(why) == 1 and "falls short on trec" in why[0]  # SST-2: ABFT level with E2E, far above vanilla
    assert "Training stopped short of its own target (the edit adds +0.210)" in why[0]
    assert "worth less than what E2E reaches" in why[0]  # 0.82 vs the best edit, 0.70, on 128 prompts
    assert "does not lift the base model" not in why[0]

    rows["t1-smollm2-trec-e2e-s0"]["validation"]["prompts"] = 256  # other prompts: not comparable
    _, line = paper_report.ceiling_claims(rows, paper_report.table1(rows, "smollm2-135m"))
    assert "E2E-trained" not in line and "worth less" not in line


def _bits(rng, n, accuracy):
    return "".join("1" if x else "0" for x in rng.random(n) < accuracy)


def _with_bits(cell, before, after):
    """A cell with per-prompt correctness, its accuracy and binomial standard error (as abft reports them)."""
    name, row = cell
    for stage, bits in (("before", before), ("after", after)):
        p = bits.count("1") / len(bits)
        row[stage] |= {"correct": bits, "accuracy": p, "accuracy_se": math.sqrt(p * (1 - p) / len(bits))}
    return name, row


def test_differences_on_the_same_prompts_are_paired():
    rng = np.random.default_rng(0)
    vanilla = _bits(rng, 256, 0.6)
    # ABFT fixes 16 of vanilla's wrong prompts and breaks none; E2E the same 16 and 8 more
    wrong = [i for i, c in enumerate(vanilla) if c == "0"]
    abft = "".join("1" if i in wrong[:16] else c for i, c in enumerate(vanilla))
    e2e = "".join("1" if i in wrong[:24] else c for i, c in enumerate(vanilla))
    rows = dict(
        [
            _with_bits(_cell("sst2", "abft", 0, 0), vanilla, abft),
            _with_bits(_cell("sst2", "e2e", 0, 0), vanilla, e2e),
        ]
    )
    grid = paper_report.table1(rows, "smollm2-135m")
    diff = grid["sst2"]["e2e"] - grid["sst2"]["abft"]
    records = lambda bits: [{"correct": c == "1"} for c in bits]  # noqa: E731
    expected = paired_change(records(abft), records(e2e))  # abft's own paired error, on the same records
    assert diff.value == pytest.approx(8 / 256) and diff.se == pytest.approx(expected["se"])
    assert diff.se < 0.5 * math.hypot(grid["sst2"]["e2e"].se, grid["sst2"]["abft"].se)
    line = paper_report.pair_claim(grid, "smollm2-135m", "e2e", "abft", "p")
    assert "**holds**" in line  # 8 more right and none fewer: certain when paired, not when independent
    rows["t1-smollm2-sst2-e2e-s0"]["after"].pop("correct")
    loose = paper_report.pair_claim(paper_report.table1(rows, "smollm2-135m"), "smollm2-135m", "e2e", "abft", "p")
    assert "cannot be decided" in loose


def test_cells_that_disagree_on_vanilla_are_refused():
    rng = np.random.default_rng(1)
    rows = dict(
        [
            _with_bits(_cell("sst2", "abft", 0, 0), _bits(rng, 64, 0.6), _bits(rng, 64, 0.8)),
            _with_bits(_cell("sst2", "e2e", 0, 0), _bits(rng, 64, 0.6), _bits(rng, 64, 0.8)),
        ]
    )
    with pytest.raises(ValueError, match="not the same test prompts"):
        paper_report.table1(rows, "smollm2-135m")


def test_ablations_are_paired_with_full_abft():
    rng = np.random.default_rng(2)
    vanilla = _bits(rng, 256, 0.6)
    full = "1" * 220 + "0" * 36
    rows = {}
    for dataset in ("sst2", "rotten_tomatoes"):
        rows |= dict([_with_bits(_cell(dataset, "abft", 0, 0), vanilla, full)])
        name, row = _with_bits(_cell(dataset, "abft", 0, 0), vanilla, "0" * 6 + full[6:])  # 6 fewer right
        row |= {"cell": name.replace("t1-", "abl-").replace("abft-s0", "no-pid"), "table": "ablation"}
        rows[row["cell"]] = row
    no_pid = next(line for line in paper_report.ablation_claims(rows) if "no-pid" in line)
    assert "**holds**" in no_pid and "difference +0.023 +- 0.007" in no_pid  # 6 of 256 on both; independent: 0.031


def test_a_ceiling_where_training_moved_away_from_a_target_that_works():
    # SST-5's shape: the target lifts the base model 0.25 -> 0.46, the trained model sits at 0.32 with or without it
    rows = dict(
        [
            _cell("sst5", "abft", 0.31, 0.32),
            _cell("sst5", "e2e", 0.31, 0.45),
            _ceiling("sst5", (0.25, 0.46, 0.34), (0.32, 0.32, 0.30)),
        ]
    )
    _, why = paper_report.ceiling_claims(rows, paper_report.table1(rows, "smollm2-135m"))
    assert "Training ended below what the target gives the base model (0.320 vs 0.460)" in why
    assert "stopped short of its own target" not in why and "worth less than what E2E" not in why


def test_an_ablation_on_other_prompts_is_refused():
    rng = np.random.default_rng(3)
    rows = dict([_with_bits(_cell("sst2", "abft", 0, 0), _bits(rng, 64, 0.6), _bits(rng, 64, 0.8))])
    name, row = _with_bits(_cell("sst2", "abft", 0, 0), _bits(rng, 64, 0.6), _bits(rng, 64, 0.8))
    row |= {"cell": "abl-smollm2-sst2-a0", "table": "ablation"}
    rows[row["cell"]] = row
    with pytest.raises(ValueError, match="not the same test prompts"):
        paper_report.ablation_claims(rows)


def test_keep_f1_is_set_beside_the_accuracy_kept_run_paired():
    rng = np.random.default_rng(5)
    vanilla, after = _bits(rng, 64, 0.55), _bits(rng, 64, 0.6)
    rows = dict([_with_bits(_cell("hate", "abft", 0, 0, f1_after=0.38), vanilla, after)])
    name, row = _with_bits(_cell("hate", "abft", 0, 0, f1_after=0.55), vanilla, _bits(rng, 64, 0.62))
    row |= {"cell": "keep-smollm2-hate-f1", "table": "keep", "validation": {"kept_step": 4}}
    rows["t1-smollm2-hate-abft-s0"]["validation"] = {"kept_step": 8}
    rows[row["cell"]] = row
    (line,) = paper_report.keep_claims(rows)
    records = lambda bits: [{"correct": c == "1"} for c in bits]  # noqa: E731
    diff = paired_change(records(rows["t1-smollm2-hate-abft-s0"]["after"]["correct"]), records(row["after"]["correct"]))
    assert f"{diff['accuracy']:+.3f} +- {diff['se']:.3f}" in line
    assert "(step 8 -> 4)" in line and "macro-F1 0.380 -> 0.550" in line
    row["before"]["correct"] = _bits(rng, 64, 0.55)  # other prompts
    with pytest.raises(ValueError, match="not the same test prompts"):
        paper_report.keep_claims(rows)


def test_seed_table_shows_each_seed_and_marks_what_is_missing():
    rows = dict([_cell("sst2", "abft", 0.6, 0.8, f1_after=0.7), _cell("trec", "e2e", 0.4, 0.5)])
    assert paper_report.seed_markdown(rows) is None  # no second seed yet: nothing to compare
    name, row = _cell("sst2", "abft", 0.6, 0.9, f1_after=0.85)
    rows[name.replace("-s0", "-s1")] = row
    lines = paper_report.seed_markdown(rows).splitlines()
    assert lines[0] == "| test accuracy (macro-F1) | ABFT seed 0 | ABFT seed 1 | E2E seed 0 | E2E seed 1 |"
    assert lines[2] == "| sst2 | 0.800 (0.700) | 0.900 (0.850) | - | - |"
    assert lines[3] == "| trec | - | - | 0.500 (0.500) | - |"
    assert len(lines) == 4  # datasets with no trained cell are left out


def test_seed_claims_pair_the_seeds_and_test_each_seeds_gain():
    rng = np.random.default_rng(7)
    rows = {}
    for dataset in ("sst2", "trec"):  # trec: seed 1 gets right what seed 0 got wrong among the first 40 prompts
        vanilla, s0 = _bits(rng, 64, 0.5), _bits(rng, 64, 0.6)
        s1 = s0 if dataset == "sst2" else "".join("1" if i < 40 else c for i, c in enumerate(s0))
        for seed, after in ((0, s0), (1, s1)):
            name, row = _with_bits(_cell(dataset, "abft", 0, 0), vanilla, after)
            row["cell"] = name.replace("-s0", f"-s{seed}")
            rows[row["cell"]] = row
    abft, e2e = paper_report.seed_claims(rows)
    assert "not measured yet" in e2e
    gained = rows["t1-smollm2-trec-abft-s1"]["after"]["accuracy"] - rows["t1-smollm2-trec-abft-s0"]["after"]["accuracy"]
    assert gained > 0 and f"largest gap on one dataset {gained:+.3f}" in abft and "(trec)" in abft
    assert f"seed 1 minus seed 0 {gained / 2:+.3f}" in abft
    gains = [
        np.mean(
            [
                rows[f"t1-smollm2-{d}-abft-s{s}"]["after"]["accuracy"]
                - rows[f"t1-smollm2-{d}-abft-s{s}"]["before"]["accuracy"]
                for d in ("sst2", "trec")
            ]
        )
        for s in (0, 1)
    ]
    assert f"seed 0 {gains[0]:+.3f}" in abft and f"seed 1 {gains[1]:+.3f}" in abft
    rows["t1-smollm2-trec-abft-s1"]["before"]["correct"] = _bits(rng, 64, 0.5)  # other prompts
    with pytest.raises(ValueError, match="not the same test prompts"):
        paper_report.seed_claims(rows)
