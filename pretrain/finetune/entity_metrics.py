"""Entity-level scores for token classification, by `seqeval` (the scorer CoNLL-2003 and MSRA NER results
are printed with), and their mean and spread over seeds.

BIO is scored as conlleval does (seqeval's default mode): an I- tag that continues no entity starts one.
BIOES is scored in seqeval's strict mode with the IOBES scheme: an entity is a well-formed S- or
B- ... E- run of one type, and an ill-formed run is no entity. Either way an odd tag is counted, never
a crash.
"""

from __future__ import annotations

from pretrain.finetune.metrics import mean_std

_SCORES = ("precision", "recall", "f1")


def entity_scores(true_tags: list[list[str]], predicted_tags: list[list[str]], scheme: str) -> dict:
    """{precision, recall, f1 (micro, over entities), word_accuracy, per_type: {type: {precision, recall,
    f1, support}}} of `predicted_tags` against `true_tags` (per sentence, one tag per word). A type that
    is never predicted scores 0 (no division warnings)."""
    from seqeval.metrics import classification_report

    options = {}
    if scheme == "BIOES":
        from seqeval.scheme import IOBES

        options = {"mode": "strict", "scheme": IOBES}
    report = classification_report(true_tags, predicted_tags, output_dict=True, zero_division=0, **options)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    per_type = {
        kind: {
            "precision": float(r["precision"]),
            "recall": float(r["recall"]),
            "f1": float(r["f1-score"]),
            "support": int(r["support"]),
        }
        for kind, r in sorted(report.items())
        if not kind.endswith(" avg")
    }
    pairs = zip(true_tags, predicted_tags, strict=True)
    words = [(t, p) for ts, ps in pairs for t, p in zip(ts, ps, strict=True)]
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "word_accuracy": sum(t == p for t, p in words) / len(words) if words else 0.0,
        "per_type": per_type,
    }


def summarise_entities(runs: list[dict]) -> dict:
    """Mean and sample std over `runs` (entity_scores plus seed, ...) of the micro scores and word accuracy
    (`f1_mean`, `f1_std`, ...) and of each type's scores (`per_type[type]`: `f1_mean`, ..., `support`),
    plus `per_seed: runs`."""
    out: dict = {}
    for name in (*_SCORES, "word_accuracy"):
        out[f"{name}_mean"], out[f"{name}_std"] = mean_std([r[name] for r in runs])
    types = sorted({kind for r in runs for kind in r["per_type"]})
    out["per_type"] = {}
    for kind in types:
        scores = [r["per_type"].get(kind) for r in runs]
        summary = {"support": max(s["support"] for s in scores if s)}
        for name in _SCORES:
            values = [s[name] if s else 0.0 for s in scores]  # a run that lacks the type scored 0
            summary[f"{name}_mean"], summary[f"{name}_std"] = mean_std(values)
        out["per_type"][kind] = summary
    out["per_seed"] = runs
    return out


def format_entity_table(report: dict, models: tuple[str, ...]) -> str:
    """The report's models as a text table: per model the micro scores, then one row per entity type, each
    mean ± std over the seeds; last the all-O baseline."""
    header = f"{'model':<14}{'entities':<10}" + "".join(f"{t:>19}" for t in ("precision", "recall", "F1"))
    lines = [header + f"{'support':>9}{'seeds':>7}"]
    for which in models:
        if which not in report:
            continue
        r = report[which]
        rows = [("micro", r, sum(t["support"] for t in r["per_type"].values()))]
        rows += [(kind, t, t["support"]) for kind, t in r["per_type"].items()]
        for i, (name, scores, support) in enumerate(rows):
            cells = "".join(f"{scores[k + '_mean']:>10.4f} ± {scores[k + '_std']:.4f}" for k in _SCORES)
            label = which.replace("_", "-") if i == 0 else ""
            seeds = f"{len(r['per_seed']):>7}" if i == 0 else ""
            lines.append(f"{label:<14}{name:<10}{cells}{support:>9}{seeds}")
    task = report["task"]
    lines.append(
        f"{'all O':<14}{'micro':<10}"
        + f"{0.0:>10.4f}{'':9}" * 3
        + f"   word accuracy {task['all_o_word_accuracy']:.4f}"
    )
    return "\n".join(lines)
