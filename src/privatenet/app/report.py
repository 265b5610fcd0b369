"""Markdown report and PNG figures of a ``reproduce`` run (every number from its results)."""

from __future__ import annotations

from pathlib import Path

from privatenet.models.registry import model_options
from privatenet.storage import atomic_write_bytes, atomic_write_text


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(r: dict) -> str:
    return f"{_pct(r['ci95'][0])}-{_pct(r['ci95'][1])}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _png(fig) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _acc(r: dict, key: str) -> str:
    """``r[key]``'s accuracy in percent, as mean ± std when the row has several seeds."""
    seeds = r.get("over_seeds", {}).get(key)
    if seeds is not None:
        return f"{_pct(seeds['mean'])} ± {_pct(seeds['std'])}"
    value = r[key]
    if value is None:
        return "-"
    return _pct(value["accuracy"] if isinstance(value, dict) else value)


def _audit(r: dict) -> str:
    """The audit column: the worst leakage over the zoo (mean ± std over seeds), its attacker,
    and '+' where its learning curve still rose (a lower bound)."""
    a = r.get("audit")
    if not a:
        return "-"
    seeds = r.get("over_seeds", {})
    value = (f"{seeds['audit_leakage']['mean']:+.3f} ± {seeds['audit_leakage']['std']:.3f}"
             if "audit_leakage" in seeds else f"{a['leakage']:+.3f}")
    return f"{value} ({a['attacker']}{', rising' if a.get('still_rising') else ''})"


def _loss_name(r: dict) -> str:
    if r["loss"] == "none":
        return "none (lambda = 0)"
    return r["loss"] + (f" ({r['update']})" if r.get("update") else "")


def _attacker_rows_note(results: dict) -> str:
    """Where a run's audit attackers trained: its attacker split, or folds of the test rows."""
    n = results.get("rows", {}).get("attacker")
    if n:
        share = results["config"].get("attacker_share", 0)
        origin = (f"{share:.0%} of the train split carved out before any training" if share
                  else "the data set's own attacker split")
        return f"trained on {n} attacker rows, {origin}"
    return "cross-fitted on folds of the test rows (data-limited)"


