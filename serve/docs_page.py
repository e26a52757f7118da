"""BentoML's Swagger page at ``/`` without what loads from elsewhere.

BentoML's own page pulls Google Tag Manager into the visitor's browser, and its schema's
description shows badges from other hosts. This one loads the same Swagger UI files from the
server's ``/static_content``, replaces that description, and loads nothing else; a
Content-Security-Policy header makes the browser refuse any other origin. With tokens on, the
page offers Swagger's "Authorize" button for the bearer token."""
from __future__ import annotations

import json

from starlette.responses import HTMLResponse

CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<title>facet: API</title>
<link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css">
<link rel="stylesheet" type="text/css" href="./static_content/index.css">
<link rel="icon" type="image/png" href="./static_content/favicon-light-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
<script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
<script>
"use strict";
const BEARER = __BEARER__;  // tokens on: the schema gets a bearer scheme, so "Authorize" works
window.onload = async () => {
  const spec = await (await fetch("./docs.json")).json();
  // BentoML's description shows badges and links from other hosts: facet's own instead
  spec.info = {title: "facet", version: "1", description: "Face photo: mask state, gender, " +
    "age group and the 18 classes. The `/v1` routes: [/v1/openapi.json](./v1/openapi.json); " +
    "a page to try it: [/ui/](./ui/)."};
  if (BEARER) {
    spec.components = spec.components || {};
    spec.components.securitySchemes = {bearer: {type: "http", scheme: "bearer"}};
    spec.security = [{bearer: []}];
  }
  window.ui = SwaggerUIBundle({
    spec, dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "StandaloneLayout",
  });
};
</script>
</body>
</html>
"""


class LocalDocsPage:
    """ASGI middleware: GET or HEAD ``/`` answers the page above; everything else passes."""

    def __init__(self, app, bearer: bool = False):
        self.app = app
        self.html = _PAGE.replace("__BEARER__", json.dumps(bool(bearer)))

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope["path"] == "/"
                and scope["method"] in ("GET", "HEAD")):
            return await HTMLResponse(self.html, headers=HEADERS)(scope, receive, send)
        return await self.app(scope, receive, send)
