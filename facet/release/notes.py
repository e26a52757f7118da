"""The shipped set's card text on its data: sources, licences and the failure modes no set
measures (those measured are the card's "Where it fails", from the scores)."""
from __future__ import annotations

from facet.release.sets import MASKED

LICENSES = {"maskfaces": "UTKFace faces: non-commercial research only",
            "maskon": "MaskedFace-Net / FFHQ: CC BY-NC-SA 4.0",
            "realmasks, realphotos": "Kaggle Face Mask Detection: CC0",
            "aaf, aafrest": "All-Age-Faces: no license stated, research use",
            "utkextra": "UTKFace faces: non-commercial research only"}


def card_notes(record: dict) -> str:
    """``record``: what :func:`facet.release.sets.write_sets` wrote (the masked set's count of
    images without a face)."""
    masked = record.get("masked") or {}
    skipped = (f" ({masked['no_face_found']} of its images had no face found, so no mask drawn, "
               "and are left out)" if masked.get("no_face_found") else "")
    drawn = (f'; "{MASKED}" draws masks on aaf\'s val faces{skipped}, still drawn masks, not '
             "real ones" if masked.get("images") else "")
    return f"""**Research use only.** The training data is licensed for non-commercial research (UTKFace,
MaskedFace-Net/FFHQ CC BY-NC-SA 4.0, All-Age-Faces: no license stated), and the models inherit
that. Gender is predicted as two classes and age as three groups from appearance alone: they are
estimates of how a face looks, not facts about a person.

Sources: {'; '.join(f'{k}: {v}' for k, v in LICENSES.items())}.

## Known failure modes

- The groups that score lowest (race, real-age band) are listed under "Where it fails" above,
  with their intervals; a group of few images has a wide interval.
- Small, turned or partly hidden faces: a face that is not found gets no answer of its own (the
  photo's answer then comes from the whole image framed as one face, `face_found=false`); the
  share found on street photos is the realphotos row's "found".
- `incorrect` masks are rare in real photos: their F1 moves by about 0.1 per face, so the
  realphotos and realmasks mask scores have the widest intervals.
- Tight face crops (the realmasks row) score lower than photos: the models are trained to see
  the surroundings of a face; for crops, train with `--set crop=none`.
- Gender and age of masked faces: no labelled set of real masked faces measures them (realphotos
  has mask labels only){drawn}.
- The faces are mostly East Asian (aaf, aafrest) and UTKFace's mix (maskfaces, utkextra, scored by
  race above): other populations are not measured.
"""
