"""Markdown report and PNG figures of a ``reproduce`` run (every number from its results)."""

from __future__ import annotations

from pathlib import Path

from privatenet.train.checkpoint import atomic_write_bytes, atomic_write_text


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(r: dict) -> str:
    return f"{_pct(r['ci95'][0])}-{_pct(r['ci95'][1])}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tables_markdown(results: dict) -> str:
    """The paper's Tables 1-3 and the Fig. 2 sweep as Markdown, with the chance-corrected
    columns of docs/design.md §5 beside the paper's. Accuracies in percent."""
    cfg, u = results["config"], results["utility"]["original_report"]
    parts = [
        f"Original network ({cfg['model']}, {cfg['target']}): accuracy {_pct(u['accuracy'])} % "
        f"(95 % CI {_ci(u)}), balanced accuracy {_pct(u['balanced_accuracy'])} %, majority "
        f"class {_pct(u['majority'])} %.",
        "",
        "**Table 1. Adversaries on the original network.** Paper's column: accuracy (T_s). "
        "Ours: 95 % bootstrap CI, balanced accuracy, majority-class rate, 1/K and normalised "
        "leakage (acc - majority) / (1 - majority).",
        "",
        _table(["attribute", "source", "accuracy %", "95 % CI", "balanced %", "majority %",
                "1/K %", "norm. leakage"],
               [[r["attribute"], r["source"], _pct(r["accuracy"]), _ci(r),
                 _pct(r["balanced_accuracy"]), _pct(r["majority"]), _pct(r["chance"]),
                 f"{r['normalized_leakage']:+.3f}"] for r in results["table1"]]),
        "",
        f"**Table 2. Privacy-preserving networks** (lambda = {cfg['lam']:g}). Paper's columns: "
        "utility, known (K) and unknown (U) adversary accuracy, robustness = relative change "
        "of adversary accuracy against Table 1 (%). Ours: normalised leakage and balanced "
        "accuracy of K and U, and U's 95 % CI.",
        "",
        _table(["loss", "tap", "attribute", "utility %", "K %", "U %", "rob. K %", "rob. U %",
                "K norm.", "U norm.", "K bal. %", "U bal. %", "U 95 % CI"],
               [[r["loss"], r["tap"], r["attribute"], _pct(r["utility"]["accuracy"]),
                 _pct(r["known"]["accuracy"]), _pct(r["unknown"]["accuracy"]),
                 f"{r['robustness_known']:+.1f}", f"{r['robustness_unknown']:+.1f}",
                 f"{r['known']['normalized_leakage']:+.3f}",
                 f"{r['unknown']['normalized_leakage']:+.3f}",
                 _pct(r["known"]["balanced_accuracy"]), _pct(r["unknown"]["balanced_accuracy"]),
                 _ci(r["unknown"])] for r in results["table2"]]),
        "",
        f"**Fig. 2 data. Lambda sweep** ({cfg['sweep_loss']} loss, tap {cfg['sweep_tap']}, "
        f"{cfg['sweep_attribute']}).",
        "",
        _table(["lambda", "utility %", "known %", "unknown %", "K norm.", "U norm."],
               [[f"{r['lam']:g}", _pct(r["utility"]), _pct(r["known"]), _pct(r["unknown"]),
                 f"{r['known_report']['normalized_leakage']:+.3f}",
                 f"{r['unknown_report']['normalized_leakage']:+.3f}"]
                for r in results["lambda_sweep"]]),
        "",
        "**Table 3. Inference time per image** (batch 1, eval mode).",
        "",
        _table(["network", "ms (mean +- std)", "device"],
               [[r["network"], f"{r['mean']:.2f} +- {r['std']:.2f}", r["device"]]
                for r in results["latency_ms"]]),
    ]
    return "\n".join(parts) + "\n"


def plot_lambda_sweep(results: dict) -> bytes:
    """Fig. 2: utility, known and unknown adversary accuracy against lambda (PNG bytes), with
    the ideal lines dashed: the original utility, and 1/K and the majority rate for privacy."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results["lambda_sweep"]
    lams = [r["lam"] for r in sweep]
    ref = sweep[0]["known_report"]
    fig, ax = plt.subplots(figsize=(5.5, 4.6), dpi=120)
    ax.plot(lams, [100 * r["utility"] for r in sweep], "o-", color="tab:blue",
            label="utility (task accuracy)")
    ax.plot(lams, [100 * r["known"] for r in sweep], "s-", color="tab:red",
            label="known adversary")
    ax.plot(lams, [100 * r["unknown"] for r in sweep], "^-", color="tab:orange",
            label="unknown adversary")
    ax.axhline(100 * results["utility"]["original"]["accuracy"], ls="--", color="tab:blue",
               lw=1, label="ideal utility (original network)")
    ax.axhline(100 * ref["chance"], ls="--", color="gray", lw=1, label="ideal privacy: 1/K")
    ax.axhline(100 * ref["majority"], ls=":", color="black", lw=1,
               label="majority-class rate")
    cfg = results["config"]
    ax.set_xlabel("lambda")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{cfg['sweep_loss']} loss, {cfg['sweep_tap']} features, "
                 f"{cfg['sweep_attribute']}", fontsize=10)
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
              frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(results: dict, out: str | Path) -> None:
    """Write ``report.md`` and ``fig2_lambda_sweep.png`` into ``out``."""
    out = Path(out)
    atomic_write_bytes(out / "fig2_lambda_sweep.png", plot_lambda_sweep(results))
    cfg = results["config"]
    opt = cfg["train"]
    head = (
        "# privatenet reproduction report\n\n"
        f"Data `{cfg['data']}`, model `{cfg['model']}` at {cfg['image_size']} px, epochs "
        f"{opt['epochs']} (task) / {cfg['adversary_epochs']} (adversaries) / "
        f"{cfg['privacy_epochs']} (privacy), batch {opt['batch_size']}, lr {opt['lr']:g}, "
        f"seed {opt['seed']}, privacy networks initialised from "
        f"{'the original network' if cfg['init'] == 'original' else 'scratch'}. "
        "Every figure below was measured in this run; none is copied from the paper.\n\n")
    body = tables_markdown(results)
    fig = "\n![Fig. 2: lambda sweep](fig2_lambda_sweep.png)\n"
    atomic_write_text(out / "report.md", head + body + fig)
