"""A client of Moat's web API for the tests: a browser's way (the session
cookie kept by hand, since it is Secure and the tests also speak plain HTTP
on loopback; the CSRF token sent with every change) or a token's, and every
JSON reply checked against webui/openapi.json."""
import json
import os
import re

import jsonschema
import requests
import urllib3

from conftest import ROOT

urllib3.disable_warnings()

SPEC = json.load(open(os.path.join(ROOT, "webui", "openapi.json")))


def spec_operation(method, path):
    """The OpenAPI operation of a concrete path, and its template."""
    for tmpl, ops in SPEC["paths"].items():
        rx = "^" + re.sub(r"\{[^}]+\}", "[^/]+", tmpl) + "$"
        if re.match(rx, path) and method.lower() in ops:
            return tmpl, ops[method.lower()]
    return None, None


def check_against_spec(method, path, resp):
    tmpl, op = spec_operation(method, path)
    assert op is not None, "%s %s is not in openapi.json" % (method, path)
    code = str(resp.status_code)
    assert code in op["responses"], "%s %s answered %s, not documented (%s)" % (
        method, tmpl, code, resp.text[:300])
    content = op["responses"][code].get("content", {})
    ctype = resp.headers.get("Content-Type", "").split(";")[0]
    assert ctype in content or not content, "%s %s %s: Content-Type %s" % (method, tmpl, code, ctype)
    if ctype == "application/json":
        schema = dict(content[ctype]["schema"])
        schema["components"] = SPEC["components"]
        jsonschema.validate(resp.json(), schema,
                            resolver=jsonschema.RefResolver.from_schema({"components": SPEC["components"]}))


class Web:
    def __init__(self, base, origin=None):
        self.base = base
        self.session = None
        self.csrf = None
        self.token = None
        self.origin = origin
        self.last = None

    def call(self, method, path, body=None, params=None, headers=None, csrf=True, check=True):
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if self.session:
            h["Cookie"] = "moat_session=" + self.session
        if csrf and self.csrf and method != "GET":
            h["X-CSRF-Token"] = self.csrf
        if self.origin:
            h["Origin"] = self.origin
        r = requests.request(method, self.base + path, json=body, params=params, headers=h,
                             timeout=60, verify=False, allow_redirects=False)
        self.last = r
        if check:
            check_against_spec(method, path, r)
        return r

    def get(self, path, **kw):
        r = self.call("GET", path, **kw)
        return r.status_code, (r.json() if r.headers.get("Content-Type", "").startswith("application/json") else r.text)

    def post(self, path, body=None, **kw):
        r = self.call("POST", path, body=body if body is not None else {}, **kw)
        return r.status_code, (r.json() if r.headers.get("Content-Type", "").startswith("application/json") else r.text)

    def delete(self, path, body=None, **kw):
        r = self.call("DELETE", path, body=body, **kw)
        return r.status_code, r.json()

    def login(self, user, password, **extra):
        body = {"user": user, "password": password}
        body.update(extra)
        r = self.call("POST", "/api/v1/login", body=body)
        if r.status_code == 200:
            m = re.search(r"moat_session=([0-9a-f]+)", r.headers.get("Set-Cookie", ""))
            self.session = m.group(1)
            self.csrf = r.json()["csrf"]
        return r
