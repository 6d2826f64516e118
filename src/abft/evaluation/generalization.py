"""The generalization table of a run: in-domain vs out-of-domain accuracy before and after training.

table = generalization_table(metrics["before"]["generalization"], metrics["after"]["generalization"])
print(format_generalization_table(table))
"""

from __future__ import annotations


def generalization_table(before: dict | None, after: dict | None) -> dict | None:
    """The in-domain vs out-of-domain table from the generalization results of the two stages (either may
    be None when that stage did not run): one row per dataset with accuracy before, after and the gain."""
    ref = before or after
    if ref is None:
        return None

    def acc(stage, name):
        return stage["datasets"][name]["accuracy"] if stage else None

    def gain(b, a):
        return a - b if a is not None and b is not None else None

    rows = []
    for name in ref["datasets"]:
        b, a = acc(before, name), acc(after, name)
        domain = "in" if name == ref["in_domain"] else "out"
        rows.append({"dataset": name, "domain": domain, "before": b, "after": a, "gain": gain(b, a)})
    summary_rows = {}
    for key in ("in_domain_accuracy", "out_of_domain_accuracy"):
        b = before[key] if before else None
        a = after[key] if after else None
        summary_rows[key.removesuffix("_accuracy")] = {"before": b, "after": a, "gain": gain(b, a)}
    return {"in_domain_dataset": ref["in_domain"], "rows": rows, **summary_rows}


def format_generalization_table(table: dict) -> str:
    """The table as aligned text (accuracy in %)."""

    def pct(x):
        return "-" if x is None else f"{100 * x:.2f}"

    def signed(x):
        return "-" if x is None else f"{100 * x:+.2f}"

    width = max(12, *(len(r["dataset"]) for r in table["rows"])) + 2
    lines = [f"{'dataset':<{width}}{'domain':<8}{'before':>8}{'after':>8}{'gain':>8}"]
    for r in table["rows"]:
        lines.append(
            f"{r['dataset']:<{width}}{r['domain']:<8}{pct(r['before']):>8}{pct(r['after']):>8}{signed(r['gain']):>8}"
        )
    for key, label in (("in_domain", "in-domain"), ("out_of_domain", "out-of-domain mean")):
        s = table[key]
        lines.append(f"{label:<{width + 8}}{pct(s['before']):>8}{pct(s['after']):>8}{signed(s['gain']):>8}")
    return "\n".join(lines)
