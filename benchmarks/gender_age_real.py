"""Gender and age on real faces: today's recipes (the competition layout alone) against real web
faces (aaf) in the mix, street-condition augmentations and drawn masks, step by step. Each step
is scored on the competition eval set (maskfaces eval), on real unmasked faces held out from
training (aaf val, the split every run makes), and on the same faces with a mask drawn on (a
fixed, seeded version of the training augmentation), gender also by band of real age. Trains
each step with `facet train` (skipped when its run folder has best.safetensors), every step
with the same budget (--epochs, --samples), then scores them all in one table.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.gender_age_real --shared ../shared/data

Writes benchmarks/results/gender_age_real.json, .md and .png.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from facet.combine import ATTRIBUTES
from facet.faces import default_detector, primary
from facet.metrics import by_age_band, scores
from facet.manifest import read_manifest
from facet.models.occlusion import occlude
from facet.models.split import split_by_source
from benchmarks.mask_real import predict

OLD_AUGS = "aug_groups=flip,crop,colour"  # exactly the pipeline the recipes had before
STREET = "aug_groups=flip,crop,colour,lowres,blur,jpeg,noise"
EQUAL = "source_weights=maskfaces=1,aaf=1"
BOTH = ["maskfaces", "aaf"]
# (attribute, step, sources, --set overrides on today's recipe: maskfaces 2:1, flip, crop and
# colour), in the order they were trained
STEPS = [
    ("gender", "today: competition layout only", ["maskfaces"], [OLD_AUGS, "select_on=all"]),
    ("age", "today: competition layout only", ["maskfaces"], [OLD_AUGS, "select_on=all"]),
    ("gender", "+ aaf, street, mask (all groups)", BOTH, [EQUAL, "aug_groups="]),
    ("age", "+ aaf, street, mask (all groups)", BOTH, [EQUAL, "aug_groups="]),
    ("gender", "+ aaf", BOTH, [EQUAL]),
    ("age", "+ aaf", BOTH, [EQUAL]),
    ("gender", "+ aaf, street", BOTH, [EQUAL, STREET]),
    ("age", "+ aaf, street", BOTH, [EQUAL, STREET]),
    ("gender", "+ aaf, child_weight=2", BOTH, [EQUAL, "child_weight=2"]),
    ("gender", "+ aaf 2:1 (default)", BOTH, []),
    ("age", "+ aaf 2:1 (default)", BOTH, []),
]


def source_args(shared: Path, names: list[str]) -> list[str]:
    spec = {"maskfaces": ["--data", str(shared / "maskfaces/train")],
            "aaf": ["--manifest", f"{shared / 'aaf/labels.csv'},group=group"]}
    return [a for n in names for a in spec[n]]


def eval_sets(shared: Path, attribute: str, recipe) -> dict[str, pd.DataFrame]:
    """(path, label, age_years) of maskfaces eval and of aaf val: the split every training run
    makes of aaf (by file serial, stratified by the attribute)."""
    answers = pd.read_csv(shared / "maskfaces/eval/answers.csv")
    sets = {"maskfaces eval": pd.DataFrame({
        "path": [str(shared / "maskfaces/eval/images" / i) for i in answers["ImageID"]],
        "label": answers[attribute], "age_years": -1})}
    frame = read_manifest(shared / "aaf/labels.csv", group="group").frame
    _, val = split_by_source(frame, frame[attribute], recipe)
    sets["aaf val"] = frame.iloc[val][["path", attribute, "age_years"]].rename(
        columns={attribute: "label"}).reset_index(drop=True)
    return sets


def masked(seed: int):
    """The mask augmentation as a fixed test: image i gets the mask of seed (seed, i), placed
    from the landmarks found on the model's input."""
    detector = default_detector()

    def alter(i: int, image: np.ndarray) -> np.ndarray:
        faces = detector.detect(image)
        landmarks = (np.array(faces[primary(faces, image.shape[1], image.shape[0])].landmarks)
                     if faces else None)
        return occlude(image, landmarks, np.random.default_rng([seed, i]))
    return alter


def score_set(frame: pd.DataFrame, pred: np.ndarray, attribute: str) -> dict:
    classes = ATTRIBUTES[attribute]
    s = scores(frame["label"].to_numpy(), pred, len(classes))
    out = {"macro_f1": round(s["macro_f1"], 4), "images": len(frame),
           "per_class_f1": {c: round(f, 4) for c, f in zip(classes, s["per_class_f1"])}}
    bands = by_age_band(frame["label"].to_numpy(), pred, frame["age_years"].to_numpy())
    if len(bands):
        out["by_age_band"] = {r.ages: {"macro_f1": round(r.macro_f1, 4), "images": int(r.images)}
                              for r in bands.itertuples()}
    return out