def tables_markdown(results: dict) -> str:
    """The paper's Tables 1-3 and the Fig. 2 sweep as Markdown, with the chance-corrected
    columns of docs/design.md §5 beside the paper's. Accuracies in percent; with several seeds,
    mean ± std over them."""
    cfg, u = results["config"], results["utility"]["original_report"]
    seeds = cfg.get("seed_list", [cfg["train"]["seed"]])
    over = results["utility"].get("over_seeds")
    zoo = cfg.get("audit_zoo", "none")
    audit_note = (f" Audit: the worst leakage over the {zoo} attacker zoo"
                  + (" (a preview: the full zoo is the headline)" if zoo == "quick" else "")
                  + ", the larger of (acc - majority) / (1 - majority) and (bal - 1/K) / "
                  f"(1 - 1/K), by attackers {_attacker_rows_note(results)} (never on a row "
                  "the network or a defence was fitted on), scored on the test rows; "
                  "'rising': more attacker rows still helped, a lower bound "
                  "(docs/design.md §5)." if zoo != "none" else "")
    parts = [
        f"Original network ({cfg['model']}, {cfg['target']}): accuracy {_pct(u['accuracy'])} % "
        f"(95 % CI {_ci(u)}), balanced accuracy {_pct(u['balanced_accuracy'])} %, majority "
        f"class {_pct(u['majority'])} %"
        + (f"; over {len(seeds)} seeds {_pct(over['mean'])} ± {_pct(over['std'])} %." if over
           else "."),
        "",
        "**Table 1. Adversaries on the original network.** Paper's column: accuracy (T_s). "
        "Ours: 95 % bootstrap CI, balanced accuracy, majority-class rate, 1/K and normalised "
        "leakage (acc - majority) / (1 - majority)." + audit_note,
        "",
        _table(["attribute", "source", "accuracy %", "95 % CI", "balanced %", "majority %",
                "1/K %", "norm. leakage", "audit leakage"],
               [[r["attribute"], r["source"], _acc(r, "accuracy"), _ci(r),
                 _pct(r["balanced_accuracy"]), _pct(r["majority"]), _pct(r["chance"]),
                 f"{r['normalized_leakage']:+.3f}", _audit(r)] for r in results["table1"]]),
        "",
        f"**Table 2. Privacy-preserving networks** (lambda = {cfg['lam']:g}). Paper's columns: "
        "utility (on every test row), known (K) and unknown (U) adversary accuracy, robustness "
        "= relative change of adversary accuracy against Table 1 (%). Ours: the lambda = 0 "
        "control (fine-tuned like the others without the privacy term: the drift of the "
        "features alone), K's and U's 95 % CI and normalised leakage, the adversary trained "
        "alongside the network where there is one (co-trained), and the audit." + audit_note,
        "",
        _table(["loss", "tap", "attribute", "utility %", "K %", "K 95 % CI", "U %", "U 95 % CI",
                "rob. K %", "rob. U %", "K norm.", "U norm.", "co-trained %", "audit leakage"],
               [[_loss_name(r), r["tap"], r["attribute"], _acc(r, "utility"), _acc(r, "known"),
                 _ci(r["known"]), _acc(r, "unknown"), _ci(r["unknown"]),
                 f"{r['robustness_known']:+.1f}", f"{r['robustness_unknown']:+.1f}",
                 f"{r['known']['normalized_leakage']:+.3f}",
                 f"{r['unknown']['normalized_leakage']:+.3f}", _acc(r, "co_trained"),
                 _audit(r)] for r in results["table2"]]),
        "",
        f"**Fig. 2 data. Lambda sweep** ({cfg['sweep_loss']} loss, tap {cfg['sweep_tap']}, "
        f"{cfg['sweep_attribute']}; lambda = 0 is the control network).",
        "",
        _table(["lambda", "utility %", "known %", "unknown %", "K norm.", "U norm.",
                "audit leakage"],
               [[f"{r['lam']:g}", _acc(r, "utility"), _acc(r, "known"), _acc(r, "unknown"),
                 f"{r['known_report']['normalized_leakage']:+.3f}",
                 f"{r['unknown_report']['normalized_leakage']:+.3f}", _audit(r)]
                for r in results["lambda_sweep"]]),
        "",
        "**Table 3. Inference time per image** (batch 1, eval mode, "
        f"{cfg.get('latency_precision', 'fp32')}).",
        "",
        _table(["network", "ms (mean +- std)", "device"],
               [[r["network"], f"{r['mean']:.2f} +- {r['std']:.2f}", r["device"]]
                for r in results["latency_ms"]]),
    ]
    return "\n".join(parts) + "\n"


def plot_lambda_sweep(results: dict) -> bytes:
    """Fig. 2: utility, known and unknown adversary accuracy against lambda (PNG bytes), with
    the ideal lines dashed: the original utility, and 1/K and the majority rate for privacy."""

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
    return _png(fig)


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
        f"seed(s) {', '.join(str(x) for x in cfg.get('seed_list', [opt['seed']]))}, privacy "
        f"networks initialised from "
        f"{'the original network' if cfg['init'] == 'original' else 'scratch'}, backbone "
        + (f"from `{cfg['backbone_weights']}`" if cfg.get("backbone_weights") else
           "randomly initialised" + (" (the paper starts from ImageNet weights: pass "
                                     "--backbone-weights for its setting)"
                                     if "backbone_weights" in model_options(cfg["model"])
                                     else ""))
        + ". Every figure below was measured in this run; none is copied from the paper.\n\n")
    body = tables_markdown(results)
    fig = "\n![Fig. 2: lambda sweep](fig2_lambda_sweep.png)\n"
    atomic_write_text(out / "report.md", head + body + fig)


# ---------------------------------------------------------------- the leakage audit

def _pm(r: dict, key: str, scale: float = 100.0, fmt: str = ".1f") -> str:
    std = r.get(f"{key}_std")
    value = format(scale * r[key], fmt)
    return value + (f" ± {format(scale * std, fmt.lstrip('+'))}" if std else "")


def _attacker_rows(attackers: dict) -> list[list[str]]:
    rows = []
    for name, r in attackers.items():
        if "skipped" in r:
            rows.append([name, "-", "skipped: " + r["skipped"], "", "", "", "", "", "", ""])
            continue
        rows.append([name, r["input"], _pm(r, "accuracy"), _pct(r["balanced_accuracy"]),
                     _pct(r["majority"]), _pct(r["chance"]),
                     _pm(r, "normalized_leakage", 1.0, "+.3f"),
                     _pm(r, "balanced_leakage", 1.0, "+.3f"),
                     "-" if r.get("auroc") is None else f"{r['auroc']:.3f}",
                     "; ".join(f"{k}={v:g}" for k, v in r["seeds"][0]["chosen"].items())])
    return rows


