"""Where to cut a network between an untrusted device and a trusted enclave (docs/design.md §3).

For every tap of a trained network: the fresh-row worst case of the attacker zoo on the tap's
features (:func:`~privatenet.app.jobs.audit_job`, attackers that never saw a defender row), the
gap above the floor (the same zoo on the task output, what the deployment reveals whatever the
cut), and what the cut costs (:func:`~privatenet.export.split_costs`: each part's parameters,
multiply-accumulates and measured time, the bytes that cross). The advice: among the cuts whose
gap is within the deployer's tolerance, the one with the smallest trusted part (fewest
multiply-accumulates in the enclave); none if no cut is within it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from privatenet.app.jobs import audit_job, image_size_of, load_model
from privatenet.app.report import advice_markdown, plot_split_advice
from privatenet.checks import is_int
from privatenet.data.base import Dataset
from privatenet.errors import PrivatenetError, SettingError
from privatenet.export import split_costs
from privatenet.settings import setting
from privatenet.storage import atomic_write_bytes, atomic_write_text, write_json
from privatenet.train.config import TrainConfig

__all__ = ["AdviceConfig", "advise", "split_advice_job"]


@dataclass
class AdviceConfig:
    """The split advisor's own settings, checked on creation."""

    tolerance: float = setting(0.05, "largest accepted gap above the floor, in normalised "
                                     "leakage")
    repeats: int = setting(20, "timed calls of each part")

    def __post_init__(self) -> None:
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or (
                not 0.0 <= self.tolerance <= 1.0):
            raise SettingError("tolerance", self.tolerance, "is invalid; give the largest gap "
                               "above the floor you accept, a number in 0..1 (e.g. 0.05)")
        self.tolerance = float(self.tolerance)
        if not is_int(self.repeats) or self.repeats < 1:
            raise SettingError("repeats", self.repeats, "is invalid; give an integer >= 1")


def advise(rows: list[dict], *, tolerance: float) -> str | None:
    """The tap of ``rows`` (each with ``tap``, ``gap`` and ``trusted.macs``) whose gap is at most
    ``tolerance`` and whose trusted part is smallest; ``None`` if no gap is within it."""
    within = [r for r in rows if r["gap"] <= tolerance]
    return min(within, key=lambda r: r["trusted"]["macs"])["tap"] if within else None


def split_advice_job(*, data: Dataset, model_run: str | Path, attribute: str,
                     config: TrainConfig, out: str | Path, zoo: str = "full",
                     tolerance: float = 0.05, repeats: int = 20, on_attacker=None) -> dict:
    """Audit every tap of the network of ``model_run`` for ``attribute`` (one ``audit_job`` per
    tap in ``out/audit-<tap>``, the first with the floor), measure each cut's costs, and write
    ``advice.json``, ``advice.md`` and ``advice.png`` (leakage against the trusted part's
    multiply-accumulates, the floor and the tolerance drawn) into ``out``. Returns the advice.
    Rerunning the same call reuses the finished audits."""
    tolerance = AdviceConfig(tolerance=tolerance, repeats=repeats).tolerance
    out = Path(out)
    if out.exists() and not out.is_dir():  # refused before any network is loaded or timed
        raise PrivatenetError(f"{out} is a file, not a folder; choose a folder for the advice")
    net, _ = load_model(model_run)
    costs = split_costs(net, image_size=image_size_of(data), repeats=repeats)
    rows, floor = [], None
    for i, cost in enumerate(costs):
        tap = cost["tap"]
        result = audit_job(data=data, model_run=model_run, tap=tap, attribute=attribute,
                           config=config, out=out / f"audit-{tap}", zoo=zoo,
                           controls="floor" if i == 0 else False, mdl=False,
                           on_attacker=on_attacker)
        if i == 0:
            floor = result["controls"]["task output"]["worst"]
        worst = result["worst"]
        rows.append({**cost, "worst": worst["leakage"], "attacker": worst["attacker"],
                     "still_rising": worst["still_rising"],
                     "gap": worst["leakage"] - floor["leakage"]})
    advice = {"model_run": str(model_run), "attribute": attribute, "zoo": zoo,
              "data": data.name, "tolerance": tolerance,
              "floor": {"leakage": floor["leakage"], "attacker": floor["attacker"]},
              "data_limited": result["data_limited"], "rows": rows,
              "advice": advise(rows, tolerance=tolerance)}
    write_json(out / "advice.json", advice)
    atomic_write_text(out / "advice.md", advice_markdown(advice))
    atomic_write_bytes(out / "advice.png", plot_split_advice(advice))
    return advice