def val_bands(run: Path, source: str) -> dict:
    """Macro-F1 by age band on one source's val images of the run, from its own val files."""
    val = pd.read_csv(run / "val.csv")
    pred = np.load(run / "val_probs.npy").argmax(1)
    mine = (val["source"] == source).to_numpy()
    bands = by_age_band(val["label"].to_numpy()[mine], pred[mine], val["age_years"].to_numpy()[mine])
    return {r.ages: {"macro_f1": round(r.macro_f1, 4), "images": int(r.images)}
            for r in bands.itertuples()}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attributes = [a for a in ATTRIBUTES if any(r["attribute"] == a for r in rows)]
    fig, axes = plt.subplots(1, len(attributes), figsize=(7 * len(attributes), 4.4), squeeze=False)
    targets = {"gender": (0.90, 0.85), "age": (0.75, 0.70)}
    for ax, attribute in zip(axes[0], attributes):
        mine = [r for r in rows if r["attribute"] == attribute]
        sets = list(mine[0]["sets"])
        x = np.arange(len(mine))
        for k, name in enumerate(sets):
            values = [r["sets"][name]["macro_f1"] for r in mine]
            bars = ax.bar(x + (k - 1) * 0.27, values, 0.27, label=name)
            for bar, v in zip(bars, values):
                ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                            va="bottom", fontsize=7)
        for target, style in zip(targets[attribute], ("--", ":")):
            ax.axhline(target, color="gray", ls=style, lw=1)
        ax.set_xticks(x, ["\n".join(textwrap.wrap(r["step"], 15)) for r in mine], fontsize=7)
        ax.set(ylabel=f"{attribute} macro-F1", ylim=(0, 1.08),
               title=f"{attribute}: targets on real faces (dashed: unmasked, dotted: masked)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict]) -> list[str]:
    sets = list(rows[0]["sets"])
    lines = ["| attribute | step | epoch | " + " | ".join(sets) + " |",
             "|---|---|---|" + "---|" * len(sets)]
    for r in rows:
        cells = [f"**{v['macro_f1']:.3f}** (" + " / ".join(f"{x:.2f}" for x in v["per_class_f1"].values())
                 + ")" for v in r["sets"].values()]
        lines.append(f"| {r['attribute']} | {r['step']} | {r['epoch']} | " + " | ".join(cells) + " |")
    gender = [r for r in rows if r["attribute"] == "gender"]
    bands = list(gender[0]["sets"]["aaf val"]["by_age_band"]) if gender else []
    lines += ["", "Gender macro-F1 by band of real age (val images of each source):", "",
              "| step | source | " + " | ".join(bands) + " |", "|---|---|" + "---|" * len(bands)]
    for r in gender:
        for source, by_band in (("aaf", r["sets"]["aaf val"]["by_age_band"]),
                                ("aaf, mask drawn", r["sets"]["aaf val, mask drawn"]["by_age_band"]),
                                ("maskfaces", r["maskfaces_val_by_age_band"])):
            lines.append(f"| {r['step']} | {source} | " + " | ".join(
                f"{by_band[b]['macro_f1']:.2f}" if b in by_band else "" for b in bands) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True, help="Folder holding maskfaces/ and aaf/.")
    p.add_argument("--runs", type=Path, default=Path("runs/gender_age_real"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gender_age_real.json"))
    p.add_argument("--epochs", type=int, default=4, help="Every step's budget: epochs ...")
    p.add_argument("--samples", type=int, default=4000, help="... of this many samples.")
    p.add_argument("--steps", type=int, default=len(STEPS), help="Train and score the first N steps.")
    p.add_argument("--mask-seed", type=int, default=0)
    args = p.parse_args()
    budget = [f"epochs={args.epochs}", f"samples_per_epoch={args.samples}"]
    # a step already scored by an earlier run of this script (same run folder and kept epoch)
    # keeps its scores, as its training is kept
    done = {(r["run"], r["epoch"]): r
            for r in (json.loads(args.out.read_text()) if args.out.exists() else [])}
    rows = []
    for k, (attribute, name, sources, sets) in enumerate(STEPS[:args.steps]):
        run = args.runs / f"{attribute}{k}"
        if not (run / "best.safetensors").exists():
            cmd = [sys.executable, "-m", "facet.cli", "train", attribute,
                   *source_args(args.shared, sources), "--run-dir", str(run),
                   *[a for kv in budget + sets for a in ("--set", kv)]]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        meta = json.loads((run / "best.json").read_text())
        recipe = SimpleNamespace(**meta["recipe"])  # the run's folds, fold and seed
        result = {"attribute": attribute, "step": name, "run": str(run), "sources": sources,
                  "overrides": budget + sets, "epoch": meta["epoch"], "sets": {}}
        if (earlier := done.get((str(run), meta["epoch"]))) is not None:
            rows.append(earlier | {"step": name, "overrides": budget + sets})
            continue
        for set_name, frame in eval_sets(args.shared, attribute, recipe).items():
            paths = frame["path"].tolist()
            result["sets"][set_name] = score_set(frame, predict(run, paths), attribute)
            if set_name == "aaf val":
                result["sets"]["aaf val, mask drawn"] = score_set(
                    frame, predict(run, paths, alter=masked(args.mask_seed)), attribute)
        rows.append(result)
        print(json.dumps(result), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))  # kept after every step
    for r in rows:  # from each run's own val files: the ages of maskfaces' val persons
        r["maskfaces_val_by_age_band"] = val_bands(Path(r["run"]), "maskfaces")
    args.out.write_text(json.dumps(rows, indent=2))
    lines = table(rows)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