_ATTACKER_HEADER = ["attacker", "input", "accuracy %", "balanced %", "majority %", "1/K %",
                    "norm. leakage", "bal. leakage", "AUROC", "chosen (seed 0)"]


def audit_markdown(result: dict) -> str:
    """The audit's tables: the protocol and its rows, every attacker, the worst case with its
    learning curve, the description length, the controls (the floor first) and the in-sample
    column, all from ``result`` (as :func:`privatenet.auditing.audit` returns it)."""
    s, w = result["settings"], result["worst"]
    if result.get("protocol") == "cross-fitted":
        how = (f"cross-fitted over {s['folds']} stratified folds of the {s['n_scoring']} "
               "scoring rows (each fold scored by attackers trained on the others): a "
               "**data-limited** attacker, since a real one can collect more faces")
    else:
        how = (f"trained and tuned on {s['n_attacker']} attacker rows, scored on "
               f"{s['n_scoring']} other rows")
    curve = ", ".join(f"{float(k):.0%}: {v:+.3f}" for k, v in w["curve"].items())
    parts = [
        f"**Worst case over the {s['zoo']} zoo: leakage {w['leakage']:+.3f} ({w['attacker']})**"
        f"; accuracy-based {w['normalized_leakage']:+.3f} ({w['normalized_attacker']}, "
        f"accuracy {_pct(w['accuracy'])} %, majority {_pct(w['majority'])} %), balanced "
        f"{w['balanced_leakage']:+.3f} ({w['balanced_attacker']}, balanced accuracy "
        f"{_pct(w['balanced_accuracy'])} %, 1/K {_pct(w['chance'])} %). Attackers {how}; no "
        f"attacker saw a row the defence was fitted on; {s['seeds']} seed(s), choices on a "
        f"{s['val_fraction']:.0%} validation part of the attacker rows.",
        "",
        f"Learning curve of {w['attacker']} (share of its attacker rows: leakage): {curve}."
        + (" **Still rising at 100 %: the figure is a lower bound; more attacker rows would "
           "likely read more.**" if w["still_rising"] else ""),
    ]
    if "rows" in result:
        parts += ["", "Rows: " + "; ".join(f"{role}: {r['split']} split ({r['rows']} rows"
                                            + (f", {r['how']}" if "how" in r else "")
                                            + (f"; {r['use']}" if "use" in r else "") + ")"
                                            for role, r in result["rows"].items()) + "."]
    parts += ["", _table(_ATTACKER_HEADER, _attacker_rows(result["attackers"]))]
    if "mdl" in result:
        m = result["mdl"]
        parts += ["", f"Online description length (logistic probe, C={m['C']:g}): "
                      f"{m['codelength_bits']:.0f} bits against {m['prior_bits']:.0f} for the "
                      f"labels' own prior, compression {m['compression']:.2f} (1 = the features "
                      "say nothing beyond the class balance)."]
    if result.get("controls"):
        crow = [[name, c["worst"]["attacker"], f"{c['worst']['leakage']:+.3f}",
                 f"{c['worst']['normalized_leakage']:+.3f}",
                 f"{c['worst']['balanced_leakage']:+.3f}",
                 f"{c['mdl']['compression']:.2f}" if "mdl" in c else "-"]
                for name, c in result["controls"].items()]
        parts += ["", "Controls (the same protocol on other features of the same rows; the task "
                      "output is the floor: what the deployment's output alone reveals):", "",
                  _table(["control", "worst attacker", "leakage", "norm. leakage",
                          "bal. leakage", "compression"], crow)]
    if result.get("in_sample"):
        i = result["in_sample"]["worst"]
        parts += ["", f"In-sample column (NOT a privacy measure: the zoo trained on the "
                      f"{s['n_in_sample']} defender rows, the rows the defence was fitted on, "
                      f"scored on the same scoring rows): worst leakage {i['leakage']:+.3f} "
                      f"({i['attacker']})."]
    return "\n".join(parts) + "\n"


