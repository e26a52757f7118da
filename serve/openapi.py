"""OpenAPI description of the /v1 routes (BentoML documents only its own @api methods)."""

_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "object", "properties": {
              "status": {"type": "integer"}, "message": {"type": "string"}}}}}
_ERRORS = {str(code): {"description": why, "content": {"application/json": {"schema": _ERROR}}}
           for code, why in ((400, "empty or malformed request"),
                             (408, "the upload did not arrive in time"),
                             (413, "upload or image too large"),
                             (415, "content type not accepted"),
                             (422, "not a usable image (not an image, truncated, too small, "
                                   "too elongated)"),
                             (500, "the server failed on this request"),
                             (503, "at capacity or the model service is unavailable; retry "
                                   "after the Retry-After header's seconds"))}
_ERRORS["503"]["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                             "schema": {"type": "integer"}}}
_ATTRIBUTE = {"type": "object", "properties": {
    "label": {"type": "string"}, "code": {"type": "integer"},
    "probs": {"type": "object", "additionalProperties": {"type": "number"}}}}
_LABELS = {"label": {"type": "integer", "minimum": 0, "maximum": 17},
           "class": {"type": "string"}, "confidence": {"type": "number"},
           "attributes": {"type": "object", "additionalProperties": _ATTRIBUTE}}
_FACE = {"type": "object", "required": ["index", "box", "score", "label", "class", "attributes"],
         "properties": {
             "index": {"type": "integer", "description": "position in the photo's list of answered faces (best detector score first)"},
             "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4,
                     "description": "x, y, width, height in the photo's pixels"},
             "score": {"type": "number", "description": "detector score"},
             "landmarks": {"type": "array", "description": "eyes, nose tip, mouth corners",
                           "items": {"type": "array", "items": {"type": "number"}}},
             **_LABELS}}
_ANSWER = {"type": "object", "required": ["label", "class", "attributes", "model_versions"],
           "description": "With models that crop faces, the top-level labels are the primary "
                          "face's (or, with no face found, the fallback region's).",
           "properties": {
               **_LABELS,
               "model_versions": {"type": "object", "additionalProperties": {"type": "string"}},
               "face_found": {"type": "boolean", "description": "models that crop faces only: "
                              "false when no face was found"},
               "primary_face": {"type": "integer", "description": "index of the face the "
                                "top-level labels are for; -1 when none was found"},
               "faces": {"type": "array", "items": _FACE,
                         "description": "every answered face; empty when none was found"}}}
_BINARY = {"type": "string", "format": "binary"}

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "facet", "version": "1",
             "description": "Face photo -> mask state, gender, age group and the 18 classes."},
    "servers": [{"url": "/v1"}],
    "paths": {
        "/predict": {"post": {
            "summary": "Classify one image (multipart field 'image', or the raw image as body)",
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                                   "properties": {"image": _BINARY}}},
                "image/jpeg": {"schema": _BINARY}, "image/png": {"schema": _BINARY},
                "image/webp": {"schema": _BINARY}, "image/bmp": {"schema": _BINARY},
                "application/octet-stream": {"schema": _BINARY}}},
            "responses": {"200": {"description": "the answer",
                                  "content": {"application/json": {"schema": _ANSWER}}},
                          **_ERRORS}}},
        "/predict/batch": {"post": {
            "summary": "Classify several images (multipart, one file part each)",
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["images"],
                "properties": {"images": {"type": "array", "items": _BINARY}}}}}},
            "responses": {"200": {"description": "one result per file, in order", "content": {
                "application/json": {"schema": {"type": "object", "properties": {
                    "results": {"type": "array", "items": {"oneOf": [_ANSWER, _ERROR]}},
                    "answered": {"type": "integer"}, "failed": {"type": "integer"}}}}}},
                          **_ERRORS}}},
        "/info": {"get": {"summary": "Models, classes, validation F1, provider",
                          "responses": {"200": {"description": "model info", "content": {
                              "application/json": {"schema": {"type": "object"}}}}}}},
    },
}
