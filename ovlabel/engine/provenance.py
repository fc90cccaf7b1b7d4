"""``run.json``: what a run is doing (written before any work), what it did (written last), and why it
recomputes what it recomputes. ``status`` is the commit marker of a run directory: ``complete`` only once
every artifact is consistent with the parts (:mod:`ovlabel.engine.rebuild`)."""

from __future__ import annotations

import sys

from ovlabel import __version__
from ovlabel.artifacts import RunLayout
from ovlabel.dataset import quality_summary
from ovlabel.errors import OvlabelError
from ovlabel.io.atomic import write_json
from ovlabel.io.names import stored_name
from ovlabel.provenance import TINY_NOTE, jsonable, now, settings_key, versions

__all__ = ["TINY_NOTE", "complete", "jsonable", "labelled_any", "now", "read_previous", "recompute_reasons",
           "settings_key", "start", "versions"]

LABEL_MAPS = "uint8 PNG, value = class index (position in the vocabulary), 255 = unlabeled"
COCO_CATEGORY_ID = "class index + 1 (COCO reserves 0)"


def read_previous(layout: RunLayout) -> tuple[dict | None, list[str]]:
    """``run.json`` as an earlier run left it, and a reason line if it was damaged (not JSON, not an
    object): a damaged ``run.json`` is treated as an unfinished run with nothing recorded, so the parts
    (keyed by their own settings) are kept and every artifact is rebuilt from them."""
    try:
        doc = layout.read_run_json()
    except (OSError, ValueError) as exc:
        doc = exc
    if doc is None or isinstance(doc, dict):
        return doc, []
    what = f"{type(doc).__name__}: {doc}" if isinstance(doc, Exception) else f"a JSON {type(doc).__name__}"
    return None, [f"run.json was damaged ({what}): keeping the finished parts, rebuilding the artifacts"]


def labelled_any(layout: RunLayout, stage_keys: dict) -> bool:
    """Whether any part file exists for the stage settings ``stage_keys`` (``{stage: settings key}``)."""
    return any(next((layout.parts / str(k)).glob("*.parquet"), None) is not None for k in stage_keys.values())


def start(layout: RunLayout, prev: dict | None, command: str, input_info: dict, settings: dict, key: str,
          stage_keys: dict, extra: dict) -> dict:
    """Record, before any work, what this run is doing (status ``running``), keeping earlier history.
    ``extra``: the stage's own fields (``parent``: the run it reads; ``models`` known in advance).
    Returns the document, for :func:`complete`."""
    doc = dict(prev or {})
    doc.update({
        "ovlabel_version": __version__,
        "command": command,
        "argv": [stored_name(a) for a in sys.argv],
        "status": "running",
        "created": (prev or {}).get("created") or now(),
        "updated": now(),
        **{k: v for k, v in extra.items() if k == "parent"},
        "input": input_info,
        "settings_key": key,
        "stage_keys": stage_keys,
        "settings": settings,
    })
    if prev and prev.get("settings_key") != key:
        doc.pop("models", None)
    doc.update({k: v for k, v in extra.items() if k != "parent"})
    write_json(layout.run_json, doc)
    return doc


def _changed(old: dict, new: dict) -> list[str]:
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def recompute_reasons(prev: dict | None, settings: dict, key: str, stage_keys: dict, overwrite: bool,
                      rebuild_stages: tuple[str, ...], out, hint=None) -> list[str]:
    """Why this run recomputes more than new and changed images; raises OvlabelError for a change of
    settings that needs ``overwrite``. ``rebuild_stages`` may change in an existing run without it as long
    as every other stage keeps its key (``classify-masks``); ``hint(before_keys, out)`` adds advice to the
    refusal.
    Empty for a first run or a plain incremental one."""
    if not prev:
        return []
    reasons = []
    before = prev.get("stage_keys") or (  # runs of ovlabel 0.1: one stage, keyed by the run
        {"1.1": prev.get("settings_key")} if prev.get("settings", {}).get("stages") == ["1.1"] else {}
    )
    if prev.get("status") != "complete" and prev.get("settings_key") != key and not labelled_any(RunLayout(out), before):
        # An unfinished run that labelled nothing (it failed on missing weights, say) protects nothing; a
        # run that completed before it still does.
        last = prev.get("artifacts_settings_key")
        if last and last != key and not overwrite:
            raise OvlabelError(
                f"'{out}' holds a complete run made with different settings (and an unfinished one that labelled "
                f"nothing); pass --overwrite to relabel it with the new settings, or choose another --out")
        return [f"the previous `{prev.get('command', 'pseudo-label')}` (other settings) stopped before labelling "
                f"any image: starting with these settings"]
    if prev.get("status") != "complete":
        reasons.append(f"the previous `{prev.get('command', 'pseudo-label')}` did not finish (status "
                       f"'{prev.get('status')}'): keeping its finished images, rebuilding the artifacts")
    changed = ", ".join(_changed(prev.get("settings", {}), settings)) or "format"
    if prev.get("settings_key") != key and not overwrite:
        kept = all(stage_keys.get(s) == k for s, k in before.items() if s not in rebuild_stages)
        if not (rebuild_stages and kept):
            raise OvlabelError(
                f"'{out}' holds a run made with different settings (changed: {changed}); "
                f"pass --overwrite to relabel it with the new settings, or choose another --out"
                f"{hint(before, out) if hint else ''}"
            )
    redo = sorted(s for s, k in stage_keys.items() if before.get(s) != k)
    if overwrite:
        why = f"settings changed: {changed}" if prev.get("settings_key") != key else "same settings"
        reasons.append(f"--overwrite ({why}): every stage of every image")
    elif prev.get("settings_key") != key and redo:
        reasons.append(f"settings changed ({changed}): Stage {', '.join(redo)} of every image")
    elif prev.get("settings_key") != key:
        reasons.append(f"settings changed ({changed}): re-merging the stages, no model pass needed")
    return reasons


def complete(layout: RunLayout, doc: dict, key: str, summary, models: dict | None, parameters: dict,
             runtime: dict, artifacts: dict, note: str | None, counts: dict | None = None) -> None:
    """Mark the run ``complete`` with its counts and provenance (written last: the commit marker)."""
    doc.update({
        "status": "complete",
        "artifacts_settings_key": key,
        "updated": now(),
        "models": models if models is not None else doc.get("models"),
        "counts": {
            "images": summary.total, summary.verb: summary.labelled, "failed": len(summary.failures),
            "skipped": len(summary.skipped),
            "masks": summary.masks, "new_this_run": summary.new, "reused_this_run": summary.reused,
            "input_since_last_run": summary.changes or None, **(counts or {}),
        },
        "last_invocation": {"parameters": jsonable(parameters), "runtime": {**runtime, "versions": versions()},
                            "model_passes": dict(summary.stats), "recomputed_because": summary.reasons},
        "label_maps": LABEL_MAPS,
        "coco_category_id": COCO_CATEGORY_ID,
        "artifacts": artifacts,
        "quality": quality_summary(layout),
    })
    if note:
        doc["note"] = note
    else:
        doc.pop("note", None)
    write_json(layout.run_json, doc)