def plot_audit(result: dict) -> bytes:
    """Bar chart: leakage per attacker (the larger of the accuracy-based and the balanced
    figure; error bars: std over seeds), the controls' worst cases as vertical lines."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = {k: v for k, v in result["attackers"].items() if "skipped" not in v}
    fig, ax = plt.subplots(figsize=(6.4, 1.2 + 0.45 * len(scored)), dpi=120)
    names = list(scored)
    ax.barh(names, [scored[k]["leakage"] for k in names],
            xerr=[scored[k].get("leakage_std", 0.0) for k in names],
            color="tab:red", alpha=0.8)
    styles = iter(["--", ":", "-.", (0, (5, 2, 1, 2))])
    for name, c in result.get("controls", {}).items():
        ax.axvline(c["worst"]["leakage"], color="black", lw=1, ls=next(styles, "--"),
                   label=f"{name} (worst case)")
    ax.axvline(0.0, color="gray", lw=0.8)
    ax.set_xlim(min(-0.1, ax.get_xlim()[0]), 1.0)
    ax.set_xlabel("leakage: the larger of (acc - majority) / (1 - majority) and "
                  "(bal - 1/K) / (1 - 1/K)")
    ax.invert_yaxis()
    if result.get("controls"):
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=2,
                  frameon=False)
    return _png(fig)


def advice_markdown(advice: dict) -> str:
    """The split advisor's table (one row per tap) and its advice."""
    rows = []
    for r in advice["rows"]:
        u, t = r["untrusted"], r["trusted"]
        rising = ", rising" if r["still_rising"] else ""
        rows.append([r["tap"], "x".join(map(str, r["features_shape"])),
                     f"{r['bytes_per_image']:,}", f"{r['worst']:+.3f} ({r['attacker']}{rising})",
                     f"{r['gap']:+.3f}", f"{u['parameters']:,}", f"{u['macs'] / 1e6:,.2f}",
                     f"{u['ms']:.2f}", f"{t['parameters']:,}", f"{t['macs'] / 1e6:,.4f}",
                     f"{t['ms']:.3f}"])
    f = advice["floor"]
    pick = advice["advice"]
    verdict = (f"**Advice: cut at `{pick}`**, the cut with the smallest trusted part among those "
               f"whose gap is at most {advice['tolerance']:.3f}." if pick else
               f"**No cut has a gap within {advice['tolerance']:.3f}**: every tap reveals more "
               "than the tolerance allows above what the output reveals; train a defence at a "
               "tap (docs/design.md §2.2) or accept a larger gap.")
    how = ("attackers cross-fitted on the test rows (data-limited)" if advice["data_limited"]
           else "attackers trained on the attacker split, scored on the test rows")
    return "\n".join([
        f"Where to cut `{advice['model_run']}` for `{advice['attribute']}`: the {advice['zoo']} "
        f"zoo's worst leakage at each tap ({how}), the gap above the floor (the same zoo on the "
        f"task output: {f['leakage']:+.3f}, {f['attacker']}), and each part's cost at batch 1 "
        "on this machine's CPU ('rising': the learning curve still rose, a lower bound).", "",
        _table(["tap", "features", "bytes/image", "worst leakage", "gap", "untrusted params",
                "untrusted M MACs", "untrusted ms", "trusted params", "trusted M MACs",
                "trusted ms"], rows), "", verdict, ""])


def plot_split_advice(advice: dict) -> bytes:
    """Leakage at each cut against the trusted part's multiply-accumulates, with the floor and
    the tolerance above it; the advised cut circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    floor = advice["floor"]["leakage"]
    for r in advice["rows"]:
        x = max(r["trusted"]["macs"], 1)
        ax.scatter([x], [r["worst"]], color="tab:red", zorder=3)
        ax.annotate(f"{r['tap']} ({r['bytes_per_image']:,} B)", (x, r["worst"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
        if r["tap"] == advice["advice"]:
            ax.scatter([x], [r["worst"]], s=220, facecolors="none", edgecolors="black",
                       zorder=4, label="advised cut")
    ax.axhline(floor, color="black", lw=1, ls="--", label="floor (task output)")
    ax.axhline(floor + advice["tolerance"], color="gray", lw=1, ls=":",
               label=f"floor + tolerance {advice['tolerance']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("trusted part: multiply-accumulates per image (log)")
    ax.set_ylabel("worst leakage at the cut")
    ax.set_title(f"where to cut for {advice['attribute']!r} ({advice['zoo']} zoo)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)
