"""The mask model on real faces: the drawn-mask recipe against the mix of sources, step by step,
each scored on real street crops held out by photo (realmasks val), real faces with fitted masks
(maskon val) and the competition eval set (maskfaces eval). Trains each step with `facet train`
(skipped when its run folder already has best.safetensors), then scores them all in one table.

    FACET_WEIGHTS_DIR=../shared/weights python -m benchmarks.mask_real --shared ../shared/data

Writes benchmarks/results/mask_real.json, .md and .png.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from facet.combine import ATTRIBUTES
from facet.metrics import scores
from facet.models.checkpoint import load_model
from facet.manifest import read_manifest
from facet.models.split import split_by_source
from facet.preprocess import PreprocessSpec, load, normalize

OLD_AUGS = "aug_groups=flip,crop,colour,jpeg,noise"  # the groups the drawn-mask recipe had
# (name, sources, --set overrides): each step changes one thing
STEPS = [
    ("drawn only", ["maskfaces"], [OLD_AUGS, "select_on=all"]),
    ("+ real sources", ["maskfaces", "maskon", "realmasks"], [OLD_AUGS]),
    ("+ lowres, blur (default)", ["maskfaces", "maskon", "realmasks"], []),
    ("default - lowres", ["maskfaces", "maskon", "realmasks"],
     ["aug_groups=flip,crop,colour,blur,jpeg,noise"]),
    ("default - blur, jpeg", ["maskfaces", "maskon", "realmasks"],
     ["aug_groups=flip,crop,colour,lowres,noise"]),
    ("default - crop", ["maskfaces", "maskon", "realmasks"],
     ["aug_groups=flip,colour,lowres,blur,jpeg,noise"]),
]
CLASSES = ATTRIBUTES["mask"]


def source_args(shared: Path, names: list[str]) -> list[str]:
    spec = {"maskfaces": ["--data", str(shared / "maskfaces/train")],
            "maskon": ["--manifest", f"{shared / 'maskon/labels.csv'},group=group"],
            "realmasks": ["--manifest", f"{shared / 'realmasks/labels.csv'},group=photo"]}
    return [a for n in names for a in spec[n]]


def eval_sets(shared: Path, recipe) -> dict[str, pd.DataFrame]:
    """(path, label) of each set: the val split of realmasks (by photo) and maskon (by source
    image), as every training run makes it, and maskfaces eval."""
    sets = {}
    for name, group in (("realmasks", "photo"), ("maskon", "group")):
        frame = read_manifest(shared / name / "labels.csv", group=group).frame
        _, val = split_by_source(frame, frame["mask"], recipe)
        sets[f"{name} val"] = frame.iloc[val][["path", "mask"]].rename(columns={"mask": "label"})
    answers = pd.read_csv(shared / "maskfaces/eval/answers.csv")
    sets["maskfaces eval"] = pd.DataFrame({
        "path": [str(shared / "maskfaces/eval/images" / i) for i in answers["ImageID"]],
        "label": answers["mask"]})
    return sets


def load_run(run: Path) -> tuple[torch.nn.Module, PreprocessSpec]:
    """A run's best checkpoint, ready for CPU inference, and its preprocessing spec."""
    model, meta = load_model(run)
    return model.to(memory_format=torch.channels_last), PreprocessSpec.from_dict(meta["preprocess"])


@torch.inference_mode()
def classify(model: torch.nn.Module, spec: PreprocessSpec, images: list[np.ndarray],
             batch: int = 128) -> np.ndarray:
    """The model's answers for uint8 inputs already cut and sized by ``spec``."""
    out = []
    for start in range(0, len(images), batch):
        x = normalize(np.stack(images[start:start + batch]), spec)
        out.append(model(torch.from_numpy(x).to(memory_format=torch.channels_last)).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, int)


def predict(run: Path, paths: list[str], alter=None) -> np.ndarray:
    """The run's answers for image files; ``alter(index, uint8 image)`` may change each first."""
    model, spec = load_run(run)
    alter = alter or (lambda i, image: image)
    return classify(model, spec, [alter(i, load(p, spec)) for i, p in enumerate(paths)])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [k for k in rows[0]["sets"]]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    x = np.arange(len(rows))
    for k, name in enumerate(sets):
        values = [r["sets"][name]["macro_f1"] for r in rows]
        bars = ax.bar(x + (k - 1) * 0.27, values, 0.27, label=name)
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=7)
    ax.axhline(0.90, color="gray", ls=":", lw=1)
    ax.set_xticks(x, [r["step"] for r in rows], fontsize=8)
    ax.set(ylabel="mask macro-F1", ylim=(0, 1.08), title="mask model: drawn masks vs real faces")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, required=True, help="Folder holding maskfaces/, maskon/, realmasks/.")
    p.add_argument("--runs", type=Path, default=Path("runs/mask_real"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/mask_real.json"))
    args = p.parse_args()
    rows = []
    for k, (name, sources, sets) in enumerate(STEPS):
        run = args.runs / f"step{k}"
        if not (run / "best.safetensors").exists():
            cmd = [sys.executable, "-m", "facet.cli", "train", "mask", *source_args(args.shared, sources),
                   "--run-dir", str(run), *[a for kv in sets for a in ("--set", kv)]]
            print("$", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
        meta = json.loads((run / "best.json").read_text())
        recipe = SimpleNamespace(**meta["recipe"])  # the run's folds, fold and seed
        result = {"step": name, "run": str(run), "sources": sources, "overrides": sets,
                  "epoch": meta["epoch"], "sets": {}}
        for set_name, frame in eval_sets(args.shared, recipe).items():
            pred = predict(run, frame["path"].tolist())
            s = scores(frame["label"].to_numpy(), pred, len(CLASSES))
            counts = np.bincount(frame["label"], minlength=len(CLASSES))
            result["sets"][set_name] = {
                "macro_f1": round(s["macro_f1"], 4), "images": len(frame),
                "per_class_f1": {c: round(f, 4) for c, f in zip(CLASSES, s["per_class_f1"])},
                "per_class_images": dict(zip(CLASSES, counts.tolist()))}
        rows.append(result)
        print(json.dumps(result), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    lines = ["| step | " + " | ".join(f"{s} macro-F1 (wear / incorrect / not_wear)" for s in rows[0]["sets"]) + " |",
             "|---|" + "---|" * len(rows[0]["sets"])]
    for r in rows:
        cells = [f"**{v['macro_f1']:.3f}** ({' / '.join(f'{x:.2f}' for x in v['per_class_f1'].values())})"
                 for v in r["sets"].values()]
        lines.append(f"| {r['step']} | " + " | ".join(cells) + " |")
    counts = {s: v["per_class_images"] for s, v in rows[0]["sets"].items()}
    lines.append("")
    lines.append("Images per class (wear / incorrect / not_wear): " + "; ".join(
        f"{s}: {' / '.join(map(str, c.values()))}" for s, c in counts.items()))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
