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
_ANSWER = {"type": "object", "required": ["label", "class", "attributes", "model_versions"],
           "properties": {
               "label": {"type": "integer", "minimum": 0, "maximum": 17},
               "class": {"type": "string"}, "confidence": {"type": "number"},
               "attributes": {"type": "object", "additionalProperties": _ATTRIBUTE},
               "model_versions": {"type": "object", "additionalProperties": {"type": "string"}}}}
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
            "responses": {"200": {"description": "one result per file, in order",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_ERRORS}}},
        "/info": {"get": {"summary": "Models, classes, validation F1, provider",
                          "responses": {"200": {"description": "model info", "content": {
                              "application/json": {"schema": {"type": "object"}}}}}}},
    },
}
